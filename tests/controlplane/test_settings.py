"""Start-up refuses bad configuration with a message that names the setting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_settings(**env) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SECRET_KEY", "DATABASE_URL", "DEBUG", "PLATFORM_DEV")
    }
    clean["PYTHONPATH"] = os.path.join(ROOT, "platform")
    clean.update(env)
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import controlplane.settings as s; print(s.DATABASES['default']['ENGINE'], s.DEBUG)",
        ],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "env,needle",
    [
        ({}, "SECRET_KEY"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY"),
        ({"SECRET_KEY": "x" * 40, "DEBUG": "maybe"}, "DEBUG"),
        ({"SECRET_KEY": "x" * 40, "DATABASE_URL": "mysql://u@h/db"}, "DATABASE_URL"),
        ({"SECRET_KEY": "x" * 40, "DATABASE_URL": "nonsense"}, "DATABASE_URL"),
        ({"SECRET_KEY": "x" * 40, "REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"SECRET_KEY": "x" * 40, "CSRF_TRUSTED_ORIGINS": "example.com"}, "CSRF_TRUSTED_ORIGINS"),
        ({"SECRET_KEY_FILE": "/nonexistent/secret"}, "SECRET_KEY_FILE"),
        ({"SECRET_KEY": "x" * 40, "MAX_REQUEST_BODY_BYTES": "lots"}, "MAX_REQUEST_BODY_BYTES"),
    ],
)
def test_bad_values_stop_start_up(env, needle, tmp_path):
    result = load_settings(PLATFORM_DATA_DIR=str(tmp_path), **env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and needle in result.stderr


def test_safe_defaults(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("y" * 50 + "\n")
    result = load_settings(PLATFORM_DATA_DIR=str(tmp_path), SECRET_KEY_FILE=str(secret))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["django.db.backends.sqlite3", "False"]


def test_dev_mode_needs_no_secret(tmp_path):
    result = load_settings(PLATFORM_DATA_DIR=str(tmp_path), PLATFORM_DEV="1")
    assert result.returncode == 0, result.stderr
