"""The resource pages of the console (models/, deployments/, limits/) obey the role
table, write through the services (each write leaves an audit event; a refused write
changes nothing), show service errors on their forms, escape stored text, show viewers no
write controls, render the replica fields for the polling fragment and read the current
day and month use from the gateway's Redis counters ("unavailable" when Redis is not)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis
from controlplane.audit.models import AuditEvent
from controlplane.catalog.models import OrganizationModelAccess, OrganizationPolicy
from controlplane.catalog.services import create_model, create_version, update_policy
from controlplane.console.resources import limits as limits_page
from controlplane.fleet.models import Deployment, Replica
from controlplane.fleet.services import create_deployment, create_node, create_pool
from controlplane.quotas.models import LimitPolicy
from controlplane.quotas.services import create_limit_policy
from controlplane.tenancy.services import create_api_key, create_team
from django.test import Client
from django.urls import reverse

from gateway import contract
from tests.conftest import SYSTEM
from tests.controlplane.test_usage_rollup import r  # noqa: F401

pytestmark = pytest.mark.django_db
CONSOLE = Path(__file__).resolve().parents[2] / "platform/controlplane/console"

CALLERS = ("alice", "bob", "victor", "oscar", "root", None)
VIEW = (200, 200, 200, 404, 200, 302)
ADMIN_WRITE = (302, 403, 403, 404, 302, 302)

# url name -> (method, expected status per caller: owner A, member A, viewer A,
# admin B, platform admin, anonymous). 302 for a write = done (or, anonymous, sign in).
ROLE_TABLE = {
    "models": ("GET", VIEW),
    "model-grant": ("POST", ADMIN_WRITE),
    "model-revoke": ("POST", ADMIN_WRITE),
    "model-policy": ("POST", ADMIN_WRITE),
    "deployments": ("GET", VIEW),
    "deployment-replicas": ("GET", VIEW),
    "deployment-create": ("POST", ADMIN_WRITE),
    "deployment": ("GET", VIEW),
    "deployment-scale": ("POST", ADMIN_WRITE),
    "deployment-update": ("POST", ADMIN_WRITE),
    "deployment-delete": ("POST", ADMIN_WRITE),
    "limits": ("GET", VIEW),
    "limit-create": ("POST", ADMIN_WRITE),
    "limit": ("GET", VIEW),
    "limit-update": ("POST", ADMIN_WRITE),
    "limit-delete": ("POST", ADMIN_WRITE),
}

SPEC = {
    "version": "",
    "pool": "gpu",
    "tensor_parallel_size": "1",
    "max_model_len": "",
    "gpu_memory_fraction": "0.5",
    "dtype": "",
    "quantization": "",
    "selector": "",
    "engine_args": "",
    "scale_target": "waiting",
    "scale_target_value": "2",
    "scale_down_delay_seconds": "300",
}
POST_DATA = {
    "model-grant": {"model": "other-chat"},
    "model-revoke": {},
    "model-policy": {"allowed_openness": ["open-source", "open-weights"], "log_prompts": "on"},
    "deployment-create": {**SPEC, "name": "new-chat", "model": "tiny-chat", "replicas": "1"},
    "deployment-scale": {"replicas": "3", "min_replicas": "", "max_replicas": ""},
    "deployment-update": {**SPEC, "max_model_len": "1024"},
    "deployment-delete": {},
    "limit-create": {"subject": "organization", "model": "tiny-chat", "rpm": "10"},
    "limit-update": {"rpm": "5", "daily_tokens": "1000", "fail_mode": "closed"},
    "limit-delete": {},
}


@pytest.fixture
def fleet(world):
    """A pool, another catalog model, and org A's deployment of tiny-chat."""
    pool = create_pool(actor=SYSTEM, name="gpu")
    other = create_model(
        actor=SYSTEM,
        alias="other-chat",
        task="chat",
        license_id="mit",
        commercial_use=True,
        openness="open-weights",
    )
    create_version(
        actor=SYSTEM,
        model=other,
        version="v1",
        source_type="local",
        local_path="/models/other-chat",
        context_length=4096,
    )
    world.pool = pool
    world.deployment = create_deployment(
        actor=SYSTEM,
        organization=world.org_a,
        name="chat",
        model="tiny-chat",
        pool=pool,
        gpu_memory_fraction=0.5,
    )
    world.org_policy = create_limit_policy(actor=SYSTEM, organization=world.org_a, rpm=100)
    return world


