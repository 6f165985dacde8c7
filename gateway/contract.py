"""The wire contract between the control plane and the gateway.

Both planes import this module and nothing else of each other: the control plane
publishes a snapshot in this shape and reads usage events in this shape; the
gateway does the reverse. It must stay free of Django and of any I/O library.

Changing a shape here is a protocol change: bump ``SNAPSHOT_SCHEMA`` or
``USAGE_SCHEMA`` and keep readers tolerant of the previous version for one release.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

# --------------------------------------------------------------------------- Redis names
#: Every Redis key this platform writes starts with this prefix, so a shared Redis
#: can be inspected (and flushed in tests) without touching anything else.
KEY_PREFIX = "sap:"
#: The full snapshot, one JSON document (see ``Snapshot``).
SNAPSHOT_KEY = KEY_PREFIX + "snapshot"
#: The version of the snapshot at ``SNAPSHOT_KEY`` (the publisher's compare-and-set).
SNAPSHOT_VERSION_KEY = SNAPSHOT_KEY + ":version"
#: The publisher's current epoch (see ``Snapshot.epoch``).
SNAPSHOT_EPOCH_KEY = SNAPSHOT_KEY + ":epoch"
#: Pub/sub channel; the message is the new snapshot's version as a decimal string.
SNAPSHOT_CHANNEL = KEY_PREFIX + "snapshot:changed"
#: Redis stream of usage events (one field ``event`` holding the JSON of ``UsageEvent``).
USAGE_STREAM = KEY_PREFIX + "usage"
#: Consumer group that writes usage events into the control plane's ledger.
USAGE_GROUP = "ledger"
#: Prefix of the gateway's limit counters (rate windows, budgets, concurrency slots).
LIMITS_PREFIX = KEY_PREFIX + "lim:"
#: Set (to a fresh epoch id) once the day and month counters were seeded from the usage
#: ledger in this Redis. Missing (a Redis that restarted empty): budgets cannot be checked
#: and the counters are not written until the ledger consumer seeds them again.
LIMITS_SEEDED_KEY = LIMITS_PREFIX + "seeded"
#: Liveness of background services that have no HTTP endpoint: the value is the unix
#: time of the service's last loop, the key expires when it stops (``HEARTBEAT_TTL``).
#: + a model alias: when a gateway last held a request for it for lack of a replica
#: (a Unix time); the autoscaler reads it to scale a deployment up from zero.
DEMAND_PREFIX = KEY_PREFIX + "demand:"
#: + a gateway process's instance id: its requests in flight per route (a hash).
INFLIGHT_PREFIX = KEY_PREFIX + "gw:inflight:"
#: The gateway processes exchanging in-flight counts (a sorted set, scored by time).
INFLIGHT_PROCESSES = KEY_PREFIX + "gw:inflight-processes"
HEARTBEAT_PREFIX = KEY_PREFIX + "heartbeat:"
HEARTBEAT_BEAT = HEARTBEAT_PREFIX + "beat"  # Celery beat's scheduler
HEARTBEAT_LEDGER = HEARTBEAT_PREFIX + "ledger:"  # + the consumer's name
HEARTBEAT_TTL = 60

SNAPSHOT_SCHEMA = 1
USAGE_SCHEMA = 1

# --------------------------------------------------------------------------- API keys
#: Visible part of every key: ``sk-<prefix>.<secret>``.
KEY_FORMAT_PREFIX = "sk-"
PREFIX_LENGTH = 12  # characters of [a-z0-9] used to look a key up
SECRET_BYTES = 32
_KEY_RE = re.compile(r"^sk-([a-z0-9]{12})\.([A-Za-z0-9_-]{20,128})$")

SCOPE_INFERENCE = "inference"
SCOPE_MANAGE = "manage"
SCOPES = (SCOPE_INFERENCE, SCOPE_MANAGE)


@dataclass(frozen=True)
class ParsedKey:
    prefix: str
    secret: str


def generate_api_key() -> tuple[str, str, str]:
    """Return ``(full_key, prefix, secret)`` for a new key. Show ``full_key`` once."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    prefix = "".join(secrets.choice(alphabet) for _ in range(PREFIX_LENGTH))
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return f"{KEY_FORMAT_PREFIX}{prefix}.{secret}", prefix, secret


def parse_api_key(raw: str | None) -> ParsedKey | None:
    """Split a presented key into prefix and secret; ``None`` if it is not one of ours."""
    if not raw:
        return None
    match = _KEY_RE.match(raw.strip())
    if not match:
        return None
    return ParsedKey(prefix=match.group(1), secret=match.group(2))


def hash_api_key_secret(secret: str, pepper: bytes) -> str:
    """Keyed hash of a key's secret (HMAC-SHA256, hex). The pepper never leaves the
    servers' configuration (``API_KEY_PEPPER``); the database and the snapshot hold
    only this digest."""
    return hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


def verify_api_key_secret(secret: str, stored_hash: str, pepper: bytes) -> bool:
    return hmac.compare_digest(hash_api_key_secret(secret, pepper), stored_hash)


# --------------------------------------------------------------------------- snapshot
class Limits(TypedDict, total=False):
    """Limits of one subject (key, team or organization); a missing or ``None``
    value means no limit at that level. The effective limit of a request is the
    tightest over its key, team and organization."""

    rpm: int | None  # requests per minute
    tpm: int | None  # tokens (prompt + completion) per minute
    concurrency: int | None  # requests in flight at once
    daily_tokens: int | None  # token budget per UTC day
    monthly_tokens: int | None  # token budget per UTC calendar month
    max_tokens: int | None  # cap on a request's max_tokens


