"""Node credentials and the authentication of agent reports.

A platform administrator registers a node (REST, or ``manage.py register_node``); that
issues the node's secret, shown once. The agent signs every report with it
(``workers.protocol.sign_report``: HMAC-SHA256 over the canonical report). Verifying
an HMAC needs the secret itself, so it is stored encrypted at rest, like the replica
keys (``catalog/secrets.py``): a database dump alone does not reveal it.

A report is refused, changing nothing, when it is unsigned, its signature does not
verify with its signer's secret, its signer names another node, its node is unknown
or has no credential, or it reports another address than the registered one. Only
where an administrator registered an address network for the node (a pod network,
whose agent gets a new IP on each restart) may a report signed with the node's own
secret move its address, within that network, audited as ``node.address_move``.
Each refusal counts in ``Node.refused_reports`` and is audited as
``fleet.node.report_refused`` with its reason, at most once per node and reason
every ``FLEET_REFUSED_REPORT_AUDIT_SECONDS`` (a flood does not grow the log).
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from controlplane.audit.services import record_event
from controlplane.catalog.secrets import decrypt_secret, encrypt_secret
from controlplane.env import env_int
from controlplane.fleet import services as fleet_services
from controlplane.fleet.models import Node, address_in_network
from controlplane.tenancy.actors import Actor
from controlplane.tenancy.permissions import require
from gateway import contract
from workers import protocol

log = logging.getLogger(__name__)
SECRET_PREFIX = "sapn_"
REPORTER = Actor.system("fleet-reconciler")

# Why a report was refused (the audit event's reason).
UNSIGNED = "unsigned"
BAD_SIGNATURE = "bad_signature"
WRONG_NODE = "wrong_node"
UNKNOWN_NODE = "unknown_node"
NO_CREDENTIAL = "no_credential"
ADDRESS_CHANGED = "address_changed"
REASONS = {
    UNSIGNED: "the report is not signed",
    BAD_SIGNATURE: "the signature does not verify with the node's credential",
    WRONG_NODE: "the report names another node than the one that signed it",
    UNKNOWN_NODE: "no node of that name is registered",
    NO_CREDENTIAL: "the node has no credential (rotate it to issue one)",
    ADDRESS_CHANGED: "the report's address is not the node's registered address "
    "(nor inside its registered address network)",
}
#: Refusals of unknown names share one audit bucket: their names are the sender's choice.
_UNKNOWN_BUCKET = "(unknown)"


def audit_interval() -> int:
    return env_int("FLEET_REFUSED_REPORT_AUDIT_SECONDS", 300, minimum=1)


def _issue(node: Node) -> str:
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    node.credential_encrypted = encrypt_secret(secret)
    node.credential_issued_at = timezone.now()
    node.save(update_fields=["credential_encrypted", "credential_issued_at"])
    return secret


def node_secret(node: Node) -> str | None:
    return decrypt_secret(node.credential_encrypted)


def write_secret_file(path: Path, secret: str) -> None:
    """Write a node secret to a file only its owner can read (AGENT_NODE_SECRET_FILE)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    os.chmod(path, 0o600)


@transaction.atomic
def register_node(
    *,
    actor: Actor,
    name: str,
    pool,
    address: str,
    labels: dict | None = None,
    address_network: str = "",
) -> tuple[Node, str]:
    """Register a node and issue its credential; returns (node, secret). The secret is
    shown to the caller once: only an encrypted copy is kept."""
    require(actor, "fleet.manage")
    if not address:
        raise ValidationError(
            {"address": "A node is registered with the address the gateway reaches it at."}
        )
    fields = {"name": name, "pool": pool, "address": address}
    if address_network:
        fields["address_network"] = address_network
    if labels is not None:
        fields["labels"] = labels
    node = fleet_services.create_node(actor=actor, **fields)
    secret = _issue(node)
    record_event(
        actor=actor,
        action="node.credential_issue",
        target=node,
        changes={"credential_issued_at": [None, node.credential_issued_at.isoformat()]},
    )
    return node, secret


@transaction.atomic
def rotate_node_credential(*, actor: Actor, node: Node) -> str:
    """A new secret for the node; the old one stops working at once (the agent needs
    the new one to be heard again)."""
    require(actor, "fleet.manage")
    node = Node.objects.select_for_update().get(pk=node.pk)
    before = node.credential_issued_at.isoformat() if node.credential_issued_at else None
    secret = _issue(node)
    record_event(
        actor=actor,
        action="node.credential_rotate",
        target=node,
        changes={"credential_issued_at": [before, node.credential_issued_at.isoformat()]},
    )
    return secret


def check_report(report: dict, node: Node | None) -> tuple[str | None, Node | None]:
    """Why the (shape-checked) report must be refused, or None; and the node to charge
    the refusal to. ``node`` is the node the report names, locked by the caller."""
    signer_name = report.get("signed_by")
    if not isinstance(signer_name, str) or not isinstance(report.get("signature"), str):
        return UNSIGNED, node
    signer = node if node is not None and signer_name == node.name else None
    if signer is None:
        signer = Node.objects.filter(name=signer_name).first()
    if signer is None:
        return UNKNOWN_NODE, None
    secret = node_secret(signer)
    if secret is None:
        return NO_CREDENTIAL, signer
    if not protocol.signature_valid(report, secret):
        return BAD_SIGNATURE, signer
    if node is None or signer.pk != node.pk:
        return WRONG_NODE, signer
    if report["address"] != node.address and not address_in_network(
        report["address"], node.address_network
    ):
        return ADDRESS_CHANGED, node
    return None, node


def refuse_report(report: dict, reason: str, node: Node | None) -> None:
    """Count and (rate-limited) audit one refused report, inside the caller's
    transaction; nothing else about the node changes."""
    claimed = str(report.get("node", ""))[:64]
    log.warning(
        "node report refused (%s): node %r, signed by %r: %s",
        reason,
        claimed,
        str(report.get("signed_by", ""))[:64],
        REASONS[reason],
    )
    if node is not None:
        Node.objects.filter(pk=node.pk).update(refused_reports=F("refused_reports") + 1)
    bucket = node.name if node is not None else _UNKNOWN_BUCKET
    if not _first_in_window(bucket, reason):
        return
    changes = {
        "reason": [None, reason],
        "node": [None, claimed],
        "signed_by": [None, str(report.get("signed_by", ""))[:64]],
    }
    if reason == ADDRESS_CHANGED:
        changes["address"] = [node.address, str(report.get("address", ""))[:255]]
    record_event(
        actor=REPORTER,
        action="fleet.node.report_refused",
        target=node,
        target_type=None if node is not None else "node",
        target_id=None if node is not None else claimed,
        target_repr=None if node is not None else claimed,
        changes=changes,
    )


def _first_in_window(bucket: str, reason: str) -> bool:
    """True for the first refusal of (bucket, reason) in the audit window."""
    from controlplane.redis import get_redis

    key = f"{contract.KEY_PREFIX}fleet:refusal-audited:{bucket}:{reason}"
    try:
        return bool(get_redis().set(key, "1", nx=True, ex=audit_interval()))
    except Exception:  # no Redis: audit every refusal rather than none
        log.exception("could not rate-limit the audit of refused reports")
        return True
