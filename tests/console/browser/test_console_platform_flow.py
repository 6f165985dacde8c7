"""The platform administrator in a real browser: signs in through the form, creates an
organization with its owner, a team and a key there (the secret is shown once, gone
after a reload), registers a model in the catalog and grants it to the organization,
and verifies the audit chain. Every platform page passes axe and trips no CSP rule."""

from __future__ import annotations

import re

import pytest
from controlplane.audit.models import AuditEvent
from controlplane.catalog.models import Model, OrganizationModelAccess
from controlplane.tenancy.models import ApiKey, Membership, Organization, Team
from playwright.sync_api import expect

from tests.console.browser.conftest import check_page
from tests.console.browser.test_console_flow import sign_in
from tests.controlplane.test_usage_rollup import r  # noqa: F401 (a clean sign-in throttle)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_platform_admin_flow(world, r, live_server, browser_page, make_user, eager_celery):  # noqa: F811
    page, base = browser_page, live_server.url
    olga = make_user("olga")

    sign_in(page, base, "root")
    page.goto(f"{base}/console/platform/")
    check_page(page, "platform-index")

    # An organization with an existing user as its owner.
    page.goto(f"{base}/console/platform/organizations/")
    form = page.get_by_role("region", name="Create an organization")
    form.get_by_label("Slug").fill("org-c")
    form.get_by_label("Name", exact=True).fill("Org C")
    form.get_by_label("Owner (user name)").fill("olga")
    with page.expect_navigation():
        form.get_by_role("button", name="Create organization").click()
    expect(page.get_by_role("row", name=re.compile("Org C"))).to_have_count(1)
    check_page(page, "platform-organizations")
    org_c = Organization.objects.get(slug="org-c")
    assert Membership.objects.get(organization=org_c, user=olga).role == "owner"

    # A team in it.
    page.goto(f"{base}/console/o/org-c/teams/")
    page.get_by_label("Team name").fill("Research")
    with page.expect_navigation():
        page.get_by_role("button", name="Create team").click()
    assert Team.objects.filter(organization=org_c, name="Research").exists()
    page.goto(f"{base}/console/o/org-c/teams/")
    expect(page.get_by_role("link", name="Research")).to_be_visible()

    # A key of that team: the secret once, never again.
    page.goto(f"{base}/console/o/org-c/keys/")
    page.get_by_label("Name", exact=True).fill("research key")
    page.get_by_label("Team", exact=True).select_option(label="Research")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_label("Secret").input_value()
    assert len(secret) > 20
    key = ApiKey.objects.get(organization=org_c, name="research key")
    assert key.team.name == "Research"
    page.goto(f"{base}/console/o/org-c/keys/")
    expect(page.get_by_role("row", name=re.compile("research key"))).to_have_count(1)
    page.reload()
    assert secret not in page.content()

    # A model registered in the catalog, then granted to the organization.
    page.goto(f"{base}/console/platform/catalog/")
    check_page(page, "platform-catalog")
    form = page.get_by_role("region", name="Add a model")
    form.get_by_label("Alias (public model name)").fill("mini-embed")
    form.get_by_label("Task").select_option("embedding")
    form.get_by_label("Licence (SPDX identifier or name)").fill("mit")
    form.get_by_label("Openness").select_option("open-weights")
    with page.expect_navigation():
        form.get_by_role("button", name="Add model").click()
    assert page.url.endswith("/console/platform/catalog/models/mini-embed/")
    check_page(page, "platform-model")
    model = Model.objects.get(alias="mini-embed")

    page.goto(f"{base}/console/o/org-c/models/")
    page.get_by_label("Model alias").fill("mini-embed")
    with page.expect_navigation():
        page.get_by_role("button", name="Grant access").click()
    expect(page.get_by_role("row", name=re.compile("mini-embed"))).to_contain_text("usable")
    assert OrganizationModelAccess.objects.filter(organization=org_c, model=model).exists()

    for path, name in (
        ("platform/fleet/", "platform-fleet"),
        ("platform/users/", "platform-users"),
    ):
        page.goto(f"{base}/console/{path}")
        check_page(page, name)

    # The audit chain, verified by a task (eager: in the server's thread).
    page.goto(f"{base}/console/platform/audit/?action=organization.")
    expect(page.get_by_role("row", name=re.compile("org-c"))).not_to_have_count(0)
    verify = page.locator("#verify-result")
    expect(verify).to_contain_text("Not verified")
    page.get_by_role("button", name="Verify chain").click()
    expect(verify).to_contain_text(
        f"OK: all {AuditEvent.objects.count()} events hold", timeout=10_000
    )
    check_page(page, "platform-audit")

    page.goto(f"{base}/console/me/")
    check_page(page, "me")
    assert page.csp_violations == []
