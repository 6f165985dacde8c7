"""Unit tests of the agent's pure parts: settings, inventory (fake NVML), engine command
line, /metrics parsing, desired-state checks, state file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.agent.conftest import (
    CPU_INVENTORY,
    REPO,
    make_model,
    make_settings,
    make_spec,
    with_settings,
)
from workers.agent import inventory as inventory_module
from workers.agent.engine import SpecError, build_launch, engine_flags
from workers.agent.metrics import MetricsParseError, parse_load
from workers.agent.settings import AgentSettings, SettingsError, redact_url
from workers.agent.statefile import PersistedReplica, PersistedState, StateFile
from workers.agent.supervisor import DesiredStateError, check_desired_state
from workers.engine import paths

# -- settings ------------------------------------------------------------------------------


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "AGENT_BROKER_URL": "redis://:s3cret@redis.internal:6379/0",
        "AGENT_NODE_SECRET": "node-s3cret",
        "AGENT_ENGINE_COMMAND": f"{sys.executable} fake.py",
        "AGENT_STATE_DIR": str(tmp_path / "state"),
        **extra,
    }


def test_settings_from_env_with_defaults(tmp_path):
    settings = AgentSettings.from_env(env_for(tmp_path, AGENT_NODE_NAME="gpu-07"))
    assert settings.node_name == "gpu-07"
    assert settings.queue == "agent.gpu-07"
    assert settings.pool == "default"
    assert settings.port_range == (20000, 29999)
    assert settings.heartbeat_seconds == 10
    assert settings.engine_python == paths.REPO_ROOT / ".engine-venv" / "bin" / "python"
    assert settings.engine_command == (sys.executable, "fake.py")
    assert settings.stop_replicas_on_exit is False
    assert (tmp_path / "state").is_dir()
    assert "s3cret" not in repr(settings)
    assert settings.node_secret == "node-s3cret"
    assert settings.redacted_broker_url == "redis://:***@redis.internal:6379/0"


def test_settings_parse_every_variable(tmp_path):
    settings = AgentSettings.from_env(
        env_for(
            tmp_path,
            AGENT_NODE_NAME="node-a",
            AGENT_POOL="h100",
            AGENT_LABELS="zone=eu-1, rack=r12,gpu.model=H100",
            AGENT_ADDRESS="10.0.0.7",
            AGENT_BIND_HOST="0.0.0.0",
            AGENT_PORT_RANGE="9000-9009",
            AGENT_HEARTBEAT_SECONDS="2.5",
            AGENT_STOP_REPLICAS_ON_EXIT="yes",
            AGENT_MODEL_CACHE_DIR=str(tmp_path / "models"),
            AGENT_DRAIN_TIMEOUT_SECONDS="30",
            AGENT_RESTART_BACKOFF_INITIAL_SECONDS="1",
            AGENT_RESTART_BACKOFF_MAX_SECONDS="60",
        )
    )
    assert settings.labels == {"zone": "eu-1", "rack": "r12", "gpu.model": "H100"}
    assert settings.address == "10.0.0.7" and settings.bind_host == "0.0.0.0"
    assert settings.port_range == (9000, 9009)
    assert settings.heartbeat_seconds == 2.5
    assert settings.stop_replicas_on_exit is True
    assert settings.model_cache_dir == tmp_path / "models"
    assert settings.drain_timeout_seconds == 30
    assert settings.restart_backoff_max_seconds == 60


def test_broker_url_from_file_and_unix_socket(tmp_path):
    secret = tmp_path / "broker"
    secret.write_text("unix:///run/redis/redis.sock?virtual_host=3\n")
    env = env_for(tmp_path, AGENT_BROKER_URL_FILE=str(secret))
    del env["AGENT_BROKER_URL"]
    settings = AgentSettings.from_env(env)
    assert settings.broker_url == "redis+socket:///run/redis/redis.sock?virtual_host=3"
    env = env_for(tmp_path, REDIS_URL="redis://127.0.0.1:6379/4")
    del env["AGENT_BROKER_URL"]
    assert AgentSettings.from_env(env).broker_url == "redis://127.0.0.1:6379/4"


def test_node_secret_from_file_and_required(tmp_path):
    secret = tmp_path / "node.secret"
    secret.write_text("from-a-file\n")
    env = env_for(tmp_path, AGENT_NODE_SECRET_FILE=str(secret))
    del env["AGENT_NODE_SECRET"]
    assert AgentSettings.from_env(env).node_secret == "from-a-file"
    del env["AGENT_NODE_SECRET_FILE"]
    with pytest.raises(SettingsError) as caught:
        AgentSettings.from_env(env)
    assert "AGENT_NODE_SECRET" in str(caught.value) and "register_node" in str(caught.value)


def test_bad_settings_are_all_reported_at_once(tmp_path):
    env = env_for(
        tmp_path,
        AGENT_NODE_NAME="Bad Name",
        AGENT_PORT_RANGE="9000-80",
        AGENT_HEARTBEAT_SECONDS="60",
        AGENT_LABELS="novalue",
        AGENT_STOP_REPLICAS_ON_EXIT="maybe",
        AGENT_BROKER_URL="amqp://guest:pw@rabbit//",
    )
    del env["AGENT_NODE_SECRET"]
    with pytest.raises(SettingsError) as caught:
        AgentSettings.from_env(env)
    message = str(caught.value)
    for name in (
        "AGENT_NODE_NAME",
        "AGENT_PORT_RANGE",
        "AGENT_HEARTBEAT_SECONDS",
        "AGENT_LABELS",
        "AGENT_STOP_REPLICAS_ON_EXIT",
        "AGENT_BROKER_URL",
        "AGENT_NODE_SECRET",
    ):
        assert name in message
    assert "pw" not in message  # the broker password is never printed
    assert len(caught.value.problems) == 7


def test_missing_broker_and_engine_are_reported(tmp_path):
    env = {"AGENT_STATE_DIR": str(tmp_path), "AGENT_ENGINE_PYTHON": str(tmp_path / "nope")}
    with pytest.raises(SettingsError) as caught:
        AgentSettings.from_env(env)
    assert "AGENT_BROKER_URL (or REDIS_URL) is not set" in str(caught.value)
    assert "AGENT_ENGINE_PYTHON" in str(caught.value)


def test_entry_point_fails_at_start_with_a_clear_message(tmp_path):
    env = {
        "PATH": os.environ["PATH"],
        "AGENT_STATE_DIR": str(tmp_path),
        "AGENT_BROKER_URL": "redis://127.0.0.1:6379/12",
        "AGENT_PORT_RANGE": "80-90",
    }
    result = subprocess.run(
        [sys.executable, "-m", "workers.agent"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "AGENT_PORT_RANGE='80-90'" in result.stderr
    assert "Traceback" not in result.stderr


def test_redact_url():
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redact_url("rediss://user:pw@h:1/0") == "rediss://user:***@h:1/0"


# -- inventory -------------------------------------------------------------------------------


class FakeNVMLError(Exception):
    pass


def fake_nvml(devices: list[tuple[str, bytes | str, int, int]], *, init_error=None):
    """A stand-in for pynvml: (uuid, name, total bytes, free bytes) per device."""
    calls = {"init": 0, "shutdown": 0}

    def init():
        calls["init"] += 1
        if init_error is not None:
            raise init_error

    def shutdown():
        calls["shutdown"] += 1

    return SimpleNamespace(
        NVMLError=FakeNVMLError,
        calls=calls,
        nvmlInit=init,
        nvmlShutdown=shutdown,
        nvmlDeviceGetCount=lambda: len(devices),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=lambda h: devices[h][0],
        nvmlDeviceGetName=lambda h: devices[h][1],
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(
            total=devices[h][2], free=devices[h][3], used=devices[h][2] - devices[h][3]
        ),
    )


MEMINFO = "MemTotal:       32768000 kB\nMemFree:  1000 kB\nMemAvailable:   16384000 kB\n"


def test_gpu_inventory_from_nvml(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    gib = 1024**3
    nvml = fake_nvml(
        [
            ("GPU-aaaa", b"NVIDIA H100 80GB HBM3", 80 * gib, 79 * gib),
            ("GPU-bbbb", "NVIDIA H100 80GB HBM3", 80 * gib, 10 * gib),
        ]
    )
    inventory = inventory_module.discover_inventory(nvml, meminfo_path=meminfo)
    assert inventory["kind"] == "gpu"
    assert inventory["memory_total_mib"] == 32000
    assert inventory["gpus"] == [
        {
            "index": 0,
            "uuid": "GPU-aaaa",
            "name": "NVIDIA H100 80GB HBM3",
            "memory_total_mib": 81920,
            "memory_free_mib": 80896,
        },
        {
            "index": 1,
            "uuid": "GPU-bbbb",
            "name": "NVIDIA H100 80GB HBM3",
            "memory_total_mib": 81920,
            "memory_free_mib": 10240,
        },
    ]
    assert nvml.calls == {"init": 1, "shutdown": 1}


@pytest.mark.parametrize(
    "nvml",
    [
        fake_nvml([], init_error=FakeNVMLError("NVML Shared Library Not Found")),
        fake_nvml([]),  # a driver but no device
    ],
    ids=["no-driver", "no-device"],
)
def test_cpu_pseudo_device_without_gpus(tmp_path, nvml):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    inventory = inventory_module.discover_inventory(nvml, meminfo_path=meminfo)
    assert inventory["kind"] == "cpu"
    assert inventory["gpus"] == [
        {
            "index": 0,
            "uuid": "cpu-0",
            "name": "cpu",
            "memory_total_mib": 32000,
            "memory_free_mib": 16000,
        }
    ]
    assert inventory["cpu_count"] >= 1


def test_cpu_inventory_when_pynvml_is_not_installed(monkeypatch):
    monkeypatch.setattr(inventory_module, "load_nvml", lambda: None)
    inventory = inventory_module.discover_inventory()
    assert inventory["kind"] == "cpu"
    assert inventory["gpus"][0]["memory_total_mib"] > 0


def test_nvml_probe_prints_the_inventory_as_json():
    result = subprocess.run(
        [sys.executable, str(REPO / "workers" / "agent" / "nvml_probe.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["inventory"]["kind"] in ("cpu", "gpu")
    assert output["inventory"]["gpus"]


# -- engine command line ------------------------------------------------------------------------

GPU_INVENTORY = {
    "kind": "gpu",
    "gpus": [
        {"index": i, "uuid": f"GPU-{i}", "name": "H100", "memory_total_mib": 81920,
         "memory_free_mib": 81920}
        for i in range(4)
    ],
    "cpu_count": 64,
    "memory_total_mib": 512000,
}  # fmt: skip


def test_vllm_command_on_a_gpu_node(settings):
    settings = with_settings(settings, engine_command=None, engine_python=Path("/opt/vllm/python"))
    make_model(settings, "llama")
    spec = make_spec(
        model="llama",
        gpu_indices=[2, 3],
        trust_remote_code=True,
        engine_args={"enable_prefix_caching": False, "max_num_seqs": 64, "enforce_eager": True},
    )
    plan = build_launch(spec, settings, GPU_INVENTORY, base_env={"CUDA_VISIBLE_DEVICES": "0"})
    argv = plan.argv
    assert argv[:3] == ["/opt/vllm/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--model") + 1] == str(settings.model_cache_dir / "llama")
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert argv[argv.index("--max-num-seqs") + 1] == "64"
    assert "--no-enable-prefix-caching" in argv
    assert "--enforce-eager" in argv
    assert "--gpu-memory-utilization" not in argv  # vLLM's own default on GPU
    # launch.py writes --no-trust-remote-code; an approved spec overrides it after.
    assert argv.index("--trust-remote-code") > argv.index("--no-trust-remote-code")
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert plan.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert "VLLM_CPU_KVCACHE_SPACE" not in plan.env


def test_vllm_command_on_a_cpu_node(settings):
    settings = with_settings(settings, engine_command=None, cpu_kv_cache_gib=2)
    make_model(settings, "tiny")
    spec = make_spec(model="tiny", gpu_indices=[0])  # ignored on a CPU node
    plan = build_launch(spec, settings, CPU_INVENTORY, base_env={"CUDA_VISIBLE_DEVICES": "0"})
    assert plan.argv[0] == sys.executable  # engine_python of the test settings
    assert plan.argv[plan.argv.index("--gpu-memory-utilization") + 1] == "0.2"
    assert "--trust-remote-code" not in plan.argv
    assert plan.env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert "CUDA_VISIBLE_DEVICES" not in plan.env


def test_engine_command_replaces_the_vllm_module(settings):
    make_model(settings)
    plan = build_launch(make_spec(), settings, CPU_INVENTORY)
    assert plan.argv[:2] == list(settings.engine_command)
    assert plan.argv[2] == "--model"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gpu_indices": []}, "needs at least one GPU"),
        ({"gpu_indices": [7]}, "no GPU with index [7]"),
        ({"gpu_indices": [1, 1]}, "appears twice"),
        ({"engine_args": {"port": 1}}, "set by the node agent"),
        ({"engine_args": {"api_key": "x"}}, "set by the node agent"),
        ({"engine_args": {"trust_remote_code": True}}, "set by the node agent"),
        ({"engine_args": {"--evil": 1}}, "not a vLLM argument name"),
        ({"engine_args": {"max_num_seqs": object()}}, "unsupported value"),
        ({"engine_args": {"gpu_memory_utilization": 3}}, "must be a number in (0, 1]"),
        ({"port": 80}, "outside this node's port range"),
        ({"task": "train"}, "task must be one of"),
        ({"api_key": "short"}, "api_key must be at least 16"),
        ({"model": "missing"}, "does not exist on this node"),
    ],
)
def test_bad_specs_are_refused_with_the_field(settings, changes, message):
    settings = with_settings(settings, port_range=(1024, 65535))
    make_model(settings, "llama")
    changes = {"gpu_indices": [0], **changes}
    model = changes.pop("model", "llama")
    spec = make_spec(model=model, **changes)
    with pytest.raises(SpecError) as caught:
        build_launch(spec, settings, GPU_INVENTORY)
    assert message in str(caught.value)


def test_engine_flags():
    assert engine_flags(
        {
            "max_num_seqs": 8,
            "enable_lora": True,
            "enable_prefix_caching": False,
            "swap_space": None,
            "lora_modules": ["a=/x", "b=/y"],
            "override_generation_config": {"temperature": 0.1},
        }
    ) == [
        "--enable-lora",
        "--no-enable-prefix-caching",
        "--lora-modules",
        "a=/x",
        "b=/y",
        "--max-num-seqs",
        "8",
        "--override-generation-config",
        '{"temperature":0.1}',
    ]


# -- metrics ---------------------------------------------------------------------------------------

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny-chat"} 2.0
vllm:num_requests_running{engine="1",model_name="tiny-chat"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny-chat"} 4.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny-chat"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="tiny-chat"} 0.75
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="tiny-chat"} 1234.0
# HELP vllm:prompt_tokens_created Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_created gauge
vllm:prompt_tokens_created{engine="0",model_name="tiny-chat"} 1.7e+09
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="tiny-chat"} 99.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="tiny-chat"} 0.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="tiny-chat"} 3.0
"""


