"""Audit checkpoints on by default: beat signs the head wherever a key is set,
``audit_verify`` checks the chain against the latest stored checkpoint, the checkpoint
table is append-only, every hashed field is covered, and concurrent writers leave a
gapless chain."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from io import StringIO

import pytest
from controlplane.audit import tasks
from controlplane.audit.chain import compute_hash, verify_chain
from controlplane.audit.checkpoints import generate_private_key_pem
from controlplane.audit.models import AuditCheckpoint, AuditEvent
from controlplane.audit.services import record_event
from controlplane.tenancy.services import create_organization, create_team
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from django.test import override_settings
from django.utils import timezone

from tests.conftest import SYSTEM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEM = generate_private_key_pem()


def verify(*args) -> str:
    out = StringIO()
    call_command("audit_verify", *args, stdout=out)
    return out.getvalue()


def verify_fails(*args) -> str:
    with pytest.raises(CommandError) as info:
        verify(*args)
    return str(info.value)


@pytest.fixture
def chain(db):
    org = create_organization(actor=SYSTEM, slug="acme", name="Acme")
    for n in range(6):
        create_team(actor=SYSTEM, organization=org, slug=f"team-{n}", name=f"Team {n}")
    assert AuditEvent.objects.count() == 7
    return org


def raw(sql, params=()):
    """Raw SQL with the append-only triggers off, as a DBA could."""
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_append_only")
        cursor.execute(sql, params)
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_append_only")


def settings_with(**env) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AUDIT_", "DEBUG"))}
    clean.update(PYTHONPATH=os.path.join(ROOT, "platform"), SECRET_KEY="x" * 50, **env)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import controlplane.settings as s; e = s.CELERY_BEAT_SCHEDULE.get('audit-checkpoint');"
            "print(e and (e['task'], e['schedule']))",
        ],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_beat_signs_checkpoints_wherever_a_key_is_set(tmp_path):
    key_file = tmp_path / "audit.pem"
    key_file.write_text(PEM)
    assert settings_with() == "None"
    assert settings_with(AUDIT_SIGNING_KEY_FILE=str(key_file)) == "('audit.checkpoint', 300.0)"
    assert (
        settings_with(AUDIT_SIGNING_KEY=PEM, AUDIT_CHECKPOINT_INTERVAL_SECONDS="60")
        == "('audit.checkpoint', 60.0)"
    )


def test_the_task_signs_a_changed_head_once(chain):
    assert tasks.checkpoint() == "skipped"  # no key: nothing to sign with
    with override_settings(AUDIT_SIGNING_KEY=PEM):
        assert tasks.checkpoint() == "signed 7"
        assert tasks.checkpoint() == "unchanged"
        create_team(actor=SYSTEM, organization=chain, slug="late", name="Late")
        assert tasks.checkpoint() == "signed 8"
        assert "the latest at sequence 8" in verify()
    assert AuditCheckpoint.objects.count() == 2


def test_a_rewritten_tail_with_recomputed_hashes_is_caught_by_the_latest_checkpoint(chain):
    with override_settings(AUDIT_SIGNING_KEY=PEM):
        tasks.checkpoint()
        # Rewrite event 5 and recompute every hash after it: the chain links again.
        for event in AuditEvent.objects.filter(seq__gte=5).order_by("seq"):
            if event.seq == 5:
                event.target_repr = "someone else"
            else:
                event.prev_hash = AuditEvent.objects.get(seq=event.seq - 1).hash
            event.hash = compute_hash(event)
            raw(
                "UPDATE audit_auditevent SET target_repr = %s, prev_hash = %s, hash = %s "
                "WHERE seq = %s",
                [event.target_repr, event.prev_hash, event.hash, event.seq],
            )
        assert verify_chain().ok  # the chain alone cannot tell...
        message = verify_fails()  # ...the stored checkpoint, with no argument, can
    assert "sequence 7" in message and "rewritten" in message


def test_the_public_key_can_be_given_instead(chain, tmp_path):
    with override_settings(AUDIT_SIGNING_KEY=PEM):
        tasks.checkpoint()
        public = tmp_path / "audit.pub"
        out = StringIO()
        call_command("audit_keygen", "--public-only", stdout=out)
        public.write_text(out.getvalue())
    raw("UPDATE audit_auditevent SET hash = %s WHERE seq = 7", ["e" * 64])
    raw(
        "UPDATE audit_auditevent SET hash = %s WHERE seq = 7",
        [compute_hash(AuditEvent.objects.get(seq=7))],
    )  # chain intact again, signature still holds
    assert "the latest at sequence 7" in verify("--public-key", str(public))
    raw("DELETE FROM audit_auditevent WHERE seq = 7")
    assert "removed" in verify_fails("--public-key", str(public))


def test_checkpoints_are_append_only(chain):
    with override_settings(AUDIT_SIGNING_KEY=PEM):
        tasks.checkpoint()
    for sql in (
        "UPDATE audit_auditcheckpoint SET seq = 1",
        "DELETE FROM audit_auditcheckpoint",
    ):
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql)
    assert AuditCheckpoint.objects.get().seq == 7


# Every field that goes into the hash, and a different value for it (SQL expression).
HASHED_FIELDS = {
    "seq": "1004",
    "occurred_at": "occurred_at + interval '1 second'",
    "actor_type": "'user'",
    "actor_id": "'mallory'",
    "actor_label": "'mallory'",
    "organization_id": "'00000000-0000-0000-0000-000000000001'",
    "action": "'team.delete'",
    "target_type": "'apikey'",
    "target_id": "'other'",
    "target_repr": "'someone else'",
    "changes": """'{"slug": [null, "evil"]}'""",
    "request_id": "'req-forged'",
    "client_ip": "'10.6.6.6'",
    "prev_hash": "repeat('a', 64)",
}


def test_the_table_names_every_hashed_field():
    from controlplane.audit.chain import _canonical_fields

    event = AuditEvent(seq=1, occurred_at=timezone.now())
    assert set(_canonical_fields(event)) == set(HASHED_FIELDS)


@pytest.mark.parametrize("field", sorted(HASHED_FIELDS))
def test_changing_any_hashed_field_is_caught_at_that_seq(chain, field):
    raw(f"UPDATE audit_auditevent SET {field} = {HASHED_FIELDS[field]} WHERE seq = 4")
    assert "sequence 4" in verify_fails()


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_leave_a_gapless_chain():
    writers, per_writer = 8, 6
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            barrier.wait(timeout=30)
            for i in range(per_writer):
                with transaction.atomic():
                    record_event(
                        actor=SYSTEM,
                        action="test.concurrent",
                        target_type="writer",
                        target_id=f"{n}-{i}",
                    )
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    seqs = list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, writers * per_writer + 1))
    result = verify_chain()
    assert result.ok and result.checked == writers * per_writer