def url_for(name: str, world) -> str:
    kwargs = {"org_slug": "org-a"}
    if name == "model-revoke":
        kwargs["alias"] = "tiny-chat"
    elif name.startswith("deployment") and name not in (
        "deployments",
        "deployment-replicas",
        "deployment-create",
    ):
        kwargs["deployment_id"] = world.deployment.pk
    elif name in ("limit", "limit-update", "limit-delete"):
        kwargs["policy_id"] = world.org_policy.pk
    return reverse(f"console:{name}", kwargs=kwargs)


def client_for(user) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def state() -> tuple:
    """What a write would change."""
    return (
        AuditEvent.objects.count(),
        OrganizationModelAccess.objects.count(),
        sorted(OrganizationPolicy.objects.values_list("allowed_openness", flat=True)),
        sorted(Deployment.objects.values_list("name", "replicas", "max_model_len")),
        sorted(LimitPolicy.objects.values_list("model", "rpm")),
    )


@pytest.mark.parametrize("name", sorted(ROLE_TABLE))
@pytest.mark.parametrize("index", range(len(CALLERS)), ids=[str(c) for c in CALLERS])
def test_role_table(fleet, name, index):
    caller = CALLERS[index]
    method, expected = ROLE_TABLE[name]
    client = client_for(getattr(fleet, caller) if caller else None)
    url = url_for(name, fleet)
    before = state()
    response = client.post(url, POST_DATA[name]) if method == "POST" else client.get(url)
    assert response.status_code == expected[index], (name, caller, response.content[:400])
    if caller is None:
        assert response["Location"].startswith("/console/signin/")
    if method == "POST":
        if response.status_code == 302 and caller is not None:
            # Done through the service: it left an audit event.
            assert AuditEvent.objects.count() > before[0], name
        else:
            assert state() == before, name  # refused: nothing changed


def post(client, name, data, **kwargs):
    return client.post(reverse(f"console:{name}", kwargs={"org_slug": "org-a", **kwargs}), data)


def get(client, name, **kwargs):
    return client.get(reverse(f"console:{name}", kwargs={"org_slug": "org-a", **kwargs}))


def last_event(action: str) -> AuditEvent:
    return AuditEvent.objects.filter(action=action).order_by("-seq").first()


# --------------------------------------------------------------------------- models
def test_models_page_shows_badges_in_text_and_the_policy_refusal(fleet):
    client = client_for(fleet.victor)
    body = get(client, "models").content.decode()
    row = re.search(r'<th scope="row">tiny-chat.*?</tr>', body, re.S).group(0)
    for text in ("Chat", "apache-2.0", "Open weights", "commercial use allowed", "usable"):
        assert text in row, text
    update_policy(actor=SYSTEM, organization=fleet.org_a, allowed_openness=["open-source"])
    body = get(client, "models").content.decode()
    row = re.search(r'<th scope="row">tiny-chat.*?</tr>', body, re.S).group(0)
    assert "refused: the organization&#x27;s policy does not allow open-weights models" in row


