"""The console's audit log (filters, diff, streamed exports), the playground (its
one-hour key and the relay of the gateway's stream) and the overview's per-model,
latency and monthly-budget figures."""

from __future__ import annotations

import datetime as dt
import json
import re
import time

import pytest
from asgiref.sync import async_to_sync
from controlplane.audit.models import AuditEvent
from controlplane.console import playground
from controlplane.quotas.models import LimitPolicy
from controlplane.tenancy.models import ApiKey
from controlplane.tenancy.services import create_api_key, create_team
from django.conf import settings
from django.test import AsyncClient, Client
from django.urls import reverse
from django.utils import timezone

from gateway.contract import parse_api_key, verify_api_key_secret
from tests.conftest import SYSTEM
from tests.controlplane.test_usage_rollup import r  # noqa: F401
from tests.gateway.fakes import FakeUpstream, ServerThread

pytestmark = pytest.mark.django_db

CALLERS = ("alice", "bob", "victor", "oscar", "root", None)

# url name -> (method, expected status per caller: owner A, member A, viewer A,
# admin B, platform admin, anonymous). 302 for anonymous = sent to sign in.
ROLE_TABLE = {
    "audit": ("GET", (200, 403, 403, 404, 200, 302)),
    "audit-export": ("GET", (200, 403, 403, 404, 200, 302)),
    "audit-event": ("GET", (200, 403, 403, 404, 200, 302)),
    "playground": ("GET", (200, 200, 403, 404, 200, 302)),
    # No gateway listens in the role test: an allowed caller gets the relay's 502.
    "playground-chat": ("POST", (502, 502, 403, 404, 502, 302)),
}


def org_url(name: str, **kwargs) -> str:
    return reverse(f"console:{name}", kwargs={"org_slug": "org-a", **kwargs})


def first_event_seq(world) -> int:
    return AuditEvent.objects.filter(organization_id=world.org_a.pk).order_by("seq")[0].seq


@pytest.fixture
def no_gateway(settings):
    from tests.support.vllm import free_port

    settings.CONSOLE_GATEWAY_URL = f"http://127.0.0.1:{free_port()}/v1"


@pytest.mark.parametrize("name", sorted(ROLE_TABLE))
@pytest.mark.parametrize("index", range(len(CALLERS)), ids=[str(c) for c in CALLERS])
def test_role_table(world, no_gateway, name, index):
    caller = CALLERS[index]
    method, expected = ROLE_TABLE[name]
    client = Client()
    if caller:
        client.force_login(getattr(world, caller))
    kwargs = {"seq": first_event_seq(world)} if name == "audit-event" else {}
    url = org_url(name, **kwargs)
    before = (ApiKey.objects.count(), AuditEvent.objects.count())
    if method == "POST":
        response = client.post(url, {"model": "tiny-chat", "prompt": "hello"})
    else:
        response = client.get(url)
    assert response.status_code == expected[index], (name, caller, response.content[:300])
    if caller is None and response.status_code == 302:
        assert response["Location"].startswith("/console/signin/")
    if response.status_code in (302, 403, 404):
        assert (ApiKey.objects.count(), AuditEvent.objects.count()) == before


# --------------------------------------------------------------------------- audit
def make_keys(world, names):
    return [
        create_api_key(
            actor=SYSTEM, organization=world.org_a, name=n, scopes=["inference"], user=world.alice
        )[0]
        for n in names
    ]


def test_audit_lists_only_this_organization_newest_first(world):
    create_api_key(
        actor=SYSTEM, organization=world.org_b, name="org-b-secret-key", scopes=["inference"]
    )
    make_keys(world, ["zz-older", "zz-newer"])
    client = Client()
    client.force_login(world.alice)
    body = client.get(org_url("audit")).content.decode()
    assert "org-b-secret-key" not in body
    assert body.index("zz-newer") < body.index("zz-older")
    # Other organizations' events are 404 by number, even for a valid seq.
    other = AuditEvent.objects.filter(organization_id=world.org_b.pk).first()
    assert client.get(org_url("audit-event", seq=other.seq)).status_code == 404


