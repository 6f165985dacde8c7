"""The supervisor: converges this node's replicas on the desired state it was sent.

It runs its own asyncio loop in its own thread, apart from the Celery worker that
receives desired states: `submit()` hands a state over from any thread and returns at
once; everything that touches replicas happens on the loop, so there are no locks.

Desired states are level-triggered: each one is the node's WHOLE desired state. One
with a lower generation than the one applied is ignored (a stale message never undoes
a newer one); the same generation again is applied again, which is harmless.

Convergence, per replica id:
- desired and unknown here: start it;
- desired with another spec_hash than the one running: drain and stop the old process,
  then start the new spec (same id, usually the same port, so strictly one after the
  other);
- running here but not desired: drain and stop it.

Adoption: on start, the replicas recorded in the state file whose process is still the
same process (pid, kernel start time, `--port` on its command line) are supervised
again without a restart. Until the first desired state names them they are reported
with their spec_hash; a desired state that does not name them (or names another
spec_hash) drains and stops them like any other replica.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import httpx

from workers import protocol
from workers.agent import processes
from workers.agent.replica import ReplicaRunner, RunnerContext
from workers.agent.settings import AgentSettings
from workers.agent.statefile import (
    PersistedReplica,
    PersistedState,
    StateFile,
    api_key_reference,
)
from workers.protocol import DesiredState, Inventory, ReplicaReport

log = logging.getLogger(__name__)


class DesiredStateError(ValueError):
    """A desired-state message that is not for this node or not well formed."""


def check_desired_state(message: object, node_name: str) -> DesiredState:
    if not isinstance(message, dict):
        raise DesiredStateError("desired state must be a JSON object")
    protocol_version = message.get("protocol")
    if protocol_version != protocol.PROTOCOL_VERSION:
        raise DesiredStateError(
            f"protocol {protocol_version!r} is not the agent's {protocol.PROTOCOL_VERSION}"
        )
    if message.get("node") != node_name:
        raise DesiredStateError(f"desired state for node {message.get('node')!r}, not this one")
    generation = message.get("generation")
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise DesiredStateError("generation must be a non-negative integer")
    replicas = message.get("replicas")
    if not isinstance(replicas, list) or not all(isinstance(r, dict) for r in replicas):
        raise DesiredStateError("replicas must be a list of objects")
    ids = [r.get("id") for r in replicas]
    if not all(isinstance(i, str) and i for i in ids) or len(set(ids)) != len(ids):
        raise DesiredStateError("each replica needs a unique, non-empty id")
    ports = [r.get("port") for r in replicas]
    if len(set(map(str, ports))) != len(ports):
        raise DesiredStateError("two replicas share a port")
    return message  # type: ignore[return-value]


class Supervisor:
    def __init__(
        self,
        settings: AgentSettings,
        *,
        inventory: Callable[[], Inventory],
        on_change: Callable[[], int] = lambda: 0,
        report_sent: Callable[[int], bool] = lambda ticket: True,
        base_env: dict[str, str] | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ):
        self.settings = settings
        self._on_fatal = on_fatal
        self._inventory = inventory
        self._on_change = on_change
        self._report_sent = report_sent
        self._base_env = base_env
        self.state_file = StateFile(settings.state_dir)
        self.generation_applied = -1
        self.runners: dict[str, ReplicaRunner] = {}  # the current runner per replica id
        self.retiring: set[ReplicaRunner] = set()  # draining or stopping, no longer desired
        # replica id -> (report ticket, its last report), until a report carried it
        self.recently_stopped: dict[str, tuple[int, ReplicaReport]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._ctx: RunnerContext | None = None
        self._startup_error: BaseException | None = None

    # -- thread-safe API -----------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        """Start the loop thread, adopt what survived a restart, and return."""
        self._thread = threading.Thread(target=self._run_loop, name="agent-supervisor", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the supervisor did not start in time")
        if self._startup_error is not None:
            raise RuntimeError("the supervisor failed to start") from self._startup_error

    def submit(self, desired_state: DesiredState) -> concurrent.futures.Future:
        """Queue a desired state for the loop; the future says whether it was applied."""
        assert self._loop is not None, "start() the supervisor first"
        return asyncio.run_coroutine_threadsafe(self._apply(desired_state), self._loop)

    def snapshot(self, timeout: float = 10) -> tuple[int, list[ReplicaReport]]:
        """(generation_applied, replica reports), read consistently on the loop."""
        if self._loop is None or not self._loop.is_running():
            return self._snapshot_now()
        future = asyncio.run_coroutine_threadsafe(self._snapshot(), self._loop)
        return future.result(timeout)

    def alive(self, timeout: float = 5) -> bool:
        """Whether the loop runs and answers within `timeout` (a liveness probe)."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return False

        async def noop() -> bool:
            return True

        try:
            return asyncio.run_coroutine_threadsafe(noop(), loop).result(timeout)
        except Exception:
            return False

    def stop(self, *, stop_replicas: bool, timeout: float | None = None) -> None:
        """Stop supervising. With `stop_replicas`, drain and stop every replica first;
        without, leave them running (recorded in the state file) for the next agent."""
        if self._loop is None or self._thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(stop_replicas), self._loop)
        future.result(timeout)
        self._thread.join(timeout=30)

    # -- the loop ----------------------------------------------------------------------------

    def _run_loop(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:
            log.exception("supervisor loop crashed")
            if not self._ready.is_set():  # surfaced by start()
                self._startup_error = error
                self._ready.set()
            elif self._on_fatal is not None:
                # Reporting a state nobody supervises would be a lie: stop the agent
                # (its service manager restarts it, and it re-adopts the replicas).
                self._on_fatal(error)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        async with httpx.AsyncClient(trust_env=False) as http:
            self._ctx = RunnerContext(
                settings=self.settings,
                http=http,
                inventory=self._inventory,
                on_change=self._on_change,
                report_sent=self._report_sent,
                persist=self._persist,
                base_env=self._base_env,
            )
            try:
                await self._adopt()
            except BaseException as error:
                self._startup_error = error
                self._ready.set()
                raise
            self._ready.set()
            await self._stopped.wait()

    async def _adopt(self) -> None:
        saved = self.state_file.load()
        self.generation_applied = saved.generation_applied
        assert self._ctx is not None
        for entry in saved.replicas.values():
            if processes.process_matches(entry.pid, entry.start_time, entry.port):
                runner = self._adopted_runner(entry)
                self.runners[runner.id] = runner
                runner.state = "ready" if await runner._healthy() else "starting"
                log.info(
                    "adopted replica %s (pid %s, port %s, %s)",
                    entry.id,
                    entry.pid,
                    entry.port,
                    runner.state,
                )
                runner.start()
            else:
                log.info("replica %s (pid %s) did not survive; forgetting it", entry.id, entry.pid)
                if processes.proc_start_time(entry.pid) is None:
                    # The leader is gone; an orphaned engine core may hold its group.
                    processes.signal_group(entry.pid, signal.SIGKILL)
        self._persist()
        self._on_change()

    def _adopted_runner(self, entry: PersistedReplica) -> ReplicaRunner:
        assert self._ctx is not None
        runner = ReplicaRunner(
            ctx=self._ctx,
            id=entry.id,
            spec_hash=entry.spec_hash,
            port=entry.port,
            spec=None,
            api_key_sha256=entry.api_key_sha256,
        )
        runner.process = processes.AdoptedProcess(entry.pid, entry.start_time)
        runner.log_path = Path(entry.log_path) if entry.log_path else None
        runner._started_once = True
        return runner

    async def _apply(self, desired_state: DesiredState) -> bool:
        desired_state = check_desired_state(desired_state, self.settings.node_name)
        generation = desired_state["generation"]
        if generation < self.generation_applied:
            log.info(
                "ignoring stale desired state generation %s (applied %s)",
                generation,
                self.generation_applied,
            )
            return False
        if self._stopped is not None and self._stopped.is_set():
            return False
        self.generation_applied = generation
        self._converge(desired_state["replicas"])
        self._persist()
        self._on_change()
        return True

    def _converge(self, specs: list) -> None:
        assert self._ctx is not None
        desired = {spec["id"]: spec for spec in specs}
        for replica_id, runner in list(self.runners.items()):
            spec = desired.get(replica_id)
            if (
                spec is None
                or runner.spec_hash != spec.get("spec_hash")
                or runner.api_key_sha256 != api_key_reference(str(spec.get("api_key", "")))
            ):
                self._retire(runner)
            elif runner.spec is None:
                runner.attach_spec(spec)
        for replica_id, spec in desired.items():
            if replica_id in self.runners:
                continue
            runner = ReplicaRunner.for_spec(self._ctx, spec)
            runner.predecessors = [
                old
                for old in self.retiring
                if (old.id == replica_id or old.port == runner.port) and not old.done.is_set()
            ]
            self.runners[replica_id] = runner
            runner.start()

    def _retire(self, runner: ReplicaRunner) -> None:
        del self.runners[runner.id]
        self.retiring.add(runner)

        async def retire_then_forget() -> None:
            try:
                await runner.retire(drain=True)
            finally:
                self.retiring.discard(runner)
                if runner.state == "stopped":
                    # Reported `stopped` in the next report that goes out, then left out.
                    self.recently_stopped[runner.id] = (self._on_change(), runner.report())
                else:
                    self._on_change()

        asyncio.get_running_loop().create_task(retire_then_forget(), name=f"retire-{runner.id}")

    async def _snapshot(self) -> tuple[int, list[ReplicaReport]]:
        return self._snapshot_now()

    def _snapshot_now(self) -> tuple[int, list[ReplicaReport]]:
        reports: dict[str, ReplicaReport] = {}
        for replica_id, (ticket, report) in list(self.recently_stopped.items()):
            if self._report_sent(ticket):
                del self.recently_stopped[replica_id]
            else:
                reports[replica_id] = report
        for runner in self.runners.values():
            reports[runner.id] = runner.report()
        for runner in self.retiring:
            # While the old process of a replica drains, it is the one the control plane
            # must see (its spec_hash, `draining`), not its successor waiting to start.
            if not runner.done.is_set():
                reports[runner.id] = runner.report()
        return self.generation_applied, [reports[key] for key in sorted(reports)]

    def _persist(self) -> None:
        entries: dict[str, PersistedReplica] = {}
        for runner in [*self.retiring, *self.runners.values()]:
            fields = runner.persisted_fields()
            if fields is not None:
                entries[runner.id] = PersistedReplica(**fields)
        try:
            self.state_file.save(PersistedState(self.generation_applied, entries))
        except OSError as error:
            log.error("cannot write the state file %s: %s", self.state_file.path, error)

    async def _shutdown(self, stop_replicas: bool) -> None:
        assert self._stopped is not None
        if stop_replicas:
            for runner in list(self.runners.values()):
                self._retire(runner)
            pending = [runner.done.wait() for runner in list(self.retiring)]
            await asyncio.gather(*pending)
        else:
            # Stop any drain in progress too, and leave every process where it is.
            for runner in [*self.runners.values(), *self.retiring]:
                await runner.detach()
        self._persist()
        self._stopped.set()