def test_grant_revoke_and_policy_go_through_the_services(fleet):
    client = client_for(fleet.alice)
    assert post(client, "model-grant", {"model": "other-chat"}).status_code == 302
    assert OrganizationModelAccess.objects.filter(
        organization=fleet.org_a, model__alias="other-chat"
    ).exists()
    assert last_event("model_access.grant").organization_id == fleet.org_a.pk

    assert post(client, "model-revoke", {}, alias="other-chat").status_code == 302
    assert not OrganizationModelAccess.objects.filter(model__alias="other-chat").exists()
    assert last_event("model_access.revoke") is not None
    assert post(client, "model-revoke", {}, alias="other-chat").status_code == 404

    response = post(
        client,
        "model-policy",
        {"allowed_openness": ["open-source"], "require_commercial_use": "on", "log_prompts": "on"},
    )
    assert response.status_code == 302
    policy = OrganizationPolicy.objects.get(organization=fleet.org_a)
    assert policy.allowed_openness == ["open-source"] and policy.require_commercial_use
    fleet.org_a.refresh_from_db()
    assert fleet.org_a.log_prompts
    assert last_event("policy.update") and last_event("organization.update")


def test_grant_errors_are_shown_on_the_form_and_change_nothing(fleet):
    client = client_for(fleet.alice)
    update_policy(actor=SYSTEM, organization=fleet.org_a, allowed_openness=["open-source"])
    before = state()
    refused = post(client, "model-grant", {"model": "other-chat"})
    assert refused.status_code == 400
    body = refused.content.decode()
    assert 'aria-describedby="grant-model_helptext grant-model_error"' in body
    assert 'id="grant-model_error"' in body
    assert "Cannot grant other-chat: the organization&#x27;s policy does not allow" in body
    unknown = post(client, "model-grant", {"model": "no-such-model"})
    assert unknown.status_code == 400 and b"No model with this alias" in unknown.content
    bad = post(client, "model-policy", {"allowed_openness": ["closed-source"]})
    assert bad.status_code == 400 and b'id="policy-allowed_openness_error"' in bad.content
    assert state() == before


# --------------------------------------------------------------------------- deployments
def test_deployment_create_scale_edit_and_delete(fleet):
    client = client_for(fleet.alice)
    created = post(client, "deployment-create", POST_DATA["deployment-create"])
    assert created.status_code == 302
    deployment = Deployment.objects.get(organization=fleet.org_a, name="new-chat")
    assert created["Location"].endswith(f"/deployments/{deployment.pk}/")
    assert last_event("deployment.create").target_id == str(deployment.pk)

    scaled = post(
        client,
        "deployment-scale",
        {"replicas": "2", "min_replicas": "1", "max_replicas": "4"},
        deployment_id=deployment.pk,
    )
    assert scaled.status_code == 302
    deployment.refresh_from_db()
    assert (deployment.replicas, deployment.min_replicas, deployment.max_replicas) == (2, 1, 4)
    assert last_event("deployment.update").changes["replicas"] == [1, 2]

    generation = deployment.generation
    edited = post(
        client,
        "deployment-update",
        {**SPEC, "max_model_len": "1024", "engine_args": '{"enforce_eager": true}'},
        deployment_id=deployment.pk,
    )
    assert edited.status_code == 302
    deployment.refresh_from_db()
    assert deployment.max_model_len == 1024 and deployment.engine_args == {"enforce_eager": True}
    assert deployment.generation == generation + 1
    assert last_event("deployment.update").changes["max_model_len"] == [None, 1024]

    assert post(client, "deployment-delete", {}, deployment_id=deployment.pk).status_code == 302
    assert not Deployment.objects.filter(pk=deployment.pk).exists()
    assert last_event("deployment.delete").target_id == str(deployment.pk)