def test_parse_load_sums_engines_and_takes_the_fullest_cache():
    assert parse_load(VLLM_METRICS) == {
        "num_requests_running": 3.0,
        "num_requests_waiting": 4.0,
        "kv_cache_usage_perc": 0.75,
        "prompt_tokens_total": 1234.0,
        "generation_tokens_total": 99.0,
    }
    assert parse_load("") == {}
    assert parse_load("vllm:gpu_cache_usage_perc 0.3\n") == {"kv_cache_usage_perc": 0.3}


def test_parse_load_rejects_garbage():
    with pytest.raises(MetricsParseError):
        parse_load("this is { not prometheus")


# -- desired state and state file ----------------------------------------------------------------


def test_check_desired_state():
    spec = make_spec()
    good = {"protocol": 1, "node": "node1", "generation": 3, "replicas": [spec]}
    assert check_desired_state(good, "node1") is good
    bad_cases = [
        ([], "must be a JSON object"),
        ({**good, "protocol": 2}, "protocol 2"),
        ({**good, "node": "node2"}, "not this one"),
        ({**good, "generation": -1}, "generation"),
        ({**good, "generation": True}, "generation"),
        ({**good, "replicas": "x"}, "replicas must be a list"),
        ({**good, "replicas": [spec, spec]}, "unique"),
        ({**good, "replicas": [spec, {**spec, "id": "other"}]}, "share a port"),
    ]
    for message, expected in bad_cases:
        with pytest.raises(DesiredStateError) as caught:
            check_desired_state(message, "node1")
        assert expected in str(caught.value)


