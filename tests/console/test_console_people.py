"""Console pages for people: me/ (own keys, own password), members/, teams/ and an
administrator's key edits. Every route against every caller of tests/conftest.py;
each write goes through its service and leaves an audit event; a refused write
changes nothing; service refusals show on the form; stored names render escaped."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from controlplane.audit.models import AuditEvent
from controlplane.tenancy.models import ApiKey, Membership, Team, TeamMembership
from controlplane.tenancy.services import (
    add_member,
    add_team_member,
    create_api_key,
    create_team,
)
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tests.conftest import SYSTEM
from tests.controlplane.test_usage_rollup import r  # noqa: F401 (a clean Redis)

pytestmark = pytest.mark.django_db

CALLERS = ("alice", "bob", "victor", "oscar", "root", None)
SIGNIN = "/console/signin/"
NEW_PASSWORD = "Correct-horse-battery-42"
LATER = (timezone.now() + dt.timedelta(days=30)).strftime("%Y-%m-%dT%H:%M")

WRITE = (302, 403, 403, 404, 302, 302)  # an admin's write in org A
# url name -> (method, expected status per caller: owner A, member A, viewer A,
# admin B, platform admin, anonymous). 302 for anonymous = sent to sign in.
ROLE_TABLE = {
    "me": ("GET", (200, 200, 200, 200, 200, 302)),
    "me-password": ("POST", (302, 302, 302, 302, 302, 302)),
    # alice's key: only its holder revokes it here (others: no such key of theirs).
    "me-key-revoke": ("POST", (302, 404, 404, 404, 404, 302)),
    "members": ("GET", (200, 200, 200, 404, 200, 302)),
    "member-add": ("POST", WRITE),
    "member-role": ("POST", WRITE),
    "member-remove": ("POST", WRITE),
    "teams": ("GET", (200, 200, 200, 404, 200, 302)),
    "team-create": ("POST", WRITE),
    "team": ("GET", (200, 200, 200, 404, 200, 302)),
    "team-rename": ("POST", WRITE),
    "team-delete": ("POST", WRITE),
    "team-member-add": ("POST", WRITE),
    "team-member-remove": ("POST", WRITE),
    "key-edit": ("GET", (200, 403, 403, 404, 200, 302)),
    "key-update": ("POST", WRITE),
}


def url(name: str, **kwargs) -> str:
    if name != "me" and not name.startswith("me-"):
        kwargs.setdefault("org_slug", "org-a")
    return reverse(f"console:{name}", kwargs=kwargs)


def key_for(world, user, name="a key", **extra) -> ApiKey:
    key, _secret = create_api_key(
        actor=SYSTEM,
        organization=world.org_a,
        name=name,
        scopes=["inference"],
        user=user,
        **extra,
    )
    return key


def core_team(world) -> Team:
    """Team core of org A with victor in it."""
    team = create_team(actor=SYSTEM, organization=world.org_a, slug="core", name="Core")
    add_team_member(actor=SYSTEM, team=team, user=world.victor)
    return team


def target(name: str, world, caller: str | None) -> tuple[str, dict]:
    """The URL and form data of one route, with what it acts on."""
    membership = Membership.objects.get
    if name == "me-password":
        data = {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
        return url(name), data | {"old_password": f"pw-{caller}"}
    if name == "me-key-revoke":
        return url(name, key_id=key_for(world, world.alice).pk), {}
    if name == "member-add":
        get_user_model().objects.create_user("carol", password="pw-carol")
        return url(name), {"user": "carol", "role": "member"}
    if name == "member-role":
        bob = membership(user=world.bob, organization=world.org_a)
        return url(name, membership_id=bob.pk), {"role": "viewer"}
    if name == "member-remove":
        victor = membership(user=world.victor, organization=world.org_a)
        return url(name, membership_id=victor.pk), {}
    if name == "team-create":
        return url(name), {"name": "Research"}
    if name.startswith("team-") or name == "team":
        team = core_team(world)
        if name == "team-member-remove":
            victor = TeamMembership.objects.get(team=team, user=world.victor)
            return url(name, team_id=team.pk, team_membership_id=victor.pk), {}
        data = {"team-rename": {"name": "Renamed"}, "team-member-add": {"user": "bob"}}
        return url(name, team_id=team.pk), data.get(name, {})
    if name in ("key-edit", "key-update"):
        key = key_for(world, world.bob, "bob's")
        return url(name, key_id=key.pk), {"allowed_models": ["tiny-chat"], "expires_at": LATER}
    return url(name), {}


def state() -> tuple:
    """Everything these pages may change, and the audit log's length."""
    User = get_user_model()
    return (
        list(Membership.objects.order_by("pk").values_list("user_id", "organization_id", "role")),
        list(Team.objects.order_by("pk").values_list("pk", "slug", "name")),
        list(TeamMembership.objects.order_by("pk").values_list("team_id", "user_id")),
        list(
            ApiKey.objects.order_by("pk").values_list(
                "pk", "user_id", "revoked_at", "allowed_models", "expires_at"
            )
        ),
        list(User.objects.order_by("pk").values_list("username", "password")),
        AuditEvent.objects.count(),
    )


