"""Unit tests of the gateway's pure parts: settings, errors, auth, policy, routing."""

from __future__ import annotations

import time

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import contract
from gateway.auth import authenticate, presented_key, require_scope
from gateway.errors import GatewayError
from gateway.policy import plan_request
from gateway.routing import Router, rendezvous_order
from gateway.settings import Settings, SettingsError
from gateway.snapshot import CompiledSnapshot, peek_version
from tests.gateway.fakes import PEPPER, SnapshotBuilder, route

# --------------------------------------------------------------------------- settings


def test_settings_require_a_pepper():
    with pytest.raises(SettingsError, match="API_KEY_PEPPER"):
        Settings.from_env({})


def test_settings_read_pepper_from_file(tmp_path):
    path = tmp_path / "pepper"
    path.write_text("from-file\n")
    assert Settings.from_env({"API_KEY_PEPPER_FILE": str(path)}).api_key_pepper == b"from-file"
    with pytest.raises(SettingsError, match="not both"):
        Settings.from_env({"API_KEY_PEPPER_FILE": str(path), "API_KEY_PEPPER": "x"})
    with pytest.raises(SettingsError, match="cannot read"):
        Settings.from_env({"API_KEY_PEPPER_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GATEWAY_MAX_BODY_BYTES", "lots", "expected an integer"),
        ("GATEWAY_MAX_BODY_BYTES", "0", "at least 1"),
        ("GATEWAY_CONNECT_TIMEOUT", "soon", "expected a number"),
        ("GATEWAY_LIMITS_FAIL_MODE", "sometimes", "expected one of closed, open"),
        ("GATEWAY_ROUTING", "random", "expected one of"),
        ("GATEWAY_ACCESS_LOG", "perhaps", "expected true/false"),
        ("GATEWAY_REDIS_URL", "http://x", "expected redis://"),
    ],
)
def test_settings_fail_at_start_on_bad_values(name, value, message):
    with pytest.raises(SettingsError, match=message) as info:
        Settings.from_env({"API_KEY_PEPPER": "p", name: value})
    assert name.split("_")[0] in str(info.value)


def test_slot_ttl_must_outlast_the_upstream_timeouts():
    with pytest.raises(SettingsError, match="GATEWAY_CONCURRENCY_SLOT_TTL"):
        Settings.from_env(
            {"API_KEY_PEPPER": "p", "GATEWAY_CONCURRENCY_SLOT_TTL": "60"}  # < 120 s first byte
        )


def test_settings_defaults_and_redis_url_precedence():
    s = Settings.from_env({"API_KEY_PEPPER": "p", "REDIS_URL": "redis://r:1/2"})
    assert s.redis_url == "redis://r:1/2"
    assert s.limits_fail_mode == "closed"
    s = Settings.from_env(
        {"API_KEY_PEPPER": "p", "REDIS_URL": "redis://r:1/2", "GATEWAY_REDIS_URL": "redis://g/0"}
    )
    assert s.redis_url == "redis://g/0"
    s = Settings.from_env(
        {"API_KEY_PEPPER": "p", "GATEWAY_AFFINITY_MODELS": "a, b,", "GATEWAY_WORKERS": "4"}
    )
    assert s.affinity_models == ("a", "b")
    assert s.workers == 4


# --------------------------------------------------------------------------- errors


def test_error_body_has_openai_shape():
    err = GatewayError(400, "bad n", code="invalid_value", param="n")
    assert orjson.loads(err.body()) == {
        "error": {
            "message": "bad n",
            "type": "invalid_request_error",
            "param": "n",
            "code": "invalid_value",
        }
    }
    assert GatewayError(429, "slow down", code="rate_limit_exceeded").type == "rate_limit_error"


# --------------------------------------------------------------------------- auth


