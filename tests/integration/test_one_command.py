"""The whole platform on one machine with one command, as a newcomer runs it.

From a clean clone (no ``.venv``, no ``.engine-venv``, no data) with only the system
Python on ``PATH``: ``./deploy/run-local.sh`` installs the locked runtime set and the
engine, prints the demo key the moment it creates it, starts everything, and prints
examples that work as printed (chat and embeddings). The data directory is private.
SIGINT stops every process. A second start finds the same organization, key and usage;
``--new-demo-key`` replaces a lost key (the old one stops working, the change is
audited). A service that cannot start ends the start, naming it, exit non-zero.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import time

import httpx
import pytest

from tests.support.platform import clean_clone, start_platform

pytestmark = pytest.mark.slow


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _assert_private(data_dir) -> None:
    assert _mode(data_dir) == 0o700
    must = [
        data_dir / "platform.sqlite3",
        data_dir / "redis.aof",
        data_dir / "secret_key",
        data_dir / "keys" / "audit-signing.pem",
        data_dir / "logs" / "gateway.log",
    ]
    for path in must:
        assert path.exists(), path
    for path in [*must, *data_dir.glob("platform.sqlite3-*"), *data_dir.glob("logs/*")]:
        if path.is_file():
            assert _mode(path) == 0o600, f"{path} is {oct(_mode(path))}"
    for path in data_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert not _mode(path) & 0o077, f"{path} is {oct(_mode(path))}"


def test_one_command_platform_on_a_fresh_clone(tmp_path, engine_python):
    clone = clean_clone(tmp_path / "clone")
    assert not (clone / ".venv").exists() and not (clone / ".engine-venv").exists()
    data_dir = tmp_path / "data"
    try:
        _run_the_platform(clone, data_dir)
    finally:
        # The engine venv is a few GiB: keep it out of pytest's kept tmp directories.
        shutil.rmtree(clone / ".engine-venv", ignore_errors=True)
        shutil.rmtree(clone / ".venv", ignore_errors=True)


def _run_the_platform(clone, data_dir) -> None:
    first = start_platform(
        data_dir,
        root=clone,
        fresh_machine=True,
        env={"PLATFORM_ADMIN_PASSWORD": "evaluator-pass-1"},
    )
    try:
        first.wait_ready(timeout=2400)
        key = first.key()
        assert key, first.output[-3000:]
        # The key was printed when it was created, before any wait for replicas.
        created = first.output.index(f"created the demo API key (shown once, keep it): {key}")
        assert created < first.output.index("waiting for the model replicas")
        python, example = first.python_example()
        assert python.startswith(str(clone / ".venv"))  # the venv the launcher made
        result = subprocess.run(
            [python, "-"], input=example, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == "384 dimensions"
        assert len(result.stdout.strip().splitlines()) >= 2  # the chat answer came first
        headers = {"Authorization": f"Bearer {key}"}
        org_id = httpx.get(f"{first.api}/organizations/demo/", headers=headers).json()["id"]
        assert "created platform administrator admin" in first.output
        _assert_private(data_dir)
    finally:
        left = first.stop()
    assert first.process.returncode == 0, first.output[-3000:]
    assert not left, f"processes outlived the platform: {left}"
    assert "all services stopped" in first.output

    second = start_platform(data_dir, root=clone, fresh_machine=True)
    try:
        second.wait_ready()
        assert second.key() is None  # the key is shown once, on the first start only
        assert "created the demo" not in second.output
        assert "--new-demo-key" in second.output  # and how to replace a lost one
        headers = {"Authorization": f"Bearer {key}"}
        org = httpx.get(f"{second.api}/organizations/demo/", headers=headers).json()
        assert org["id"] == org_id
        usage = httpx.get(f"{second.api}/organizations/demo/usage/", headers=headers).json()
        assert {r["endpoint"] for r in usage["results"]} >= {"chat.completions", "embeddings"}
        chat = httpx.post(
            f"{second.gateway}/chat/completions",
            headers=headers,
            json={
                "model": "tiny-chat",
                "messages": [{"role": "user", "content": "again"}],
                "max_tokens": 4,
            },
            timeout=60,
        )
        assert chat.status_code == 200, chat.text
        orgs = httpx.get(f"{second.api}/organizations/", headers=headers).json()
        assert [o["slug"] for o in orgs["results"]] == ["demo"]  # no duplicate demo objects
    finally:
        left = second.stop()
    assert not left, f"processes outlived the platform: {left}"

    # A lost key: --new-demo-key revokes it and prints a new one, audited.
    third = start_platform(
        data_dir, root=clone, fresh_machine=True, args=["--new-demo-key", "--control-plane-only"]
    )
    try:
        third.wait_ready()
        new_key = third.key()
        assert new_key and new_key != key
        assert f"created the demo API key (shown once, keep it): {new_key}" in third.output
        old = httpx.get(
            f"{third.api}/organizations/demo/", headers={"Authorization": f"Bearer {key}"}
        )
        assert old.status_code == 401, old.text
        headers = {"Authorization": f"Bearer {new_key}"}
        events = httpx.get(
            f"{third.api}/organizations/demo/audit-events/",
            headers=headers,
            params={"action": "apikey.revoke"},
        ).json()
        assert [e["action"] for e in events["results"]] == ["apikey.revoke"], events
    finally:
        left = third.stop()
    assert not left, f"processes outlived the platform: {left}"


def test_a_service_that_cannot_start_ends_the_start(tmp_path, engine_python):
    started = time.monotonic()
    run = start_platform(tmp_path / "data", env={"GATEWAY_MAX_BODY_BYTES": "plenty"})
    try:
        run.process.wait(timeout=600)
    finally:
        left = run.stop()
    elapsed = time.monotonic() - started
    output = run.output
    assert run.process.returncode != 0, output[-3000:]
    assert "start-up failed (gateway: could not start (3 tries))" in output, output[-3000:]
    assert "GATEWAY_MAX_BODY_BYTES" in output  # the gateway's own last log lines
    assert "The platform is ready." not in output
    assert not left, f"processes outlived the platform: {left}"
    print(f"failed start ended in {elapsed:.0f} s")
