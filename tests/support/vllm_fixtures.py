"""Pytest plugin: real vLLM servers for the tests that need an inference engine.

Listed in the root conftest's `pytest_plugins`. Session-scoped fixtures:

- `engine_python`: the engine virtualenv's interpreter (deploy/install-engine.sh makes
  it). Missing, the tests that need it are skipped, or fail when REQUIRE_ENGINE=1 (CI).
- `tiny_chat_model_dir`: the tiny random-weight Llama (workers.engine.tinymodel), built
  once into data/models/ and reused while its builder's source is unchanged.
- `minilm_model_dir`: the all-MiniLM-L6-v2 folder packaged in the engine virtualenv.
- `vllm_chat`, `vllm_embed`: running servers (served as "tiny-chat" and "minilm") on free
  ports with random API keys. Both fit side by side on a 2-core, 24 GiB machine.

At the end of the run the terminal summary lists each server's startup time and memory.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.vllm import RunningVllm, running_vllm
from workers.engine import paths, tinymodel

TINY_CHAT_SEED = 0
TINY_CHAT_SERVED_NAME = "tiny-chat"
TINY_CHAT_MAX_MODEL_LEN = 2048
MINILM_SERVED_NAME = "minilm"
MINILM_MAX_MODEL_LEN = 256  # its sentence-transformers max_seq_length

MODEL_CACHE_DIR = paths.REPO_ROOT / "data" / "models"

# torch.compile makes a cold start about 30 s slower per server (55 s against 26 s
# here, 33 s once vLLM's compile cache is warm) and buys throughput the tests do not
# need. VLLM_TEST_COMPILE=1 tests the compiled path instead.
ENFORCE_EAGER = os.environ.get("VLLM_TEST_COMPILE", "0") != "1"

_started_servers: list[dict] = []


def _engine_required() -> bool:
    return os.environ.get("REQUIRE_ENGINE", "0") == "1"


@pytest.fixture(scope="session")
def engine_python() -> Path:
    python = paths.engine_python_path()
    if not python.exists():
        message = (
            f"the inference engine is not installed ({python} is missing); "
            "run deploy/install-engine.sh"
        )
        if _engine_required():
            pytest.fail(f"REQUIRE_ENGINE=1 but {message}")
        pytest.skip(message)
    return python


def _tiny_chat_cache_dir(seed: int) -> Path:
    # Keyed on the builder's source too, so a change to the model rebuilds it.
    source_digest = hashlib.sha256(Path(tinymodel.__file__).read_bytes()).hexdigest()[:12]
    return MODEL_CACHE_DIR / f"tiny-chat-seed{seed}-{source_digest}"


@pytest.fixture(scope="session")
def tiny_chat_model_dir(engine_python: Path) -> Path:
    model_dir = _tiny_chat_cache_dir(TINY_CHAT_SEED)
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    # A lock, so parallel test workers build it once; the build itself renames a
    # finished folder into place, so a reader never sees half a model.
    with open(model_dir.parent / ".tiny-chat.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (model_dir / "model.safetensors").is_file():
            command = [
                str(engine_python),
                "-m",
                "workers.engine.tinymodel",
                str(model_dir),
                "--seed",
                str(TINY_CHAT_SEED),
            ]
            result = subprocess.run(
                command, cwd=paths.REPO_ROOT, capture_output=True, text=True, timeout=300
            )
            if result.returncode != 0:
                pytest.fail(f"building the tiny chat model failed:\n{result.stderr[-4000:]}")
    return model_dir


@pytest.fixture(scope="session")
def minilm_model_dir(engine_python: Path) -> Path:
    try:
        return paths.minilm_model_dir(engine_python)
    except FileNotFoundError as error:
        if _engine_required():
            pytest.fail(str(error))
        pytest.skip(str(error))


def _serve(
    tmp_path_factory: pytest.TempPathFactory,
    engine_python: Path,
    model_dir: Path,
    *,
    served_model_name: str,
    task: str,
    max_model_len: int,
) -> Iterator[RunningVllm]:
    log_path = tmp_path_factory.mktemp("vllm") / f"{served_model_name}.log"
    with running_vllm(
        engine_python,
        model_dir,
        served_model_name=served_model_name,
        task=task,
        max_model_len=max_model_len,
        enforce_eager=ENFORCE_EAGER,
        log_path=log_path,
    ) as server:
        memory = server.memory()
        _started_servers.append(
            {
                "name": served_model_name,
                "startup_s": server.startup_seconds,
                "rss": memory["rss"],
                "pss": memory["pss"],
                "log": log_path,
            }
        )
        yield server


@pytest.fixture(scope="session")
def vllm_chat(
    tmp_path_factory: pytest.TempPathFactory, engine_python: Path, tiny_chat_model_dir: Path
) -> Iterator[RunningVllm]:
    yield from _serve(
        tmp_path_factory,
        engine_python,
        tiny_chat_model_dir,
        served_model_name=TINY_CHAT_SERVED_NAME,
        task="generate",
        max_model_len=TINY_CHAT_MAX_MODEL_LEN,
    )


@pytest.fixture(scope="session")
def vllm_embed(
    tmp_path_factory: pytest.TempPathFactory, engine_python: Path, minilm_model_dir: Path
) -> Iterator[RunningVllm]:
    yield from _serve(
        tmp_path_factory,
        engine_python,
        minilm_model_dir,
        served_model_name=MINILM_SERVED_NAME,
        task="embed",
        max_model_len=MINILM_MAX_MODEL_LEN,
    )


def pytest_terminal_summary(terminalreporter) -> None:
    if not _started_servers:
        return
    terminalreporter.section("vLLM servers")
    mode = "eager" if ENFORCE_EAGER else "torch.compile"
    for server in _started_servers:
        terminalreporter.write_line(
            f"{server['name']}: ready in {server['startup_s']:.1f} s ({mode}), "
            f"RSS {server['rss'] / 2**30:.2f} GiB, PSS {server['pss'] / 2**30:.2f} GiB "
            f"after startup; log {server['log']}"
        )
