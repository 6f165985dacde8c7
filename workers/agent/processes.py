"""Engine processes: start one, recognise one again after an agent restart, stop one.

Each replica runs in its own session and so its own process group (vLLM forks an
engine-core process and workers): the agent signals the API server, then sweeps the
group with SIGKILL, so nothing of a stopped replica lingers on a GPU.

A process the agent started itself is a `ChildProcess` (a Popen it reaps). One found
again after the agent restarted is an `AdoptedProcess`: not our child, recognised by
pid AND the start time the kernel recorded for it (a recycled pid has another start
time) AND its command line naming its port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import suppress
from pathlib import Path
from typing import Protocol

LOG_ROTATE_BYTES = 4 * 1024 * 1024
ERROR_TAIL_CHARS = 2000


class EngineProcess(Protocol):
    pid: int

    def returncode(self) -> int | None:
        """None while running; the exit code (or -1 when unknown) once it is gone."""

    def terminate(self) -> None: ...

    def kill_group(self) -> None: ...

    def group_alive(self) -> bool: ...


class ChildProcess:
    def __init__(self, popen: subprocess.Popen):
        self.popen = popen
        self.pid = popen.pid

    def returncode(self) -> int | None:
        return self.popen.poll()

    def terminate(self) -> None:
        # Only the API server: it stops its engine core in order (signalling the whole
        # group at once kills the engine core first and the server logs an error).
        if self.popen.poll() is None:
            with suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)

    def kill_group(self) -> None:
        signal_group(self.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)

    def group_alive(self) -> bool:
        return group_alive(self.pid)


class AdoptedProcess:
    def __init__(self, pid: int, start_time: int):
        self.pid = pid
        self.start_time = start_time

    def returncode(self) -> int | None:
        return None if process_matches(self.pid, self.start_time) else -1

    def terminate(self) -> None:
        if process_matches(self.pid, self.start_time):
            with suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def kill_group(self) -> None:
        # The group id is the pid (the process was started as a session leader); only
        # sweep it while the leader is still ours or the group outlived it.
        signal_group(self.pid, signal.SIGKILL)

    def group_alive(self) -> bool:
        return group_alive(self.pid)


def spawn(argv: list[str], env: dict[str, str], log_path: Path) -> ChildProcess:
    """Start `argv` in its own session, its output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    rotate_log(log_path)
    with open(log_path, "ab") as log_file:
        popen = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,  # a file, never a pipe that could fill up and stall it
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    return ChildProcess(popen)


def rotate_log(log_path: Path) -> None:
    """Keep one previous log (`.1`) once the current one passes LOG_ROTATE_BYTES."""
    with suppress(FileNotFoundError):
        if log_path.stat().st_size > LOG_ROTATE_BYTES:
            log_path.replace(log_path.with_name(log_path.name + ".1"))


def error_tail(log_path: Path, since_offset: int = 0, chars: int = ERROR_TAIL_CHARS) -> str:
    """The end of what the process wrote after `since_offset`, for `last_error`."""
    try:
        with open(log_path, "rb") as log_file:
            size = log_file.seek(0, os.SEEK_END)
            start = max(since_offset if since_offset <= size else 0, size - chars * 4)
            log_file.seek(start)
            text = log_file.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines)[-chars:]


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has exited
        return None
    return int(fields[19])


def proc_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def process_matches(pid: int, start_time: int, port: int | None = None) -> bool:
    """Whether `pid` is still the process that started at `start_time` (and serves `port`)."""
    if proc_start_time(pid) != start_time:
        return False
    if port is None:
        return True
    cmdline = proc_cmdline(pid)
    return (
        any(cmdline[i] == "--port" and cmdline[i + 1] == str(port) for i in range(len(cmdline) - 1))
        or f"--port={port}" in cmdline
    )


def signal_group(group_id: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(group_id, signum)


def group_alive(group_id: int) -> bool:
    """Whether a live (not zombie) process is left in the group.

    Zombies are skipped: a replica's orphaned children are reaped by init, which may
    take its time, and a zombie holds neither memory nor a GPU.
    """
    try:
        os.killpg(group_id, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return bool(group_members(group_id))


def group_members(group_id: int) -> list[int]:
    """The pids of the group's live (not zombie) processes, from /proc."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat_file:
                fields = stat_file.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == group_id:
            members.append(int(entry.name))
    return members


def wait_group_gone(group_id: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while group_alive(group_id):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
