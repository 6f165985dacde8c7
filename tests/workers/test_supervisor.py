"""The single-machine supervisor: ordered start, readiness, restart, clean stop."""

from __future__ import annotations

import io
import json
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
    log = out.getvalue()
    assert "failed" in log and "boom: bad config" in log
    # It was tried startup_attempts times in a row, then the run ends naming it.
    assert log.count("broken         starting") == broken.startup_attempts == 3
    assert sup.failure and sup.failure.startswith("broken:")
    assert later.process is None  # nothing after a failed service was started


def test_run_ends_non_zero_when_a_service_cannot_start(tmp_path):
    # A missing module: the service dies at import, every time.
    first = http_service("first", free_port())
    broken = Service(
        name="importer",
        argv=[sys.executable, "-c", "import module_that_is_not_installed"],
        ready=lambda: False,
        ready_timeout=10,
    )
    out = io.StringIO()
    sup = Supervisor([first, broken], log_dir=tmp_path, cwd=tmp_path, out=out)
    assert sup.run() == 1
    log = out.getvalue()
    assert "importer" in log and "module_that_is_not_installed" in log  # its last log lines
    assert "start-up failed (importer: could not start (3 tries))" in log
    assert not alive(first.process.pid)  # what had started was stopped


def test_a_crash_loop_after_start_ends_the_run(tmp_path):
    marker = tmp_path / "starts"
    # Ready as soon as it runs, then dies a moment later: every time.
    flaky = Service(
        name="flaky",
        argv=[sys.executable, "-c",
              f"import time; open({str(marker)!r}, 'a').write('x'); time.sleep(0.3); exit(2)"],
        max_restarts=2,
        stop_timeout=5,
    )  # fmt: skip
    steady = http_service("steady", free_port())
    out = io.StringIO()
    sup = Supervisor([steady, flaky], log_dir=tmp_path / "logs", cwd=tmp_path, out=out)
    assert sup.run() == 1
    log = out.getvalue()
    assert "crashed 3 times in a row; stopping" in log, log
    assert marker.read_text() == "xxx"  # first start + max_restarts restarts, no more
    assert not alive(steady.process.pid)


def test_a_service_without_inherit_env_sees_only_its_own_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://secret@db/platform")
    monkeypatch.setenv("SECRET_KEY_FILE", "/data/secret_key")
    dump = tmp_path / "env.json"
    code = f"import json, os; json.dump(dict(os.environ), open({str(dump)!r}, 'w'))"
    plain = Service("plain", [sys.executable, "-c", code], env={"AGENT_POOL": "local"},
                    inherit_env=False)  # fmt: skip
    sup = Supervisor([plain], log_dir=tmp_path, cwd=tmp_path, out=io.StringIO())
    assert sup.start_all()
    plain.process.wait(timeout=30)
    seen = json.loads(dump.read_text())
    assert seen["AGENT_POOL"] == "local" and "PATH" in seen
    assert "DATABASE_URL" not in seen and "SECRET_KEY_FILE" not in seen


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
