"""The audit log: written with every change, in the same transaction, and any
tampering (update, delete, insert, reorder, rewritten tail) is caught."""

from __future__ import annotations

import itertools
import json

import pytest
from controlplane.audit.checkpoints import (
    checkpoint_to_json,
    create_checkpoint,
    generate_private_key_pem,
)
from controlplane.audit.models import AuditEvent
from controlplane.tenancy.actors import Actor
from controlplane.tenancy.models import Organization
from controlplane.tenancy.services import create_api_key, create_organization, create_team
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from django.test import override_settings

from tests.conftest import SYSTEM


def verify(*args) -> str:
    from io import StringIO

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
    assert AuditEvent.objects.count() == 7  # the organization and six teams
    return org


@pytest.fixture
def tamper():
    """Raw SQL with the append-only trigger switched off, as a DBA could."""

    def run(sql, params=()):
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_append_only")
            cursor.execute(sql, params)
            cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_append_only")

    return run


def test_every_change_writes_a_chained_event(chain):
    events = list(AuditEvent.objects.order_by("seq"))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].prev_hash == "0" * 64
    for before, after in itertools.pairwise(events):
        assert after.prev_hash == before.hash
    first = events[0]
    assert first.action == "organization.create"
    assert first.actor_type == "system" and first.organization_id == chain.pk
    assert first.changes["slug"] == [None, "acme"]
    assert "audit chain OK: 7 events" in verify()


def test_event_rolls_back_with_the_change(chain):
    count = AuditEvent.objects.count()
    with pytest.raises(RuntimeError), transaction.atomic():
        create_team(actor=SYSTEM, organization=chain, slug="doomed", name="Doomed")
        raise RuntimeError("the surrounding transaction fails")
    assert AuditEvent.objects.count() == count
    create_team(actor=SYSTEM, organization=chain, slug="next", name="Next")
    assert "audit chain OK" in verify()  # no gap was left behind


def test_secrets_never_reach_the_log(chain):
    key, secret = create_api_key(actor=SYSTEM, organization=chain, name="k", scopes=["inference"])
    event = AuditEvent.objects.get(action="apikey.create")
    text = json.dumps(event.changes)
    assert "secret_hash" not in text and secret not in text and key.secret_hash not in text


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_database_refuses_update_and_delete(chain):
    for sql in (
        "UPDATE audit_auditevent SET action = 'x' WHERE seq = 1",
        "DELETE FROM audit_auditevent WHERE seq = 1",
    ):
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql)
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.filter(seq=2).update(action="x")
    assert "audit chain OK" in verify()


def test_changed_row_is_named(chain, tamper):
    tamper("UPDATE audit_auditevent SET target_repr = 'someone else' WHERE seq = 4")
    assert "sequence 4" in verify_fails() and "changed" in verify_fails()


def test_changed_json_is_named(chain, tamper):
    tamper("""UPDATE audit_auditevent SET changes = '{"slug": [null, "evil"]}' WHERE seq = 1""")
    assert "sequence 1" in verify_fails()


def test_deleted_row_is_named(chain, tamper):
    tamper("DELETE FROM audit_auditevent WHERE seq = 3")
    message = verify_fails()
    assert "sequence 3" in message and "deleted" in message


def test_inserted_row_is_named(chain, tamper):
    # Make room after event 2 by shifting the rest, then slip a forged event in.
    tamper("UPDATE audit_auditevent SET seq = seq + 1000 WHERE seq > 2")
    tamper("UPDATE audit_auditevent SET seq = seq - 999 WHERE seq > 1000")
    forged = AuditEvent.objects.get(seq=2)
    tamper(
        "INSERT INTO audit_auditevent (seq, occurred_at, actor_type, actor_id, actor_label, action,"
        " target_type, target_id, target_repr, changes, request_id, prev_hash, hash)"
        " VALUES (3, now(), 'user', '1', 'mallory', 'apikey.create', 'apikey', 'x', 'x', '{}', '',"
        " %s, %s)",
        [forged.hash, "f" * 64],
    )
    assert "sequence 3" in verify_fails()


def test_reordered_rows_are_named(chain, tamper):
    tamper("UPDATE audit_auditevent SET seq = 1000 WHERE seq = 3")
    tamper("UPDATE audit_auditevent SET seq = 3 WHERE seq = 4")
    tamper("UPDATE audit_auditevent SET seq = 4 WHERE seq = 1000")
    assert "sequence 3" in verify_fails()


