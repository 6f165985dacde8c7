"""Signed checkpoints of the audit chain's head.

The signing key (Ed25519, PEM) comes from the ``AUDIT_SIGNING_KEY`` setting, never
from the database: whoever rewrites the database tail and recomputes every hash
still cannot produce a valid signature over the rewritten head. Checkpoints are kept
in the database for convenience and printed as JSON so an operator can keep copies
elsewhere (``audit_verify --checkpoint FILE``).

Wherever a key is set, the beat schedule signs the head every
``AUDIT_CHECKPOINT_INTERVAL_SECONDS`` (``audit.checkpoint`` task), and ``audit_verify``
checks the chain against the latest stored checkpoint. On PostgreSQL the checkpoint
table is append-only like the audit table (migration 0003).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction

from controlplane.audit.chain import verify_chain
from controlplane.audit.models import AuditCheckpoint, AuditEvent

log = logging.getLogger(__name__)
# Any constant: the advisory lock that keeps two checkpoint runs from racing.
_CHECKPOINT_LOCK_KEY = 0x5A1D18


def _message(seq: int, head_hash: str, signed_at: str) -> bytes:
    return f"sap-audit-checkpoint:v1:{seq}:{head_hash}:{signed_at}".encode()


def load_private_key(pem: str | None = None) -> Ed25519PrivateKey:
    pem = pem or settings.AUDIT_SIGNING_KEY
    if not pem:
        raise ImproperlyConfigured(
            "AUDIT_SIGNING_KEY (or AUDIT_SIGNING_KEY_FILE) is not set; "
            "create one with `python manage.py audit_keygen`"
        )
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ImproperlyConfigured("AUDIT_SIGNING_KEY must be an Ed25519 private key")
    return key


def fingerprint(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def generate_private_key_pem() -> str:
    return (
        Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )


@transaction.atomic
def create_checkpoint(private_key: Ed25519PrivateKey | None = None) -> AuditCheckpoint:
    """Verify the chain, then sign its head. Refuses to sign a broken chain."""
    key = private_key or load_private_key()
    result = verify_chain()
    if not result.ok:
        raise ValueError(f"refusing to sign a broken chain: {result.reason}")
    signed_at = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
    signature = key.sign(_message(result.head_seq, result.head_hash, signed_at))
    return AuditCheckpoint.objects.create(
        seq=result.head_seq,
        hash=result.head_hash,
        signed_at=dt.datetime.fromisoformat(signed_at),
        key_fingerprint=fingerprint(key.public_key()),
        signature=base64.b64encode(signature).decode(),
    )


def signing_configured() -> bool:
    return bool(settings.AUDIT_SIGNING_KEY)


def latest_checkpoint() -> AuditCheckpoint | None:
    return AuditCheckpoint.objects.order_by("-seq", "-signed_at", "-pk").first()


@transaction.atomic
def checkpoint_if_changed() -> str:
    """The periodic task's work: sign the head unless the latest checkpoint already
    covers it. ``"skipped"`` without a key, ``"unchanged"``, or ``"signed <seq>"``."""
    if not signing_configured():
        return "skipped"
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHECKPOINT_LOCK_KEY])
    head = AuditEvent.objects.order_by("-seq").only("seq", "hash").first()
    latest = latest_checkpoint()
    if (
        latest is not None
        and head is not None
        and (latest.seq, latest.hash)
        == (
            head.seq,
            head.hash,
        )
    ):
        return "unchanged"
    if head is None and latest is not None:
        return "unchanged"
    try:
        checkpoint = create_checkpoint()
    except ValueError:
        log.error("audit checkpoint refused: the chain does not verify (run audit_verify)")
        raise
    return f"signed {checkpoint.seq}"


def checkpoint_to_json(checkpoint: AuditCheckpoint) -> str:
    return json.dumps(
        {
            "seq": checkpoint.seq,
            "hash": checkpoint.hash,
            "signed_at": checkpoint.signed_at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
            "key_fingerprint": checkpoint.key_fingerprint,
            "signature": checkpoint.signature,
        }
    )


@dataclass(frozen=True)
class CheckpointProblem:
    seq: int
    reason: str


def check_checkpoint(data: dict, public_key: Ed25519PublicKey) -> CheckpointProblem | None:
    """Check one checkpoint (a dict as ``checkpoint_to_json`` writes) against the chain."""
    seq, head_hash = int(data["seq"]), str(data["hash"])
    signed_at = str(data["signed_at"])
    try:
        public_key.verify(base64.b64decode(data["signature"]), _message(seq, head_hash, signed_at))
    except (InvalidSignature, ValueError):
        return CheckpointProblem(seq, f"checkpoint at {seq} has an invalid signature")
    if seq == 0:
        return None
    event = AuditEvent.objects.filter(seq=seq).only("hash").first()
    if event is None:
        return CheckpointProblem(
            seq, f"event {seq} named by a signed checkpoint is missing: the tail was removed"
        )
    if event.hash != head_hash:
        return CheckpointProblem(
            seq, f"event {seq} differs from the signed checkpoint: the chain was rewritten"
        )
    return None


def stored_checkpoints() -> list[dict]:
    return [json.loads(checkpoint_to_json(c)) for c in AuditCheckpoint.objects.all()]