@pytest.fixture
def snap() -> SnapshotBuilder:
    b = SnapshotBuilder()
    b.org("org-1", slug="one", models=("m1", "m2", "m3", "ext"))
    b.org("org-2", slug="two", models=("m1",), allow_external=True)
    b.team("team-1", "org-1")
    b.key("k-ok", "org-1", team="team-1")
    b.key("k-revoked", "org-1", revoked=True)
    b.key("k-expired", "org-1", expires_at=time.time() - 1)
    b.key("k-future", "org-1", expires_at=time.time() + 3600)
    b.key("k-manage", "org-1", scopes=(contract.SCOPE_MANAGE,))
    b.key("k-limited", "org-1", models=("m1", "not-in-org"), limits={"max_tokens": 100})
    b.key("k-orphan", "org-gone")
    b.key("k-two", "org-2")
    b.model("m1", [route("r1", "http://127.0.0.1:1")], context_length=1000)
    b.model("m2", [route("r1", "http://127.0.0.1:1")], task="embedding")
    b.model(
        "m3", [route("r1", "http://127.0.0.1:1"), route("x", "http://127.0.0.1:2", external=True)]
    )
    b.model("ext", [route("x", "http://127.0.0.1:2", external=True)])
    b.model("not-allowed", [route("r1", "http://127.0.0.1:1")])
    return b


def compiled(b: SnapshotBuilder) -> CompiledSnapshot:
    return CompiledSnapshot(b.build())


@pytest.mark.parametrize(
    "headers",
    [
        [(b"authorization", b"Bearer KEY")],
        [(b"Authorization", b"bearer   KEY ")],
        [(b"api-key", b"KEY")],
        [(b"x-api-key", b"KEY")],
        [(b"authorization", b"Basic abc"), (b"x-api-key", b"KEY")],
    ],
)
def test_each_header_form_presents_the_key(headers):
    assert presented_key(headers) == "KEY"


def test_no_key_header():
    assert presented_key([(b"content-type", b"application/json")]) is None


def test_authenticate_accepts_a_valid_key(snap):
    principal = authenticate(snap.full_keys["k-ok"], compiled(snap), PEPPER)
    assert principal.key_id == "k-ok"
    assert principal.org["slug"] == "one"
    assert principal.team_id == "team-1"
    require_scope(principal)
    assert authenticate(snap.full_keys["k-future"], compiled(snap), PEPPER).key_id == "k-future"


@pytest.mark.parametrize(
    ("key_id", "code"),
    [
        ("k-revoked", "revoked_api_key"),
        ("k-expired", "expired_api_key"),
        ("k-orphan", "invalid_api_key"),
    ],
)
def test_authenticate_refuses_dead_keys(snap, key_id, code):
    with pytest.raises(GatewayError) as info:
        authenticate(snap.full_keys[key_id], compiled(snap), PEPPER)
    assert info.value.status == 401
    assert info.value.code == code


def test_authenticate_refuses_wrong_secret_and_pepper(snap):
    full = snap.full_keys["k-ok"]
    prefix, secret = full[3:].split(".", 1)
    tampered = f"sk-{prefix}.{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
    for raw, pepper in (
        (tampered, PEPPER),
        (full, b"another pepper"),
        (None, PEPPER),
        ("sk-x", PEPPER),
    ):
        with pytest.raises(GatewayError) as info:
            authenticate(raw, compiled(snap), pepper)
        assert info.value.status == 401


def test_scope_inference_is_required(snap):
    principal = authenticate(snap.full_keys["k-manage"], compiled(snap), PEPPER)
    with pytest.raises(GatewayError) as info:
        require_scope(principal)
    assert info.value.status == 403
    assert info.value.code == "insufficient_scope"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_keys_never_authenticate_and_never_crash(raw):
    b = SnapshotBuilder()
    b.org("o", models=())
    b.key("k", "o")
    with pytest.raises(GatewayError) as info:
        authenticate(raw, CompiledSnapshot(b.build()), PEPPER)
    assert info.value.status == 401


# --------------------------------------------------------------------------- policy

SETTINGS = Settings(
    api_key_pepper=PEPPER,
    max_n=4,
    max_embedding_inputs=3,
    max_tokens_cap=2000,
    default_max_tokens=500,
)


def plan(snap, key_id, endpoint, body, settings_=SETTINGS):
    s = compiled(snap)
    principal = authenticate(snap.full_keys[key_id], s, PEPPER)
    return plan_request(endpoint, orjson.dumps(body), principal, s, settings_)


def refused(snap, key_id, endpoint, body) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        plan(snap, key_id, endpoint, body)
    return info.value


CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}


def test_policy_plans_a_chat_request(snap):
    p = plan(snap, "k-ok", "chat.completions", {**CHAT, "max_tokens": 50, "n": 2})
    assert p.alias == "m1"
    assert [r["id"] for r in p.routes] == ["r1"]
    assert p.reserve_tokens == p.prompt_estimate + 100
    assert p.inject_max_tokens is None