def test_deployment_service_errors_are_shown_on_the_form(fleet):
    client = client_for(fleet.alice)
    before = state()
    too_long = post(
        client, "deployment-create", {**POST_DATA["deployment-create"], "max_model_len": "99999"}
    )
    assert too_long.status_code == 400
    body = too_long.content.decode()
    assert 'id="new-max_model_len_error"' in body and "context length (2048)" in body
    assert 'aria-describedby="new-max_model_len_helptext new-max_model_len_error"' in body
    taken = post(client, "deployment-create", {**POST_DATA["deployment-create"], "name": "chat"})
    assert taken.status_code == 400 and b'id="new-name_error"' in taken.content
    bad_json = post(
        client,
        "deployment-update",
        {**SPEC, "engine_args": "[1]"},
        deployment_id=fleet.deployment.pk,
    )
    assert bad_json.status_code == 400 and b'id="spec-engine_args_error"' in bad_json.content
    not_allowed = post(
        client,
        "deployment-update",
        {**SPEC, "engine_args": '{"trust_remote_code": true}'},
        deployment_id=fleet.deployment.pk,
    )
    assert not_allowed.status_code == 400
    assert b"is not an allowed engine argument" in not_allowed.content
    bounds = post(
        client,
        "deployment-scale",
        {"replicas": "1", "min_replicas": "3", "max_replicas": "2"},
        deployment_id=fleet.deployment.pk,
    )
    assert bounds.status_code == 400 and b'id="scale-max_replicas_error"' in bounds.content
    assert state() == before


def test_deployments_of_other_organizations_stay_hidden_and_shared_capacity_shows(fleet, dual):
    shared_all = create_deployment(
        actor=SYSTEM,
        organization=None,
        name="shared-all",
        model="tiny-chat",
        pool=fleet.pool,
        gpu_memory_fraction=0.5,
        shared_with_all=True,
    )
    create_deployment(
        actor=SYSTEM,
        organization=None,
        name="shared-with-a",
        model="tiny-chat",
        pool=fleet.pool,
        gpu_memory_fraction=0.5,
        shared_with=["org-a"],
    )
    create_deployment(
        actor=SYSTEM,
        organization=None,
        name="only-for-b",
        model="tiny-chat",
        pool=fleet.pool,
        gpu_memory_fraction=0.5,
        shared_with=["org-b"],
    )
    from controlplane.catalog.services import grant_model_access

    grant_model_access(actor=SYSTEM, organization=fleet.org_b, model=fleet.model)
    b_own = create_deployment(
        actor=SYSTEM,
        organization=fleet.org_b,
        name="b-private",
        model="tiny-chat",
        pool=fleet.pool,
        gpu_memory_fraction=0.5,
    )
    Replica.objects.create(deployment=b_own, spec_hash="x", state="failed", last_error="b-only")
    client = client_for(dual)  # admin of A, member of B
    body = get(client, "deployments").content.decode()
    assert "shared-all" in body and "shared-with-a" in body
    assert "only-for-b" not in body and "b-private" not in body and "b-only" not in body
    assert get(client, "deployment", deployment_id=b_own.pk).status_code == 404
    assert get(client, "deployment", deployment_id=shared_all.pk).status_code == 404
    assert post(client, "deployment-delete", {}, deployment_id=b_own.pk).status_code == 404
    assert Deployment.objects.filter(pk=b_own.pk).exists()
    fragment = client.get(
        reverse("console:deployment-replicas", kwargs={"org_slug": "org-a"}),
        {"deployment": str(b_own.pk)},
    )
    assert fragment.status_code == 404


def fake_replicas(world):
    node = create_node(actor=SYSTEM, name="gpu-node-1", pool=world.pool)
    deployment = world.deployment
    Replica.objects.create(
        deployment=deployment,
        node=node,
        gpu_indices=[0, 1],
        memory_mib=40960,
        port=8001,
        state="ready",
        restarts=3,
        spec_hash=deployment.spec_hash,
        load={"kv_cache_usage_perc": 0.42, "num_requests_running": 3, "num_requests_waiting": 1},
    )
    Replica.objects.create(
        deployment=deployment,
        state="pending",
        spec_hash=deployment.spec_hash,
        placement_reason="no node has 2 GPUs with 40960 MiB free <script>x</script>",
    )
    Replica.objects.create(
        deployment=deployment,
        node=node,
        gpu_indices=[2],
        state="failed",
        restarts=5,
        spec_hash=deployment.spec_hash,
        last_error="CUDA out of memory <script>alert(1)</script>",
    )