def test_audit_filters(world):
    make_keys(world, ["alpha", "beta"])
    client = Client()
    client.force_login(world.alice)
    url = org_url("audit")

    def shown(**params) -> set[int]:
        response = client.get(url, params)
        assert response.status_code == 200, response.content[:300]
        return {
            int(s)
            for s in re.findall(rb'<th scope="row"><a href="[^"]+">(\d+)</a>', response.content)
        }

    everything = set(
        AuditEvent.objects.filter(organization_id=world.org_a.pk).values_list("seq", flat=True)
    )
    assert shown() == everything
    keys = set(
        AuditEvent.objects.filter(
            organization_id=world.org_a.pk, action__startswith="apikey"
        ).values_list("seq", flat=True)
    )
    assert shown(action="apikey") == keys and len(keys) == 2
    beta = AuditEvent.objects.get(target_repr__contains="beta")
    assert shown(target="beta") == {beta.seq}
    assert shown(target=beta.target_id) == {beta.seq}
    assert shown(actor="tests") == everything  # the system actor of the fixtures
    assert shown(actor="nobody") == set()
    future = (timezone.now() + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    past = (timezone.now() - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    assert shown(since=future) == set()
    assert shown(since=past, until=future) == everything
    bad = client.get(url, {"since": "yesterday"})
    assert bad.status_code == 400 and b'id="audit-since-error"' in bad.content


def test_audit_list_is_paginated_with_bounded_queries(world, django_assert_max_num_queries):
    make_keys(world, [f"k{i}" for i in range(60)])
    client = Client()
    client.force_login(world.alice)
    with django_assert_max_num_queries(12):
        first = client.get(org_url("audit"))
    count = AuditEvent.objects.filter(organization_id=world.org_a.pk).count()
    assert first.content.count(b'<th scope="row"><a href=') == 50
    assert f"Page 1 of {(count + 49) // 50}".encode() in first.content
    second = client.get(org_url("audit"), {"page": 2})
    assert second.content.count(b'<th scope="row"><a href=') == count - 50


def test_audit_event_shows_its_diff_escaped(world):
    (key,) = make_keys(world, ["<script>alert(1)</script>"])
    event = AuditEvent.objects.get(action="apikey.create", target_id=str(key.pk))
    client = Client()
    client.force_login(world.alice)
    body = client.get(org_url("audit-event", seq=event.seq)).content
    assert b"<script>alert(1)" not in body
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in body
    # The diff table: field, before, after as the event stores them.
    assert re.search(rb'<th scope="row">name</th><td><code>\(none\)</code></td>', body)
    assert (
        b'<th scope="row">scopes</th><td><code>(none)</code></td><td><code>[&quot;inference&quot;]'
        in body
    )
    list_body = client.get(org_url("audit")).content
    assert b"<script>alert(1)" not in list_body


def test_audit_exports_stream_csv_and_json_lines(world):
    make_keys(world, ['=HYPERLINK("http://evil")', "plain"])
    client = Client()
    client.force_login(world.alice)
    response = client.get(org_url("audit-export"), {"format": "csv", "action": "apikey"})
    assert response.streaming and response["Content-Type"].startswith("text/csv")
    assert 'filename="audit-org-a.csv"' in response["Content-Disposition"]
    text = b"".join(response.streaming_content).decode()
    lines = text.splitlines()
    assert lines[0].startswith("seq,occurred_at,actor_type")
    assert len(lines) == 3  # header + two apikey.create events, oldest first
    assert "'=HYPERLINK" in text and ",=HYPERLINK" not in text
    response = client.get(org_url("audit-export"), {"format": "jsonl"})
    assert response.streaming and response["Content-Type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    assert [row["seq"] for row in rows] == sorted(
        AuditEvent.objects.filter(organization_id=world.org_a.pk).values_list("seq", flat=True)
    )
    assert {row["organization_id"] for row in rows} == {str(world.org_a.pk)}
    created = [row for row in rows if row["target_repr"].startswith("plain")]
    assert created[0]["changes"]["name"] == [None, "plain"]
    assert client.get(org_url("audit-export"), {"format": "xml"}).status_code == 400


# --------------------------------------------------------------------------- playground
@pytest.fixture
def gateway(settings):
    upstream = FakeUpstream(name="gw", api_key=None, stream_chunks=3)
    server = ServerThread(upstream).start()
    settings.CONSOLE_GATEWAY_URL = f"{server.url}/v1"
    yield upstream
    server.stop()


def chat(client, prompt="hello", model="tiny-chat"):
    return client.post(org_url("playground-chat"), {"model": model, "prompt": prompt})


def bearer(upstream) -> str:
    return upstream.requests[-1]["headers"]["authorization"].removeprefix("Bearer ")


def test_playground_relays_the_gateway_stream_with_a_one_hour_key(world, gateway):
    client = Client()
    client.force_login(world.bob)
    page = client.get(org_url("playground"))
    assert page.status_code == 200 and b"tiny-chat" in page.content
    assert not ApiKey.objects.filter(user=world.bob).exists()  # a GET creates nothing
    response = chat(client)
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("text/plain")
    assert b"".join(response.streaming_content) == b"tok0 tok1 tok2 "
    sent = gateway.requests[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["stream"] is True and sent["body"]["model"] == "tiny-chat"
    assert sent["body"]["messages"] == [{"role": "user", "content": "hello"}]
    key = ApiKey.objects.get(user=world.bob)
    assert key.scopes == ["inference"] and key.revoked_at is None
    lifetime = key.expires_at - timezone.now()
    assert dt.timedelta(minutes=58) < lifetime <= dt.timedelta(hours=1)
    parsed = parse_api_key(bearer(gateway))
    assert parsed.prefix == key.prefix
    assert verify_api_key_secret(parsed.secret, key.secret_hash, settings.API_KEY_PEPPER)
    assert AuditEvent.objects.filter(action="apikey.create", target_id=str(key.pk)).count() == 1
    # Created once: the next chat reuses it.
    assert b"".join(chat(client, "again").streaming_content) == b"tok0 tok1 tok2 "
    assert ApiKey.objects.filter(user=world.bob).count() == 1
    assert (
        bearer(gateway) == bearer(gateway) and parse_api_key(bearer(gateway)).prefix == key.prefix
    )


def test_playground_secret_is_never_rendered(world, gateway):
    client = Client()
    client.force_login(world.alice)
    b"".join(chat(client).streaming_content)
    secret = bearer(gateway)
    assert secret in str(client.session[playground.SESSION_KEY])  # server-side only
    key = ApiKey.objects.get(user=world.alice)
    pages = [
        org_url("playground"),
        org_url("keys"),
        org_url("overview"),
        org_url("audit"),
        org_url("audit-event", seq=AuditEvent.objects.get(target_id=str(key.pk)).seq),
        reverse("console:home"),
    ]
    for url in pages:
        response = client.get(url)
        assert response.status_code in (200, 302), url
        assert secret.encode() not in response.content, url
        assert parse_api_key(secret).secret.encode() not in response.content, url
    body = client.get(org_url("playground")).content
    assert key.display_prefix.encode() in body  # the page names the key, not its secret
    for fmt in ("csv", "jsonl"):
        export = b"".join(client.get(org_url("audit-export"), {"format": fmt}).streaming_content)
        assert parse_api_key(secret).secret.encode() not in export


def test_sign_out_revokes_the_playground_key(world, gateway):
    client = Client()
    client.force_login(world.bob)
    b"".join(chat(client).streaming_content)
    key = ApiKey.objects.get(user=world.bob)
    assert client.post(reverse("console:signout")).status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert AuditEvent.objects.filter(action="apikey.revoke", target_id=str(key.pk)).exists()
    # Signing in again makes a fresh key on the next chat.
    client.force_login(world.bob)
    b"".join(chat(client).streaming_content)
    assert ApiKey.objects.filter(user=world.bob, revoked_at=None).count() == 1


def test_a_revoked_or_expired_key_is_replaced(world, gateway):
    from controlplane.tenancy.services import revoke_api_key

    client = Client()
    client.force_login(world.bob)
    b"".join(chat(client).streaming_content)
    first = ApiKey.objects.get(user=world.bob)
    revoke_api_key(actor=SYSTEM, key=first)
    b"".join(chat(client).streaming_content)
    second = ApiKey.objects.get(user=world.bob, revoked_at=None)
    assert second != first and parse_api_key(bearer(gateway)).prefix == second.prefix


def test_playground_refusals_change_nothing(world, gateway):
    client = Client()
    client.force_login(world.bob)
    for data in (
        {"model": "not-granted", "prompt": "hi"},
        {"model": "tiny-chat", "prompt": "   "},
        {"model": "tiny-chat", "prompt": "x" * 20_001},
    ):
        response = client.post(org_url("playground-chat"), data)
        assert response.status_code == 400, data
    assert not ApiKey.objects.filter(user=world.bob).exists() and gateway.hits == 0
    # Nothing acts on GET parameters.
    assert (
        client.get(org_url("playground-chat"), {"model": "tiny-chat", "prompt": "hi"}).status_code
        == 405
    )
    assert (
        client.get(org_url("playground"), {"model": "tiny-chat", "prompt": "hi"}).status_code == 200
    )
    assert gateway.hits == 0 and not ApiKey.objects.filter(user=world.bob).exists()
    # A POST without the CSRF token is refused.
    forged = Client(enforce_csrf_checks=True)
    forged.force_login(world.bob)
    assert chat(forged).status_code == 403 and gateway.hits == 0


def test_gateway_errors_are_shown_as_text(world, gateway):
    client = Client()
    client.force_login(world.bob)
    gateway.fail_status = 429
    response = chat(client)
    assert response.status_code == 429 and b"gw failing" in response.content
    gateway.fail_status = 503
    response = chat(client)
    assert response.status_code == 502 and b"(503)" in response.content
    gateway.reset()
    gateway.drop_after_chunks = 1
    body = b"".join(chat(client).streaming_content)
    assert body.startswith(b"tok0 ") and b"broke off" in body


def test_under_asgi_the_answer_streams_chunk_by_chunk(world, gateway):
    """Served by ASGI, Django would read a sync iterator whole before sending it."""
    gateway.chunk_delay = 0.3
    client = AsyncClient()
    client.force_login(world.bob)

    async def run():
        response = await client.post(
            org_url("playground-chat"), {"model": "tiny-chat", "prompt": "hi"}
        )
        assert response.status_code == 200 and response.is_async
        start, arrivals = time.monotonic(), []
        async for chunk in response.streaming_content:
            arrivals.append((time.monotonic() - start, chunk))
        return arrivals

    arrivals = async_to_sync(run)()
    assert b"".join(chunk for _, chunk in arrivals) == b"tok0 tok1 tok2 "
    assert arrivals[0][0] < 0.2 and arrivals[-1][0] > 0.5


def test_under_asgi_the_audit_export_streams(world):
    make_keys(world, ["one", "two"])
    client = AsyncClient()
    client.force_login(world.alice)

    async def run():
        response = await client.get(org_url("audit-export"), {"format": "jsonl"})
        assert response.is_async
        return b"".join([chunk async for chunk in response.streaming_content])

    lines = async_to_sync(run)().splitlines()
    assert len(lines) == AuditEvent.objects.filter(organization_id=world.org_a.pk).count()


def test_streamed_pulls_one_chunk_at_a_time_and_closes():
    from controlplane.console.streaming import streamed
    from django.test import AsyncRequestFactory

    pulled, closed = [], []

    def chunks():
        try:
            for i in range(3):
                pulled.append(i)
                yield f"{i}"
        finally:
            closed.append(True)

    response = streamed(AsyncRequestFactory().get("/"), chunks())
    assert response.is_async

    async def first_then_close():
        iterator = aiter(response.streaming_content)
        first = await anext(iterator)
        await iterator.aclose()
        return first

    assert async_to_sync(first_then_close)() == b"0" and pulled == [0]
    response.close()
    assert closed == [True]


def test_playground_viewer_sees_no_form(world):
    client = Client()
    client.force_login(world.victor)
    assert client.get(org_url("playground")).status_code == 403
    client.force_login(world.bob)
    body = client.get(org_url("playground")).content
    assert b'name="prompt"' in body and b'data-stream-to="playground-answer"' in body
    for tag in re.findall(rb"<script[^>]*>", body):
        assert b"src=" in tag or b'type="application/json"' in tag, tag


# --------------------------------------------------------------------------- overview
def seed_now(world, r, events):  # noqa: F811
    from controlplane.quotas.ledger import LedgerConsumer

    from tests.controlplane.test_ledger import event, push

    push(r, [event(request_id, str(world.org_a.pk), **extra) for request_id, extra in events])
    consumer = LedgerConsumer(r, name="ops")
    while consumer.run_once(block=False).read:
        pass


def chart_data(body: bytes, chart_id: str) -> dict:
    found = re.search(
        rb'<script id="' + chart_id.encode() + rb'" type="application/json">(.*?)</script>', body
    )
    assert found, chart_id
    return json.loads(found.group(1))


def test_overview_charts_by_model_latency_and_budgets(world, r, django_assert_max_num_queries):  # noqa: F811
    team = create_team(actor=SYSTEM, organization=world.org_a, slug="research", name="Research <b>")
    LimitPolicy.objects.create(organization=world.org_a, monthly_tokens=1000)
    LimitPolicy.objects.create(organization=world.org_a, team=team, monthly_tokens=100)
    now = time.time()
    seed_now(
        world,
        r,
        [
            ("a1", {"ts": now, "model": "tiny-chat", "prompt_tokens": 10, "completion_tokens": 20}),
            ("a2", {"ts": now, "model": "tiny-chat", "status": 500, "latency_ms": 900.0}),
            ("a3", {"ts": now, "model": "embed", "team": str(team.pk), "prompt_tokens": 85,
                    "completion_tokens": 0}),
        ],
    )  # fmt: skip
    client = Client()
    client.force_login(world.bob)
    with django_assert_max_num_queries(20):
        body = client.get(org_url("overview")).content
    requests = chart_data(body, "requests-by-model")
    by_label = {s["label"]: s["values"] for s in requests["series"]}
    assert by_label == {"tiny-chat": [2], "embed": [1]}
    tokens = {s["label"]: s["values"] for s in chart_data(body, "tokens-by-model")["series"]}
    assert tokens == {"tiny-chat": [30 + 42], "embed": [85]}
    errors = {s["label"]: s["values"] for s in chart_data(body, "errors-by-model")["series"]}
    assert errors == {"tiny-chat": [1], "embed": [0]}
    latency = chart_data(body, "latency-chart")
    assert len(latency["x"]) == 1
    assert [s["label"] for s in latency["series"]][:2] == ["Latency p50 (ms)", "Latency p95 (ms)"]
    assert latency["series"][1]["values"] == [1000.0]  # the 900 ms request's bucket bound
    # Every chart has a caption and a data table.
    for chart_id in ("requests-by-model", "tokens-by-model", "errors-by-model", "latency-chart"):
        assert f'id="{chart_id}-caption"'.encode() in body
    assert b"<caption>Requests per UTC day and model</caption>" in body
    assert b"<caption>Per UTC hour, last 24 hours</caption>" in body
    # This month's tokens against the monthly limits, state in words; names escaped.
    text = re.sub(rb">\s+<", b"><", body)
    assert b'<th scope="row">Org A</th><td>organization</td><td>157</td><td>1000</td>' in text
    assert b"16 %" in text and b"within limit" in text
    assert b"Research &lt;b&gt;</th><td>team</td><td>85</td><td>100</td>" in text
    assert b"over 80 %" in text
    assert b"Research <b>" not in body
    client.force_login(world.victor)  # viewers: deployments and models only
    body = client.get(org_url("overview")).content
    assert b"requests-by-model" not in body and b"This month" not in body


def test_overview_lumps_models_beyond_the_busiest_eight(world, r):  # noqa: F811
    seed_now(world, r, [(f"m{i}", {"ts": time.time(), "model": f"model-{i}"}) for i in range(10)])
    client = Client()
    client.force_login(world.bob)
    body = client.get(org_url("overview")).content
    series = chart_data(body, "requests-by-model")["series"]
    assert len(series) == 9 and series[-1] == {"label": "other models", "values": [2]}
    assert sum(s["values"][0] for s in series) == 10
