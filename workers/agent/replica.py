"""One replica's life on this node, as an asyncio task on the supervisor's loop.

    pending ──spawn──▶ starting ──/health 200──▶ ready ──(left desired state or
       ▲                  │                        │      spec_hash changed)──▶ draining
       │          exit / startup timeout     exit / health fails               │
       │                  ▼                        ▼                     in-flight = 0
       └──back-off──── failed ◀───────────────────┘                   or drain timeout
                                                                                ▼
                                                        SIGTERM ─(stop timeout)─ SIGKILL
                                                                                ▼
                                                                             stopped

A crashed replica is restarted after an exponential back-off (initial, doubled up to the
maximum, reset once it stayed ready for a while); `restarts` counts the restarts and
`last_error` keeps the end of what the process wrote before it died.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from workers.agent import processes
from workers.agent.engine import SpecError, build_launch
from workers.agent.metrics import MetricsParseError, parse_load
from workers.agent.settings import AgentSettings
from workers.agent.statefile import api_key_reference
from workers.protocol import Inventory, ReplicaLoad, ReplicaReport, ReplicaSpec, ReplicaState

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25  # how often a process is checked for having exited
HEALTH_TIMEOUT_SECONDS = 3.0
REPORT_FLUSH_TIMEOUT_SECONDS = 5.0


@dataclass
class RunnerContext:
    """What every replica runner shares with the supervisor."""

    settings: AgentSettings
    http: httpx.AsyncClient
    inventory: Callable[[], Inventory]
    on_change: Callable[[], int]  # returns a ticket for `report_sent`
    report_sent: Callable[[int], bool]
    persist: Callable[[], None]
    base_env: dict[str, str] | None = None

    @property
    def probe_host(self) -> str:
        host = self.settings.bind_host
        return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104


@dataclass(eq=False)  # compared and hashed by identity
class ReplicaRunner:
    ctx: RunnerContext
    id: str
    spec_hash: str
    port: int
    spec: ReplicaSpec | None  # None for an adopted replica until the desired state names it
    api_key_sha256: str
    state: ReplicaState = "pending"
    process: processes.EngineProcess | None = None
    restarts: int = 0
    last_error: str = ""
    load: ReplicaLoad = field(default_factory=dict)
    retiring: bool = False
    log_path: Path | None = None
    task: asyncio.Task | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    spec_known: asyncio.Event = field(default_factory=asyncio.Event)
    predecessors: list[ReplicaRunner] = field(default_factory=list)
    backoff_delays: list[float] = field(default_factory=list)  # waited before restarts
    _started_once: bool = False
    _log_offset: int = 0

    @classmethod
    def for_spec(cls, ctx: RunnerContext, spec: ReplicaSpec) -> ReplicaRunner:
        runner = cls(
            ctx=ctx,
            id=spec["id"],
            spec_hash=spec["spec_hash"],
            port=spec["port"],
            spec=spec,
            api_key_sha256=api_key_reference(spec["api_key"]),
        )
        runner.log_path = ctx.settings.state_dir / "logs" / f"{_safe_name(spec['id'])}.log"
        runner.spec_known.set()
        return runner

    # -- what the supervisor calls -----------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(
            self._supervise(), name=f"replica-{self.id}"
        )

    def attach_spec(self, spec: ReplicaSpec) -> None:
        """An adopted replica's spec arrived: from now on it can be restarted too."""
        self.spec = spec
        self.spec_known.set()

    async def retire(self, *, drain: bool = True) -> None:
        """Drain (when it serves), stop, and report `stopped`. Idempotent."""
        self.retiring = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        try:
            if self.process is not None and self.process.returncode() is None:
                if drain and self.state == "ready":
                    await self._drain()
                else:
                    self._set_state("draining")
                await self._stop_process()
            elif self.process is not None:
                await self._sweep_group()
            self.process = None
            self._set_state("stopped")
            self.ctx.persist()
        finally:
            self.done.set()

    async def detach(self) -> None:
        """Stop supervising but leave the process running (for adoption by a next agent)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.done.set()

    def report(self) -> ReplicaReport:
        return {
            "id": self.id,
            "spec_hash": self.spec_hash,
            "state": self.state,
            "port": self.port,
            "pid": self.process.pid if self.process is not None else None,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "load": dict(self.load),  # type: ignore[typeddict-item]
        }

    def persisted_fields(self) -> dict | None:
        """What the state file keeps about this replica, or None with no live process."""
        if self.process is None or self.process.returncode() is not None:
            return None
        start_time = processes.proc_start_time(self.process.pid)
        if start_time is None:
            return None
        return {
            "id": self.id,
            "pid": self.process.pid,
            "start_time": start_time,
            "port": self.port,
            "spec_hash": self.spec_hash,
            "api_key_sha256": self.api_key_sha256,
            "log_path": str(self.log_path or ""),
        }

    # -- the supervision loop ------------------------------------------------------------

    async def _supervise(self) -> None:
        settings = self.ctx.settings
        backoff = settings.restart_backoff_initial_seconds
        for predecessor in self.predecessors:
            await predecessor.done.wait()  # same id or port: it must let go first
        self.predecessors.clear()
        while True:
            if self.process is None:
                await self.spec_known.wait()
                error = await self._spawn()
                if error is not None:
                    await self._fail(error)
                    backoff = await self._back_off(backoff)
                    continue
            if self.state != "ready":
                error = await self._wait_until_healthy()
                if error is not None:
                    await self._fail(error)
                    backoff = await self._back_off(backoff)
                    continue
                self._set_state("ready")
            ready_since = time.monotonic()
            error = await self._monitor()
            if time.monotonic() - ready_since >= settings.backoff_reset_after_seconds:
                backoff = settings.restart_backoff_initial_seconds
            await self._fail(error)
            backoff = await self._back_off(backoff)

    async def _back_off(self, delay: float) -> float:
        """Wait `delay` before the next start; returns the delay after that one."""
        self.backoff_delays.append(delay)
        await asyncio.sleep(delay)
        return min(delay * 2, self.ctx.settings.restart_backoff_max_seconds)

    async def _spawn(self) -> str | None:
        """Start the engine; an error message when it cannot be started."""
        assert self.spec is not None
        try:
            plan = build_launch(
                self.spec, self.ctx.settings, self.ctx.inventory(), self.ctx.base_env
            )
        except SpecError as error:
            return str(error)
        if not _port_free(self.ctx.settings.bind_host, self.port):
            return f"port {self.port} is in use by another process on this node"
        if self.log_path is None:
            self.log_path = self.ctx.settings.state_dir / "logs" / f"{_safe_name(self.id)}.log"
        try:
            self.process = processes.spawn(plan.argv, plan.env, self.log_path)
        except OSError as error:
            return f"cannot start the engine ({plan.argv[0]}): {error}"
        self._log_offset = _file_size(self.log_path)
        if self._started_once:
            self.restarts += 1
        self._started_once = True
        self.load = {}
        log.info("replica %s: started pid %s on port %s", self.id, self.process.pid, self.port)
        self._set_state("starting")
        self.ctx.persist()
        return None

    async def _wait_until_healthy(self) -> str | None:
        settings = self.ctx.settings
        deadline = time.monotonic() + settings.startup_timeout_seconds
        while time.monotonic() < deadline:
            exit_error = self._exit_error()
            if exit_error is not None:
                return exit_error
            if await self._healthy():
                return None
            await asyncio.sleep(min(0.5, settings.health_interval_seconds))
        await self._stop_process()
        return (
            f"did not answer /health within {settings.startup_timeout_seconds:g} s "
            f"(stopped):\n{self._output_tail()}"
        ).strip()

    async def _monitor(self) -> str:
        """Watch a ready replica; returns why it stopped being ready."""
        settings = self.ctx.settings
        failures = 0
        next_probe = 0.0
        while True:
            exit_error = self._exit_error()
            if exit_error is not None:
                return exit_error
            if time.monotonic() >= next_probe:
                next_probe = time.monotonic() + settings.health_interval_seconds
                if await self._healthy():
                    failures = 0
                    await self._scrape_load()
                else:
                    failures += 1
                    if failures >= settings.health_failures_before_restart:
                        await self._stop_process()
                        return (
                            f"/health failed {failures} times in a row (restarted):\n"
                            f"{self._output_tail()}"
                        ).strip()
            await asyncio.sleep(POLL_SECONDS)

    async def _fail(self, error: str) -> None:
        self.last_error = error
        log.warning("replica %s failed: %s", self.id, error.splitlines()[0] if error else "")
        if self.process is not None:
            await self._sweep_group()
            self.process = None
            self.ctx.persist()
        self.load = {}
        self._set_state("failed", force_report=True)

    # -- draining and stopping -------------------------------------------------------------

    async def _drain(self) -> None:
        """Report `draining`, give routing time to react, wait for in-flight requests."""
        settings = self.ctx.settings
        ticket = self._set_state("draining", force_report=True)
        flush_deadline = time.monotonic() + REPORT_FLUSH_TIMEOUT_SECONDS
        while not self.ctx.report_sent(ticket) and time.monotonic() < flush_deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(settings.drain_grace_seconds)
        deadline = time.monotonic() + settings.drain_timeout_seconds
        while time.monotonic() < deadline:
            if self.process is None or self.process.returncode() is not None:
                return
            if await self._scrape_load():
                in_flight = self.load.get("num_requests_running", 0) + self.load.get(
                    "num_requests_waiting", 0
                )
                if in_flight == 0:
                    return
            await asyncio.sleep(0.25)
        log.warning(
            "replica %s: drain timeout (%g s) with requests still in flight",
            self.id,
            settings.drain_timeout_seconds,
        )

    async def _stop_process(self) -> None:
        """SIGTERM the server, SIGKILL its whole group after the stop timeout."""
        if self.process is None:
            return
        process = self.process
        process.terminate()
        deadline = time.monotonic() + self.ctx.settings.stop_timeout_seconds
        while process.returncode() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if process.returncode() is None:
            log.warning(
                "replica %s: pid %s ignored SIGTERM for %g s; killing its process group",
                self.id,
                process.pid,
                self.ctx.settings.stop_timeout_seconds,
            )
        await self._sweep_group()

    async def _sweep_group(self) -> None:
        """Whatever is left of the replica's process group (an engine core) is killed."""
        process = self.process
        if process is None:
            return
        if process.returncode() is not None:
            # Children usually follow their leader out by themselves; give them a moment.
            deadline = time.monotonic() + 2
            while process.group_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        if process.returncode() is None or process.group_alive():
            await asyncio.to_thread(process.kill_group)

    # -- probes ------------------------------------------------------------------------------

    async def _healthy(self) -> bool:
        try:
            response = await self.ctx.http.get(
                f"http://{self.ctx.probe_host}:{self.port}/health", timeout=HEALTH_TIMEOUT_SECONDS
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def _scrape_load(self) -> bool:
        try:
            response = await self.ctx.http.get(
                f"http://{self.ctx.probe_host}:{self.port}/metrics", timeout=HEALTH_TIMEOUT_SECONDS
            )
            response.raise_for_status()
            self.load = parse_load(response.text)
        except (httpx.HTTPError, MetricsParseError) as error:
            log.debug("replica %s: /metrics scrape failed: %s", self.id, error)
            return False
        return True

    def _exit_error(self) -> str | None:
        if self.process is None:
            return "no process"
        code = self.process.returncode()
        if code is None:
            return None
        how = f"exited with code {code}" if code >= 0 else f"killed by signal {-code}"
        if code == -1 and not hasattr(self.process, "popen"):
            how = "exited (adopted process, exit code unknown)"
        return f"{how}:\n{self._output_tail()}".strip()

    def _output_tail(self) -> str:
        if self.log_path is None:
            return ""
        return processes.error_tail(self.log_path, self._log_offset)

    def _set_state(self, state: ReplicaState, *, force_report: bool = False) -> int:
        if state == self.state and not force_report:
            return 0
        if state != self.state:
            log.info("replica %s: %s -> %s", self.id, self.state, state)
        self.state = state
        return self.ctx.on_change()


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host if host not in ("", "::") else "0.0.0.0", port))  # noqa: S104
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _safe_name(replica_id: str) -> str:
    return "".join(char if char.isalnum() or char in "-_." else "_" for char in replica_id)[:128]
