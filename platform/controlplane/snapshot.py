"""Build the gateway snapshot from the database and publish it to Redis.

Service functions call ``publish_on_commit()``; the snapshot is rebuilt and published
once per committed transaction. Its version is the audit log's head sequence number
at build time (every change the gateway cares about writes an audit event), and
Redis only takes a snapshot whose version is newer than the one it holds, so a slow
publisher can never roll the gateways back.
"""

from __future__ import annotations

import json
import logging
import time

import redis
from django.db import transaction

from gateway import contract

log = logging.getLogger(__name__)

# Sets the snapshot only if it is newer; returns 1 when applied.
_PUBLISH_SCRIPT = """
local current = redis.call('GET', KEYS[2])
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('PUBLISH', KEYS[3], ARGV[1])
return 1
"""
SNAPSHOT_VERSION_KEY = contract.SNAPSHOT_KEY + ":version"


def _limits(policy) -> contract.Limits:
    if policy is None:
        return {}
    return {k: v for k, v in policy.as_dict().items() if v is not None}  # type: ignore[return-value]


@transaction.atomic
def build_snapshot() -> contract.Snapshot:
    from controlplane.audit.models import AuditEvent
    from controlplane.catalog.models import Model
    from controlplane.catalog.services import routes_by_alias, usable_aliases_by_org
    from controlplane.fleet.services import replica_routes
    from controlplane.quotas.models import LimitPolicy
    from controlplane.tenancy.models import ApiKey, Organization, Team

    # Read the version first: whatever is read after it is at least that new.
    head = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
    policies = list(LimitPolicy.objects.all())
    org_limits = {p.organization_id: p for p in policies if p.subject == "organization"}
    team_limits = {p.team_id: p for p in policies if p.subject == "team"}
    key_limits = {p.api_key_id: p for p in policies if p.subject == "key"}
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
        }
    for team in Team.objects.all():
        snapshot["teams"][str(team.pk)] = {
            "org": str(team.organization_id),
            "limits": _limits(team_limits.get(team.pk)),
        }
    for key in ApiKey.objects.filter(revoked_at=None):
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
        }
    routes = routes_by_alias()
    # Replicas the fleet runs enter the routes once READY (and leave when they are not).
    for alias, fleet_routes in replica_routes().items():
        routes[alias] = [*routes.get(alias, []), *fleet_routes]
    for model in Model.objects.prefetch_related("versions"):
        default = next((v for v in model.versions.all() if v.is_default), None)
        snapshot["models"][model.alias] = {
            "task": model.task,
            "openness": model.openness,
            "context_length": default.context_length if default else None,
            "routes": routes.get(model.alias, []),
        }
    return snapshot


def publish_snapshot(client: redis.Redis | None = None) -> bool:
    """Publish the current state; returns whether Redis took it (False if older)."""
    from controlplane.redis import get_redis

    snapshot = build_snapshot()
    client = client or get_redis()
    applied = client.eval(
        _PUBLISH_SCRIPT,
        3,
        contract.SNAPSHOT_KEY,
        SNAPSHOT_VERSION_KEY,
        contract.SNAPSHOT_CHANNEL,
        snapshot["version"],
        json.dumps(snapshot, separators=(",", ":")),
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
