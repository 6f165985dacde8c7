"""Console pages: me/ (own keys, change password), members/ and teams/ of an organization,
and an administrator's edit of a key's models and expiry.

Every write calls a ``tenancy.services`` function with the signed-in actor; a refusal
(``ValidationError`` 400, ``PermissionDenied`` 403) is shown on the page's form."""

from __future__ import annotations

import datetime as dt
import logging

import redis
from django.contrib import messages
from django.contrib.auth import get_user_model, update_session_auth_hash
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import Count, Prefetch, Q
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import path
from django.utils import timezone
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_POST

from controlplane.catalog.services import usable_model_aliases
from controlplane.console.views import (
    ORG,
    SIGNIN_FAILURES_ALLOWED,
    SIGNIN_WINDOW_SECONDS,
    _actor,
    _context,
    _organizations,
    as_uuid,
    find_user,
    org_page,
    parse_expiry,
    service_errors,
    signed_in,
)
from controlplane.redis import get_redis
from controlplane.tenancy import services
from controlplane.tenancy.models import ApiKey, Membership, Team, TeamMembership
from controlplane.tenancy.roles import Role

PER_PAGE = 50
User = get_user_model()
log = logging.getLogger(__name__)


def _refused(exc) -> tuple[dict[str, str], int]:
    return service_errors(exc), 403 if isinstance(exc, PermissionDenied) else 400


# --------------------------------------------------------------------------- me/
def _me_page(request, *, errors=None, status=200):
    actor = _actor(request)
    # Own keys in every organization where the caller may still see keys.
    keys = (
        ApiKey.objects.restrict(actor, "apikey.view")
        .filter(user=request.user)
        .select_related("organization", "team")
        .order_by("-created_at", "pk")
    )
    page = Paginator(keys, PER_PAGE).get_page(request.GET.get("page"))
    for key in page:
        # The service lets a holder revoke their own key where they may create keys.
        key.revocable = key.revoked_at is None and actor.can("apikey.create", key.organization_id)
    context = {
        "organizations": _organizations(actor),
        "page": page,
        "now": timezone.now(),
        "errors": errors or {},
    }
    return render(request, "console/people/me.html", context, status=status)


@require_GET
@signed_in
def me(request):
    return _me_page(request)


def _password_failures_key(user) -> str:
    return f"console:password-failures:{user.pk}"


def _password_failures(user) -> int:
    try:
        return int(get_redis().get(_password_failures_key(user)) or 0)
    except redis.RedisError as exc:
        log.warning("password-change throttle unavailable: %s", exc)
        return 0


def _count_password_failure(user) -> None:
    try:
        pipe = get_redis().pipeline()
        pipe.incr(_password_failures_key(user))
        pipe.expire(_password_failures_key(user), SIGNIN_WINDOW_SECONDS, nx=True)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("password-change throttle unavailable: %s", exc)


@require_POST
@signed_in
def me_password(request):
    # Guessing the current password through a borrowed session is throttled like sign-in.
    if _password_failures(request.user) >= SIGNIN_FAILURES_ALLOWED:
        why = "Too many wrong passwords; try again in 15 minutes."
        return _me_page(request, errors={"old_password": why}, status=429)
    new, again = request.POST.get("new_password1", ""), request.POST.get("new_password2", "")
    if not new or new != again:
        why = "Enter the new password twice, the same both times."
        return _me_page(request, errors={"new_password": why}, status=400)
    try:
        services.change_own_password(
            actor=_actor(request),
            old_password=request.POST.get("old_password", ""),
            new_password=new,
        )
    except (ValidationError, PermissionDenied) as exc:
        errors, status = _refused(exc)
        if "old_password" in errors:
            _count_password_failure(request.user)
        return _me_page(request, errors=errors, status=status)
    # This session stays signed in; every other session of the user ends.
    update_session_auth_hash(request, request.user)
    messages.success(request, "Your password has been changed.")
    return redirect("console:me")


@require_POST
@signed_in
def me_key_revoke(request, key_id):
    actor = _actor(request)
    key = (
        ApiKey.objects.restrict(actor, "apikey.view")
        .filter(user=request.user, pk=as_uuid(key_id))
        .first()
    )
    if key is None:
        raise Http404("No such key of yours.")
    try:
        services.revoke_api_key(actor=actor, key=key)
    except PermissionDenied as exc:
        return _me_page(request, errors=service_errors(exc), status=403)
    messages.success(request, f"Key {key.name} ({key.display_prefix}) revoked.")
    return redirect("console:me")


