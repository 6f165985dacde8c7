from __future__ import annotations

import pytest
from controlplane.quotas.services import create_limit_policy, effective_limits, update_limit_policy
from controlplane.tenancy.services import create_api_key, create_team
from django.core.exceptions import ValidationError

from tests.conftest import SYSTEM


def test_effective_limit_is_the_tightest(world):
    team = create_team(actor=SYSTEM, organization=world.org_a, slug="t", name="T")
    key, _ = create_api_key(
        actor=SYSTEM, organization=world.org_a, name="k", scopes=["inference"], team=team
    )
    create_limit_policy(
        actor=SYSTEM, organization=world.org_a, rpm=100, tpm=5000, daily_tokens=10**6
    )
    create_limit_policy(actor=SYSTEM, organization=world.org_a, team=team, rpm=50, concurrency=4)
    create_limit_policy(
        actor=SYSTEM, organization=world.org_a, api_key=key, rpm=500, max_tokens=256
    )
    assert effective_limits(key) == {
        "rpm": 50,
        "tpm": 5000,
        "concurrency": 4,
        "daily_tokens": 10**6,
        "monthly_tokens": None,
        "max_tokens": 256,
    }


def test_one_policy_per_subject(world):
    create_limit_policy(actor=SYSTEM, organization=world.org_a, rpm=1)
    with pytest.raises(ValidationError):
        create_limit_policy(actor=SYSTEM, organization=world.org_a, rpm=2)


@pytest.mark.parametrize("value", [0, -1, True, "10", 1.5])
def test_limits_must_be_positive_integers(world, value):
    policy = create_limit_policy(actor=SYSTEM, organization=world.org_a, rpm=1)
    with pytest.raises(ValidationError) as info:
        update_limit_policy(actor=SYSTEM, policy=policy, rpm=value)
    assert "rpm" in info.value.message_dict


def test_limits_api(world, clients):
    owner = clients["owner_a"]
    r = owner.post(
        "/api/v1/organizations/org-a/limits/", {"rpm": 60, "monthly_tokens": 10**7}, format="json"
    )
    assert r.status_code == 201 and r.json()["subject"] == "organization"
    assert (
        owner.post("/api/v1/organizations/org-a/limits/", {"rpm": 5}, format="json").status_code
        == 400
    )
    r = owner.post("/api/v1/organizations/org-a/limits/", {"rpm": -5}, format="json")
    assert r.status_code == 400 and "rpm" in r.json()["error"]["fields"]
    team_b = create_team(actor=SYSTEM, organization=world.org_b, slug="b", name="B")
    r = owner.post(
        "/api/v1/organizations/org-a/limits/", {"team": str(team_b.pk), "rpm": 1}, format="json"
    )
    assert r.status_code == 400 and "team" in r.json()["error"]["fields"]
    # a member cannot change limits
    r = clients["member_a"].post("/api/v1/organizations/org-a/limits/", {"rpm": 1}, format="json")
    assert r.status_code == 403


# --------------------------------------------------------------------------- per model
def test_limits_for_one_model_add_to_the_all_models_limits(world):
    key, _ = create_api_key(actor=SYSTEM, organization=world.org_a, name="k", scopes=["inference"])
    create_limit_policy(actor=SYSTEM, organization=world.org_a, daily_tokens=10**6, rpm=100)
    create_limit_policy(
        actor=SYSTEM, organization=world.org_a, model="tiny-chat", daily_tokens=1000
    )
    create_limit_policy(actor=SYSTEM, organization=world.org_a, api_key=key, rpm=10)
    create_limit_policy(
        actor=SYSTEM, organization=world.org_a, api_key=key, model="tiny-chat", rpm=500
    )
    assert effective_limits(key)["daily_tokens"] == 10**6
    limits = effective_limits(key, model="tiny-chat")
    assert (limits["daily_tokens"], limits["rpm"]) == (1000, 10)
    assert effective_limits(key, model="other-model")["daily_tokens"] == 10**6


def test_one_policy_per_subject_and_model(world):
    create_limit_policy(actor=SYSTEM, organization=world.org_a, model="tiny-chat", rpm=1)
    with pytest.raises(ValidationError) as info:
        create_limit_policy(actor=SYSTEM, organization=world.org_a, model="tiny-chat", rpm=2)
    assert "organization" in info.value.message_dict
    with pytest.raises(ValidationError) as info:
        create_limit_policy(actor=SYSTEM, organization=world.org_a, model="no-such", rpm=2)
    assert "model" in info.value.message_dict


def test_limits_api_per_model(world, clients):
    from controlplane.quotas.models import LimitPolicy

    owner = clients["owner_a"]
    url = "/api/v1/organizations/org-a/limits/"
    r = owner.post(url, {"model": "tiny-chat", "daily_tokens": 1000}, format="json")
    assert r.status_code == 201, r.json()
    assert (r.json()["model"], r.json()["subject"]) == ("tiny-chat", "organization")
    policy_id = r.json()["id"]
    r = owner.post(url, {"daily_tokens": 10**6}, format="json")
    assert r.status_code == 201 and r.json()["model"] == ""
    r = owner.post(url, {"model": "tiny-chat", "rpm": 5}, format="json")
    assert r.status_code == 400 and "organization" in r.json()["error"]["fields"]
    for bad in ("no-such-model", "Not An Alias!", 7):
        r = owner.post(url, {"model": bad, "rpm": 5}, format="json")
        assert r.status_code == 400 and "model" in r.json()["error"]["fields"], r.json()
    listed = owner.get(url + "?model=tiny-chat").json()
    rows = listed["results"] if isinstance(listed, dict) else listed
    assert [p["id"] for p in rows] == [policy_id]
    # The model a policy applies to is fixed at creation.
    r = owner.patch(f"{url}{policy_id}/", {"model": "", "rpm": 3}, format="json")
    assert r.status_code == 400 and "model" in r.json()["error"]["fields"]
    assert LimitPolicy.objects.get(pk=policy_id).model == "tiny-chat"
    r = owner.patch(f"{url}{policy_id}/", {"daily_tokens": 2000}, format="json")
    assert r.status_code == 200 and r.json()["daily_tokens"] == 2000


def test_fail_mode_is_set_on_the_organization_policy(world, clients):
    from controlplane.quotas.models import LimitPolicy

    owner = clients["owner_a"]
    url = "/api/v1/organizations/org-a/limits/"
    r = owner.post(url, {"rpm": 10, "fail_mode": "open"}, format="json")
    assert r.status_code == 201 and r.json()["fail_mode"] == "open", r.json()
    org_policy = r.json()["id"]
    r = owner.post(url, {"model": "tiny-chat", "rpm": 5, "fail_mode": "open"}, format="json")
    assert r.status_code == 400 and "fail_mode" in r.json()["error"]["fields"]
    team = create_team(actor=SYSTEM, organization=world.org_a, slug="t", name="T")
    r = owner.post(url, {"team": str(team.pk), "fail_mode": "closed"}, format="json")
    assert r.status_code == 400 and "fail_mode" in r.json()["error"]["fields"]
    r = owner.patch(f"{url}{org_policy}/", {"fail_mode": "sometimes"}, format="json")
    assert r.status_code == 400 and "fail_mode" in r.json()["error"]["fields"]
    r = owner.patch(f"{url}{org_policy}/", {"fail_mode": "closed"}, format="json")
    assert r.status_code == 200 and r.json()["fail_mode"] == "closed"
    assert LimitPolicy.objects.get(pk=org_policy).fail_mode == "closed"
    assert not LimitPolicy.objects.filter(team=team).exists()
