"""The console in a real browser: an owner signs in and sees the usage chart and
its table, creates a key whose secret is shown once, revokes it and finds the revoke
in the filtered audit log; scales a deployment and watches its replicas change state
(fake node reports) without a reload; a viewer sees no write controls and forged
POSTs are refused. Every main page passes axe and no page trips the CSP."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from controlplane.fleet import tasks as fleet_tasks
from controlplane.fleet.models import Deployment, Node, Replica
from controlplane.fleet.reconciler import reconcile_once
from controlplane.fleet.services import create_deployment, create_pool
from controlplane.quotas.models import UsageRecord
from controlplane.quotas.rollup import record_usage
from django.utils import timezone
from playwright.sync_api import expect

from tests.conftest import SYSTEM
from tests.console.browser.conftest import check_page
from tests.controlplane.test_usage_rollup import r  # noqa: F401 (a clean sign-in throttle)
from tests.fleet.conftest import GIB, replica_report, report

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


def fleet_of(world) -> Deployment:
    """A pool, a node that has reported (two GPUs) and org A's deployment on it."""
    pool = create_pool(actor=SYSTEM, name="gpu")
    assert fleet_tasks.node_report(report("gpu-1", gpus=(80 * GIB, 80 * GIB))) == "applied"
    return create_deployment(
        actor=SYSTEM,
        organization=world.org_a,
        name="chat",
        model="tiny-chat",
        pool=pool,
        gpu_memory_fraction=0.4,
    )


def node_reports(state: str, node_name="gpu-1") -> None:
    """The node's agent reports every replica it runs in ``state``."""
    node = Node.objects.get(name=node_name)
    items = [replica_report(rep, state=state) for rep in Replica.objects.filter(node=node)]
    fleet_tasks.node_report(
        report(node_name, generation_applied=node.generation_desired, replicas=items)
    )


def sign_in(page, base, username):
    page.goto(f"{base}/console/signin/")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(f"pw-{username}")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/console/.*"))


def test_owner_and_viewer_flow(world, r, live_server, browser_page, no_agents):  # noqa: F811
    page, base = browser_page, live_server.url
    org = f"{base}/console/o/org-a"
    total_tokens = seed_usage(world.org_a.pk)
    deployment = fleet_of(world)

    page.goto(f"{base}/console/signin/")
    check_page(page, "signin")
    sign_in(page, base, "alice")
    page.goto(f"{org}/")
    page.wait_for_selector(".chart-area .uplot canvas")  # drawn by console.js + uPlot
    per_day = page.get_by_role("table", name="Per day")
    assert per_day.locator("tfoot td").nth(4).inner_text() == str(total_tokens)
    check_page(page, "overview")

    page.goto(f"{org}/usage/?group_by=model")
    assert page.get_by_role("table", name="Usage").locator("tbody tr").count() == 2
    check_page(page, "usage")

    page.goto(f"{org}/keys/")
    page.get_by_label("Name", exact=True).fill("<img src=x> browser key")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_label("Secret").input_value()
    assert len(secret) > 20
    check_page(page, "key-created")
    page.goto(f"{org}/keys/")
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

    # The revoke, found in the audit log filtered by action.
    page.goto(f"{org}/audit/")
    page.get_by_label("Action starts with").fill("apikey.")
    with page.expect_navigation():
        page.get_by_role("button", name="Filter").click()
    events = page.get_by_role("table", name=re.compile("Events")).locator("tbody tr")
    expect(events).to_have_count(2)  # created, then revoked: newest first
    expect(events.nth(0)).to_contain_text("apikey.revoke")
    expect(events.nth(0)).to_contain_text("browser key")
    expect(events.nth(1)).to_contain_text("apikey.create")
    check_page(page, "audit")

    # Scaled in the browser; the replica table follows the node's reports by itself.
    page.goto(f"{org}/deployments/{deployment.pk}/")
    page.get_by_role("region", name="Scale").get_by_label(re.compile(r"^Replicas")).fill("2")
    with page.expect_navigation():
        page.get_by_role("button", name="Scale", exact=True).click()
    deployment.refresh_from_db()
    assert deployment.replicas == 2
    page.goto(f"{org}/deployments/")
    states = page.locator("#replicas tbody tr td:nth-child(3)")
    expect(page.locator("#replicas tbody")).to_have_text("No replicas.")
    assert reconcile_once()  # what beat does every few seconds: two replicas placed
    expect(states).to_have_text(["placed", "placed"], timeout=15_000)
    node_reports("starting")
    expect(states).to_have_text(["starting", "starting"], timeout=15_000)
    node_reports("ready")
    expect(states).to_have_text(["ready", "ready"], timeout=15_000)
    check_page(page, "deployments")
    create = page.get_by_role("region", name="Create a deployment")
    expect(create.get_by_label(re.compile("^Node selector"))).to_have_value("{}")
    assert len(no_agents) >= 1  # the node was sent its desired state

    for path, name in (
        ("members/", "members"),
        ("teams/", "teams"),
        ("models/", "models"),
        (f"deployments/{deployment.pk}/", "deployment"),
        ("limits/", "limits"),
        ("playground/", "playground"),
    ):
        page.goto(f"{org}/{path}")
        check_page(page, name)
    page.goto(f"{base}/console/me/")
    check_page(page, "me-owner")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r".*/console/signin/.*"))

    # A viewer: no write control anywhere, and forged POSTs are refused.
    sign_in(page, base, "victor")
    writes = re.compile(
        r"^(Revoke|Create|Add|Remove|Delete|Scale|Save|Grant|Rename|Edit|Change)", re.I
    )
    for path in (
        "keys/",
        "members/",
        "teams/",
        "models/",
        "deployments/",
        f"deployments/{deployment.pk}/",
        "limits/",
    ):
        page.goto(f"{org}/{path}")
        assert page.get_by_role("button", name=writes).count() == 0, path
        assert page.locator("form[method=post]").count() == 1, path  # sign out only
    page.goto(f"{org}/keys/")
    forge = """async ([url, withToken]) => {
        const body = new URLSearchParams({name: "forged", scopes: "inference"});
        const headers = {};
        if (withToken) {
            headers["X-CSRFToken"] = JSON.parse(
                document.body.getAttribute("hx-headers"))["X-CSRFToken"];
        }
        return (await fetch(url, {method: "POST", body, headers})).status;
    }"""
    # Without the CSRF token: refused before the view.
    assert page.evaluate(forge, [f"{org}/keys/new/", False]) == 403
    # With it: a viewer may not write (403), another organization does not exist (404).
    assert page.evaluate(forge, [f"{org}/keys/new/", True]) == 403
    assert page.evaluate(forge, [f"{base}/console/o/org-b/keys/new/", True]) == 404
    assert page.evaluate(forge, [f"{org}/deployments/{deployment.pk}/scale/", True]) == 403
    deployment.refresh_from_db()
    assert deployment.replicas == 2
    assert not world.org_a.keys.filter(name="forged").exists()
    assert page.csp_violations == []
