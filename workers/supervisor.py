"""A small process supervisor for running the whole platform on one machine.

It starts services in order, waits until each is ready (an HTTP check or a check
function that asks the service itself: a health endpoint, a Celery ping, a heartbeat),
restarts one that crashes (with back-off), prints every state change with the service's
name, and on SIGINT/SIGTERM stops them all in reverse order: SIGTERM to each process
group, then SIGKILL after a grace period, so no child outlives it.

It is honest about failure: a service that cannot get ready in ``startup_attempts``
tries in a row during start-up, or that crashes ``max_restarts`` times in a row later,
ends the whole run with its name and the last lines of its log, every child stopped and
a non-zero exit status. It knows nothing about Django; the launcher describes the
services.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# Readiness polls would otherwise log every request at INFO.
logging.getLogger("httpx").setLevel(logging.WARNING)

ReadyCheck = Callable[[], bool]

#: What a service started with ``inherit_env=False`` still gets from the parent: what a
#: process needs to run at all, and nothing that could be a credential.
BASIC_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME")


def http_ready(url: str, *, expect: int = 200) -> ReadyCheck:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == expect
        except httpx.HTTPError:
            return False

    return check


@dataclass
class Service:
    name: str
    argv: Sequence[str]
    env: dict[str, str] = field(default_factory=dict)
    ready: ReadyCheck | None = None  # None: ready once started
    ready_timeout: float = 120.0
    max_restarts: int = 5
    detail: str = ""  # shown when ready (e.g. its URL)
    stop_timeout: float = 20.0
    # False: the process sees only BASIC_ENV and its own ``env`` (least privilege, e.g.
    # a node agent that must not see the database URL or the secret key).
    inherit_env: bool = True
    startup_attempts: int = 3  # tries in a row to get ready during start-up
    stable_after: float = 60.0  # ready this long: earlier crashes no longer count

    # run-time state
    process: subprocess.Popen | None = None
    state: str = "waiting"
    restarts: int = 0  # crashes in a row (reset once it has been up stable_after)
    started_at: float = 0.0
    ready_at: float = 0.0


class Supervisor:
    def __init__(self, services: list[Service], *, log_dir: Path, cwd: Path, out=None):
        self.services = services
        self.log_dir = log_dir
        self.cwd = cwd
        self.out = out or sys.stdout
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.failure: str | None = None  # why the run ended early, if it did

    # ------------------------------------------------------------------ output
    def say(self, service: Service | None, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        name = f"{service.name:<14}" if service else f"{'platform':<14}"
        with self._lock, contextlib.suppress(OSError, ValueError):
            # A closed terminal or pipe must not stop the supervisor from stopping
            # its children.
            print(f"{stamp}  {name} {message}", file=self.out, flush=True)

    def _set(self, service: Service, state: str, note: str = "") -> None:
        service.state = state
        pid = f" pid {service.process.pid}" if service.process else ""
        self.say(service, f"{state}{pid}{'  ' + note if note else ''}")

    def status_table(self) -> str:
        lines = [f"{'service':<14} {'state':<10} {'pid':>7} {'restarts':>8}  detail"]
        for s in self.services:
            pid = s.process.pid if s.process and s.process.poll() is None else "-"
            lines.append(f"{s.name:<14} {s.state:<10} {pid!s:>7} {s.restarts:>8}  {s.detail}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ processes
    def _spawn(self, service: Service) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{service.name}.log", "ab")  # noqa: SIM115 - child keeps it
        if service.inherit_env:
            env = {**os.environ, **service.env}
        else:
            env = {k: os.environ[k] for k in BASIC_ENV if k in os.environ} | service.env
        service.process = subprocess.Popen(
            list(service.argv),
            env=env,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: we stop the whole tree
        )
        log.close()
        service.started_at = time.monotonic()
        self._set(service, "starting", f"log {self.log_dir / (service.name + '.log')}")

    def _wait_ready(self, service: Service) -> bool:
        deadline = time.monotonic() + service.ready_timeout
        while not self._stopping.is_set():
            if service.process.poll() is not None:
                return False
            if service.ready is None or service.ready():
                service.ready_at = time.monotonic()
                self._set(service, "ready", service.detail)
                return True
            if time.monotonic() > deadline:
                self.say(service, f"not ready after {service.ready_timeout:.0f} s")
                return False
            time.sleep(0.25)
        return False

    def _stop_one(self, service: Service) -> None:
        process = service.process
        if process is None or process.poll() is not None:
            return
        service.state = "stopping"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=service.stop_timeout)
        except subprocess.TimeoutExpired:
            self.say(service, "did not stop in time; killing")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        # Anything left in its group (grandchildren) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        self._set(service, "stopped", f"exit {process.returncode}")

    # ------------------------------------------------------------------ lifecycle
    def start_all(self) -> bool:
        """Start every service not started yet, in order; False (with the reason in
        ``failure``) if one cannot get ready in ``startup_attempts`` tries in a row."""
        for service in self.services:
            if service.process is not None:
                continue
            for attempt in range(1, service.startup_attempts + 1):
                if self._stopping.is_set():
                    return False
                self._spawn(service)
                if self._wait_ready(service):
                    break
                if self._stopping.is_set():
                    return False
                code = service.process.poll()
                self._set(service, "failed", f"exit {code}" if code is not None else "")
                self._stop_one(service)
                if attempt < service.startup_attempts:
                    self.say(
                        service, f"retrying (attempt {attempt + 1} of {service.startup_attempts})"
                    )
                    if self._stopping.wait(attempt):
                        return False
            else:
                self.fail(service, f"could not start ({service.startup_attempts} tries)")
                return False
        return True

    def fail(self, service: Service | None, reason: str) -> None:
        """End the run: say why (with the service's last log lines) and stop."""
        if self.failure is None:
            name = service.name if service else "platform"
            self.failure = f"{name}: {reason}"
            self.say(service, reason)
            if service is not None:
                self.say(service, f"last lines of {self.log_dir / (service.name + '.log')}:")
                self._tail(service, 20)
        self._stopping.set()

    def _tail(self, service: Service, lines: int = 15) -> None:
        path = self.log_dir / f"{service.name}.log"
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines()[-lines:]:
                self.say(service, f"| {line}")

    def watch(self) -> None:
        """Restart crashed services until asked to stop; a service that crashes
        ``max_restarts`` times in a row ends the run."""
        while not self._stopping.wait(0.5):
            for service in self.services:
                process = service.process
                if process is None or self._stopping.is_set():
                    continue
                if process.poll() is None:
                    up = time.monotonic() - service.ready_at
                    if service.restarts and service.state == "ready" and up > service.stable_after:
                        service.restarts = 0  # only crashes in a row count
                    continue
                self._set(service, "crashed", f"exit {process.returncode}")
                if service.restarts >= service.max_restarts:
                    self.fail(service, f"crashed {service.restarts + 1} times in a row; stopping")
                    return
                self._tail(service, 5)
                service.restarts += 1
                if self._stopping.wait(min(2**service.restarts, 30)):
                    return
                self._spawn(service)
                if not self._wait_ready(service) and not self._stopping.is_set():
                    # Running but not ready in time counts as a crash: stop it, and the
                    # next pass restarts it or gives up.
                    self._stop_one(service)

    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop_all(self) -> None:
        self._stopping.set()
        for service in reversed(self.services):
            self._stop_one(service)

    def run(self, on_ready: Callable[[], None] | None = None) -> int:
        """Start everything, call ``on_ready``, supervise until SIGINT/SIGTERM."""

        def handle(signum, frame):
            if not self._stopping.is_set():
                self.say(None, f"received {signal.Signals(signum).name}; stopping everything")
            self._stopping.set()

        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {s: signal.signal(s, handle) for s in handled}
        try:
            if not self.start_all():
                if self.failure:
                    self.say(None, f"start-up failed ({self.failure}); stopping everything")
                    return 1
                return 0 if self._stopping.is_set() else 1
            if on_ready:
                on_ready()
            self.watch()
            if self.failure:
                self.say(None, f"stopping everything: {self.failure}")
                return 1
            return 0
        finally:
            self.stop_all()
            self.say(None, "all services stopped")
            for sig, handler in previous.items():
                signal.signal(sig, handler)