def test_replica_fragment_renders_state_node_gpus_memory_load_and_reasons(fleet):
    fake_replicas(fleet)
    client = client_for(fleet.victor)
    response = get(client, "deployment-replicas")
    assert response.status_code == 200
    body = response.content.decode()
    assert "<html" not in body  # a fragment, not a page
    rows = re.findall(r"<tr class=\"state-(\w+)\">(.*?)</tr>", body, re.S)
    by_state = {state: row for state, row in rows}
    ready = by_state["ready"]
    for text in ("gpu-node-1", "2 (0, 1)", "40960 MiB", "<td>3</td>", "42 %", "3 / 1"):
        assert text in ready, text
    assert "Waiting: no node has 2 GPUs with 40960 MiB free &lt;script&gt;" in by_state["pending"]
    assert "not placed" in by_state["pending"]
    failed = by_state["failed"]
    assert "Error: CUDA out of memory &lt;script&gt;alert(1)&lt;/script&gt;" in failed
    assert "<td>5</td>" in failed
    assert "<script>" not in body
    # Only this deployment's replicas when asked for one.
    one = client.get(response.request["PATH_INFO"], {"deployment": str(fleet.deployment.pk)})
    assert one.status_code == 200 and one.content.count(b'<tr class="state-') == 3


def test_replica_table_polls_without_an_eval_filter(fleet):
    client = client_for(fleet.victor)
    for body in (
        get(client, "deployments").content.decode(),
        get(client, "deployment", deployment_id=fleet.deployment.pk).content.decode(),
    ):
        poll = re.search(r"<div id=\"replicas\" data-poll ([^>]*)>", body).group(1)
        assert 'hx-trigger="every 5s, console:visible from:document"' in poll
        assert "[" not in poll  # an htmx event filter is eval; allowEval is off
        assert "/deployments/replicas/" in poll
    source = (CONSOLE / "static/console/console.js").read_text()
    assert "visibilitychange" in source and "console:visible" in source
    assert "htmx:beforeRequest" in source and "data-poll" in source


# --------------------------------------------------------------------------- limits
def counter_keys(r, base):  # noqa: F811
    import datetime as dt

    seconds, _ = r.time()
    day = seconds // 86400
    start = dt.datetime.fromtimestamp(day * 86400, tz=dt.UTC)
    return f"{base}:d:{day}", f"{base}:m:{start.year * 100 + start.month}"


def test_limits_show_the_gateway_counters(fleet, r):  # noqa: F811
    team = create_team(actor=SYSTEM, organization=fleet.org_a, slug="research", name="Research")
    team_policy = create_limit_policy(
        actor=SYSTEM, organization=fleet.org_a, team=team, model="tiny-chat", daily_tokens=5000
    )
    r.set(contract.LIMITS_SEEDED_KEY, "epoch")
    org_day, org_month = counter_keys(r, f"{contract.LIMITS_PREFIX}org:{fleet.org_a.pk}")
    r.set(org_day, 1234)
    r.set(org_month, 56789)
    team_day, team_month = counter_keys(
        r, f"{contract.LIMITS_PREFIX}team:{team.pk}:model:tiny-chat"
    )
    r.set(team_day, 321)
    r.set(team_month, 4321)
    client = client_for(fleet.victor)
    body = get(client, "limits").content.decode()
    assert "<strong>1234</strong> tokens today and <strong>56789</strong> this month" in body
    team_row = re.search(r"team Research, model tiny-chat.*?</tr>", body, re.S).group(0)
    assert "<td>321 of 5000</td>" in team_row and "<td>4321</td>" in team_row
    org_row = re.search(r"the organization, all models.*?</tr>", body, re.S).group(0)
    assert "<td>1234</td>" in org_row and "<td>56789</td>" in org_row
    detail = get(client, "limit", policy_id=team_policy.pk).content.decode()
    assert "321 of 5000" in detail


