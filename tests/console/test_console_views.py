"""The console obeys the API's role table (every URL x every caller of
tests/conftest.py), refuses POSTs without a CSRF token, escapes stored names, sends
its CSP, shows a key's secret once, and its usage figures equal the API's."""

from __future__ import annotations

import hashlib
import importlib
import re
from pathlib import Path

import pytest
from controlplane.console import urls as console_urls
from controlplane.console.middleware import CONTENT_SECURITY_POLICY
from controlplane.tenancy.models import ApiKey
from controlplane.tenancy.services import create_api_key
from django.test import Client
from django.urls import URLPattern, reverse

from tests.conftest import SYSTEM
from tests.controlplane.test_usage_rollup import RANGE, r, seed  # noqa: F401

pytestmark = pytest.mark.django_db

CALLERS = ("alice", "bob", "victor", "oscar", "root", None)
SIGNIN = "/console/signin/"

# url name -> (method, expected status per caller: owner A, member A, viewer A,
# admin B, platform admin, anonymous). 302 for anonymous = sent to sign in.
ROLE_TABLE = {
    "home": ("GET", (302, 302, 302, 302, 200, 302)),
    "signin": ("GET", (302, 302, 302, 302, 302, 200)),
    "signout": ("POST", (302, 302, 302, 302, 302, 302)),
    "overview": ("GET", (200, 200, 200, 404, 200, 302)),
    "usage": ("GET", (200, 200, 403, 404, 200, 302)),
    "keys": ("GET", (200, 200, 200, 404, 200, 302)),
    "key-create": ("POST", (200, 200, 403, 404, 200, 302)),
    # alice's key: admins and its holder revoke it; a member or viewer may not.
    "key-revoke": ("POST", (302, 403, 403, 404, 302, 302)),
}


def console_names() -> set[str]:
    return {p.name for p in console_urls.urlpatterns if isinstance(p, URLPattern)}


def all_role_tables() -> dict:
    """ROLE_TABLE of this module and of every other console test module (each page
    module's tests list its own routes, in the same shape)."""
    tables = dict(ROLE_TABLE)
    for path in sorted(Path(__file__).parent.glob("test_console_*.py")):
        if path.stem == Path(__file__).stem:
            continue
        module = importlib.import_module(f"tests.console.{path.stem}")
        for name, row in getattr(module, "ROLE_TABLE", {}).items():
            assert name not in tables, f"{name} is in two role tables"
            tables[name] = row
    return tables


def test_every_console_route_is_in_a_role_table():
    assert console_names() == set(all_role_tables()), "add the new route to a ROLE_TABLE"


def alice_key(world):
    key, _secret = create_api_key(
        actor=SYSTEM,
        organization=world.org_a,
        name="alice's",
        scopes=["inference"],
        user=world.alice,
    )
    return key


def url_for(name: str, world) -> str:
    if name in ("home", "signin", "signout"):
        return reverse(f"console:{name}")
    if name == "key-revoke":
        return reverse(
            f"console:{name}", kwargs={"org_slug": "org-a", "key_id": alice_key(world).pk}
        )
    return reverse(f"console:{name}", kwargs={"org_slug": "org-a"})


@pytest.mark.parametrize("name", sorted(ROLE_TABLE))
@pytest.mark.parametrize("index", range(len(CALLERS)), ids=[str(c) for c in CALLERS])
def test_role_table(world, name, index):
    caller = CALLERS[index]
    method, expected = ROLE_TABLE[name]
    client = Client()
    if caller:
        client.force_login(getattr(world, caller))
    url = url_for(name, world)
    data = {"name": "made in a test", "scopes": ["inference"]} if name == "key-create" else {}
    before = ApiKey.objects.filter(revoked_at=None).count()
    response = client.post(url, data) if method == "POST" else client.get(url)
    assert response.status_code == expected[index], (name, caller, response.content[:300])
    if caller is None and response.status_code == 302 and name != "signout":
        assert response["Location"].startswith(SIGNIN)
    if (method == "POST" and response.status_code in (403, 404)) or caller is None:
        # Refused: nothing changed.
        assert ApiKey.objects.filter(revoked_at=None).count() == before


def test_other_methods_are_refused(world):
    client = Client()
    client.force_login(world.alice)
    assert (
        client.get(reverse("console:key-create", kwargs={"org_slug": "org-a"})).status_code == 405
    )
    assert client.post(reverse("console:keys", kwargs={"org_slug": "org-a"})).status_code == 405


def test_root_redirects_to_the_console(world):
    response = Client().get("/")
    assert response.status_code == 302 and response["Location"] == "/console/"