# --------------------------------------------------------------------------- members/
def _grantable_roles(request) -> list[str]:
    """Roles the caller may hand out: only owners (and platform admins) grant owner."""
    owner = request.actor.role_in(request.organization.pk) == Role.OWNER
    return [role for role in reversed(Role.values) if owner or role != Role.OWNER]


def _members_page(request, *, errors=None, row=None, form=None, status=200):
    organization, actor = request.organization, request.actor
    memberships = (
        Membership.objects.restrict(actor, "member.view")
        .filter(organization=organization)
        .select_related("user")
        .prefetch_related(
            Prefetch(
                "user__team_memberships",
                queryset=TeamMembership.objects.filter(
                    team__organization=organization
                ).select_related("team"),
                to_attr="org_teams",
            )
        )
        .order_by("user__username", "pk")
    )
    search = request.GET.get("q", "").strip()[:100]
    if search:
        memberships = memberships.filter(
            Q(user__username__icontains=search) | Q(user__email__icontains=search)
        )
    page = Paginator(memberships, PER_PAGE).get_page(request.GET.get("page"))
    context = _context(
        request,
        page=page,
        search=search,
        roles=_grantable_roles(request),
        is_owner=request.actor.role_in(organization.pk) == Role.OWNER,
        errors=errors or {},
        row=row,  # the membership whose row form failed
        form=form or {},
    )
    return render(request, "console/people/members.html", context, status=status)


def _membership(request, membership_id) -> Membership:
    membership = (
        Membership.objects.restrict(request.actor, "member.view")
        .filter(organization=request.organization, pk=membership_id)
        .select_related("user", "organization")
        .first()
    )
    if membership is None:
        raise Http404("No such member.")
    return membership


@require_GET
@org_page("member.view")
def members(request):
    return _members_page(request)


@require_POST
@org_page("member.change")
def member_add(request):
    organization = request.organization
    role = request.POST.get("role", "")
    user, why = find_user(User.objects.filter(is_active=True), request.POST.get("user", ""))
    if user is None:
        errors = {"user": f"{why} A platform administrator creates accounts."}
        return _members_page(request, errors=errors, form=request.POST, status=400)
    try:
        services.add_member(
            actor=request.actor, organization=organization, username=user.username, role=role
        )
    except (ValidationError, PermissionDenied) as exc:
        errors, status = _refused(exc)
        if "username" in errors:
            errors["user"] = errors.pop("username")
        return _members_page(request, errors=errors, form=request.POST, status=status)
    messages.success(request, f"{user.get_username()} added as {role}.")
    return redirect("console:members", org_slug=organization.slug)


@require_POST
@org_page("member.change")
def member_role(request, membership_id):
    membership = _membership(request, membership_id)
    role = request.POST.get("role", "")
    try:
        services.change_member_role(actor=request.actor, membership=membership, role=role)
    except (ValidationError, PermissionDenied) as exc:
        errors, status = _refused(exc)
        return _members_page(request, errors=errors, row=membership.pk, status=status)
    messages.success(request, f"{membership.user.get_username()} is now {role}.")
    return redirect("console:members", org_slug=request.organization.slug)


@require_POST
@org_page("member.change")
def member_remove(request, membership_id):
    membership = _membership(request, membership_id)
    try:
        services.remove_member(actor=request.actor, membership=membership)
    except (ValidationError, PermissionDenied) as exc:
        errors, status = _refused(exc)
        return _members_page(request, errors=errors, row=membership.pk, status=status)
    if membership.user_id == request.user.pk and not request.actor.is_platform_admin:
        return redirect("console:home")  # they left: the organization is gone from view
    messages.success(request, f"{membership.user.get_username()} removed.")
    return redirect("console:members", org_slug=request.organization.slug)


# --------------------------------------------------------------------------- teams/
def _teams_page(request, *, errors=None, form=None, status=200):
    organization, actor = request.organization, request.actor
    teams = (
        Team.objects.restrict(actor, "team.view")
        .filter(organization=organization)
        .annotate(member_count=Count("memberships"))
        .order_by("name", "pk")
    )
    page = Paginator(teams, PER_PAGE).get_page(request.GET.get("page"))
    context = _context(request, page=page, errors=errors or {}, form=form or {})
    return render(request, "console/people/teams.html", context, status=status)