def test_limits_say_unavailable_when_redis_refuses_or_lost_its_counters(fleet, r, monkeypatch):  # noqa: F811
    client = client_for(fleet.victor)
    # Not seeded (a Redis that restarted empty): the counters are not the truth yet.
    body = get(client, "limits").content.decode()
    assert "Current use is unavailable: the counters are being rebuilt" in body
    refusing = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    monkeypatch.setattr(limits_page.controlplane_redis, "get_redis", lambda: refusing)
    response = get(client, "limits")
    assert response.status_code == 200
    body = response.content.decode()
    assert "Current use is unavailable: the limit store cannot be reached" in body
    org_row = re.search(r"the organization, all models.*?</tr>", body, re.S).group(0)
    assert org_row.count("<td>unavailable</td>") == 2 and "<td>100</td>" in org_row
    detail = get(client, "limit", policy_id=fleet.org_policy.pk)
    assert detail.status_code == 200 and b"the limit store cannot be reached" in detail.content


def test_limit_create_update_delete_through_the_services(fleet, r):  # noqa: F811
    client = client_for(fleet.alice)
    key, _ = create_api_key(
        actor=SYSTEM, organization=fleet.org_a, name="ci", scopes=["inference"], user=fleet.bob
    )
    created = post(
        client,
        "limit-create",
        {"subject": "key", "api_key": key.display_prefix, "model": "", "tpm": "999"},
    )
    assert created.status_code == 302
    policy = LimitPolicy.objects.get(api_key=key)
    assert policy.tpm == 999 and last_event("limits.create").target_id == str(policy.pk)
    updated = post(client, "limit-update", {"tpm": "500", "rpm": "7"}, policy_id=policy.pk)
    assert updated.status_code == 302
    policy.refresh_from_db()
    assert (policy.tpm, policy.rpm) == (500, 7)
    assert last_event("limits.update").changes["tpm"] == [999, 500]
    assert post(client, "limit-delete", {}, policy_id=policy.pk).status_code == 302
    assert not LimitPolicy.objects.filter(pk=policy.pk).exists()
    assert last_event("limits.delete") is not None


def test_limit_errors_are_shown_on_the_form_and_change_nothing(fleet, r):  # noqa: F811
    client = client_for(fleet.alice)
    team = create_team(actor=SYSTEM, organization=fleet.org_a, slug="ops", name="Ops")
    before = state()
    unknown_key = post(client, "limit-create", {"subject": "key", "api_key": "sk-nope", "rpm": "1"})
    assert unknown_key.status_code == 400 and b'id="new-api_key_error"' in unknown_key.content
    no_team = post(client, "limit-create", {"subject": "team", "rpm": "1"})
    assert no_team.status_code == 400 and b'id="new-team_error"' in no_team.content
    duplicate = post(client, "limit-create", {"subject": "organization", "rpm": "1"})
    assert duplicate.status_code == 400
    assert b"This organization already has a limit policy" in duplicate.content
    fail_mode = post(
        client, "limit-create", {"subject": "team", "team": str(team.pk), "fail_mode": "open"}
    )
    assert fail_mode.status_code == 400 and b'id="new-fail_mode_error"' in fail_mode.content
    negative = post(client, "limit-update", {"rpm": "-3"}, policy_id=fleet.org_policy.pk)
    assert negative.status_code == 400 and b'id="limits-rpm_error"' in negative.content
    assert state() == before


# --------------------------------------------------------------------------- all pages
def write_controls(body: str) -> list[str]:
    """The POST forms of a page other than signing out."""
    forms = re.findall(r'<form method="post" action="([^"]+)"', body)
    return [action for action in forms if action != reverse("console:signout")]


def resource_pages(world) -> list[str]:
    return [
        url_for(name, world) for name in ("models", "deployments", "deployment", "limits", "limit")
    ]


