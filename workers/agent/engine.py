"""From a ReplicaSpec to the exact argv and environment of its engine process.

The command line and environment come from `workers.engine.launch` (the tests start
vLLM through the same functions). What this module adds is the node's view:

- where the model lies (`source.path`, relative paths under the model cache dir),
- the device: on a GPU node `CUDA_VISIBLE_DEVICES` from `gpu_indices` (with
  `CUDA_DEVICE_ORDER=PCI_BUS_ID`, so CUDA numbers GPUs as NVML does) and a
  `--tensor-parallel-size` matching the group; on a CPU node `gpu_indices` is ignored,
- `engine_args` turned into flags, refusing those the agent sets itself,
- `--trust-remote-code` only when the spec says so (launch.py always writes
  `--no-trust-remote-code`; vLLM's boolean flags take the last occurrence),
- an environment built from an allow-list (`engine_base_env`): the engine gets what
  it needs to run (paths, locale, its own VLLM_*/CUDA_*/thread settings) and its API
  key, never the agent's broker URL, node secret or any other credential,
- a configurable engine command (`AGENT_ENGINE_COMMAND`) in place of
  `<engine python> -m vllm.entrypoints.openai.api_server`, so any server that speaks
  vLLM's flags, `/health` and `/metrics` can run (the tests' fake engine does).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from workers.agent.settings import AgentSettings
from workers.engine.launch import RUNNER_FOR_TASK, vllm_command, vllm_env
from workers.protocol import Inventory, ReplicaSpec
from workers.safepath import UnsafePath, path_within

ENGINE_ARG_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# Flags the agent derives from the spec or its own settings; engine_args may not set them.
RESERVED_ENGINE_ARGS = frozenset(
    {
        "model",
        "served_model_name",
        "host",
        "port",
        "api_key",
        "runner",
        "task",
        "max_model_len",
        "trust_remote_code",
        "no_trust_remote_code",
        "uds",
        "ssl_keyfile",
        "ssl_certfile",
        "allowed_local_media_path",
    }
)
# engine_args passed as launch.vllm_command parameters rather than as extra flags
LAUNCH_PARAMETERS = frozenset({"gpu_memory_utilization", "enforce_eager"})
# the module the engine command replaces when AGENT_ENGINE_COMMAND is set
VLLM_MODULE_PREFIX_LEN = 3  # [python, "-m", "vllm.entrypoints.openai.api_server"]

# What an engine process may inherit from the agent's environment; everything else
# (the broker URL, the node secret, REDIS_URL, tokens of any kind) stays behind.
ENGINE_ENV_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TERM",
        "LD_LIBRARY_PATH",
        "VIRTUAL_ENV",
        "XDG_CACHE_HOME",
        "HF_HOME",
        "HF_HUB_CACHE",
        "TRANSFORMERS_CACHE",
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
    }
)
ENGINE_ENV_PREFIXES = (
    "LC_",
    "VLLM_",
    "CUDA_",
    "NVIDIA_",
    "NCCL_",
    "OMP_",
    "KMP_",
    "MKL_",
    "TORCH_",
    "TORCHINDUCTOR_",
    "PYTORCH_",
    "TRITON_",
)
# Never passed, whatever the allow-list says (VLLM_API_KEY is set per replica).
ENGINE_ENV_DENIED = frozenset({"VLLM_API_KEY"})


class SpecError(ValueError):
    """A replica spec this node cannot run; the message says which field and why."""


@dataclass(frozen=True)
class LaunchPlan:
    argv: list[str]
    env: dict[str, str]
    model_path: Path


def engine_base_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed part of `environ` (default: the agent's own environment)."""
    source = os.environ if environ is None else environ
    return {
        name: value
        for name, value in source.items()
        if name not in ENGINE_ENV_DENIED
        and (name in ENGINE_ENV_NAMES or name.startswith(ENGINE_ENV_PREFIXES))
    }


def model_path_for(spec: ReplicaSpec, model_cache_dir: Path) -> Path:
    """An absolute source path is the control plane's (a fetch target or an admin's
    local folder); a relative one names a folder of the model cache and must stay in it."""
    path = Path(spec["source"]["path"])
    if path.is_absolute():
        return path
    try:
        return path_within(model_cache_dir, path)
    except UnsafePath as exc:
        raise SpecError(f"source.path: {exc}") from None