def _team(request, team_id) -> Team:
    team = (
        Team.objects.restrict(request.actor, "team.view")
        .filter(organization=request.organization, pk=as_uuid(team_id))
        .select_related("organization")
        .first()
    )
    if team is None:
        raise Http404("No such team.")
    return team


def _team_page(request, team, *, errors=None, form=None, row=None, status=200):
    members = (
        TeamMembership.objects.restrict(request.actor, "team.view")
        .filter(team=team)
        .select_related("user")
        .order_by("user__username", "pk")
    )
    page = Paginator(members, PER_PAGE).get_page(request.GET.get("page"))
    live_keys = ApiKey.objects.filter(team=team, revoked_at=None).count()
    context = _context(
        request,
        team=team,
        page=page,
        live_keys=live_keys,
        errors=errors or {},
        form=form or {},
        row=row,
    )
    return render(request, "console/people/team.html", context, status=status)


@require_GET
@org_page("team.view")
def teams(request):
    return _teams_page(request)


@require_POST
@org_page("team.change")
def team_create(request):
    organization = request.organization
    name = request.POST.get("name", "").strip()
    slug = request.POST.get("slug", "").strip() or slugify(name)[:50].strip("-")
    if not name or len(name) > 200:
        errors = {"name": "Give the team a name of at most 200 characters."}
        return _teams_page(request, errors=errors, form=request.POST, status=400)
    try:
        team = services.create_team(
            actor=request.actor, organization=organization, slug=slug, name=name
        )
    except (ValidationError, PermissionDenied) as exc:
        errors, status = _refused(exc)
        return _teams_page(request, errors=errors, form=request.POST, status=status)
    messages.success(request, f"Team {team.name} created.")
    return redirect("console:team", org_slug=organization.slug, team_id=team.pk)


@require_GET
@org_page("team.view")
def team(request, team_id):
    return _team_page(request, _team(request, team_id))


@require_POST
@org_page("team.change")
def team_rename(request, team_id):
    team = _team(request, team_id)
    name = request.POST.get("name", "").strip()
    if not name or len(name) > 200:
        errors = {"name": "Give the team a name of at most 200 characters."}
        return _team_page(request, team, errors=errors, form=request.POST, status=400)
    try:
        services.update_team(actor=request.actor, team=team, name=name)
    except (ValidationError, PermissionDenied) as exc:
        errors, status = _refused(exc)
        team.refresh_from_db()
        return _team_page(request, team, errors=errors, form=request.POST, status=status)
    messages.success(request, "Team renamed.")
    return redirect("console:team", org_slug=request.organization.slug, team_id=team.pk)


@require_POST
@org_page("team.change")
def team_delete(request, team_id):
    team = _team(request, team_id)
    try:
        services.delete_team(actor=request.actor, team=team)
    except (ValidationError, PermissionDenied) as exc:
        errors, status = _refused(exc)
        return _team_page(request, team, errors=errors, status=status)
    messages.success(request, f"Team {team.name} deleted.")
    return redirect("console:teams", org_slug=request.organization.slug)


@require_POST
@org_page("team.change")
def team_member_add(request, team_id):
    team = _team(request, team_id)
    members = Membership.objects.restrict(request.actor, "member.view").filter(
        organization=request.organization
    )
    user, why = find_user(
        User.objects.filter(pk__in=members.values("user_id")), request.POST.get("user", "")
    )
    if user is None:
        errors = {"user": f"{why} Name a member of this organization."}
        return _team_page(request, team, errors=errors, form=request.POST, status=400)
    try:
        services.add_team_member(actor=request.actor, team=team, user=user)
    except (ValidationError, PermissionDenied) as exc:
        errors, status = _refused(exc)
        return _team_page(request, team, errors=errors, form=request.POST, status=status)
    messages.success(request, f"{user.get_username()} added to {team.name}.")
    return redirect("console:team", org_slug=request.organization.slug, team_id=team.pk)