def test_policy_rejects_invalid_json(snap):
    s = compiled(snap)
    principal = authenticate(snap.full_keys["k-ok"], s, PEPPER)
    for raw in (b"{not json", b"[1, 2]", b""):
        with pytest.raises(GatewayError) as info:
            plan_request("chat.completions", raw, principal, s, SETTINGS)
        assert (info.value.status, info.value.code) == (400, "invalid_json")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m1"}, "messages"),
        ({"model": "m1", "messages": []}, "messages"),
        ({"model": "m1", "messages": ["hi"]}, "messages[0]"),
        ({**CHAT, "stream": "yes"}, "stream"),
        ({**CHAT, "n": 0}, "n"),
        ({**CHAT, "n": 5}, "n"),
        ({**CHAT, "n": True}, "n"),
        ({**CHAT, "max_tokens": 0}, "max_tokens"),
        ({**CHAT, "max_tokens": 2001}, "max_tokens"),
        ({**CHAT, "max_completion_tokens": 2001}, "max_completion_tokens"),
        ({**CHAT, "temperature": 3}, "temperature"),
        ({**CHAT, "user": 5}, "user"),
        ({**CHAT, "stream_options": []}, "stream_options"),
    ],
)
def test_policy_names_the_invalid_parameter(snap, body, param):
    err = refused(snap, "k-ok", "chat.completions", body)
    assert (err.status, err.param) == (400, param)


def test_policy_caps_embedding_inputs_and_checks_shape(snap):
    ok = plan(snap, "k-ok", "embeddings", {"model": "m2", "input": ["a", "b", "c"]})
    assert ok.reserve_tokens == ok.prompt_estimate
    err = refused(snap, "k-ok", "embeddings", {"model": "m2", "input": ["a", "b", "c", "d"]})
    assert (err.status, err.param, err.code) == (400, "input", "too_many_inputs")
    err = refused(snap, "k-ok", "embeddings", {"model": "m2", "input": [{"a": 1}]})
    assert (err.status, err.param) == (400, "input")


def test_policy_model_not_found_is_404(snap):
    err = refused(snap, "k-ok", "chat.completions", {**CHAT, "model": "nope"})
    assert (err.status, err.code, err.param) == (404, "model_not_found", "model")


def test_policy_model_allowed_is_key_models_intersect_org_models(snap):
    # not in the org's list
    assert refused(snap, "k-ok", "chat.completions", {**CHAT, "model": "not-allowed"}).status == 403
    # in the org's list but not in the key's
    assert refused(snap, "k-limited", "chat.completions", {**CHAT, "model": "m3"}).status == 403
    # in the key's list but not in the org's
    snap.model("not-in-org", [route("r1", "http://127.0.0.1:1")])
    assert (
        refused(snap, "k-limited", "chat.completions", {**CHAT, "model": "not-in-org"}).status
        == 403
    )
    assert plan(snap, "k-limited", "chat.completions", CHAT).alias == "m1"
    s = compiled(snap)
    assert s.allowed_models(snap.entry("k-limited")) == {"m1"}
    assert s.allowed_models(snap.entry("k-ok")) == {"m1", "m2", "m3", "ext"}


def test_policy_external_routes_need_allow_external(snap):
    err = refused(snap, "k-ok", "chat.completions", {**CHAT, "model": "ext"})
    assert (err.status, err.code) == (403, "external_not_allowed")
    mixed = plan(snap, "k-ok", "chat.completions", {**CHAT, "model": "m3"})
    assert [r["id"] for r in mixed.routes] == ["r1"]  # the external route is dropped
    snap.orgs["org-1"]["allow_external"] = True
    assert [
        r["id"] for r in plan(snap, "k-ok", "chat.completions", {**CHAT, "model": "m3"}).routes
    ] == ["r1", "x"]


def test_policy_endpoint_must_match_the_model_task(snap):
    err = refused(snap, "k-ok", "chat.completions", {**CHAT, "model": "m2"})
    assert (err.status, err.param) == (400, "model")