def test_rewritten_tail_is_caught_by_a_signed_checkpoint(chain, tamper, tmp_path):
    pem = generate_private_key_pem()
    with override_settings(AUDIT_SIGNING_KEY=pem):
        checkpoint = create_checkpoint()
        kept = tmp_path / "checkpoint.json"
        kept.write_text(checkpoint_to_json(checkpoint))
        assert "1 signed checkpoint(s) hold" in verify()

        # An attacker deletes the last two events and the stored checkpoint.
        tamper("DELETE FROM audit_auditevent WHERE seq >= 6")
        with connection.cursor() as cursor:  # its trigger off too, as a DBA could
            cursor.execute(
                "ALTER TABLE audit_auditcheckpoint DISABLE TRIGGER audit_checkpoint_append_only"
            )
            cursor.execute("DELETE FROM audit_auditcheckpoint")
            cursor.execute(
                "ALTER TABLE audit_auditcheckpoint ENABLE TRIGGER audit_checkpoint_append_only"
            )
        assert "audit chain OK" in verify()  # the chain alone still links...
        message = verify_fails("--checkpoint", str(kept))  # ...the kept checkpoint does not
        assert "sequence 7" in message and "removed" in message


def test_checkpoint_with_forged_signature_is_refused(chain, tmp_path):
    pem = generate_private_key_pem()
    with override_settings(AUDIT_SIGNING_KEY=pem):
        data = json.loads(checkpoint_to_json(create_checkpoint()))
    data["seq"] = 3
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(data))
    with override_settings(AUDIT_SIGNING_KEY=pem):
        assert "invalid signature" in verify_fails("--checkpoint", str(forged))


def test_checkpoint_refuses_to_sign_a_broken_chain(chain, tamper):
    tamper("DELETE FROM audit_auditevent WHERE seq = 2")
    with (
        override_settings(AUDIT_SIGNING_KEY=generate_private_key_pem()),
        pytest.raises(ValueError, match="broken"),
    ):
        create_checkpoint()


def test_events_record_request_id_and_client_address(world, clients):
    response = clients["owner_a"].post(
        "/api/v1/organizations/org-a/teams/",
        {"slug": "web", "name": "Web"},
        format="json",
        HTTP_X_REQUEST_ID="req-12345",
        REMOTE_ADDR="10.1.2.3",
    )
    assert response.status_code == 201 and response["X-Request-ID"] == "req-12345"
    event = AuditEvent.objects.get(request_id="req-12345")
    assert event.action == "team.create" and event.client_ip == "10.1.2.3"
    assert event.actor_type == "user" and event.actor_label == "alice"


def test_audit_events_api_filters(world, clients):
    client = clients["owner_a"]
    client.post("/api/v1/organizations/org-a/teams/", {"slug": "x1", "name": "X"}, format="json")
    base = "/api/v1/organizations/org-a/audit-events/"
    assert {e["action"] for e in client.get(base + "?action=team.create").json()["results"]} == {
        "team.create"
    }
    by_alice = client.get(base + "?actor=alice").json()["results"]
    assert by_alice and all(e["actor_label"] == "alice" for e in by_alice)
    prefix = client.get(base + "?action=member.").json()["results"]
    assert prefix and all(e["action"].startswith("member.") for e in prefix)
    team_id = by_alice[0]["target_id"]
    assert client.get(base + f"?target={team_id}").json()["count"] == 1
    assert client.get(base + "?since=2999-01-01T00:00:00Z").json()["count"] == 0
    # org B's events never show up here, and the platform-wide log is admins-only
    assert all(
        e["organization_id"] == str(world.org_a.pk) for e in client.get(base).json()["results"]
    )
    assert client.get("/api/v1/audit-events/").status_code == 403
    assert clients["platform_admin"].get("/api/v1/audit-events/").json()["count"] > 0


def test_django_admin_changes_are_audited(world, client):
    client.force_login(world.root)
    url = f"/admin/tenancy/organization/{world.org_a.pk}/change/"
    response = client.post(
        url,
        {
            "slug": "org-a",
            "name": "Renamed in admin",
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content[:500]
    event = AuditEvent.objects.filter(action="organization.update").latest("seq")
    assert event.changes["name"] == ["Org A", "Renamed in admin"]
    assert event.actor_label == "root"
    assert Organization.objects.get(pk=world.org_a.pk).name == "Renamed in admin"


def test_management_commands_are_audited(db, capsys):
    call_command("create_organization", "cmd-org", "--name", "Cmd")
    call_command("create_api_key", "cmd-org", "--name", "ops", "--scopes", "inference,manage")
    out = capsys.readouterr().out
    assert "sk-" in out
    actions = list(AuditEvent.objects.values_list("action", "actor_label"))
    assert ("organization.create", "manage.py create_organization") in actions
    assert ("apikey.create", "manage.py create_api_key") in actions


def test_actor_identity_of_a_key(db):
    org = create_organization(actor=SYSTEM, slug="k-org", name="K")
    key, _ = create_api_key(actor=SYSTEM, organization=org, name="svc", scopes=["manage"])
    create_team(actor=Actor.for_key(key), organization=org, slug="by-key", name="By key")
    event = AuditEvent.objects.get(action="team.create")
    assert event.actor_type == "key" and event.actor_id == str(key.pk)
    assert event.actor_label == key.display_prefix
