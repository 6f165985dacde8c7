"""Build the gateway snapshot from the database and publish it to Redis.

Service functions call ``publish_on_commit()``; the snapshot is rebuilt and published
once per committed transaction. Its version is the audit log's head sequence number
at build time (every change the gateway cares about writes an audit event), and
Redis only takes a snapshot whose version is newer than the one it holds, so a slow
publisher can never roll the gateways back.

A version in Redis ahead of the database's audit head (Redis restored from a backup
newer than the database's, or tampering) would refuse every later publish, revocations
included. The publisher detects it, logs an error and publishes under a new epoch
(``contract.SNAPSHOT_EPOCH_KEY``); gateways apply a snapshot of another epoch whatever
its version.
"""

from __future__ import annotations

import json
import logging
import secrets
import time

import redis
from django.db import transaction

from gateway import contract

log = logging.getLogger(__name__)

# Sets the snapshot only if it is newer, in the same epoch. Returns 1 when applied, 0
# when Redis holds a version as new or newer, -1 when another publisher started a new
# epoch meanwhile (build again). KEYS: snapshot, version, channel, epoch;
# ARGV: version, document, epoch the document was built for.
_PUBLISH_SCRIPT = """
if (redis.call('GET', KEYS[4]) or '') ~= ARGV[3] then return -1 end
local current = tonumber(redis.call('GET', KEYS[2]))
if current and current >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('PUBLISH', KEYS[3], ARGV[1])
return 1
"""
# Starts a new epoch, provided Redis still holds the version and epoch the publisher
# found ahead of the database. ARGV: version, document, new epoch, seen version, seen
# epoch. Returns 1 when applied.
_NEW_EPOCH_SCRIPT = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[4] then return 0 end
if (redis.call('GET', KEYS[4]) or '') ~= ARGV[5] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SET', KEYS[4], ARGV[3])
redis.call('PUBLISH', KEYS[3], ARGV[1])
return 1
"""
_KEYS = (
    contract.SNAPSHOT_KEY,
    contract.SNAPSHOT_VERSION_KEY,
    contract.SNAPSHOT_CHANNEL,
    contract.SNAPSHOT_EPOCH_KEY,
)
SNAPSHOT_VERSION_KEY = contract.SNAPSHOT_VERSION_KEY  # for existing importers


def _limits(policy) -> contract.Limits:
    if policy is None:
        return {}
    return {k: v for k, v in policy.as_dict().items() if v is not None}  # type: ignore[return-value]


def _usable_keys(ApiKey):
    """Unrevoked keys whose user is active and still a member of the key's organization
    (and, for a service key, whose maker still is, unless a platform administrator or the
    system made it). Leaving or deactivation revokes keys; this is the second lock."""
    from django.db.models import Exists, OuterRef, Q

    from controlplane.tenancy.models import Membership

    def member(field):
        return Exists(
            Membership.objects.filter(user=OuterRef(field), organization=OuterRef("organization"))
        )

    held = Q(user__isnull=False, user__is_active=True) & Q(member("user"))
    service = Q(user=None) & (
        Q(created_by=None)
        | Q(created_by__is_active=True, created_by__is_superuser=True)
        | (Q(created_by__is_active=True) & Q(member("created_by")))
    )
    return ApiKey.objects.filter(revoked_at=None).filter(held | service)


@transaction.atomic
def build_snapshot() -> contract.Snapshot:
    from controlplane.audit.models import AuditEvent
    from controlplane.catalog.models import Model
    from controlplane.catalog.services import routes_by_alias, usable_aliases_by_org
    from controlplane.fleet.services import autoscaled_aliases, replica_routes
    from controlplane.quotas.models import LimitPolicy
    from controlplane.tenancy.models import ApiKey, Organization, Team

    # Read the version first: whatever is read after it is at least that new.
    head = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
    policies = list(LimitPolicy.objects.all())
    general = [p for p in policies if not p.model]
    org_limits = {p.organization_id: p for p in general if p.subject == "organization"}
    team_limits = {p.team_id: p for p in general if p.subject == "team"}
    key_limits = {p.api_key_id: p for p in general if p.subject == "key"}
    # Limits for one model alias, per subject: {subject id: {alias: limits}}.
    per_model: dict[str, dict] = {"organization": {}, "team": {}, "key": {}}
    for p in policies:
        if p.model:
            subject_id = {"organization": p.organization_id, "team": p.team_id}.get(
                p.subject, p.api_key_id
            )
            per_model[p.subject].setdefault(subject_id, {})[p.model] = _limits(p)
    usable = usable_aliases_by_org()

    snapshot = contract.empty_snapshot()
    snapshot["version"] = head
    snapshot["generated_at"] = time.time()
    for org in Organization.objects.select_related("policy"):
        policy = getattr(org, "policy", None)
        snapshot["orgs"][str(org.pk)] = {
            "slug": org.slug,
            "models": sorted(usable.get(org.pk, ())),
            "allow_external": bool(policy and "open-access" in policy.allowed_openness),
            "log_prompts": org.log_prompts,
            "limits": _limits(org_limits.get(org.pk)),
            "model_limits": per_model["organization"].get(org.pk, {}),
            "limits_fail_mode": getattr(org_limits.get(org.pk), "fail_mode", "") or None,
        }
    for team in Team.objects.all():
        snapshot["teams"][str(team.pk)] = {
            "org": str(team.organization_id),
            "limits": _limits(team_limits.get(team.pk)),
            "model_limits": per_model["team"].get(team.pk, {}),
        }
    for key in _usable_keys(ApiKey):
        snapshot["keys"][key.prefix] = {
            "id": str(key.pk),
            "hash": key.secret_hash,
            "org": str(key.organization_id),
            "team": str(key.team_id) if key.team_id else None,
            "user": str(key.user_id) if key.user_id else None,
            "scopes": list(key.scopes),
            "models": list(key.allowed_models),
            "expires_at": key.expires_at.timestamp() if key.expires_at else None,
            "revoked": False,
            "limits": _limits(key_limits.get(key.pk)),
            "model_limits": per_model["key"].get(key.pk, {}),
        }
    routes = routes_by_alias()
    # Replicas the fleet runs enter the routes once READY (and leave when they are not).
    for alias, fleet_routes in replica_routes().items():
        routes[alias] = [*routes.get(alias, []), *fleet_routes]
    cold_start = autoscaled_aliases()
    for model in Model.objects.prefetch_related("versions"):
        default = next((v for v in model.versions.all() if v.is_default), None)
        snapshot["models"][model.alias] = {
            "task": model.task,
            "openness": model.openness,
            "context_length": default.context_length if default else None,
            "routes": routes.get(model.alias, []),
        }
        if model.alias in cold_start:
            snapshot["models"][model.alias]["cold_start"] = True
    return snapshot


def publish_snapshot(client: redis.Redis | None = None) -> bool:
    """Publish the current state; returns whether Redis took it (False if older)."""
    from controlplane.redis import get_redis

    client = client or get_redis()
    for _attempt in range(3):
        epoch = _text(client.get(contract.SNAPSHOT_EPOCH_KEY))
        snapshot = build_snapshot()
        snapshot["epoch"] = epoch
        applied = int(
            client.eval(
                _PUBLISH_SCRIPT, len(_KEYS), *_KEYS, snapshot["version"], _dump(snapshot), epoch
            )
        )
        if applied == 1:
            return True
        if applied == 0:
            return _new_epoch_if_ahead(client, snapshot, epoch)
        # -1: another publisher started an epoch since we read it; build again
    return False


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def _dump(snapshot: contract.Snapshot) -> str:
    return json.dumps(snapshot, separators=(",", ":"))


def _audit_head() -> int:
    from controlplane.audit.models import AuditEvent

    return AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0


def _new_epoch_if_ahead(client: redis.Redis, snapshot: contract.Snapshot, epoch: str) -> bool:
    """Redis refused the snapshot as not newer. If Redis's version is ahead of the
    database's audit head now (not merely a concurrent publisher's newer build), nothing
    would ever be published again: start a new epoch with this snapshot."""
    seen = _text(client.get(contract.SNAPSHOT_VERSION_KEY))
    try:
        held = int(seen)
    except ValueError:
        held = None
    head = _audit_head()
    if held is not None and held <= head:
        return False  # a publisher of a newer state of this database was first
    new_epoch = f"{int(time.time())}-{secrets.token_hex(4)}"
    log.error(
        "Redis holds gateway snapshot version %r, ahead of the database (audit head %d): "
        "Redis was restored from a newer backup or written by someone else. Publishing "
        "version %d under a new epoch %s.",
        seen,
        head,
        snapshot["version"],
        new_epoch,
    )
    snapshot["epoch"] = new_epoch
    applied = client.eval(
        _NEW_EPOCH_SCRIPT,
        len(_KEYS),
        *_KEYS,
        snapshot["version"],
        _dump(snapshot),
        new_epoch,
        seen,
        epoch,
    )
    return bool(applied)


def _publish_quietly() -> None:
    try:
        publish_snapshot()
    except Exception:  # a Redis outage must not fail a committed admin change
        log.exception("could not publish the gateway snapshot; the periodic task retries")


def publish_on_commit() -> None:
    """Publish once after the surrounding transaction commits."""
    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        _publish_quietly()
        return
    # Once per transaction: Django drops the queue on rollback, so nothing lingers.
    if any(func is _publish_quietly for _sids, func, *_ in connection.run_on_commit):
        return
    transaction.on_commit(_publish_quietly)
