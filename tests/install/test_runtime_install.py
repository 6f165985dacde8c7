"""The platform's runtime install, as a new user's machine gets it.

``deploy/run-local.sh`` installs ``requirements/platform.txt`` (the hashed runtime lock)
into a virtualenv with no dev extras. The suite itself runs in a dev venv, where test
tools bring packages along that the runtime may silently lean on. These tests build a
runtime venv the same way (``ensure_platform_venv`` from ``deploy/lib/venv.sh``, into
``.runtime-venv``) and import every runtime module in it, so an undeclared or unlocked
runtime dependency fails here in seconds, naming the module.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_VENV = ROOT / ".runtime-venv"
TEST_ONLY = {"pytest", "pytest-django", "hypothesis", "schemathesis", "ruff", "uv"}

# Imports every module of the three planes (and the transports they load at run time),
# then prints what it imported as JSON; a failure names the module and the missing one.
IMPORT_EVERYTHING = r"""
import importlib, json, os, pkgutil, sys, tempfile
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
os.environ.setdefault("SECRET_KEY", "runtime-import-check")
os.environ.setdefault("PLATFORM_DATA_DIR", tempfile.mkdtemp())
import django
django.setup()
imported, failed = [], []
def load(name):
    try:
        importlib.import_module(name)
        imported.append(name)
    except Exception as exc:
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
for package in ("controlplane", "gateway", "workers"):
    module = importlib.import_module(package)
    load(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        # The engine's own helpers run in the engine venv (torch, transformers).
        if info.name.startswith("workers.engine.tinymodel"):
            continue
        load(info.name)
# What Celery and uvicorn load by name at run time.
for name in ("kombu.transport.redis", "celery.backends.redis", "uvicorn.loops.uvloop",
             "uvicorn.protocols.http.httptools_impl", "controlplane.celery",
             "controlplane.local", "controlplane.asgi", "workers.agent.__main__"):
    load(name)
from controlplane.celery import app
app.connection_for_write("redis://127.0.0.1:1/0").transport  # the Redis transport class
print(json.dumps({"imported": imported, "failed": failed}))
"""


def _lock_names(lock: Path) -> set[str]:
    names = set()
    for line in lock.read_text().splitlines():
        if re.match(r"[A-Za-z0-9]", line):
            names.add(re.sub(r"[-_.]+", "-", re.split(r"[=\s]", line, maxsplit=1)[0]).lower())
    return names


@pytest.fixture(scope="module")
def runtime_python() -> Path:
    """``.runtime-venv`` exactly as the launcher makes a venv (reused while the lock is
    unchanged; rebuilt to the lock when it changes)."""
    result = subprocess.run(
        ["bash", "-c", 'set -e; source deploy/lib/venv.sh; ensure_platform_venv "" "$1"', "-",
         str(RUNTIME_VENV)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return RUNTIME_VENV / "bin" / "python"


def test_every_runtime_module_imports_in_the_runtime_install(runtime_python):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "platform"), str(ROOT)])
    result = subprocess.run(
        [str(runtime_python), "-c", IMPORT_EVERYTHING],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["failed"], "\n".join(report["failed"])
    assert {"controlplane.local", "gateway.app", "workers.agent.__main__"} <= set(
        report["imported"]
    )
    assert "kombu.transport.redis" in report["imported"]


def test_the_runtime_install_holds_exactly_the_runtime_lock(runtime_python):
    listed = subprocess.run(
        [str(runtime_python), "-m", "pip", "list", "--format", "json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    installed = {re.sub(r"[-_.]+", "-", p["name"]).lower() for p in json.loads(listed.stdout)} - {
        "pip",
        "setuptools",
        "wheel",
        "sovereign-ai-platform",
    }
    locked = _lock_names(ROOT / "requirements" / "platform.txt")
    assert installed <= locked, f"installed but not locked: {sorted(installed - locked)}"
    assert not installed & TEST_ONLY, sorted(installed & TEST_ONLY)
    check = subprocess.run(
        [str(runtime_python), "-m", "pip", "check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_locks_pin_every_package_with_hashes():
    for name in ("platform", "dev", "engine-cpu", "engine-gpu"):
        lock = ROOT / "requirements" / f"{name}.txt"
        text = lock.read_text()
        entries = re.findall(r"^([A-Za-z0-9][^\s\\]*)(.*?)(?=^\S|\Z)", text, re.M | re.S)
        assert entries, lock
        for requirement, rest in entries:
            assert "==" in requirement, f"{lock.name}: {requirement} is not pinned"
            assert "--hash=sha256:" in rest, f"{lock.name}: {requirement} has no hash"
    runtime = _lock_names(ROOT / "requirements" / "platform.txt")
    dev = _lock_names(ROOT / "requirements" / "dev.txt")
    assert runtime <= dev, f"dev lock lacks runtime packages: {sorted(runtime - dev)}"
    # kombu's Redis transport imports packaging; the lock must carry it.
    assert {"celery", "kombu", "redis", "packaging"} <= runtime