def test_viewers_see_no_write_controls_and_admins_do(fleet):
    viewer, owner = client_for(fleet.victor), client_for(fleet.alice)
    for url in resource_pages(fleet):
        body = viewer.get(url).content.decode()
        assert write_controls(body) == [], url
        for label in (
            "Revoke",
            "Grant access",
            "Save policy",
            "Create deployment",
            "Scale",
            "Delete deployment",
            "Add limit policy",
            "Save limits",
        ):
            assert f">{label}" not in body, (url, label)
        assert write_controls(owner.get(url).content.decode()), url


def test_stored_names_render_escaped(fleet):
    from controlplane.catalog.services import update_model

    update_model(actor=SYSTEM, model=fleet.model, display_name="<script>alert('m')</script>")
    team = create_team(
        actor=SYSTEM, organization=fleet.org_a, slug="xss", name="<script>alert('t')</script>"
    )
    create_limit_policy(actor=SYSTEM, organization=fleet.org_a, team=team, rpm=1)
    key, _ = create_api_key(
        actor=SYSTEM,
        organization=fleet.org_a,
        name="<script>alert('k')</script>",
        scopes=["inference"],
        user=fleet.alice,
    )
    create_limit_policy(actor=SYSTEM, organization=fleet.org_a, api_key=key, rpm=1)
    fake_replicas(fleet)
    client = client_for(fleet.alice)
    for url in [*resource_pages(fleet), url_for("deployment-replicas", fleet)]:
        body = client.get(url).content.decode()
        assert "<script>alert" not in body, url
        for tag in re.findall(r"<script[^>]*>", body):
            assert "src=" in tag or 'type="application/json"' in tag, (url, tag)
        assert " style=" not in body and " onclick=" not in body.lower(), url
    limits_body = client.get(url_for("limits", fleet)).content.decode()
    assert "team &lt;script&gt;alert(&#x27;t&#x27;)&lt;/script&gt;" in limits_body
    assert "key &lt;script&gt;alert(&#x27;k&#x27;)&lt;/script&gt;" in limits_body
    models_body = client.get(url_for("models", fleet)).content.decode()
    assert "&lt;script&gt;alert(&#x27;m&#x27;)&lt;/script&gt;" in models_body


def test_posts_without_a_csrf_token_are_refused(fleet):
    client = Client(enforce_csrf_checks=True)
    client.force_login(fleet.alice)
    before = state()
    for name in ("model-grant", "deployment-create", "limit-create"):
        assert client.post(url_for(name, fleet), POST_DATA[name]).status_code == 403, name
    assert state() == before


def test_write_routes_refuse_get(fleet):
    client = client_for(fleet.alice)
    for name, (method, _) in ROLE_TABLE.items():
        if method == "POST":
            assert client.get(url_for(name, fleet)).status_code == 405, name


def test_pages_use_a_bounded_number_of_queries(fleet, r, django_assert_max_num_queries):  # noqa: F811
    node = create_node(actor=SYSTEM, name="gpu-node-2", pool=fleet.pool)
    for i in range(40):
        Replica.objects.create(
            deployment=fleet.deployment,
            node=node,
            port=9000 + i,
            state="ready",
            spec_hash=fleet.deployment.spec_hash,
        )
    for i in range(15):
        team = create_team(actor=SYSTEM, organization=fleet.org_a, slug=f"t{i}", name=f"T{i}")
        create_limit_policy(actor=SYSTEM, organization=fleet.org_a, team=team, rpm=i + 1)
        key, _ = create_api_key(
            actor=SYSTEM, organization=fleet.org_a, name=f"k{i}", scopes=["inference"]
        )
        create_limit_policy(actor=SYSTEM, organization=fleet.org_a, api_key=key, rpm=i + 1)
    client = client_for(fleet.alice)
    for name in ("models", "deployments", "deployment", "deployment-replicas", "limits"):
        with django_assert_max_num_queries(12):  # independent of the number of rows
            assert client.get(url_for(name, fleet)).status_code == 200, name
