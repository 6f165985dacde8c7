"""Run a real vLLM OpenAI server for a test, the way the node agent starts one.

    with running_vllm(engine_python, model_dir, served_model_name="tiny-chat",
                      task="generate", max_model_len=2048) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key)

The server runs in its own process group (vLLM forks an engine-core process), so
stopping it stops the whole group. Its output goes to a log file, never to a pipe that
could fill up and stall it; a server that fails to start raises with the log's tail.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from workers.engine.launch import Task, vllm_command, vllm_env

# Startup takes 75-95 s on a 2-core machine with torch.compile; leave room for a busy one.
DEFAULT_STARTUP_TIMEOUT_S = 300.0
STOP_GRACE_S = 30.0
LOG_TAIL_CHARS = 6000


class VllmStartupError(RuntimeError):
    """The server exited or did not become healthy in time."""


@dataclass
class RunningVllm:
    """One started, healthy vLLM server."""

    root_url: str  # http://127.0.0.1:PORT (/health, /metrics)
    base_url: str  # root_url + "/v1", what OpenAI clients take
    api_key: str
    served_model_name: str
    process: subprocess.Popen
    log_path: Path
    startup_seconds: float
    command: list[str] = field(repr=False)

    def memory(self) -> dict[str, int]:
        """RSS and PSS in bytes, summed over the server's process group.

        PSS shares each shared page among the processes mapping it, so it is the fairer
        figure for "what this server costs"; RSS counts shared pages in every process.
        """
        return process_group_memory(self.process.pid)

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return _read_tail(self.log_path, chars)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_vllm(
    engine_python: Path,
    model_path: Path,
    *,
    served_model_name: str,
    task: Task,
    max_model_len: int,
    port: int | None = None,
    api_key: str | None = None,
    enforce_eager: bool = False,
    cpu_cores: str | None = None,
    extra_args: Sequence[str] = (),
    log_path: Path | None = None,
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
) -> Iterator[RunningVllm]:
    """Start a vLLM server, wait until `/health` answers, yield it, then stop it."""
    port = port or free_port()
    api_key = api_key or f"test-{secrets.token_urlsafe(24)}"
    if log_path is None:
        log_path = Path(tempfile.mkdtemp(prefix="vllm-")) / f"{served_model_name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = vllm_command(
        engine_python,
        model_path,
        served_model_name=served_model_name,
        port=port,
        task=task,
        max_model_len=max_model_len,
        enforce_eager=enforce_eager,
        extra_args=extra_args,
    )
    root_url = f"http://127.0.0.1:{port}"
    started_at = time.monotonic()
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command,
            env=vllm_env(api_key=api_key, cpu_cores=cpu_cores),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as one
        )
    try:
        _wait_until_healthy(process, root_url, log_path, startup_timeout_s)
        yield RunningVllm(
            root_url=root_url,
            base_url=f"{root_url}/v1",
            api_key=api_key,
            served_model_name=served_model_name,
            process=process,
            log_path=log_path,
            startup_seconds=time.monotonic() - started_at,
            command=command,
        )
    finally:
        stop_process_group(process)


def _wait_until_healthy(
    process: subprocess.Popen, root_url: str, log_path: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise VllmStartupError(
                f"vLLM exited with code {process.returncode} during startup; "
                f"log {log_path}:\n{_read_tail(log_path, LOG_TAIL_CHARS)}"
            )
        try:
            with urllib.request.urlopen(f"{root_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet, or still loading the model
        time.sleep(0.5)
    raise VllmStartupError(
        f"vLLM did not answer {root_url}/health within {timeout_s:.0f} s; "
        f"log {log_path}:\n{_read_tail(log_path, LOG_TAIL_CHARS)}"
    )


def stop_process_group(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the server, then SIGKILL whatever is left of its group after `grace_s`.

    Only the API server gets SIGTERM: it stops its engine-core and worker processes in
    order itself (signalling the whole group at once makes the engine core die first
    and the API server log an EngineDeadError).
    """
    group_id = process.pid  # start_new_session made the process its group's leader
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    # The leader may be gone while its children (the engine core) linger.
    deadline = time.monotonic() + 5
    while _group_alive(group_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_group(group_id, signal.SIGKILL)
    process.wait()


def _signal_group(group_id: int, signum: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(group_id, signum)


def _group_alive(group_id: int) -> bool:
    try:
        os.killpg(group_id, 0)
    except ProcessLookupError:
        return False
    return True


def process_group_memory(group_id: int) -> dict[str, int]:
    """{"rss": bytes, "pss": bytes, "processes": n} over the live members of a group."""
    totals = {"rss": 0, "pss": 0, "processes": 0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            # Fields after the ")" that closes the command name: state ppid pgrp ...
            if int(stat.rsplit(")", 1)[1].split()[2]) != group_id:
                continue
            rollup = (entry / "smaps_rollup").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        totals["processes"] += 1
        for line in rollup.splitlines():
            name, _, value = line.partition(":")
            if name in ("Rss", "Pss"):
                totals[name.lower()] += int(value.split()[0]) * 1024
    return totals


def _read_tail(path: Path, chars: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return text[-chars:]