def test_policy_key_max_tokens_limit_and_default_reservation(snap):
    err = refused(snap, "k-limited", "chat.completions", {**CHAT, "max_tokens": 101})
    assert (err.status, err.param, err.code) == (400, "max_tokens", "max_tokens_too_large")
    # Missing max_tokens: reserve min(cap, default, context) and send it upstream
    # because a token limit applies to this key.
    p = plan(snap, "k-limited", "chat.completions", CHAT)
    assert p.inject_max_tokens == 100
    assert p.reserve_tokens == p.prompt_estimate + 100
    # No token limit anywhere: reserve the default bounded by the context, leave the body.
    p = plan(snap, "k-ok", "chat.completions", CHAT)
    assert p.inject_max_tokens is None
    assert p.reserve_tokens == p.prompt_estimate + 500
    snap.models["m1"]["context_length"] = 300
    p = plan(snap, "k-ok", "chat.completions", CHAT)
    assert p.reserve_tokens == p.prompt_estimate + 300


def test_policy_stream_usage_flags(snap):
    p = plan(snap, "k-ok", "chat.completions", {**CHAT, "stream": True})
    assert p.stream and not p.client_wants_usage
    p = plan(
        snap,
        "k-ok",
        "chat.completions",
        {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert p.client_wants_usage


# --------------------------------------------------------------------------- routing


def routes(n: int) -> list[contract.Route]:
    return [route(f"r{i}", f"http://10.0.0.{i}:8000") for i in range(n)]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=50, unique=True))
def test_rendezvous_moves_only_the_removed_routes_keys(keys):
    five = routes(5)
    four = [r for r in five if r["id"] != "r2"]
    for key in keys:
        before = rendezvous_order(key, five)[0]["id"]
        after = rendezvous_order(key, four)[0]["id"]
        assert after == before or before == "r2"
        assert rendezvous_order(key, five)[0]["id"] == before  # stable


def test_rendezvous_spreads_keys():
    owners = {rendezvous_order(f"prefix-{i}", routes(4))[0]["id"] for i in range(200)}
    assert owners == {"r0", "r1", "r2", "r3"}


def test_affinity_uses_the_same_replica_for_a_key():
    router = Router(strategy="affinity")
    first = router.order("m", routes(3), "u:alice")[0]["id"]
    for _ in range(20):
        router.acquire(first)  # load does not move an affinity key
        assert router.order("m", routes(3), "u:alice")[0]["id"] == first


def test_affinity_per_model_only():
    router = Router(affinity_models=("sticky",))
    assert router.uses_affinity("sticky") and not router.uses_affinity("other")


def test_least_outstanding_prefers_the_idle_route():
    router = Router(strategy="least-outstanding")
    rs = routes(3)
    router.acquire("r0")
    router.acquire("r0")
    router.acquire("r1")
    assert router.order("m", rs, None)[0]["id"] == "r2"
    router.release("r0")
    router.release("r0")
    router.acquire("r2")
    assert router.order("m", rs, None)[0]["id"] == "r0"


def test_least_outstanding_round_robins_ties():
    router = Router(strategy="least-outstanding")
    firsts = {router.order("m", routes(3), None)[0]["id"] for _ in range(6)}
    assert firsts == {"r0", "r1", "r2"}


def test_ejection_and_recovery():
    now = [1000.0]
    router = Router(eject_after_failures=2, eject_seconds=10, clock=lambda: now[0])
    rs = routes(2)
    assert not router.record_failure("r0")
    assert router.record_failure("r0")  # second consecutive failure ejects
    for _ in range(5):
        assert [r["id"] for r in router.order("m", rs, None)] == ["r1"]
    now[0] += 10.5
    assert {r["id"] for r in router.order("m", rs, None)} == {"r0", "r1"}
    # a success resets the count
    router.record_failure("r1")
    router.record_success("r1")
    assert not router.record_failure("r1")


def test_all_ejected_is_panic_mode():
    now = [0.0]
    router = Router(eject_after_failures=1, eject_seconds=10, clock=lambda: now[0])
    router.record_failure("r0")
    now[0] += 1
    router.record_failure("r1")
    assert [r["id"] for r in router.order("m", routes(2), None)] == ["r0", "r1"]


def test_no_routes_no_candidates():
    assert Router().order("m", [], None) == []


# --------------------------------------------------------------------------- snapshot


def test_peek_version_finds_the_top_level_version():
    assert peek_version(b'{"schema":1,"version":42,"keys"', None) == 42
    assert peek_version(b'{"generated_at":1.0,"keys":{', b'"teams":{},"version": 7}') == 7
    assert peek_version(b'{"x":"a \\"version\\":9"', b"}") is None
