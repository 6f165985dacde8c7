"""API keys: shown once, stored as a keyed hash, scoped, revocable, expiring."""

from __future__ import annotations

import datetime as dt

import pytest
from controlplane.tenancy.models import ApiKey
from controlplane.tenancy.services import create_api_key, revoke_api_key
from django.conf import settings
from django.utils import timezone
from rest_framework.test import APIClient

from gateway.contract import hash_api_key_secret, parse_api_key
from tests.conftest import SYSTEM


def bearer(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def test_secret_is_shown_once_and_stored_as_keyed_hash(world, clients):
    response = clients["owner_a"].post(
        "/api/v1/organizations/org-a/keys/",
        {"name": "ci", "scopes": ["inference"], "allowed_models": ["tiny-chat"]},
        format="json",
    )
    assert response.status_code == 201
    body = response.json()
    secret = body["key"]
    parsed = parse_api_key(secret)
    assert parsed is not None and body["prefix"] == f"sk-{parsed.prefix}"
    key = ApiKey.objects.get(pk=body["id"])
    assert key.secret_hash == hash_api_key_secret(parsed.secret, settings.API_KEY_PEPPER)
    assert parsed.secret not in key.secret_hash
    again = clients["owner_a"].get(f"/api/v1/organizations/org-a/keys/{key.pk}/").json()
    assert "key" not in again and again["prefix"] == body["prefix"]
    listed = clients["owner_a"].get("/api/v1/organizations/org-a/keys/").content.decode()
    assert parsed.secret not in listed


def test_manage_key_acts_inside_its_org_only(world):
    key, secret = create_api_key(
        actor=SYSTEM, organization=world.org_a, name="automation", scopes=["manage"]
    )
    client = bearer(secret)
    assert client.get("/api/v1/organizations/").json()["results"][0]["slug"] == "org-a"
    assert client.get("/api/v1/organizations/org-b/teams/").status_code == 404
    created = client.post(
        "/api/v1/organizations/org-a/teams/", {"slug": "bots", "name": "Bots"}, format="json"
    )
    assert created.status_code == 201
    key.refresh_from_db()
    assert key.last_used_at is not None
    me = client.get("/api/v1/me/").json()
    assert me["via_api_key"] == key.display_prefix and not me["is_platform_admin"]


def test_key_of_a_member_has_the_members_role(world):
    _, secret = create_api_key(
        actor=SYSTEM, organization=world.org_a, name="bob's", scopes=["manage"], user=world.bob
    )
    client = bearer(secret)
    assert client.get("/api/v1/organizations/org-a/teams/").status_code == 200
    refused = client.post(
        "/api/v1/organizations/org-a/teams/", {"slug": "nope", "name": "No"}, format="json"
    )
    assert refused.status_code == 403


def test_a_platform_admins_key_is_not_a_platform_admin(world):
    from controlplane.tenancy.services import add_member

    add_member(actor=SYSTEM, organization=world.org_a, username="root", role="owner")
    _, secret = create_api_key(
        actor=SYSTEM, organization=world.org_a, name="root's", scopes=["manage"], user=world.root
    )
    response = bearer(secret).post(
        "/api/v1/organizations/", {"slug": "sneaky", "name": "S"}, format="json"
    )
    assert response.status_code == 403


@pytest.mark.parametrize(
    "header",
    ["Bearer sk-notarealkey", "Bearer sk-aaaaaaaaaaaa.wrongwrongwrongwrongwrong", "Bearer "],
)
def test_bad_keys_are_401(world, header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/organizations/")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_failed"


def test_inference_only_key_cannot_manage(world):
    _, secret = create_api_key(
        actor=SYSTEM, organization=world.org_a, name="inf", scopes=["inference"]
    )
    response = bearer(secret).get("/api/v1/organizations/")
    assert response.status_code == 403
    assert "manage" in response.json()["error"]["message"]


def test_revoked_and_expired_keys_never_authenticate(world):
    key, secret = create_api_key(
        actor=SYSTEM, organization=world.org_a, name="soon", scopes=["manage"]
    )
    assert bearer(secret).get("/api/v1/organizations/").status_code == 200
    revoke_api_key(actor=SYSTEM, key=key)
    assert bearer(secret).get("/api/v1/organizations/").status_code == 401

    key2, secret2 = create_api_key(
        actor=SYSTEM,
        organization=world.org_a,
        name="expiring",
        scopes=["manage"],
        expires_at=timezone.now() + dt.timedelta(hours=1),
    )
    ApiKey.objects.filter(pk=key2.pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    response = bearer(secret2).get("/api/v1/organizations/")
    assert response.status_code == 401 and "expired" in response.json()["error"]["message"]


def test_member_creates_keys_for_self_only(world, clients):
    own = clients["member_a"].post(
        "/api/v1/organizations/org-a/keys/",
        {"name": "mine", "scopes": ["inference"]},
        format="json",
    )
    assert own.status_code == 201 and own.json()["user"] == "bob"
    for_alice = clients["member_a"].post(
        "/api/v1/organizations/org-a/keys/",
        {"name": "hers", "scopes": ["inference"], "user": "alice"},
        format="json",
    )
    assert for_alice.status_code == 403
    # bob may revoke his own key, not alice's
    assert (
        clients["member_a"]
        .post(f"/api/v1/organizations/org-a/keys/{own.json()['id']}/revoke/")
        .status_code
        == 200
    )
    alices, _ = create_api_key(
        actor=SYSTEM, organization=world.org_a, name="a", scopes=["inference"], user=world.alice
    )
    assert (
        clients["member_a"]
        .post(f"/api/v1/organizations/org-a/keys/{alices.pk}/revoke/")
        .status_code
        == 403
    )
    alices.refresh_from_db()
    assert alices.revoked_at is None


def test_viewer_cannot_create_keys(world, clients):
    response = clients["viewer_a"].post(
        "/api/v1/organizations/org-a/keys/", {"name": "v", "scopes": ["inference"]}, format="json"
    )
    assert response.status_code == 403
    assert not ApiKey.objects.exists()


def test_allowed_models_must_be_available_to_the_org(world, clients):
    response = clients["owner_a"].post(
        "/api/v1/organizations/org-a/keys/",
        {"name": "x", "scopes": ["inference"], "allowed_models": ["gpt-secret"]},
        format="json",
    )
    assert response.status_code == 400
    assert "allowed_models" in response.json()["error"]["fields"]


def test_expiry_in_the_past_is_refused(world, clients):
    response = clients["owner_a"].post(
        "/api/v1/organizations/org-a/keys/",
        {"name": "x", "scopes": ["inference"], "expires_at": "2001-01-01T00:00:00Z"},
        format="json",
    )
    assert response.status_code == 400
    assert "expires_at" in response.json()["error"]["fields"]


def test_removing_a_member_revokes_their_keys(world, clients):
    key, _ = create_api_key(
        actor=SYSTEM, organization=world.org_a, name="b", scopes=["inference"], user=world.bob
    )
    membership = world.bob.memberships.get(organization=world.org_a)
    response = clients["owner_a"].delete(f"/api/v1/organizations/org-a/members/{membership.pk}/")
    assert response.status_code == 204
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_last_owner_cannot_leave(world, clients):
    membership = world.alice.memberships.get(organization=world.org_a)
    response = clients["owner_a"].patch(
        f"/api/v1/organizations/org-a/members/{membership.pk}/", {"role": "admin"}, format="json"
    )
    assert response.status_code == 400
    assert "owner" in response.json()["error"]["message"]


def test_admin_cannot_grant_owner(world, clients):
    from controlplane.tenancy.services import add_member

    add_member(actor=SYSTEM, organization=world.org_a, username="oscar", role="admin")
    from rest_framework.test import APIClient as C

    oscar = C()
    oscar.force_login(world.oscar)
    bob = world.bob.memberships.get(organization=world.org_a)
    response = oscar.patch(
        f"/api/v1/organizations/org-a/members/{bob.pk}/", {"role": "owner"}, format="json"
    )
    assert response.status_code == 403
