"""The console in a real browser: an owner signs in and sees the usage chart and
its table, creates a key whose secret is shown once, revokes it; a viewer sees no
write controls and a forged POST is refused. No page trips the CSP."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from controlplane.quotas.models import UsageRecord
from controlplane.quotas.rollup import record_usage
from django.utils import timezone

from tests.console.browser.conftest import check_page
from tests.controlplane.test_usage_rollup import r  # noqa: F401 (a clean sign-in throttle)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def seed_usage(org_id, n=12):
    now = timezone.now()
    record_usage(
        [
            UsageRecord(
                request_id=f"browser-{i}",
                organization_id=org_id,
                model="tiny-chat" if i % 3 else "embed",
                endpoint="chat.completions",
                status=200 if i % 4 else 500,
                prompt_tokens=10 * i,
                completion_tokens=5,
                latency_ms=80.0 + i,
                ttft_ms=12.0,
                occurred_at=now - dt.timedelta(days=i % 3, minutes=1),
            )
            for i in range(n)
        ]
    )
    return sum(10 * i + 5 for i in range(n))


def sign_in(page, base, username):
    page.goto(f"{base}/console/signin/")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(f"pw-{username}")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/console/.*"))


def test_owner_and_viewer_flow(world, r, live_server, browser_page):  # noqa: F811
    page, base = browser_page, live_server.url
    total_tokens = seed_usage(world.org_a.pk)

    page.goto(f"{base}/console/signin/")
    check_page(page, "signin")
    sign_in(page, base, "alice")
    page.goto(f"{base}/console/o/org-a/")
    assert page.locator("h1").count() == 1
    page.wait_for_selector(".chart-area .uplot canvas")  # drawn by console.js + uPlot
    per_day = page.get_by_role("table", name="Per day")
    assert per_day.locator("tfoot td").nth(4).inner_text() == str(total_tokens)
    check_page(page, "overview")

    page.goto(f"{base}/console/o/org-a/usage/?group_by=model")
    assert page.get_by_role("table", name="Usage").locator("tbody tr").count() == 2
    check_page(page, "usage")

    page.goto(f"{base}/console/o/org-a/keys/")
    page.get_by_label("Name", exact=True).fill("<img src=x> browser key")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_label("Secret").input_value()
    assert len(secret) > 20
    check_page(page, "key-created")
    page.goto(f"{base}/console/o/org-a/keys/")
    assert secret not in page.content()
    assert page.get_by_role("row", name=re.compile("browser key")).count() == 1
    page.get_by_role("button", name="Revoke <img src=x> browser key").click()
    dialog = page.get_by_role("dialog")
    assert "<img src=x> browser key" in dialog.inner_text()  # text, not markup
    dialog.get_by_role("button", name="Cancel").click()
    assert "active" in page.get_by_role("row", name=re.compile("browser key")).inner_text()
    page.get_by_role("button", name="Revoke <img src=x> browser key").click()
    with page.expect_navigation():
        page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    row = page.get_by_role("row", name=re.compile("browser key"))
    assert "revoked" in row.inner_text() and "alice" in row.inner_text()
    check_page(page, "keys")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r".*/console/signin/.*"))

    sign_in(page, base, "victor")
    page.goto(f"{base}/console/o/org-a/keys/")
    assert page.get_by_role("button", name=re.compile("Revoke|Create")).count() == 0
    # A forged POST from the page, without the CSRF token: refused.
    status = page.evaluate(
        """async (url) => (await fetch(url, {method: "POST", body: new URLSearchParams(
            {name: "forged", scopes: "inference"})})).status""",
        f"{base}/console/o/org-a/keys/new/",
    )
    assert status == 403
    assert page.csp_violations == []
