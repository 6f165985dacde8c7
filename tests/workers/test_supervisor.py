"""The single-machine supervisor: ordered start, readiness, restart, clean stop."""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time

from tests.support.vllm import free_port
from workers.supervisor import Service, Supervisor, http_ready


def http_service(name: str, port: int) -> Service:
    return Service(
        name=name,
        argv=[sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        ready=http_ready(f"http://127.0.0.1:{port}/"),
        ready_timeout=30,
        stop_timeout=5,
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_starts_in_order_restarts_a_crash_and_stops_everything(tmp_path):
    a, b = http_service("first", free_port()), http_service("second", free_port())
    out = io.StringIO()
    sup = Supervisor([a, b], log_dir=tmp_path / "logs", cwd=tmp_path, out=out)
    # run() installs signal handlers (main thread only); drive its parts directly.
    assert sup.start_all()
    assert a.state == b.state == "ready"
    first_pid = a.process.pid
    watcher = threading.Thread(target=sup.watch)
    watcher.start()
    os.kill(first_pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not (a.restarts == 1 and a.state == "ready"):
        assert time.monotonic() < deadline, out.getvalue()
        time.sleep(0.1)
    assert a.process.pid != first_pid
    pids = [a.process.pid, b.process.pid]
    sup.stop_all()
    watcher.join(timeout=10)
    assert not any(alive(pid) for pid in pids)
    log = out.getvalue()
    assert "crashed" in log and log.index("first") < log.index("second")


def test_a_service_that_never_gets_ready_fails_start_up(tmp_path):
    broken = Service(
        name="broken",
        argv=[sys.executable, "-c", "import sys; print('boom: bad config'); sys.exit(3)"],
        ready=lambda: False,
        ready_timeout=10,
    )
    later = http_service("later", free_port())
    out = io.StringIO()
    sup = Supervisor([broken, later], log_dir=tmp_path, cwd=tmp_path, out=out)
    assert not sup.start_all()
    sup.stop_all()
    assert "failed" in out.getvalue() and "boom: bad config" in out.getvalue()
    assert later.process is None  # nothing after a failed service was started


class BrokenOutput:
    def write(self, text):
        raise BrokenPipeError("the terminal went away")

    def flush(self):
        raise BrokenPipeError("the terminal went away")


def test_a_closed_terminal_does_not_stop_the_stopping(tmp_path):
    service = http_service("lonely", free_port())
    sup = Supervisor([service], log_dir=tmp_path, cwd=tmp_path, out=BrokenOutput())
    assert sup.start_all()
    pid = service.process.pid
    sup.stop_all()
    assert not alive(pid)
