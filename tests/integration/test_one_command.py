"""Issue #5: the whole platform on one machine with one command, as a newcomer runs it.

A fresh data directory, no DATABASE_URL or REDIS_URL: the command installs what is
missing (nothing, here, after the test run installed it), starts everything, prints a
key and examples; the printed Python example works as printed (chat and embeddings);
SIGINT stops every process; a second start finds the same organization, key and usage.
"""

from __future__ import annotations

import subprocess

import httpx
import pytest

from tests.support.platform import start_platform

pytestmark = pytest.mark.slow


def test_one_command_platform(tmp_path, engine_python):
    data_dir = tmp_path / "data"
    first = start_platform(data_dir, env={"PLATFORM_ADMIN_PASSWORD": "evaluator-pass-1"})
    try:
        first.wait_ready()
        key = first.key()
        assert key, first.output[-3000:]
        python, example = first.python_example()
        result = subprocess.run(
            [python, "-"], input=example, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == "384 dimensions"
        assert len(result.stdout.strip().splitlines()) >= 2  # the chat answer came first
        headers = {"Authorization": f"Bearer {key}"}
        org_id = httpx.get(f"{first.api}/organizations/demo/", headers=headers).json()["id"]
        assert "created platform administrator admin" in first.output
    finally:
        left = first.stop()
    assert first.process.returncode == 0, first.output[-3000:]
    assert not left, f"processes outlived the platform: {left}"
    assert "all services stopped" in first.output

    second = start_platform(data_dir)
    try:
        second.wait_ready()
        assert second.key() is None  # the key is shown once, on the first start only
        assert "created the demo" not in second.output
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
