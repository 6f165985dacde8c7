"""The node agent's settings, read once from environment variables at start.

Every value goes through a small typed helper; all problems are collected and raised
together as one `SettingsError`, so a misconfigured agent stops at start with a message
that names each bad variable instead of failing later with a traceback.

Secrets (the broker URL carries the Redis password; the node secret signs the reports)
may also come from a mounted file: `AGENT_BROKER_URL_FILE`, `AGENT_NODE_SECRET_FILE`.
The agent holds broker credentials and its node secret only, never database ones.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from workers import protocol
from workers.engine import paths

T = TypeVar("T")

NODE_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,62})$")
BROKER_SCHEMES = ("redis", "rediss", "redis+socket")
# The control plane assigns replica ports from FLEET_PORT_MIN..FLEET_PORT_MAX, the same range.
DEFAULT_PORT_RANGE = (20000, 29999)


class SettingsError(ValueError):
    """One or more environment variables have bad values; the message lists them all."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid agent settings:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class AgentSettings:
    node_name: str
    pool: str
    labels: dict[str, str]
    address: str  # host the gateway reaches this node's replicas at
    bind_host: str  # interface the replicas listen on (their --host)
    port_range: tuple[int, int]  # inclusive; a replica spec outside it is refused
    engine_python: Path
    engine_command: tuple[str, ...] | None  # replaces `python -m vllm...api_server`
    model_cache_dir: Path
    state_dir: Path
    heartbeat_seconds: float
    broker_url: str = field(repr=False)
    node_secret: str = field(default="", repr=False)  # signs the node reports
    stop_replicas_on_exit: bool = False
    enforce_eager: bool = False
    cpu_kv_cache_gib: int = 1
    startup_timeout_seconds: float = 900.0
    health_interval_seconds: float = 5.0
    health_failures_before_restart: int = 3
    drain_grace_seconds: float = 2.0
    drain_timeout_seconds: float = 120.0
    stop_timeout_seconds: float = 30.0
    restart_backoff_initial_seconds: float = 2.0
    restart_backoff_max_seconds: float = 300.0
    backoff_reset_after_seconds: float = 600.0
    log_level: str = "INFO"
    http_port: int | None = None  # /healthz and /metrics of the agent itself; None: off
    http_host: str = "127.0.0.1"

    @property
    def queue(self) -> str:
        return protocol.agent_queue(self.node_name)

    @property
    def redacted_broker_url(self) -> str:
        return redact_url(self.broker_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AgentSettings:
        return _Reader(os.environ if environ is None else environ).settings()


def redact_url(url: str) -> str:
    """The URL with its password replaced by '***' (for logs and error messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def normalize_broker_url(url: str) -> str:
    """Accept `unix:///path/redis.sock` (redis-py's spelling) as Celery's `redis+socket://`."""
    if url.startswith("unix://"):
        return "redis+socket://" + url[len("unix://") :]
    return url


class _Reader:
    """Reads typed values from an environment and collects every problem it meets."""

    def __init__(self, environ: Mapping[str, str]):
        self.env = environ
        self.problems: list[str] = []

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def get(self, name: str, default: T, parse: Callable[[str], T]) -> T:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return parse(value)
        except ValueError as error:
            self.problems.append(f"{name}={value!r}: {error}")
            return default

    def number(self, name: str, default: float, *, minimum: float, maximum: float) -> float:
        def parse(text: str) -> float:
            number = float(text)
            if not minimum <= number <= maximum:
                raise ValueError(f"must be between {minimum:g} and {maximum:g}")
            return number

        return self.get(name, default, parse)

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        def parse(text: str) -> int:
            number = int(text)
            if not minimum <= number <= maximum:
                raise ValueError(f"must be between {minimum} and {maximum}")
            return number

        return self.get(name, default, parse)

    def boolean(self, name: str, default: bool) -> bool:
        def parse(text: str) -> bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("must be one of 1/0, true/false, yes/no, on/off")

        return self.get(name, default, parse)

    def secret(self, name: str) -> str | None:
        """`NAME`, or the contents of the file named by `NAME_FILE`."""
        file_name = self.raw(f"{name}_FILE")
        if file_name is not None:
            try:
                return Path(file_name).read_text().strip() or None
            except OSError as error:
                self.problems.append(f"{name}_FILE={file_name!r}: cannot read it ({error})")
                return None
        return self.raw(name)

    def settings(self) -> AgentSettings:
        node_name = self.get("AGENT_NODE_NAME", _default_node_name(), _parse_node_name)
        pool = self.get("AGENT_POOL", "default", _parse_node_name)
        labels = self.get("AGENT_LABELS", {}, _parse_labels)
        address = self.get("AGENT_ADDRESS", "127.0.0.1", _parse_host)
        bind_host = self.get("AGENT_BIND_HOST", "127.0.0.1", _parse_host)
        port_range = self.get("AGENT_PORT_RANGE", DEFAULT_PORT_RANGE, _parse_port_range)
        engine_command = self.get("AGENT_ENGINE_COMMAND", None, _parse_command)
        engine_python = self.get("AGENT_ENGINE_PYTHON", paths.engine_python_path(), Path)
        if engine_command is None and not os.access(engine_python, os.X_OK):
            self.problems.append(
                f"AGENT_ENGINE_PYTHON={str(engine_python)!r}: not an executable file "
                "(install the engine with deploy/install-engine.sh, or set "
                "AGENT_ENGINE_PYTHON / AGENT_ENGINE_COMMAND)"
            )
        model_cache_dir = self.get(
            "AGENT_MODEL_CACHE_DIR", paths.REPO_ROOT / "data" / "models", _absolute_path
        )
        state_dir = self.get(
            "AGENT_STATE_DIR", paths.REPO_ROOT / "data" / "agent" / node_name, _absolute_path
        )
        self._check_state_dir(state_dir)
        heartbeat = self.number(
            "AGENT_HEARTBEAT_SECONDS",
            float(protocol.HEARTBEAT_SECONDS),
            minimum=0.1,
            maximum=protocol.NODE_LOST_AFTER_SECONDS / 3,
        )
        broker_url = self._broker_url()
        node_secret = self.secret("AGENT_NODE_SECRET")
        if node_secret is None:
            self.problems.append(
                "AGENT_NODE_SECRET (or AGENT_NODE_SECRET_FILE) is not set: the control plane "
                "refuses unsigned reports; register the node (manage.py register_node NAME "
                "--pool POOL --address ADDRESS) and give the agent the secret it prints"
            )
        initial_backoff = self.number(
            "AGENT_RESTART_BACKOFF_INITIAL_SECONDS", 2.0, minimum=0.05, maximum=3600
        )
        max_backoff = self.number(
            "AGENT_RESTART_BACKOFF_MAX_SECONDS", 300.0, minimum=0.05, maximum=86400
        )
        if max_backoff < initial_backoff:
            self.problems.append(
                "AGENT_RESTART_BACKOFF_MAX_SECONDS must not be below "
                "AGENT_RESTART_BACKOFF_INITIAL_SECONDS"
            )
        settings = AgentSettings(
            node_name=node_name,
            pool=pool,
            labels=labels,
            address=address,
            bind_host=bind_host,
            port_range=port_range,
            engine_python=engine_python,
            engine_command=engine_command,
            model_cache_dir=model_cache_dir,
            state_dir=state_dir,
            heartbeat_seconds=heartbeat,
            broker_url=broker_url,
            node_secret=node_secret or "",
            stop_replicas_on_exit=self.boolean("AGENT_STOP_REPLICAS_ON_EXIT", False),
            enforce_eager=self.boolean("AGENT_ENFORCE_EAGER", False),
            cpu_kv_cache_gib=self.integer("AGENT_CPU_KV_CACHE_GIB", 1, minimum=1, maximum=4096),
            startup_timeout_seconds=self.number(
                "AGENT_STARTUP_TIMEOUT_SECONDS", 900.0, minimum=1, maximum=86400
            ),
            health_interval_seconds=self.number(
                "AGENT_HEALTH_INTERVAL_SECONDS", 5.0, minimum=0.05, maximum=300
            ),
            health_failures_before_restart=self.integer(
                "AGENT_HEALTH_FAILURES_BEFORE_RESTART", 3, minimum=1, maximum=100
            ),
            drain_grace_seconds=self.number(
                "AGENT_DRAIN_GRACE_SECONDS", 2.0, minimum=0, maximum=600
            ),
            drain_timeout_seconds=self.number(
                "AGENT_DRAIN_TIMEOUT_SECONDS", 120.0, minimum=0, maximum=86400
            ),
            stop_timeout_seconds=self.number(
                "AGENT_STOP_TIMEOUT_SECONDS", 30.0, minimum=0.1, maximum=3600
            ),
            restart_backoff_initial_seconds=initial_backoff,
            restart_backoff_max_seconds=max_backoff,
            backoff_reset_after_seconds=self.number(
                "AGENT_BACKOFF_RESET_AFTER_SECONDS", 600.0, minimum=1, maximum=86400
            ),
            log_level=self.get("AGENT_LOG_LEVEL", "INFO", _parse_log_level),
            http_port=self.get("AGENT_HTTP_PORT", None, _parse_port),
            http_host=self.get("AGENT_HTTP_HOST", "127.0.0.1", _parse_host),
        )
        if settings.http_port is not None and (
            port_range[0] <= settings.http_port <= port_range[1]
        ):
            self.problems.append(
                f"AGENT_HTTP_PORT={settings.http_port}: inside AGENT_PORT_RANGE, where "
                "replicas listen"
            )
        if self.problems:
            raise SettingsError(self.problems)
        return settings

    def _broker_url(self) -> str:
        url = self.secret("AGENT_BROKER_URL") or self.secret("REDIS_URL")
        if url is None:
            self.problems.append(
                "AGENT_BROKER_URL (or REDIS_URL) is not set: the agent needs the broker "
                "(e.g. redis://:password@redis-host:6379/0 or redis+socket:///run/redis.sock)"
            )
            return ""
        url = normalize_broker_url(url)
        scheme = urlsplit(url).scheme
        if scheme not in BROKER_SCHEMES:
            self.problems.append(
                f"AGENT_BROKER_URL={redact_url(url)!r}: scheme {scheme!r} is not one of "
                f"{', '.join(BROKER_SCHEMES)}"
            )
        return url

    def _check_state_dir(self, state_dir: Path) -> None:
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as error:
            self.problems.append(f"AGENT_STATE_DIR={str(state_dir)!r}: cannot create it ({error})")
            return
        if not os.access(state_dir, os.W_OK):
            self.problems.append(f"AGENT_STATE_DIR={str(state_dir)!r}: not writable")


def _default_node_name() -> str:
    name = socket.gethostname().split(".")[0].lower()
    return name if NODE_NAME_RE.match(name) else "node"


def _parse_node_name(text: str) -> str:
    if not NODE_NAME_RE.match(text):
        raise ValueError(
            "must be 1-63 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return text


def _parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not LABEL_KEY_RE.match(key):
            raise ValueError(f"{item!r} is not key=value (keys: letters, digits, . _ / -)")
        if len(value) > 253:
            raise ValueError(f"the value of {key!r} is longer than 253 characters")
        labels[key] = value
    return labels


def _parse_host(text: str) -> str:
    if any(char.isspace() for char in text) or "/" in text or len(text) > 253:
        raise ValueError("must be a host name or IP address")
    return text


def _parse_port_range(text: str) -> tuple[int, int]:
    first, sep, last = text.partition("-")
    try:
        low, high = int(first), int(last if sep else first)
    except ValueError:
        raise ValueError("must be FIRST-LAST, e.g. 8100-8199") from None
    if not 1024 <= low <= high <= 65535:
        raise ValueError("ports must satisfy 1024 <= FIRST <= LAST <= 65535")
    return low, high


def _parse_port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError("must be a port number between 1 and 65535")
    return port


def _parse_command(text: str) -> tuple[str, ...]:
    command = tuple(shlex.split(text))
    if not command:
        raise ValueError("is empty")
    return command


def _absolute_path(text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else (paths.REPO_ROOT / path)


def _parse_log_level(text: str) -> str:
    level = text.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level
