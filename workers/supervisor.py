"""A small process supervisor for running the whole platform on one machine.

It starts services in order, waits until each is ready (an HTTP check or a check
function), restarts one that crashes (with back-off, a few times), prints every state
change with the service's name, and on SIGINT/SIGTERM stops them all in reverse order:
SIGTERM to each process group, then SIGKILL after a grace period, so no child outlives
it. It knows nothing about Django; the platform's launcher describes the services.
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

    # run-time state
    process: subprocess.Popen | None = None
    state: str = "waiting"
    restarts: int = 0
    started_at: float = 0.0


class Supervisor:
    def __init__(self, services: list[Service], *, log_dir: Path, cwd: Path, out=None):
        self.services = services
        self.log_dir = log_dir
        self.cwd = cwd
        self.out = out or sys.stdout
        self._stopping = threading.Event()
        self._lock = threading.Lock()

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
        env = {**os.environ, **service.env}
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
        """Start every service not started yet, in order; False if one fails."""
        for service in self.services:
            if service.process is not None:
                continue
            if self._stopping.is_set():
                return False
            self._spawn(service)
            if not self._wait_ready(service):
                code = service.process.poll()
                self._set(service, "failed", f"exit {code}" if code is not None else "")
                self._tail(service)
                return False
        return True

    def _tail(self, service: Service, lines: int = 15) -> None:
        path = self.log_dir / f"{service.name}.log"
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines()[-lines:]:
                self.say(service, f"| {line}")

    def watch(self) -> None:
        """Restart crashed services until asked to stop."""
        while not self._stopping.wait(0.5):
            for service in self.services:
                process = service.process
                if process is None or process.poll() is None or self._stopping.is_set():
                    continue
                self._set(service, "crashed", f"exit {process.returncode}")
                self._tail(service, 5)
                if service.restarts >= service.max_restarts:
                    self.say(service, "restarted too often; giving up on it")
                    service.process = None
                    continue
                service.restarts += 1
                if self._stopping.wait(min(2**service.restarts, 30)):
                    return
                self._spawn(service)
                self._wait_ready(service)

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
                if not self._stopping.is_set():
                    self.say(None, "start-up failed; stopping what was started")
                return 1
            if on_ready:
                on_ready()
            self.watch()
            return 0
        finally:
            self.stop_all()
            self.say(None, "all services stopped")
            for sig, handler in previous.items():
                signal.signal(sig, handler)