def audit_actions() -> list[str]:
    return list(AuditEvent.objects.order_by("seq").values_list("action", flat=True))


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("name", sorted(ROLE_TABLE))
@pytest.mark.parametrize("index", range(len(CALLERS)), ids=[str(c) for c in CALLERS])
def test_role_table(world, name, index):
    caller = CALLERS[index]
    method, expected = ROLE_TABLE[name]
    client = Client()
    if caller:
        client.force_login(getattr(world, caller))
    address, data = target(name, world, caller)
    before = state()
    response = client.post(address, data) if method == "POST" else client.get(address)
    assert response.status_code == expected[index], (name, caller, response.content[:300])
    if caller is None:
        assert response["Location"].startswith(SIGNIN)
    if method == "GET" or response.status_code != 302 or caller is None:
        assert state() == before, "a read or a refused write changed something"
    else:
        assert AuditEvent.objects.count() > before[-1], "a write without an audit event"


POST_ROUTES = sorted(name for name, (method, _) in ROLE_TABLE.items() if method == "POST")


@pytest.mark.parametrize("name", POST_ROUTES)
def test_post_without_csrf_token_is_refused(world, name):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.alice)
    address, data = target(name, world, "alice")
    before = state()
    assert client.post(address, data).status_code == 403
    assert state() == before


# --------------------------------------------------------------------------- me/
def test_me_lists_own_keys_of_every_organization_and_revokes_them(world, dual):
    in_a = key_for(world, world.dora, "dora in A")
    in_b, _ = create_api_key(
        actor=SYSTEM, organization=world.org_b, name="dora in B", scopes=["inference"], user=dual
    )
    key_for(world, world.alice, "alice's")
    client = signed_in(dual)
    body = client.get(url("me")).content.decode()
    assert "dora in A" in body and "dora in B" in body and "alice&#x27;s" not in body
    response = client.post(url("me-key-revoke", key_id=in_b.pk))
    assert response.status_code == 302 and response["Location"] == url("me")
    in_b.refresh_from_db()
    in_a.refresh_from_db()
    assert in_b.revoked_at is not None and in_a.revoked_at is None
    assert audit_actions()[-1] == "apikey.revoke"
    assert "revoked" in client.get(url("me")).content.decode()


def test_a_viewer_cannot_revoke_their_key_and_sees_no_button(world):
    key = key_for(world, world.victor, "victor's")  # made for them by an administrator
    client = signed_in(world.victor)
    body = client.get(url("me")).content.decode()
    assert "victor&#x27;s" in body and "Revoke" not in body
    before = state()
    response = client.post(url("me-key-revoke", key_id=key.pk))
    assert response.status_code == 403 and b'role="alert"' in response.content
    assert state() == before


