"""The Django admin writes through the services: the same rules, the same audit trail.
Each test drives /admin/ with Django's test client, logged in as a platform admin
(or a staff user who is not one)."""

from __future__ import annotations

import pytest
from controlplane.audit.models import AuditEvent
from controlplane.catalog.models import ModelVersion
from controlplane.fleet.models import Deployment, Replica
from controlplane.fleet.services import create_deployment, create_pool
from controlplane.tenancy.models import Membership, Team
from controlplane.tenancy.services import add_member, create_api_key
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client

from tests.conftest import SYSTEM
from tests.controlplane.test_isolation import database_state as fingerprint


def database_state() -> str:
    return fingerprint(ignore=("last_login",))


@pytest.fixture
def root(world) -> Client:
    client = Client()
    client.force_login(world.root)
    return client


def user_form(user, **overrides) -> dict:
    data = {
        "username": user.username,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
    }
    for flag in ("is_active", "is_staff", "is_superuser"):
        if getattr(user, flag):
            data[flag] = "on"
    for name, value in overrides.items():
        if value is False:
            data.pop(name, None)
        else:
            data[name] = "on" if value is True else value
    return data


def messages_of(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_superuser_grant_is_audited(world, root):
    response = root.post(
        f"/admin/auth/user/{world.bob.pk}/change/", user_form(world.bob, is_superuser=True)
    )
    assert response.status_code == 302, response.content[:2000]
    world.bob.refresh_from_db()
    assert world.bob.is_superuser
    event = AuditEvent.objects.get(action="user.update", target_id=str(world.bob.pk))
    assert event.changes == {"is_superuser": [False, True]}
    assert event.actor_label == "root"


def test_deactivation_in_the_admin_revokes_keys(world, root):
    key, _ = create_api_key(
        actor=SYSTEM, organization=world.org_a, name="b", scopes=["inference"], user=world.bob
    )
    response = root.post(
        f"/admin/auth/user/{world.bob.pk}/change/", user_form(world.bob, is_active=False)
    )
    assert response.status_code == 302, response.content[:2000]
    key.refresh_from_db()
    world.bob.refresh_from_db()
    assert not world.bob.is_active and key.revoked_at is not None
    assert AuditEvent.objects.filter(action="user.deactivate").exists()
    assert AuditEvent.objects.filter(action="apikey.revoke", target_id=str(key.pk)).exists()


def test_users_are_deactivated_not_deleted(world, root):
    response = root.post(f"/admin/auth/user/{world.bob.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    assert type(world.bob).objects.filter(pk=world.bob.pk).exists()


def test_password_change_in_the_admin_is_audited(world, root):
    response = root.post(
        f"/admin/auth/user/{world.bob.pk}/password/",
        {"password1": "n3w-Passw0rd!x", "password2": "n3w-Passw0rd!x", "usable_password": "true"},
    )
    assert response.status_code == 302, response.content[:2000]
    world.bob.refresh_from_db()
    assert world.bob.check_password("n3w-Passw0rd!x")
    event = AuditEvent.objects.get(action="user.set_password")
    assert "n3w" not in str(event.changes)


def test_removing_the_last_owner_in_the_admin_is_refused(world, root):
    owner = Membership.objects.get(user=world.alice, organization=world.org_a)
    url = f"/admin/tenancy/membership/{owner.pk}/delete/"
    root.get(url)  # sign-in bookkeeping happens here, not in the refused POST
    before = database_state()
    response = root.post(url, {"post": "yes"})
    assert response.status_code == 302
    assert any("at least one owner" in m for m in messages_of(response)), messages_of(response)
    assert database_state() == before


def test_demoting_the_last_owner_in_the_admin_is_refused(world, root):
    owner = Membership.objects.get(user=world.alice, organization=world.org_a)
    url = f"/admin/tenancy/membership/{owner.pk}/change/"
    root.get(url)
    before = database_state()
    response = root.post(url, {"role": "admin"})
    assert response.status_code == 302
    assert any("at least one owner" in m for m in messages_of(response))
    assert database_state() == before


def test_membership_added_in_the_admin_is_audited(world, root):
    response = root.post(
        "/admin/tenancy/membership/add/",
        {"user": world.oscar.pk, "organization": world.org_a.pk, "role": "viewer"},
    )
    assert response.status_code == 302, response.content[:2000]
    assert Membership.objects.filter(user=world.oscar, organization=world.org_a).exists()
    assert AuditEvent.objects.filter(action="member.add", actor_label="root").exists()


@pytest.fixture
def deployment(world):
    version = ModelVersion.objects.get(model=world.model)
    version.parameter_count = 1_000_000_000
    version.dtype = "bfloat16"
    version.save()
    pool = create_pool(actor=SYSTEM, name="gpu")
    deployment = create_deployment(
        actor=SYSTEM, organization=world.org_a, name="chat", model="tiny-chat", pool=pool
    )
    Replica.objects.create(deployment=deployment, spec_hash=deployment.spec_hash)
    return deployment


def test_deleting_a_deployment_in_the_admin_goes_through_the_service(world, root, deployment):
    response = root.post(f"/admin/fleet/deployment/{deployment.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302, response.content[:2000]
    assert not Deployment.objects.filter(pk=deployment.pk).exists()
    event = AuditEvent.objects.get(action="deployment.delete", target_id=str(deployment.pk))
    assert event.actor_label == "root"


def test_fleet_rows_the_reconciler_owns_are_read_only(world, root, deployment):
    replica = Replica.objects.get(deployment=deployment)
    root.get("/admin/")
    before = database_state()
    assert (
        root.post(f"/admin/fleet/replica/{replica.pk}/delete/", {"post": "yes"}).status_code == 403
    )
    assert root.post(f"/admin/fleet/deployment/{deployment.pk}/change/", {}).status_code == 403
    assert root.get("/admin/fleet/deployment/add/").status_code == 403
    assert root.get("/admin/auth/group/add/").status_code == 403
    assert database_state() == before


def test_catalog_model_created_in_the_admin_is_audited(world, root):
    response = root.post(
        "/admin/catalog/model/add/",
        {
            "alias": "admin-made",
            "display_name": "",
            "description": "",
            "task": "chat",
            "publisher": "",
            "license_id": "mit",
            "license_name": "",
            "license_url": "",
            "commercial_use": "on",
            "openness": "open-source",
            "versions-TOTAL_FORMS": "0",
            "versions-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content[:3000]
    assert AuditEvent.objects.filter(action="model.create", actor_label="root").exists()


def test_key_revocation_in_the_admin_is_audited(world, root):
    key, _ = create_api_key(
        actor=SYSTEM, organization=world.org_a, name="k", scopes=["inference"], user=world.bob
    )
    response = root.post(
        "/admin/tenancy/apikey/", {"action": "revoke_keys", "_selected_action": [str(key.pk)]}
    )
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert AuditEvent.objects.filter(action="apikey.revoke", actor_label="root").exists()


def test_the_admin_is_for_platform_administrators_only(world, make_user):
    """The admin lists every organization's rows, so a staff account with every admin
    permission (and admin of org A) is not let in: it reads nothing and changes nothing."""
    staff = make_user("stella", is_staff=True)
    staff.user_permissions.set(Permission.objects.all())
    add_member(actor=SYSTEM, organization=world.org_a, username="stella", role="admin")
    client = Client()
    client.force_login(staff)
    for url in ("/admin/", "/admin/tenancy/apikey/", "/admin/tenancy/organization/"):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], url
    bob = Membership.objects.get(user=world.bob, organization=world.org_a)
    before = database_state()
    response = client.post(f"/admin/tenancy/membership/{bob.pk}/change/", {"role": "owner"})
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    response = client.post(
        "/admin/tenancy/team/add/", {"organization": world.org_b.pk, "slug": "x", "name": "X"}
    )
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert database_state() == before
    assert not Team.objects.filter(slug="x").exists()


def test_user_created_in_the_admin_is_audited(world, root):
    response = root.post(
        "/admin/auth/user/add/",
        {
            "username": "newbie",
            "usable_password": "true",
            "password1": "n3w-Passw0rd!x",
            "password2": "n3w-Passw0rd!x",
        },
    )
    assert response.status_code == 302, response.content[:3000]
    user = type(world.bob).objects.get(username="newbie")
    assert user.check_password("n3w-Passw0rd!x") and not user.is_superuser
    assert AuditEvent.objects.filter(action="user.create", target_id=str(user.pk)).exists()


def test_pool_created_in_the_admin_goes_through_the_service(world, root):
    response = root.post(
        "/admin/fleet/pool/add/",
        {"name": "admin-pool", "description": "", "labels": "{}", "strategy": "binpack"},
    )
    assert response.status_code == 302, response.content[:3000]
    assert AuditEvent.objects.filter(action="pool.create", actor_label="root").exists()


def test_limit_policy_for_one_model_created_in_the_admin(world, root):
    from controlplane.quotas.models import LimitPolicy

    url = "/admin/quotas/limitpolicy/add/"
    form = {"organization": str(world.org_a.pk), "model": "tiny-chat", "daily_tokens": "1000"}
    response = root.post(url, form)
    assert response.status_code == 302, response.content[:3000]
    policy = LimitPolicy.objects.get(organization=world.org_a, model="tiny-chat")
    assert policy.daily_tokens == 1000
    assert AuditEvent.objects.filter(action="limits.create", actor_label="root").exists()
    # A second policy for the same subject and model is refused, nothing written.
    before = database_state()
    response = root.post(url, dict(form, daily_tokens="5"))
    assert response.status_code == 200
    assert database_state() == before