def build_launch(
    spec: ReplicaSpec,
    settings: AgentSettings,
    inventory: Inventory,
    base_env: Mapping[str, str] | None = None,
) -> LaunchPlan:
    """The argv and env that start `spec` on this node; raises SpecError if it cannot."""
    check_spec(spec, settings, inventory)
    model_path = model_path_for(spec, settings.model_cache_dir)
    if not model_path.is_dir():
        raise SpecError(f"source.path: model directory {model_path} does not exist on this node")
    on_gpu = inventory["kind"] == "gpu"
    engine_args = dict(spec["engine_args"])
    gpu_memory_utilization = engine_args.pop("gpu_memory_utilization", None)
    enforce_eager = bool(engine_args.pop("enforce_eager", settings.enforce_eager))
    if on_gpu and len(spec["gpu_indices"]) > 1:
        engine_args.setdefault("tensor_parallel_size", len(spec["gpu_indices"]))
    extra_args = engine_flags(engine_args)
    if spec["trust_remote_code"]:
        extra_args.append("--trust-remote-code")
    argv = vllm_command(
        settings.engine_python,
        model_path,
        served_model_name=spec["served_model_name"],
        port=spec["port"],
        task=spec["task"],
        max_model_len=spec["max_model_len"],
        host=settings.bind_host,
        device="gpu" if on_gpu else "cpu",
        gpu_memory_utilization=(
            float(gpu_memory_utilization) if gpu_memory_utilization is not None else None
        ),
        enforce_eager=enforce_eager,
        extra_args=extra_args,
    )
    if settings.engine_command is not None:
        argv = [*settings.engine_command, *argv[VLLM_MODULE_PREFIX_LEN:]]
    env = vllm_env(
        engine_base_env(base_env),
        api_key=spec["api_key"],
        device="gpu" if on_gpu else "cpu",
        kv_cache_gib=settings.cpu_kv_cache_gib,
    )
    if on_gpu:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(index) for index in spec["gpu_indices"])
    else:
        env.pop("CUDA_VISIBLE_DEVICES", None)
    return LaunchPlan(argv=argv, env=env, model_path=model_path)


def check_spec(spec: ReplicaSpec, settings: AgentSettings, inventory: Inventory) -> None:
    """Raise SpecError for a spec that is malformed or does not fit this node."""
    try:
        _check_shape(spec)
    except (KeyError, TypeError) as error:
        raise SpecError(f"malformed replica spec: {error}") from None
    low, high = settings.port_range
    if not low <= spec["port"] <= high:
        raise SpecError(f"port: {spec['port']} is outside this node's port range {low}-{high}")
    if inventory["kind"] == "gpu":
        indices = spec["gpu_indices"]
        known = {gpu["index"] for gpu in inventory["gpus"]}
        if not indices:
            raise SpecError("gpu_indices: a replica on a GPU node needs at least one GPU")
        unknown = sorted(set(indices) - known)
        if unknown:
            raise SpecError(f"gpu_indices: no GPU with index {unknown} on this node")
        if len(set(indices)) != len(indices):
            raise SpecError("gpu_indices: an index appears twice")
    engine_flags(
        {k: v for k, v in spec["engine_args"].items() if k not in LAUNCH_PARAMETERS}
    )  # raises on a bad key or value
    for name in LAUNCH_PARAMETERS & spec["engine_args"].keys():
        value = spec["engine_args"][name]
        if name == "gpu_memory_utilization" and not (
            isinstance(value, int | float) and 0 < value <= 1
        ):
            raise SpecError("engine_args.gpu_memory_utilization: must be a number in (0, 1]")
        if name == "enforce_eager" and not isinstance(value, bool):
            raise SpecError("engine_args.enforce_eager: must be true or false")


def engine_flags(engine_args: Mapping[str, object]) -> list[str]:
    """`{"max_num_seqs": 8, "enable_prefix_caching": False}` -> vLLM flags.

    True is `--flag`, False is `--no-flag` (vLLM's booleans accept both), None is
    left out, a list is the flag followed by its items, a dict is one JSON argument.
    """
    flags: list[str] = []
    for key in sorted(engine_args):
        value = engine_args[key]
        if not isinstance(key, str) or not ENGINE_ARG_RE.match(key):
            raise SpecError(f"engine_args: {key!r} is not a vLLM argument name")
        if key in RESERVED_ENGINE_ARGS:
            raise SpecError(f"engine_args.{key}: set by the node agent, not by engine_args")
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, int | float | str):
            flags += [flag, str(value)]
        elif isinstance(value, list) and all(isinstance(v, int | float | str) for v in value):
            if value:
                flags += [flag, *(str(v) for v in value)]
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value, separators=(",", ":"), sort_keys=True)]
        else:
            raise SpecError(f"engine_args.{key}: unsupported value {value!r}")
    return flags


def _check_shape(spec: ReplicaSpec) -> None:
    expected: dict[str, type | tuple[type, ...]] = {
        "id": str,
        "deployment": str,
        "served_model_name": str,
        "source": dict,
        "task": str,
        "port": int,
        "api_key": str,
        "gpu_indices": list,
        "max_model_len": int,
        "engine_args": dict,
        "trust_remote_code": bool,
        "spec_hash": str,
    }
    for name, kind in expected.items():
        if name not in spec:
            raise KeyError(f"{name} is missing")
        if not isinstance(spec[name], kind) or (kind is int and isinstance(spec[name], bool)):
            raise TypeError(f"{name} must be {getattr(kind, '__name__', kind)}")
    if spec["task"] not in RUNNER_FOR_TASK:
        raise TypeError(f"task must be one of {sorted(RUNNER_FOR_TASK)}")
    if not spec["id"] or not spec["spec_hash"]:
        raise TypeError("id and spec_hash must not be empty")
    if len(spec["api_key"]) < 16:
        raise TypeError("api_key must be at least 16 characters")
    if not isinstance(spec["source"].get("path"), str) or not spec["source"]["path"]:
        raise TypeError("source.path must be a non-empty string")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in spec["gpu_indices"]):
        raise TypeError("gpu_indices must be integers")
    if spec["max_model_len"] <= 0:
        raise TypeError("max_model_len must be positive")
