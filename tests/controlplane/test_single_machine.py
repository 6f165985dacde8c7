"""Smoke test of the single-machine default: SQLite and an embedded Redis, no
DATABASE_URL or REDIS_URL, through the real server process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.vllm import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path):
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DJANGO_SETTINGS_MODULE")
    }
    clean.update(PLATFORM_DATA_DIR=str(tmp_path / "data"), PLATFORM_ADMIN_PASSWORD="smoke-pass-123")
    return clean


def manage(env, *args) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_sqlite_default_end_to_end(env, tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "controlplane.local", "--port", str(port), "--control-plane-only"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.5)
        env["SECRET_KEY_FILE"] = str(tmp_path / "data" / "secret_key")
        assert (tmp_path / "data" / "platform.sqlite3").exists()
        manage(env, "create_organization", "smoke", "--name", "Smoke")
        secret = manage(
            env, "create_api_key", "smoke", "--name", "ops", "--scopes", "manage", "--quiet"
        ).strip()
        headers = {"Authorization": f"Bearer {secret}"}
        r = httpx.post(
            f"{base}/api/v1/organizations/smoke/teams/",
            json={"slug": "ml", "name": "ML"},
            headers=headers,
        )
        assert r.status_code == 201, r.text
        events = httpx.get(
            f"{base}/api/v1/organizations/smoke/audit-events/", headers=headers
        ).json()
        assert "team.create" in {e["action"] for e in events["results"]}
        assert httpx.get(f"{base}/api/docs/").status_code == 200
        assert "audit chain OK" in manage(env, "audit_verify")
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "created platform administrator admin" in output
