"""Browser tests: Playwright (sync) driving the Chromium of Debian's ``chromium``
package against pytest-django's live server. Without the browser these tests skip,
unless REQUIRE_BROWSER=1 (CI), where they fail.

Each test launches its own browser (a few long flows, not many tests).
``check_page`` screenshots a page to ``test-artifacts/console/``, runs axe on it and
asserts that nothing tripped the CSP so far."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "console"


@pytest.fixture
def browser_page(monkeypatch):
    executable = shutil.which("chromium")
    if executable is None:
        message = "Debian's chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api")
    # Playwright's sync API runs an event loop in this thread; the ORM calls of the
    # test itself are still plain synchronous code. (Hence a browser per test, not
    # per session: the ORM of every other test must stay guarded.)
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.csp_violations = []
        page.on(
            "console",
            lambda message: (
                page.csp_violations.append(message.text)
                if "Content Security Policy" in message.text
                else None
            ),
        )
        try:
            yield page
        finally:
            context.close()
            browser.close()


@pytest.fixture
def eager_celery():
    """Celery tasks run where they are sent: in the live server's thread for a view
    (the setting is the app's, shared by every thread)."""
    from controlplane.celery import app

    app.conf.task_always_eager = True
    try:
        yield
    finally:
        app.conf.task_always_eager = False


@pytest.fixture
def no_agents(monkeypatch):
    """Desired states for node agents are recorded, not sent; the reconciler is not
    woken by changes (the test runs it)."""
    from controlplane.fleet import reconciler
    from controlplane.fleet import services as fleet_services

    sent: list[dict] = []
    monkeypatch.setattr(reconciler, "send_to_agent", sent.append)
    monkeypatch.setattr(fleet_services, "request_reconcile", lambda: None)
    return sent


def screenshot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def assert_accessible(page) -> None:
    """axe-core (axe-playwright-python) finds no serious or critical issue."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    serious = [
        f"{v['id']}: {v['help']} ({len(v['nodes'])} nodes: {v['nodes'][0]['target']})"
        for v in results.response["violations"]
        if v.get("impact") in ("serious", "critical")
    ]
    assert serious == [], serious


def check_page(page, name: str) -> None:
    """A main page: one ``h1``, a full-page screenshot, no serious axe issue, no CSP
    violation so far."""
    assert page.locator("h1").count() == 1, name
    screenshot(page, name)
    assert_accessible(page)
    assert page.csp_violations == [], (name, page.csp_violations)
