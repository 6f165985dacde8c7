"""Management commands a deployment's migration Job runs: ensure_admin (with
--require-password a Job never prints a password into its logs) and ensure_pool
(pools exist before node agents report; running it again changes nothing)."""

from __future__ import annotations

import io

import pytest
from controlplane.audit.models import AuditEvent
from controlplane.fleet.models import Pool
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_ensure_admin_require_password_refuses_to_generate_one(monkeypatch):
    monkeypatch.delenv("PLATFORM_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("PLATFORM_ADMIN_PASSWORD_FILE", raising=False)
    with pytest.raises(CommandError, match="PLATFORM_ADMIN_PASSWORD"):
        run("ensure_admin", "--require-password")
    assert not get_user_model().objects.filter(is_superuser=True).exists()


def test_ensure_admin_reads_the_password_from_a_file(monkeypatch, tmp_path):
    secret = tmp_path / "password"
    secret.write_text("a-long-Secret-from-a-file\n")
    monkeypatch.delenv("PLATFORM_ADMIN_PASSWORD", raising=False)
    monkeypatch.setenv("PLATFORM_ADMIN_PASSWORD_FILE", str(secret))
    output = run("ensure_admin", "--require-password", "--username", "ops")
    assert "created platform administrator ops" in output
    assert "a-long-Secret" not in output
    user = get_user_model().objects.get(username="ops")
    assert user.is_superuser and user.check_password("a-long-Secret-from-a-file")
    # Once an administrator exists, a later run (an upgrade) needs no password.
    monkeypatch.delenv("PLATFORM_ADMIN_PASSWORD_FILE")
    assert "exists: ops" in run("ensure_admin", "--require-password")


def test_ensure_admin_without_the_flag_still_generates_and_prints(monkeypatch):
    monkeypatch.delenv("PLATFORM_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("PLATFORM_ADMIN_PASSWORD_FILE", raising=False)
    assert "with password" in run("ensure_admin")


def test_ensure_pool_creates_missing_pools_once():
    output = run("ensure_pool", "h100", "cpu")
    assert "created pool h100" in output and "created pool cpu" in output
    assert set(Pool.objects.values_list("name", flat=True)) == {"h100", "cpu"}
    assert AuditEvent.objects.filter(action="pool.create").count() == 2
    assert "pool exists: h100" in run("ensure_pool", "h100")
    assert AuditEvent.objects.filter(action="pool.create").count() == 2


def test_ensure_pool_names_a_bad_name():
    with pytest.raises(CommandError, match="name"):
        run("ensure_pool", "Not A Name!")
    assert not Pool.objects.exists()
