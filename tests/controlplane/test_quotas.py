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