LIMIT_FIELDS = ("rpm", "tpm", "concurrency", "daily_tokens", "monthly_tokens", "max_tokens")

#: Limits of a subject for one model alias, on top of its limits for all models:
#: ``{alias: Limits}``. Absent or empty: no per-model limits.
ModelLimits = dict[str, Limits]


class KeyEntry(TypedDict):
    id: str  # the key's id (uuid)
    hash: str  # hash_api_key_secret(secret)
    org: str  # organization id
    team: str | None  # team id
    user: str | None  # user id
    scopes: list[str]
    models: list[str]  # allowed model aliases; empty = whatever the org may use
    expires_at: float | None  # unix time
    revoked: bool
    limits: Limits
    model_limits: NotRequired[ModelLimits]


class OrgEntry(TypedDict):
    slug: str
    models: list[str]  # aliases this organization may use (access list and policy applied)
    allow_external: bool  # may requests leave the house (open-access upstreams)
    log_prompts: bool  # keep prompts/completions in logs
    limits: Limits
    model_limits: NotRequired[ModelLimits]
    #: "closed" | "open": what the gateway does when it cannot reach its limit store;
    #: absent or None: the gateway's own setting.
    limits_fail_mode: NotRequired[str | None]


class TeamEntry(TypedDict):
    org: str
    limits: Limits
    model_limits: NotRequired[ModelLimits]


class Route(TypedDict):
    """One upstream of a model, and who may use it.

    Capacity belongs to its owner. ``owner`` is the id of the organization whose
    deployment runs the replica, or ``None`` for platform capacity (a platform
    deployment, or an upstream of the catalog). ``orgs`` lists the organization ids that
    may use the route, ``None`` meaning every organization allowed the model:

    * an organization's replica: ``owner=<org>``, ``orgs=[<org>]``;
    * a platform deployment shared with some organizations: ``owner=None``,
      ``orgs=[...]`` (``[]``: shared with nobody yet);
    * a platform deployment shared with all, or a catalog upstream (outside providers
      included): ``owner=None``, ``orgs=None``.

    A gateway uses a route for a request of organization O only if ``orgs`` is ``None``
    or contains O, and ``owner`` is ``None`` or O. It prefers O's own routes
    (``owner == O``) and uses the shared ones when none of its own is healthy. Both
    fields are optional for readers: a route without them (written before they
    existed) is platform capacity for every organization, as it was then.
    """

    id: str  # replica or upstream id; bounded set, safe as a metric label
    url: str  # base URL ending before /v1, e.g. http://10.0.0.5:8001
    api_key: str | None  # per-replica / per-upstream key sent upstream as Bearer
    model: str  # model name the upstream serves (``--served-model-name``)
    external: bool  # True for an outside provider (open-access class)
    owner: NotRequired[str | None]  # owning organization id; None = the platform
    orgs: NotRequired[list[str] | None]  # organization ids allowed; None = every one


class ModelEntry(TypedDict):
    task: Literal["chat", "completion", "embedding"]
    openness: Literal["open-source", "open-weights", "open-access"]
    context_length: int | None
    routes: list[Route]
    #: An autoscaled deployment serves the model: with no ready route, a gateway holds
    #: the request and signals demand (``DEMAND_PREFIX``) instead of answering 503.
    cold_start: NotRequired[bool]


class Snapshot(TypedDict):
    schema: int
    version: int  # strictly increasing within an epoch; never applied when older
    # The publisher starts a new epoch when Redis holds a version ahead of its database
    # (a restored backup, tampering); a gateway applies a snapshot of another epoch
    # whatever its version. Optional for readers: absent means "" (before epochs).
    epoch: NotRequired[str]
    generated_at: float  # unix time
    keys: dict[str, KeyEntry]  # by key prefix
    orgs: dict[str, OrgEntry]  # by organization id
    teams: dict[str, TeamEntry]  # by team id
    models: dict[str, ModelEntry]  # by public alias


def empty_snapshot() -> Snapshot:
    return {
        "schema": SNAPSHOT_SCHEMA,
        "version": 0,
        "epoch": "",  # next to the version: a gateway's poll peeks at both
        "generated_at": 0.0,
        "keys": {},
        "orgs": {},
        "teams": {},
        "models": {},
    }


# --------------------------------------------------------------------------- usage
class UsageEvent(TypedDict):
    schema: int
    request_id: str  # unique; the ledger's idempotency key
    ts: float  # unix time the request arrived
    org: str
    team: str | None
    key: str  # key id
    user: str | None
    model: str  # public alias
    endpoint: str  # "chat.completions" | "completions" | "embeddings"
    replica: str | None  # Route.id that served it, if any
    #: ``Route.owner`` of the route that served it: the organization whose capacity
    #: served the request, ``None`` for platform capacity or when no route served it.
    #: Optional: events written before the field existed lack it (read as ``None``).
    owner: NotRequired[str | None]
    status: int  # HTTP status returned to the client
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    ttft_ms: float | None
    error: NotRequired[str | None]  # short machine code, e.g. "rate_limited"


def usage_event_fields(event: UsageEvent) -> dict[str, Any]:
    """The Redis stream fields for one usage event."""
    return {"event": json.dumps(event, separators=(",", ":"))}
