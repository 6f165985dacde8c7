"""Run the single-machine platform (``deploy/run-local.sh``) as a user would, for the
end-to-end tests: start it, wait for its ready banner, read what it printed, stop it
with SIGINT and check that no process it started outlives it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.vllm import free_port

ROOT = Path(__file__).resolve().parents[2]
READY = "The platform is ready."
KEY_RE = re.compile(r"API key\s+:\s+(sk-[a-z0-9]{12}\.[A-Za-z0-9_-]+)")
EXAMPLE_RE = re.compile(r"^\s*(\S+python\S*) - <<'PY'\n(.*?)\nPY$", re.S | re.M)


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (by parent links in /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


@dataclass
class RunningPlatform:
    process: subprocess.Popen
    port: int
    gateway_port: int
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}/v1"

    def key(self) -> str | None:
        match = KEY_RE.search(self.output)
        return match.group(1) if match else None

    def python_example(self) -> tuple[str, str]:
        match = EXAMPLE_RE.search(self.output)
        assert match, self.output[-3000:]
        return match.group(1), match.group(2)

    def wait_ready(self, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while READY not in self.output:
            if self.process.poll() is not None:
                raise AssertionError(f"the platform exited:\n{self.output[-6000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not ready in {timeout} s:\n{self.output[-6000:]}")
            time.sleep(0.5)
        time.sleep(0.5)  # the rest of the banner

    def stop(self, timeout: float = 180) -> set[int]:
        """SIGINT, as Ctrl-C would; returns the processes still alive afterwards."""
        started = descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        deadline = time.monotonic() + 30
        while (left := {pid for pid in started if alive(pid)}) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left


def clean_clone(dest: Path) -> Path:
    """The repository's files as a fresh clone has them (tracked and new, not ignored:
    no .venv, no .engine-venv, no data), copied to ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if not source.is_file():  # deleted in the working tree
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return dest


def fresh_machine_env() -> dict[str, str]:
    """What a new user's shell has: the system Python on PATH and nothing of ours (no
    virtualenv, no test settings). Package-index settings stay: they say how this
    machine reaches its registries."""
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    for name, value in os.environ.items():
        if name in ("HOME", "TMPDIR", "USER", "TERM") or name.startswith("PIP_"):
            env[name] = value
    return env


def start_platform(
    data_dir: Path,
    *,
    env: dict[str, str] | None = None,
    args=(),
    root: Path = ROOT,
    fresh_machine: bool = False,
) -> RunningPlatform:
    if fresh_machine:
        clean = fresh_machine_env()
    else:
        clean = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DJANGO_SETTINGS_MODULE")
            and not k.startswith(("PYTEST_", "TEST_"))
        }
    clean.update(PLATFORM_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    clean.update(env or {})
    port, gateway_port = free_port(), free_port()
    process = subprocess.Popen(
        ["bash", str(root / "deploy" / "run-local.sh"), "--port", str(port),
         "--gateway-port", str(gateway_port), *args],
        cwd=root, env=clean, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    running = RunningPlatform(process, port, gateway_port)

    def pump() -> None:
        for line in process.stdout:
            running.lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return running