def test_post_without_csrf_token_is_refused(world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.alice)
    before = ApiKey.objects.count()
    response = client.post(
        reverse("console:key-create", kwargs={"org_slug": "org-a"}),
        {"name": "forged", "scopes": ["inference"]},
    )
    assert response.status_code == 403
    assert ApiKey.objects.count() == before


def test_sign_in_and_out(world, r):  # noqa: F811 (r: a clean throttle)
    client = Client(enforce_csrf_checks=True)
    page = client.get(SIGNIN)
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.content).group(1)
    bad = client.post(
        SIGNIN, {"username": "alice", "password": "wrong", "csrfmiddlewaretoken": token.decode()}
    )
    assert bad.status_code == 200 and b'role="alert"' in bad.content
    good = client.post(
        SIGNIN, {"username": "alice", "password": "pw-alice", "csrfmiddlewaretoken": token.decode()}
    )
    assert good.status_code == 302
    overview = client.get("/console/o/org-a/")
    assert overview.status_code == 200
    body = overview.content
    # htmx sends the CSRF token from <body hx-headers>.
    token = re.search(rb'hx-headers=\'\{"X-CSRFToken": "([^"]+)"\}\'', body).group(1)
    out = client.post(reverse("console:signout"), HTTP_X_CSRFTOKEN=token.decode())
    assert out.status_code == 302
    assert client.get("/console/o/org-a/").status_code == 302