@require_POST
@org_page("team.change")
def team_member_remove(request, team_id, team_membership_id):
    team = _team(request, team_id)
    team_membership = (
        TeamMembership.objects.restrict(request.actor, "team.view")
        .filter(team=team, pk=team_membership_id)
        .select_related("user", "team__organization")
        .first()
    )
    if team_membership is None:
        raise Http404("No such team member.")
    try:
        services.remove_team_member(actor=request.actor, team_membership=team_membership)
    except (ValidationError, PermissionDenied) as exc:
        errors, status = _refused(exc)
        return _team_page(request, team, errors=errors, row=team_membership.pk, status=status)
    messages.success(request, f"{team_membership.user.get_username()} removed from {team.name}.")
    return redirect("console:team", org_slug=request.organization.slug, team_id=team.pk)


# --------------------------------------------------------------------------- keys/<id>/edit
def _managed_key(request, key_id) -> ApiKey:
    key = (
        ApiKey.objects.restrict(request.actor, "apikey.view")
        .filter(organization=request.organization, pk=as_uuid(key_id))
        .select_related("user", "team", "organization")
        .first()
    )
    if key is None:
        raise Http404("No such key.")
    return key


def _minute(moment: dt.datetime | None) -> str:
    """A moment as a ``datetime-local`` value in UTC (what the form shows and sends)."""
    if moment is None:
        return ""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M")


def _key_edit_page(request, key, *, errors=None, chosen=None, expires=None, status=200):
    context = _context(
        request,
        key=key,
        models=sorted(usable_model_aliases(request.organization) | set(key.allowed_models)),
        chosen_models=key.allowed_models if chosen is None else chosen,
        expires_value=_minute(key.expires_at) if expires is None else expires,
        now=timezone.now(),
        errors=errors or {},
    )
    return render(request, "console/people/key_edit.html", context, status=status)


@require_GET
@org_page("apikey.manage")
def key_edit(request, key_id):
    return _key_edit_page(request, _managed_key(request, key_id))


@require_POST
@org_page("apikey.manage")
def key_update(request, key_id):
    key = _managed_key(request, key_id)
    chosen = request.POST.getlist("allowed_models")
    expires = request.POST.get("expires_at", "")[:30]
    try:
        expires_at = parse_expiry(expires)
    except ValueError:
        errors = {"expires_at": "Use a date and time such as 2030-12-31T23:59 (UTC)."}
        return _key_edit_page(
            request, key, errors=errors, chosen=chosen, expires=expires, status=400
        )
    # Only what the form changed goes to the service: an unchanged past expiry stays.
    fields: dict = {}
    if sorted(set(chosen)) != sorted(key.allowed_models):
        fields["allowed_models"] = sorted(set(chosen))
    if _minute(expires_at) != _minute(key.expires_at):
        fields["expires_at"] = expires_at
    try:
        services.update_api_key(actor=request.actor, key=key, **fields)
    except (ValidationError, PermissionDenied) as exc:
        errors, status = _refused(exc)
        key.refresh_from_db()
        return _key_edit_page(
            request, key, errors=errors, chosen=chosen, expires=expires, status=status
        )
    messages.success(request, f"Key {key.name} ({key.display_prefix}) updated.")
    return redirect("console:keys", org_slug=request.organization.slug)


urlpatterns = [
    path("me/", me, name="me"),
    path("me/password/", me_password, name="me-password"),
    path("me/keys/<str:key_id>/revoke/", me_key_revoke, name="me-key-revoke"),
    path(ORG + "members/", members, name="members"),
    path(ORG + "members/add/", member_add, name="member-add"),
    path(ORG + "members/<int:membership_id>/role/", member_role, name="member-role"),
    path(ORG + "members/<int:membership_id>/remove/", member_remove, name="member-remove"),
    path(ORG + "teams/", teams, name="teams"),
    path(ORG + "teams/new/", team_create, name="team-create"),
    path(ORG + "teams/<str:team_id>/", team, name="team"),
    path(ORG + "teams/<str:team_id>/rename/", team_rename, name="team-rename"),
    path(ORG + "teams/<str:team_id>/delete/", team_delete, name="team-delete"),
    path(ORG + "teams/<str:team_id>/members/add/", team_member_add, name="team-member-add"),
    path(
        ORG + "teams/<str:team_id>/members/<int:team_membership_id>/remove/",
        team_member_remove,
        name="team-member-remove",
    ),
    path(ORG + "keys/<str:key_id>/edit/", key_edit, name="key-edit"),
    path(ORG + "keys/<str:key_id>/update/", key_update, name="key-update"),
]