def test_state_file_round_trip_and_corruption(tmp_path):
    state_file = StateFile(tmp_path)
    assert state_file.load() == PersistedState(-1, {})
    entry = PersistedReplica("r1", 123, 456, 8100, "h", "k" * 64, "/x.log")
    state_file.save(PersistedState(9, {"r1": entry}))
    assert state_file.load() == PersistedState(9, {"r1": entry})
    state_file.path.write_text("{not json")
    assert state_file.load() == PersistedState(-1, {})


def test_the_agent_imports_neither_django_nor_the_control_plane():
    # kombu probes `django.utils.functional` when Django happens to be installed (it is
    # in this venv, not on a GPU host); settings, apps and the ORM must stay out.
    code = (
        "import sys, workers.agent.service, workers.agent.__main__\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'controlplane'\n"
        "             or m.startswith(('django.conf', 'django.db', 'django.apps')))\n"
        "print(bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- signed reports --------------------------------------------------------------------------


def test_reports_are_signed_with_the_node_secret(tmp_path):
    from workers import protocol
    from workers.agent.reporter import Reporter

    settings = make_settings(tmp_path, node_secret="the-node-secret")
    reporter = Reporter(
        settings,
        snapshot=lambda: (3, []),
        inventory=lambda: CPU_INVENTORY,
        send=lambda report: None,
    )
    report = reporter.build_report()
    assert report["signed_by"] == settings.node_name == report["node"]
    assert protocol.signature_valid(report, "the-node-secret")
    assert protocol.signature_valid(json.loads(json.dumps(report)), "the-node-secret")
    assert not protocol.signature_valid(report, "another-secret")
    for field, value in (("address", "10.6.6.6"), ("generation_applied", 4), ("node", "x")):
        assert not protocol.signature_valid({**report, field: value}, "the-node-secret")
    assert not protocol.signature_valid({**report, "signature": ""}, "the-node-secret")


def test_engine_env_is_built_from_an_allow_list(settings):
    make_model(settings)
    agent_env = {
        "PATH": "/usr/bin",
        "HOME": "/home/agent",
        "LC_ALL": "C.UTF-8",
        "VLLM_LOGGING_LEVEL": "DEBUG",
        "OMP_NUM_THREADS": "4",
        "VLLM_API_KEY": "inherited-key",
        "AGENT_BROKER_URL": "redis://:pw@redis:6379/0",
        "AGENT_NODE_SECRET": "node-secret",
        "AGENT_NODE_SECRET_FILE": "/etc/sap/node.secret",
        "REDIS_URL": "redis://:pw@redis:6379/0",
        "DATABASE_URL": "postgres://u:pw@db/sap",
        "SECRET_KEY": "django",
        "HF_TOKEN": "hf_secret",
        "AWS_SECRET_ACCESS_KEY": "aws",
    }
    spec = make_spec()
    env = build_launch(spec, settings, CPU_INVENTORY, base_env=agent_env).env
    assert env["PATH"] == "/usr/bin" and env["HOME"] == "/home/agent"
    assert env["LC_ALL"] == "C.UTF-8" and env["OMP_NUM_THREADS"] == "4"
    assert env["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert env["VLLM_API_KEY"] == spec["api_key"]  # its own key, not an inherited one
    for name in (
        "AGENT_BROKER_URL",
        "AGENT_NODE_SECRET",
        "AGENT_NODE_SECRET_FILE",
        "REDIS_URL",
        "DATABASE_URL",
        "SECRET_KEY",
        "HF_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
    ):
        assert name not in env
    assert not any("pw@" in value or "secret" in value for value in env.values())


def test_broker_acl_rules_name_only_the_nodes_own_keys():
    from workers.agent import broker_acl

    rules = broker_acl.agent_acl_rules("gpu-1", "pw")
    keys = [rule for rule in rules if rule.startswith("~")]
    assert keys == [
        "~agent.gpu-1",
        "~agent.gpu-1\x06\x16*",
        "~_kombu.binding.agent.gpu-1",
        "~_kombu.binding_permanent.agent.gpu-1",
    ]
    assert rules[:5] == ["reset", "on", ">pw", "resetchannels", "-@all"]
    assert rules[-1] == "(~fleet +lpush)"
    url = broker_acl.agent_broker_url("redis://:admin@10.0.0.2:6380/3", "sap-agent-gpu-1", "p/w")
    assert url == "redis://sap-agent-gpu-1:p%2Fw@10.0.0.2:6380/3"