def test_stored_names_are_escaped_and_csp_is_sent(world):
    create_api_key(
        actor=SYSTEM,
        organization=world.org_a,
        name="<script>alert(1)</script>",
        scopes=["inference"],
        user=world.alice,
    )
    client = Client()
    client.force_login(world.victor)
    response = client.get(reverse("console:keys", kwargs={"org_slug": "org-a"}))
    assert response.status_code == 200
    assert b"<script>alert(1)" not in response.content
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in response.content
    assert response["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    # No inline script or style anywhere on the page (the CSP would block it anyway).
    for tag in re.findall(rb"<script[^>]*>", response.content):
        assert b"src=" in tag or b'type="application/json"' in tag, tag
    assert b"<style" not in response.content and b" style=" not in response.content
    assert b" onclick=" not in response.content.lower()


def test_viewer_sees_no_write_controls(world):
    alice_key(world)
    client = Client()
    client.force_login(world.victor)
    body = client.get(reverse("console:keys", kwargs={"org_slug": "org-a"})).content
    assert b"Create a key" not in body and b"Revoke" not in body
    client.force_login(world.alice)
    body = client.get(reverse("console:keys", kwargs={"org_slug": "org-a"})).content
    assert b"Create a key" in body and b"Revoke" in body


def test_secret_is_shown_once_and_never_stored(world):
    client = Client()
    client.force_login(world.bob)
    response = client.post(
        reverse("console:key-create", kwargs={"org_slug": "org-a"}),
        {"name": "bob's key", "scopes": ["inference"]},
    )
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    secret = re.search(rb'id="secret" class="secret" readonly value="([^"]+)"', response.content)
    secret = secret.group(1).decode()
    key = ApiKey.objects.get(name="bob's key")
    assert (key.user == world.bob and secret.startswith(key.prefix)) or key.prefix in secret
    listing = client.get(reverse("console:keys", kwargs={"org_slug": "org-a"}))
    assert secret.encode() not in listing.content
    assert all(secret not in str(v) for v in client.session.values())


def test_key_create_errors_name_the_field(world):
    client = Client()
    client.force_login(world.alice)
    url = reverse("console:key-create", kwargs={"org_slug": "org-a"})
    for data, field in (
        ({"name": "", "scopes": ["inference"]}, b'id="key-name-error"'),
        ({"name": "x", "scopes": ["nonsense"]}, b'id="key-scopes-error"'),
        ({"name": "x", "scopes": ["inference"], "team": "not-a-uuid"}, b'id="key-team-error"'),
    ):
        response = client.post(url, data)
        assert response.status_code == 400 and field in response.content, data


def test_key_list_is_paginated_searched_and_bounded(world, django_assert_max_num_queries):
    for i in range(120):
        create_api_key(
            actor=SYSTEM,
            organization=world.org_a,
            name=f"bulk-{i:03d}",
            scopes=["inference"],
            user=world.alice,
        )
    client = Client()
    client.force_login(world.victor)
    url = reverse("console:keys", kwargs={"org_slug": "org-a"})
    with django_assert_max_num_queries(12):
        first = client.get(url)
    assert first.content.count(b'<th scope="row">bulk-') == 50 and b"Page 1 of 3" in first.content
    third = client.get(url, {"page": 3})
    assert third.content.count(b'<th scope="row">bulk-') == 20
    found = client.get(url, {"q": "bulk-11"})
    assert found.content.count(b'<th scope="row">bulk-11') == 10  # bulk-110..119
    assert client.get(url, {"page": "junk"}).status_code == 200


def test_usage_page_and_csv_agree_with_the_api(world, r):  # noqa: F811
    seed(world, r)
    client = Client()
    client.force_login(world.bob)
    api = client.get("/api/v1/organizations/org-a/usage/summary/", RANGE | {"group_by": "model"})
    page = client.get(
        reverse("console:usage", kwargs={"org_slug": "org-a"}), RANGE | {"group_by": "model"}
    )
    assert page.status_code == 200
    csv_response = client.get(
        reverse("console:usage", kwargs={"org_slug": "org-a"}),
        RANGE | {"group_by": "model", "format": "csv"},
    )
    assert csv_response["Content-Type"].startswith("text/csv")
    lines = b"".join(csv_response.streaming_content).decode().splitlines()
    assert lines[0].startswith("group,requests,")
    from_csv = {line.split(",")[0]: int(line.split(",")[1]) for line in lines[1:]}
    from_api = {row["group"]: row["requests"] for row in api.json()["results"]}
    assert from_csv == from_api == {"embed": 1, "tiny-chat": 2}
    bad = client.get(reverse("console:usage", kwargs={"org_slug": "org-a"}), {"group_by": "week"})
    assert bad.status_code == 400 and b'id="group-error"' in bad.content


def test_overview_shows_chart_data_and_tables(world, r, django_assert_max_num_queries):  # noqa: F811
    import time

    from controlplane.quotas.ledger import LedgerConsumer

    from tests.controlplane.test_ledger import event, push

    push(
        r,
        [
            event("now-1", str(world.org_a.pk), ts=time.time()),
            event("now-2", str(world.org_a.pk), ts=time.time()),
        ],
    )
    consumer = LedgerConsumer(r, name="ov")
    while consumer.run_once(block=False).read:
        pass
    client = Client()
    client.force_login(world.bob)
    with django_assert_max_num_queries(20):  # independent of the number of rows
        body = client.get(reverse("console:overview", kwargs={"org_slug": "org-a"})).content
    data = re.search(rb'<script id="usage-chart" type="application/json">(.*?)</script>', body)
    assert data and b'"requests": [2]' in data.group(1)
    assert b"tiny-chat" in body
    today = time.strftime("%Y-%m-%d", time.gmtime()).encode()
    assert b'<th scope="row">' + today + b"</th>" in body
    client.force_login(world.victor)  # viewers see deployments and models, not usage
    body = client.get(reverse("console:overview", kwargs={"org_slug": "org-a"})).content
    assert b"usage-chart" not in body and b"tiny-chat" in body


CONSOLE = Path(__file__).resolve().parents[2] / "platform/controlplane/console"


def test_vendored_files_match_their_record():
    vendor = CONSOLE / "static/console/vendor"
    table = (vendor / "VENDORED.md").read_text()
    rows = re.findall(r"^\| (\S+) \| (\S+) \| (\S+) \| ([^|]+) \| ([0-9a-f]{64}) \|$", table, re.M)
    assert {row[0] for row in rows} == {"uPlot.iife.min.js", "uPlot.min.css"}
    for name, package, version, licence, digest in rows:
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
        assert package == "uplot" and version == "1.6.32" and licence.startswith("MIT")
    assert "MIT License" in (vendor / "uPlot.LICENSE").read_text()
    # htmx comes from the django-htmx package, as the base template says.
    from django.contrib.staticfiles import finders

    assert finders.find("django_htmx/htmx-2.min.js")
    base = (CONSOLE / "templates/console/base.html").read_text()
    assert "django_htmx/htmx-2.min.js" in base


def test_sign_in_is_throttled_per_user_and_address(world, r):  # noqa: F811
    client = Client()
    for _ in range(5):
        bad = client.post(SIGNIN, {"username": "alice", "password": "wrong"})
        assert bad.status_code == 200
    refused = client.post(SIGNIN, {"username": "alice", "password": "pw-alice"})
    assert refused.status_code == 429 and b"Too many failed attempts" in refused.content
    assert client.get("/console/o/org-a/").status_code == 302  # not signed in
    # Another user name from the same address is not locked out.
    assert client.post(SIGNIN, {"username": "bob", "password": "pw-bob"}).status_code == 302