def test_change_password_keeps_this_session_and_ends_the_others(world):
    client = signed_in(world.bob)
    other = signed_in(world.bob)
    response = client.post(
        url("me-password"),
        {"old_password": "pw-bob", "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert response.status_code == 302
    world.bob.refresh_from_db()
    assert world.bob.check_password(NEW_PASSWORD)
    event = AuditEvent.objects.order_by("seq").last()
    assert event.action == "user.change_password" and event.target_id == str(world.bob.pk)
    assert NEW_PASSWORD not in str(event.changes)
    page = client.get(url("me"))
    assert page.status_code == 200 and b"Your password has been changed." in page.content
    assert other.get(url("me")).status_code == 302  # the other session is signed out


@pytest.mark.parametrize(
    "data, field, text",
    [
        (
            {"old_password": "wrong", "new_password1": NEW_PASSWORD},
            "old-password-error",
            "not your current password",
        ),
        ({"old_password": "pw-bob", "new_password1": "short"}, "new-password-error", "too short"),
        ({"old_password": "pw-bob", "new_password1": "password"}, "new-password-error", "common"),
        (
            {"old_password": "pw-bob", "new_password1": NEW_PASSWORD, "new_password2": "other"},
            "new-password-error",
            "same both times",
        ),
    ],
)
def test_change_password_refusals_change_nothing(world, r, data, field, text):  # noqa: F811
    data = {"new_password2": data["new_password1"]} | data
    client = signed_in(world.bob)
    before = state()
    response = client.post(url("me-password"), data)
    assert response.status_code == 400
    body = response.content.decode()
    assert f'aria-describedby="{field}"' in body and f'id="{field}"' in body and text in body
    assert state() == before


def test_guessing_the_current_password_is_throttled(world, r):  # noqa: F811
    client = signed_in(world.bob)
    wrong = {"old_password": "guess", "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
    for _ in range(5):
        assert client.post(url("me-password"), wrong).status_code == 400
    before = state()
    right = wrong | {"old_password": "pw-bob"}
    response = client.post(url("me-password"), right)
    assert response.status_code == 429 and b"Too many wrong passwords" in response.content
    assert state() == before
    r.flushdb()  # the window passed
    assert client.post(url("me-password"), right).status_code == 302


# --------------------------------------------------------------------------- members/
def test_members_are_paginated_searched_and_bounded(world, django_assert_max_num_queries):
    team = core_team(world)
    User = get_user_model()
    for i in range(70):
        user = User.objects.create_user(f"user-{i:03d}", email=f"u{i:03d}@example.org")
        add_member(actor=SYSTEM, organization=world.org_a, username=user.username, role="member")
        add_team_member(actor=SYSTEM, team=team, user=user)
    client = signed_in(world.victor)
    with django_assert_max_num_queries(14):
        first = client.get(url("members"))
    body = first.content.decode()
    assert body.count('<th scope="row">') == 50 and "Page 1 of 2" in body
    assert "Core" in body  # the team column
    second = client.get(url("members"), {"page": 2}).content.decode()
    assert second.count('<th scope="row">') == 73 - 50  # alice, bob, victor and 70
    by_email = client.get(url("members"), {"q": "u06"}).content.decode()
    assert by_email.count('<th scope="row">user-06') == 10
    assert client.get(url("members"), {"page": "junk"}).status_code == 200


@pytest.mark.parametrize("how", ["carol", "Carol@Example.org"])
def test_add_member_by_user_name_or_email(world, how):
    carol = get_user_model().objects.create_user("carol", email="carol@example.org")
    client = signed_in(world.alice)
    response = client.post(url("member-add"), {"user": how, "role": "admin"})
    assert response.status_code == 302
    assert Membership.objects.get(user=carol, organization=world.org_a).role == "admin"
    assert audit_actions()[-1] == "member.add"


def test_adding_an_unknown_person_creates_no_account(world):
    client = signed_in(world.alice)
    before = state()
    response = client.post(url("member-add"), {"user": "nobody", "role": "member"})
    assert response.status_code == 400
    assert (
        b'id="member-user-error"' in response.content and b"No user is called" in response.content
    )
    assert state() == before


def test_an_email_two_people_share_names_no_one(world):
    User = get_user_model()
    User.objects.create_user("carol", email="shared@example.org")
    User.objects.create_user("carl", email="shared@example.org")
    before = state()
    response = signed_in(world.alice).post(
        url("member-add"), {"user": "shared@example.org", "role": "member"}
    )
    assert response.status_code == 400 and b"Several people share" in response.content
    assert state() == before


def test_an_existing_member_is_not_added_twice(world):
    before = state()
    response = signed_in(world.alice).post(url("member-add"), {"user": "bob", "role": "admin"})
    assert response.status_code == 400 and b"already a member" in response.content
    assert state() == before


def test_change_role_and_remove_go_through_the_services(world):
    key = key_for(world, world.bob, "bob's")
    client = signed_in(world.alice)
    bob = Membership.objects.get(user=world.bob, organization=world.org_a)
    assert (
        client.post(url("member-role", membership_id=bob.pk), {"role": "admin"}).status_code == 302
    )
    bob.refresh_from_db()
    assert bob.role == "admin" and audit_actions()[-1] == "member.change_role"
    assert client.post(url("member-remove", membership_id=bob.pk)).status_code == 302
    assert not Membership.objects.filter(pk=bob.pk).exists()
    key.refresh_from_db()
    assert key.revoked_at is not None  # their keys go with them
    assert audit_actions()[-2:] == ["apikey.revoke", "member.remove"]


def test_an_admin_who_leaves_goes_home(world, dual):
    client = signed_in(dual)
    dora = Membership.objects.get(user=dual, organization=world.org_a)
    response = client.post(url("member-remove", membership_id=dora.pk))
    assert response.status_code == 302 and response["Location"] == reverse("console:home")
    assert client.get(url("members")).status_code == 404


def test_only_owners_grant_or_remove_owner(world, dual):
    """dora is an admin of org A: the service refuses her owner changes; the page says so."""
    client = signed_in(dual)
    carol = get_user_model().objects.create_user("carol")
    alice = Membership.objects.get(user=world.alice, organization=world.org_a)
    bob = Membership.objects.get(user=world.bob, organization=world.org_a)
    before = state()
    for address, data in (
        (url("member-add"), {"user": carol.username, "role": "owner"}),
        (url("member-role", membership_id=bob.pk), {"role": "owner"}),
        (url("member-role", membership_id=alice.pk), {"role": "member"}),
        (url("member-remove", membership_id=alice.pk), {}),
    ):
        response = client.post(address, data)
        assert response.status_code == 403, address
        assert b"only an owner may grant or change the owner role" in response.content.lower()
    assert state() == before
    # Her page offers no owner role and no controls on the owner's row.
    body = client.get(url("members")).content.decode()
    assert '<option value="owner"' not in body
    assert url("member-remove", membership_id=alice.pk) not in body
    assert url("member-remove", membership_id=bob.pk) in body
    # An owner may.
    owner = signed_in(world.alice)
    assert '<option value="owner"' in owner.get(url("members")).content.decode()
    response = owner.post(url("member-role", membership_id=bob.pk), {"role": "owner"})
    assert response.status_code == 302
    assert Membership.objects.get(pk=bob.pk).role == "owner"


def test_the_last_owner_stays(world):
    client = signed_in(world.alice)
    alice = Membership.objects.get(user=world.alice, organization=world.org_a)
    before = state()
    for address, data in (
        (url("member-role", membership_id=alice.pk), {"role": "admin"}),
        (url("member-remove", membership_id=alice.pk), {}),
    ):
        response = client.post(address, data)
        assert response.status_code == 400
        body = response.content.decode()
        assert "must keep at least one owner" in body
        assert f'id="member-{alice.pk}-error"' in body
        assert f'aria-describedby="member-{alice.pk}-error"' in body
    assert state() == before


@pytest.mark.parametrize("caller", ["alice", "root"])
def test_members_of_another_organization_are_not_found(world, caller):
    """Even a platform administrator, who sees both, acts on org B's members only
    through org B's pages."""
    oscar = Membership.objects.get(user=world.oscar, organization=world.org_b)
    client = signed_in(getattr(world, caller))
    before = state()
    assert client.post(url("member-remove", membership_id=oscar.pk)).status_code == 404
    role = client.post(url("member-role", membership_id=oscar.pk), {"role": "viewer"})
    assert role.status_code == 404
    assert state() == before


# --------------------------------------------------------------------------- teams/
def test_team_create_rename_delete(world):
    client = signed_in(world.alice)
    response = client.post(url("team-create"), {"name": "Data Science"})
    team = Team.objects.get(organization=world.org_a, slug="data-science")
    assert response.status_code == 302 and response["Location"] == url("team", team_id=team.pk)
    assert audit_actions()[-1] == "team.create"
    assert client.post(url("team-rename", team_id=team.pk), {"name": "ML"}).status_code == 302
    team.refresh_from_db()
    assert team.name == "ML" and audit_actions()[-1] == "team.update"
    assert b"ML" in client.get(url("teams")).content
    key = key_for(world, None, "charged", team=team)
    assert client.post(url("team-delete", team_id=team.pk)).status_code == 302
    assert not Team.objects.filter(pk=team.pk).exists()
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert audit_actions()[-2:] == ["apikey.revoke", "team.delete"]


def test_team_errors_are_shown_on_the_form(world):
    core_team(world)
    client = signed_in(world.alice)
    before = state()
    duplicate = client.post(url("team-create"), {"name": "Other", "slug": "core"})
    assert duplicate.status_code == 400 and b'id="team-slug-error"' in duplicate.content
    assert b"already exists" in duplicate.content
    bad_slug = client.post(url("team-create"), {"name": "Other", "slug": "No Good"})
    assert bad_slug.status_code == 400 and b'id="team-slug-error"' in bad_slug.content
    nameless = client.post(url("team-create"), {"name": "  "})
    assert nameless.status_code == 400 and b'id="team-name-error"' in nameless.content
    team = Team.objects.get(slug="core")
    blank = client.post(url("team-rename", team_id=team.pk), {"name": ""})
    assert blank.status_code == 400 and b'id="team-name-error"' in blank.content
    assert state() == before


def test_team_members_are_added_and_removed_through_the_service(world):
    team = core_team(world)
    client = signed_in(world.alice)
    assert client.post(url("team-member-add", team_id=team.pk), {"user": "bob"}).status_code == 302
    assert TeamMembership.objects.filter(team=team, user=world.bob).exists()
    assert audit_actions()[-1] == "team.add_member"
    page = client.get(url("teams")).content.decode()
    assert re.search(r">Core</a></th>\s*<td><code>core</code></td>\s*<td>2</td>", page)
    key = key_for(world, world.bob, "bob in core", team=team)
    bob = TeamMembership.objects.get(team=team, user=world.bob)
    remove = url("team-member-remove", team_id=team.pk, team_membership_id=bob.pk)
    assert client.post(remove).status_code == 302
    assert not TeamMembership.objects.filter(pk=bob.pk).exists()
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert audit_actions()[-1] == "team.remove_member"


def test_only_members_of_the_organization_join_its_teams(world):
    team = core_team(world)
    get_user_model().objects.create_user("carol")
    client = signed_in(world.alice)
    before = state()
    for who, message in (("carol", b"No user is called"), ("oscar", b"No user is called")):
        response = client.post(url("team-member-add", team_id=team.pk), {"user": who})
        assert response.status_code == 400 and message in response.content
        assert b'id="team-member-user-error"' in response.content
    again = client.post(url("team-member-add", team_id=team.pk), {"user": "victor"})
    assert again.status_code == 400 and b"already in this team" in again.content
    assert state() == before


@pytest.mark.parametrize("caller", ["alice", "root"])
def test_teams_of_another_organization_are_not_found(world, caller):
    other = create_team(actor=SYSTEM, organization=world.org_b, slug="b-team", name="B")
    client = signed_in(getattr(world, caller))
    before = state()
    assert client.get(url("team", team_id=other.pk)).status_code == 404
    assert client.post(url("team-delete", team_id=other.pk)).status_code == 404
    assert client.get(url("team", team_id="not-a-uuid")).status_code == 404
    assert state() == before


# --------------------------------------------------------------------------- keys/
def create_key(client, **data):
    return client.post(url("key-create"), {"name": "made here", "scopes": ["inference"]} | data)


def test_an_admin_creates_keys_for_a_member_a_team_or_a_service(world, dual):
    team = core_team(world)
    add_team_member(actor=SYSTEM, team=team, user=world.bob)
    client = signed_in(dual)
    response = create_key(
        client,
        name="for bob",
        holder_kind="member",
        holder="bob",
        team=str(team.pk),
        allowed_models=["tiny-chat"],
        expires_at=LATER,
    )
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    assert re.search(rb"<dt>Acts for</dt><dd>bob</dd>", response.content)
    key = ApiKey.objects.get(name="for bob")
    assert key.user == world.bob and key.team == team and key.allowed_models == ["tiny-chat"]
    assert key.expires_at.strftime("%Y-%m-%dT%H:%M") == LATER
    assert audit_actions()[-1] == "apikey.create"
    response = create_key(client, name="robot", holder_kind="service", team=str(team.pk))
    assert response.status_code == 200
    robot = ApiKey.objects.get(name="robot")
    assert robot.user is None and robot.created_by == world.dora


def test_key_create_refusals_are_shown_and_change_nothing(world, dual):
    core = core_team(world)
    admin, member = signed_in(dual), signed_in(world.bob)
    before = state()
    cases = (
        # An admin makes no key for an owner (the service's rule).
        (admin, {"holder_kind": "member", "holder": "alice"}, 403, b"an admin creates keys only"),
        (admin, {"holder_kind": "member", "holder": "oscar"}, 400, b'id="key-holder-error"'),
        (member, {"holder_kind": "member", "holder": "alice"}, 403, b"only create keys for them"),
        (member, {"holder_kind": "service"}, 403, b"only create keys for them"),
        (member, {"team": str(core.pk)}, 403, b"teams they belong to"),
        (member, {"allowed_models": ["nope"]}, 400, b'id="key-models-error"'),
        (member, {"expires_at": "tomorrow"}, 400, b'id="key-expires-error"'),
        (member, {"expires_at": "2001-01-01T00:00"}, 400, b"Must be in the future"),
    )
    for client, data, status, text in cases:
        response = create_key(client, **data)
        assert response.status_code == status, data
        assert text in response.content, (data, response.content[-3000:])
    assert state() == before


def test_a_member_makes_a_narrow_key_of_their_own(world):
    response = create_key(
        signed_in(world.bob), name="narrow", allowed_models=["tiny-chat"], expires_at=LATER
    )
    assert response.status_code == 200
    key = ApiKey.objects.get(name="narrow")
    assert key.user == world.bob and key.allowed_models == ["tiny-chat"] and key.expires_at


def test_members_and_viewers_see_only_their_controls(world):
    key_for(world, world.bob, "bob's")
    member = signed_in(world.bob).get(url("keys")).content.decode()
    assert "Create a key" in member and "Acts for" not in member and "/edit/" not in member
    admin = signed_in(world.alice).get(url("keys")).content.decode()
    assert "Acts for" in admin and "/edit/" in admin


def test_an_admin_edits_a_keys_models_and_expiry(world):
    key = key_for(world, world.bob, "bob's")
    client = signed_in(world.alice)
    page = client.get(url("key-edit", key_id=key.pk))
    assert page.status_code == 200 and b'name="allowed_models" value="tiny-chat"' in page.content
    response = client.post(
        url("key-update", key_id=key.pk), {"allowed_models": ["tiny-chat"], "expires_at": LATER}
    )
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.allowed_models == ["tiny-chat"]
    assert key.expires_at.strftime("%Y-%m-%dT%H:%M") == LATER
    event = AuditEvent.objects.order_by("seq").last()
    assert event.action == "apikey.update" and set(event.changes) >= {"allowed_models"}
    # The form shows the current values; saving them unchanged writes nothing.
    page = client.get(url("key-edit", key_id=key.pk)).content.decode()
    assert f'value="{LATER}"' in page and "checked> tiny-chat" in page
    before = state()
    again = {"allowed_models": ["tiny-chat"], "expires_at": LATER}
    assert client.post(url("key-update", key_id=key.pk), again).status_code == 302
    assert state() == before
    # Empty: every usable model, no expiry.
    assert client.post(url("key-update", key_id=key.pk), {"expires_at": ""}).status_code == 302
    key.refresh_from_db()
    assert key.allowed_models == [] and key.expires_at is None


def test_an_expired_keys_models_change_without_touching_its_expiry(world):
    key = key_for(world, world.bob, "old", expires_at=timezone.now() + dt.timedelta(days=1))
    past = timezone.now() - dt.timedelta(days=1)
    ApiKey.objects.filter(pk=key.pk).update(expires_at=past)  # time passed
    client = signed_in(world.alice)
    form = client.get(url("key-edit", key_id=key.pk)).content.decode()
    shown = re.search(r'name="expires_at" type="datetime-local" value="([^"]*)"', form).group(1)
    data = {"allowed_models": ["tiny-chat"], "expires_at": shown}
    assert client.post(url("key-update", key_id=key.pk), data).status_code == 302
    key.refresh_from_db()
    assert key.allowed_models == ["tiny-chat"] and key.expires_at == past


def test_key_edit_refusals_are_shown_and_change_nothing(world, dual):
    owners = key_for(world, world.alice, "alice's", allowed_models=["tiny-chat"])
    bobs = key_for(world, world.bob, "bob's")
    revoked = key_for(world, world.bob, "gone")
    signed_in(world.bob).post(reverse("console:key-revoke", args=["org-a", revoked.pk]))
    before = state()
    admin = signed_in(dual)
    cases = (
        # An admin may narrow an owner's key but not widen it (the service's rule).
        (admin, owners, {"allowed_models": []}, 403, b"an admin creates keys only"),
        (admin, bobs, {"allowed_models": ["nope"]}, 400, b'id="edit-models-error"'),
        (admin, bobs, {"expires_at": "2001-01-01T00:00"}, 400, b'id="edit-expires-error"'),
        (admin, bobs, {"expires_at": "soon"}, 400, b'id="edit-expires-error"'),
        (admin, revoked, {"expires_at": LATER}, 400, b"revoked key cannot be changed"),
    )
    for client, key, data, status, text in cases:
        data = {"allowed_models": key.allowed_models} | data
        response = client.post(url("key-update", key_id=key.pk), data)
        assert response.status_code == status, data
        assert text in response.content, data
    assert state() == before


# --------------------------------------------------------------------------- safety
SCRIPT = "<script>alert(1)</script>"


def test_stored_names_render_escaped(world):
    team = create_team(actor=SYSTEM, organization=world.org_a, slug="x", name=SCRIPT)
    user = get_user_model().objects.create_user("mallory", email=f"{SCRIPT}@example.org")
    add_member(actor=SYSTEM, organization=world.org_a, username="mallory", role="member")
    add_team_member(actor=SYSTEM, team=team, user=user)
    key = key_for(world, user, SCRIPT, team=team)
    client = signed_in(world.alice)
    for address in (
        url("members"),
        url("teams"),
        url("team", team_id=team.pk),
        url("key-edit", key_id=key.pk),
    ):
        body = signed_in(world.alice).get(address).content
        assert b"<script>alert(1)" not in body, address
        assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in body, address
    body = signed_in(user).get(url("me")).content
    assert b"<script>alert(1)" not in body and b"&lt;script&gt;" in body
    # An error that repeats the input escapes it too.
    response = client.post(url("member-add"), {"user": SCRIPT, "role": "member"})
    assert response.status_code == 400 and b"<script>alert(1)" not in response.content


@pytest.mark.parametrize("page", ["members", "teams", "team"])
def test_viewers_see_no_write_controls(world, page):
    team = core_team(world)
    address = url(page, team_id=team.pk) if page == "team" else url(page)
    viewer = signed_in(world.victor).get(address).content.decode()
    admin = signed_in(world.alice).get(address).content.decode()
    # The sign-out form is the only one a viewer gets.
    assert viewer.count('method="post"') == 1
    assert admin.count('method="post"') > 1
    assert "<select" not in viewer


def test_my_pages_carry_no_inline_script_or_style(world):
    team = core_team(world)
    client = signed_in(world.alice)
    for address in (url("me"), url("members"), url("teams"), url("team", team_id=team.pk)):
        response = client.get(address)
        for tag in re.findall(rb"<script[^>]*>", response.content):
            assert b"src=" in tag or b'type="application/json"' in tag, (address, tag)
        assert b" style=" not in response.content and b" onclick=" not in response.content
        assert response.content.count(b"<h1") == 1


def test_a_key_never_changes_its_users_password(world):
    from controlplane.tenancy.actors import Actor
    from controlplane.tenancy.services import change_own_password
    from django.core.exceptions import PermissionDenied

    key = key_for(world, world.bob, "bob's")
    before = state()
    with pytest.raises(PermissionDenied):
        change_own_password(
            actor=Actor.for_key(key), old_password="pw-bob", new_password=NEW_PASSWORD
        )
    assert state() == before


def test_team_pages_and_me_are_bounded(world, django_assert_max_num_queries):
    core = core_team(world)
    add_team_member(actor=SYSTEM, team=core, user=world.bob)
    for i in range(60):
        create_team(actor=SYSTEM, organization=world.org_a, slug=f"t-{i:02d}", name=f"T {i:02d}")
        key_for(world, world.bob, f"bob-{i:02d}", team=core)
    client = signed_in(world.bob)
    with django_assert_max_num_queries(12):
        teams = client.get(url("teams")).content.decode()
    assert teams.count('<th scope="row">') == 50 and "Page 1 of 2" in teams
    with django_assert_max_num_queries(12):
        team = client.get(url("team", team_id=core.pk)).content.decode()
    assert "60 active keys charged" in team and team.count('<th scope="row">') == 2
    with django_assert_max_num_queries(12):
        me = client.get(url("me")).content.decode()
    assert me.count('<th scope="row">bob-') == 50 and me.count(">Revoke</button>") == 50
