"""Shared fixtures: the callers every API test talks about.

alice   owner of org A          victor  viewer of org A
bob     member of org A         oscar   admin of org B
root    platform administrator  anonymous: no credentials
dora    admin of org A and member of org B (the ``dual`` fixture)
"""

from __future__ import annotations

import pytest
from controlplane.catalog.services import create_model, create_version, grant_model_access
from controlplane.tenancy.actors import Actor
from controlplane.tenancy.services import add_member, create_organization
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

pytest_plugins = ["tests.support.vllm_fixtures"]

SYSTEM = Actor.system("tests")


@pytest.fixture
def system():
    return SYSTEM


@pytest.fixture
def make_user(db):
    def make(username: str, **extra):
        user = get_user_model().objects.create_user(
            username=username, password="pw-" + username, **extra
        )
        return user

    return make


@pytest.fixture
def world(db, make_user):
    """Two organizations with people in every role, a team, a model granted to A."""
    alice = make_user("alice")
    bob = make_user("bob")
    victor = make_user("victor")
    oscar = make_user("oscar")
    root = make_user("root", is_superuser=True, is_staff=True)
    org_a = create_organization(actor=SYSTEM, slug="org-a", name="Org A", owner=alice)
    org_b = create_organization(actor=SYSTEM, slug="org-b", name="Org B")
    add_member(actor=SYSTEM, organization=org_a, username="bob", role="member")
    add_member(actor=SYSTEM, organization=org_a, username="victor", role="viewer")
    add_member(actor=SYSTEM, organization=org_b, username="oscar", role="admin")
    model = create_model(
        actor=SYSTEM,
        alias="tiny-chat",
        task="chat",
        license_id="apache-2.0",
        commercial_use=True,
        openness="open-weights",
    )
    create_version(
        actor=SYSTEM,
        model=model,
        version="v1",
        source_type="local",
        local_path="/models/tiny-chat",
        context_length=2048,
    )
    grant_model_access(actor=SYSTEM, organization=org_a, model=model)

    class World:
        pass

    w = World()
    w.__dict__.update(
        alice=alice,
        bob=bob,
        victor=victor,
        oscar=oscar,
        root=root,
        org_a=org_a,
        org_b=org_b,
        model=model,
    )
    return w


def client_for(user=None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_login(user)
    return client


@pytest.fixture
def clients(world):
    return {
        "owner_a": client_for(world.alice),
        "member_a": client_for(world.bob),
        "viewer_a": client_for(world.victor),
        "admin_b": client_for(world.oscar),
        "platform_admin": client_for(world.root),
        "anonymous": client_for(None),
    }


@pytest.fixture
def dual(world, make_user):
    """dora: admin of org A and member of org B, so a view that forgets to filter by
    the organization in its URL shows her the other one's rows."""
    dora = make_user("dora")
    add_member(actor=SYSTEM, organization=world.org_a, username="dora", role="admin")
    add_member(actor=SYSTEM, organization=world.org_b, username="dora", role="member")
    world.dora = dora
    return dora
