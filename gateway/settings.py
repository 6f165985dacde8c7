"""Gateway settings, read once from environment variables.

Every helper fails at start-up with the variable's name and the reason, so a typo in
a deployment never turns into a surprising default at request time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Literal

from gateway.netguard import NetGuard, UnsafeURL

LimitsFailMode = Literal["closed", "open"]
RoutingStrategy = Literal["cache-aware", "least-outstanding", "affinity"]
ROUTING_STRATEGIES = ("cache-aware", "least-outstanding", "affinity")


class SettingsError(ValueError):
    """A configuration value is missing or malformed."""


def _raw(env: dict[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def env_str(env: dict[str, str], name: str, default: str) -> str:
    return _raw(env, name) or default


def env_int(env: dict[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise SettingsError(f"{name}: expected an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: must be at least {minimum}, got {value}")
    return value


def env_float(env: dict[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: must be at least {minimum}, got {value}")
    return value


def env_bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = _raw(env, name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}: expected true/false, got {raw!r}")


def env_choice(env: dict[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = _raw(env, name)
    if raw is None:
        return default
    if raw not in choices:
        raise SettingsError(f"{name}: expected one of {', '.join(choices)}, got {raw!r}")
    return raw


def env_list(env: dict[str, str], name: str) -> tuple[str, ...]:
    raw = _raw(env, name)
    if raw is None:
        return ()
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def env_secret_bytes(env: dict[str, str], name: str) -> bytes | None:
    """``NAME`` or the content of the file named by ``NAME_FILE`` (mounted secrets)."""
    raw = _raw(env, name)
    path = _raw(env, name + "_FILE")
    if raw is not None and path is not None:
        raise SettingsError(f"set {name} or {name}_FILE, not both")
    if path is not None:
        try:
            with open(path, "rb") as handle:
                data = handle.read().strip()
        except OSError as exc:
            raise SettingsError(f"{name}_FILE: cannot read {path!r}: {exc.strerror}") from None
        if not data:
            raise SettingsError(f"{name}_FILE: {path!r} is empty")
        return data
    return raw.encode() if raw is not None else None


@dataclass(frozen=True)
class Settings:
    #: Pepper of the keyed API-key hash (``contract.hash_api_key_secret``). Required.
    api_key_pepper: bytes
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Seconds a Redis command may take before the gateway treats Redis as down.
    redis_timeout: float = 0.5
    redis_max_connections: int = 256
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    log_level: str = "info"
    access_log: bool = True

    max_body_bytes: int = 4 * 1024 * 1024
    #: Upper bound on ``max_tokens`` whatever the limits say; also the reservation for
    #: a request that omits ``max_tokens`` (further bounded by the model's context).
    max_tokens_cap: int = 32768
    default_max_tokens: int = 4096
    max_n: int = 8
    max_embedding_inputs: int = 2048
    #: Characters per token assumed when estimating prompt tokens before the upstream
    #: has counted them (lower = more conservative reservation).
    chars_per_token: float = 3.0

    limits_fail_mode: LimitsFailMode = "closed"
    #: Share of each limit one process allows on its own while Redis is unreachable and
    #: the organization fails open (about 1 / the number of gateway processes).
    fail_open_share: float = 0.25
    #: Seconds after which a concurrency slot of a vanished gateway frees itself.
    concurrency_slot_ttl: float = 900.0

    connect_timeout: float = 5.0
    first_byte_timeout: float = 120.0
    idle_timeout: float = 60.0
    #: Attempts on distinct routes for one request (connect errors, 5xx before any byte).
    max_attempts: int = 3
    eject_after_failures: int = 3
    eject_seconds: float = 10.0
    upstream_pool_size: int = 256
    #: Hosts, addresses or CIDR networks external upstreams may resolve to although
    #: they are internal (the control plane's ``ALLOWED_INTERNAL_HOSTS``).
    allowed_internal_hosts: tuple[str, ...] = ()
    #: Seconds a client has to send its whole request body (408 after).
    body_timeout: float = 30.0
    #: Seconds a write to a client may stay blocked (a client that stopped reading)
    #: before the gateway drops the connection.
    write_timeout: float = 30.0
    #: Seconds an idle client connection stays open for its next request. Longer than
    #: the idle timeout of the load balancers usually in front (60 s), so the gateway
    #: never closes a connection a balancer is about to reuse (uvicorn's own default,
    #: 5 s, turns such races into 502s at the balancer).
    keep_alive_timeout: int = 75

    routing: RoutingStrategy = "cache-aware"
    #: Cache-aware routing: a route may hold at most ``ceil((1 + load_bound) x mean)``
    #: requests in flight while another route has room.
    load_bound: float = 0.25
    #: Characters per prompt block hashed for the prefix index (about 16 tokens x 4).
    prefix_block_chars: int = 64
    prefix_max_blocks: int = 256
    #: Blocks the prefix index remembers (least recently used forgotten first).
    prefix_index_blocks: int = 200_000
    #: Seconds between two exchanges of in-flight counts with the other gateway
    #: processes through Redis (0: no sharing, this process's view only).
    load_share_interval: float = 0.2
    #: Requests held per model while its autoscaled deployment starts a replica, and
    #: seconds each may wait (503 with Retry-After past either).
    cold_start_queue: int = 100
    cold_start_timeout: float = 300.0
    affinity_models: tuple[str, ...] = ()
    affinity_prefix_chars: int = 512
    #: Rewrite ``model`` in non-streamed responses back to the public alias.
    rewrite_response_model: bool = True

    snapshot_poll_interval: float = 1.0
    usage_stream_maxlen: int = 1_000_000
    usage_buffer_max: int = 100_000
    #: Directory of the settle journal files (one per process); empty: memory only.
    journal_dir: str = ""
    accept_client_request_id: bool = False

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        pepper = env_secret_bytes(env, "API_KEY_PEPPER")
        if pepper is None:
            raise SettingsError("API_KEY_PEPPER (or API_KEY_PEPPER_FILE) is required")
        redis_url = _raw(env, "GATEWAY_REDIS_URL") or _raw(env, "REDIS_URL") or cls.redis_url
        if not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(
                f"GATEWAY_REDIS_URL/REDIS_URL: expected redis://, rediss:// or unix://, "
                f"got {redis_url!r}"
            )
        fail_mode = env_choice(env, "GATEWAY_LIMITS_FAIL_MODE", "closed", ("closed", "open"))
        settings = cls(
            api_key_pepper=pepper,
            redis_url=redis_url,
            redis_timeout=env_float(env, "GATEWAY_REDIS_TIMEOUT", 0.5, minimum=0.01),
            redis_max_connections=env_int(
                env, "GATEWAY_REDIS_MAX_CONNECTIONS", cls.redis_max_connections, minimum=2
            ),
            host=env_str(env, "GATEWAY_HOST", cls.host),
            port=env_int(env, "GATEWAY_PORT", cls.port, minimum=0),
            workers=env_int(env, "GATEWAY_WORKERS", cls.workers, minimum=1),
            log_level=env_choice(
                env, "GATEWAY_LOG_LEVEL", "info", ("debug", "info", "warning", "error")
            ),
            access_log=env_bool(env, "GATEWAY_ACCESS_LOG", True),
            max_body_bytes=env_int(env, "GATEWAY_MAX_BODY_BYTES", cls.max_body_bytes, minimum=1),
            max_tokens_cap=env_int(env, "GATEWAY_MAX_TOKENS_CAP", cls.max_tokens_cap, minimum=1),
            default_max_tokens=env_int(
                env, "GATEWAY_DEFAULT_MAX_TOKENS", cls.default_max_tokens, minimum=1
            ),
            max_n=env_int(env, "GATEWAY_MAX_N", cls.max_n, minimum=1),
            max_embedding_inputs=env_int(
                env, "GATEWAY_MAX_EMBEDDING_INPUTS", cls.max_embedding_inputs, minimum=1
            ),
            chars_per_token=env_float(
                env, "GATEWAY_CHARS_PER_TOKEN", cls.chars_per_token, minimum=0.5
            ),
            limits_fail_mode=fail_mode,  # type: ignore[arg-type]
            fail_open_share=env_float(
                env, "GATEWAY_FAIL_OPEN_SHARE", cls.fail_open_share, minimum=0.001
            ),
            concurrency_slot_ttl=env_float(
                env, "GATEWAY_CONCURRENCY_SLOT_TTL", cls.concurrency_slot_ttl, minimum=1.0
            ),
            connect_timeout=env_float(
                env, "GATEWAY_CONNECT_TIMEOUT", cls.connect_timeout, minimum=0.001
            ),
            first_byte_timeout=env_float(
                env, "GATEWAY_FIRST_BYTE_TIMEOUT", cls.first_byte_timeout, minimum=0.001
            ),
            idle_timeout=env_float(env, "GATEWAY_IDLE_TIMEOUT", cls.idle_timeout, minimum=0.001),
            max_attempts=env_int(env, "GATEWAY_MAX_ATTEMPTS", cls.max_attempts, minimum=1),
            eject_after_failures=env_int(
                env, "GATEWAY_EJECT_AFTER_FAILURES", cls.eject_after_failures, minimum=1
            ),
            eject_seconds=env_float(env, "GATEWAY_EJECT_SECONDS", cls.eject_seconds),
            upstream_pool_size=env_int(
                env, "GATEWAY_UPSTREAM_POOL_SIZE", cls.upstream_pool_size, minimum=1
            ),
            allowed_internal_hosts=env_list(env, "ALLOWED_INTERNAL_HOSTS"),
            body_timeout=env_float(
                env, "GATEWAY_BODY_TIMEOUT_SECONDS", cls.body_timeout, minimum=0.01
            ),
            write_timeout=env_float(
                env, "GATEWAY_WRITE_TIMEOUT_SECONDS", cls.write_timeout, minimum=0.01
            ),
            keep_alive_timeout=env_int(
                env, "GATEWAY_KEEP_ALIVE_SECONDS", cls.keep_alive_timeout, minimum=1
            ),
            routing=env_choice(  # type: ignore[arg-type]
                env, "GATEWAY_ROUTING", "cache-aware", ROUTING_STRATEGIES
            ),
            load_bound=env_float(env, "GATEWAY_ROUTING_LOAD_BOUND", cls.load_bound),
            prefix_block_chars=env_int(
                env, "GATEWAY_PREFIX_BLOCK_CHARS", cls.prefix_block_chars, minimum=8
            ),
            prefix_max_blocks=env_int(
                env, "GATEWAY_PREFIX_MAX_BLOCKS", cls.prefix_max_blocks, minimum=1
            ),
            prefix_index_blocks=env_int(
                env, "GATEWAY_PREFIX_INDEX_BLOCKS", cls.prefix_index_blocks, minimum=1
            ),
            cold_start_queue=env_int(
                env, "GATEWAY_COLD_START_QUEUE", cls.cold_start_queue, minimum=0
            ),
            cold_start_timeout=env_float(
                env, "GATEWAY_COLD_START_TIMEOUT", cls.cold_start_timeout, minimum=0.0
            ),
            load_share_interval=env_float(
                env, "GATEWAY_LOAD_SHARE_INTERVAL", cls.load_share_interval
            ),
            affinity_models=env_list(env, "GATEWAY_AFFINITY_MODELS"),
            affinity_prefix_chars=env_int(
                env, "GATEWAY_AFFINITY_PREFIX_CHARS", cls.affinity_prefix_chars, minimum=1
            ),
            rewrite_response_model=env_bool(env, "GATEWAY_REWRITE_RESPONSE_MODEL", True),
            snapshot_poll_interval=env_float(
                env, "GATEWAY_SNAPSHOT_POLL_INTERVAL", cls.snapshot_poll_interval, minimum=0.05
            ),
            usage_stream_maxlen=env_int(
                env, "GATEWAY_USAGE_STREAM_MAXLEN", cls.usage_stream_maxlen, minimum=1000
            ),
            usage_buffer_max=env_int(
                env, "GATEWAY_USAGE_BUFFER_MAX", cls.usage_buffer_max, minimum=1
            ),
            journal_dir=env.get("GATEWAY_JOURNAL_DIR", ""),
            accept_client_request_id=env_bool(env, "GATEWAY_ACCEPT_CLIENT_REQUEST_ID", False),
        )
        if settings.concurrency_slot_ttl <= max(settings.first_byte_timeout, settings.idle_timeout):
            raise SettingsError(
                "GATEWAY_CONCURRENCY_SLOT_TTL must exceed GATEWAY_FIRST_BYTE_TIMEOUT and "
                "GATEWAY_IDLE_TIMEOUT, or a slot could lapse while its request waits"
            )
        try:
            NetGuard(settings.allowed_internal_hosts)
        except UnsafeURL as exc:
            raise SettingsError(str(exc)) from None
        if settings.default_max_tokens > settings.max_tokens_cap:
            raise SettingsError("GATEWAY_DEFAULT_MAX_TOKENS must not exceed GATEWAY_MAX_TOKENS_CAP")
        return settings

    def with_overrides(self, **changes: object) -> Settings:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise SettingsError(f"unknown settings: {', '.join(sorted(unknown))}")
        return replace(self, **changes)  # type: ignore[arg-type]
