"""Mutations of organizations, teams, members and API keys.

Each function is atomic, takes ``actor=``, checks the actor's permission, writes its
audit event in the same transaction and publishes the gateway snapshot on commit.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.contrib.auth import get_user_model, password_validation
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from controlplane.audit.services import (
    apply_changes,
    diff,
    field_values,
    record_event,
    reject_unknown_fields,
)
from controlplane.snapshot import publish_on_commit
from controlplane.tenancy import keyrules
from controlplane.tenancy.actors import Actor
from controlplane.tenancy.models import ApiKey, Membership, Organization, Team, TeamMembership
from controlplane.tenancy.permissions import require
from controlplane.tenancy.roles import Role
from gateway.contract import SCOPES, generate_api_key, hash_api_key_secret

User = get_user_model()


# --------------------------------------------------------------------------- organizations
@transaction.atomic
def create_organization(
    *, actor: Actor, slug: str, name: str, owner=None, log_prompts: bool = False
) -> Organization:
    require(actor, "organization.create")
    if Organization.objects.filter(slug=slug).exists():
        raise ValidationError({"slug": f"An organization with slug {slug!r} already exists."})
    organization = Organization(slug=slug, name=name, log_prompts=log_prompts)
    organization.full_clean()
    organization.save()
    from controlplane.catalog.models import OrganizationPolicy

    OrganizationPolicy.objects.create(organization=organization)
    record_event(
        actor=actor,
        action="organization.create",
        target=organization,
        organization_id=organization.pk,
        changes=diff({}, field_values(organization)),
    )
    if owner is not None:
        _add_member(actor=actor, organization=organization, user=owner, role=Role.OWNER)
    publish_on_commit()
    return organization


@transaction.atomic
def update_organization(*, actor: Actor, organization: Organization, **fields) -> Organization:
    require(actor, "organization.change", organization)
    changes = apply_changes(organization, fields, {"name", "log_prompts"})
    if changes:
        record_event(
            actor=actor,
            action="organization.update",
            target=organization,
            organization_id=organization.pk,
            changes=changes,
        )
        publish_on_commit()
    return organization


@transaction.atomic
def delete_organization(*, actor: Actor, organization: Organization) -> None:
    require(actor, "organization.delete", organization)
    record_event(
        actor=actor,
        action="organization.delete",
        target=organization,
        organization_id=organization.pk,
        changes=diff(field_values(organization), {}),
    )
    organization.delete()
    publish_on_commit()


# --------------------------------------------------------------------------- teams
@transaction.atomic
def create_team(*, actor: Actor, organization: Organization, slug: str, name: str) -> Team:
    require(actor, "team.change", organization)
    if Team.objects.filter(organization=organization, slug=slug).exists():
        raise ValidationError({"slug": f"A team with slug {slug!r} already exists here."})
    team = Team(organization=organization, slug=slug, name=name)
    team.full_clean()
    team.save()
    record_event(
        actor=actor,
        action="team.create",
        target=team,
        organization_id=organization.pk,
        changes=diff({}, field_values(team)),
    )
    publish_on_commit()
    return team


@transaction.atomic
def update_team(*, actor: Actor, team: Team, **fields) -> Team:
    require(actor, "team.change", team.organization)
    changes = apply_changes(team, fields, {"name"})
    if changes:
        record_event(
            actor=actor,
            action="team.update",
            target=team,
            organization_id=team.organization_id,
            changes=changes,
        )
    return team


@transaction.atomic
def delete_team(*, actor: Actor, team: Team) -> None:
    """Keys charged to the team are revoked: they would otherwise lose its limits."""
    require(actor, "team.change", team.organization)
    for key in ApiKey.objects.filter(team=team, revoked_at=None):
        _revoke(actor=actor, key=key, reason="team deleted")
    record_event(
        actor=actor,
        action="team.delete",
        target=team,
        organization_id=team.organization_id,
        changes=diff(field_values(team), {}),
    )
    team.delete()
    publish_on_commit()


# --------------------------------------------------------------------------- members
def _check_role_grant(actor: Actor, organization: Organization, *roles: str) -> None:
    """Only owners (and platform admins) hand out or take away the owner role; a
    service key (no user behind it) changes no one's membership or role."""
    if actor.is_service_key:
        raise PermissionDenied("a service key cannot change members or roles")
    if Role.OWNER in roles and actor.role_in(organization.pk) != Role.OWNER:
        raise PermissionDenied("only an owner may grant or change the owner role")


def _remaining_owners(organization: Organization, excluding: Membership) -> int:
    return (
        Membership.objects.filter(organization=organization, role=Role.OWNER)
        .exclude(pk=excluding.pk)
        .count()
    )


def _add_member(*, actor: Actor, organization: Organization, user, role: str) -> Membership:
    membership = Membership(user=user, organization=organization, role=role)
    membership.full_clean(validate_unique=False)
    membership.save()
    record_event(
        actor=actor,
        action="member.add",
        target=membership,
        target_repr=f"{user.get_username()} in {organization.slug}",
        organization_id=organization.pk,
        changes={"user": [None, user.get_username()], "role": [None, role]},
    )
    return membership


@transaction.atomic
def add_member(
    *, actor: Actor, organization: Organization, username: str, email: str = "", role: str
) -> Membership:
    require(actor, "member.change", organization)
    _check_role_grant(actor, organization)
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    _check_role_grant(actor, organization, role)
    user = User.objects.filter(username=username).first()
    if user is None:
        # An invited person gets an account without a password; they sign in once an
        # administrator sets one or through the identity provider.
        user = User(username=username, email=email)
        user.set_unusable_password()
        user.full_clean(exclude=["password"])
        user.save()
    if Membership.objects.filter(user=user, organization=organization).exists():
        raise ValidationError({"username": f"{username} is already a member."})
    membership = _add_member(actor=actor, organization=organization, user=user, role=role)
    publish_on_commit()
    return membership


@transaction.atomic
def change_member_role(*, actor: Actor, membership: Membership, role: str) -> Membership:
    organization = membership.organization
    require(actor, "member.change", organization)
    _check_role_grant(actor, organization)
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    _check_role_grant(actor, organization, role, membership.role)
    if (
        membership.role == Role.OWNER
        and role != Role.OWNER
        and _remaining_owners(organization, membership) == 0
    ):
        raise ValidationError({"role": "An organization must keep at least one owner."})
    if membership.role != role:
        record_event(
            actor=actor,
            action="member.change_role",
            target=membership,
            target_repr=f"{membership.user.get_username()} in {organization.slug}",
            organization_id=organization.pk,
            changes={"role": [membership.role, role]},
        )
        membership.role = role
        membership.save(update_fields=["role"])
        publish_on_commit()
    return membership


@transaction.atomic
def remove_member(*, actor: Actor, membership: Membership) -> None:
    """Remove someone from an organization: their teams there go, and so do their keys
    there and the service keys they created there (each revocation audited)."""
    organization = membership.organization
    require(actor, "member.change", organization)
    _check_role_grant(actor, organization, membership.role)
    if membership.role == Role.OWNER and _remaining_owners(organization, membership) == 0:
        raise ValidationError({"role": "An organization must keep at least one owner."})
    user = membership.user
    for key in _keys_made_or_held_by(user).filter(organization=organization):
        _revoke(actor=actor, key=key, reason="member removed")
    TeamMembership.objects.filter(team__organization=organization, user=user).delete()
    record_event(
        actor=actor,
        action="member.remove",
        target=membership,
        target_repr=f"{user.get_username()} in {organization.slug}",
        organization_id=organization.pk,
        changes={"user": [user.get_username(), None], "role": [membership.role, None]},
    )
    membership.delete()
    publish_on_commit()


@transaction.atomic
def add_team_member(*, actor: Actor, team: Team, user) -> TeamMembership:
    require(actor, "team.change", team.organization)
    if not Membership.objects.filter(user=user, organization=team.organization_id).exists():
        raise ValidationError({"user": "Only members of the organization can join its teams."})
    if TeamMembership.objects.filter(team=team, user=user).exists():
        raise ValidationError({"user": f"{user.get_username()} is already in this team."})
    team_membership = TeamMembership.objects.create(team=team, user=user)
    record_event(
        actor=actor,
        action="team.add_member",
        target=team,
        organization_id=team.organization_id,
        changes={"member": [None, user.get_username()]},
    )
    return team_membership


@transaction.atomic
def remove_team_member(*, actor: Actor, team_membership: TeamMembership) -> None:
    """The user's keys charged to the team are revoked with it."""
    team = team_membership.team
    require(actor, "team.change", team.organization)
    for key in ApiKey.objects.filter(team=team, user=team_membership.user, revoked_at=None):
        _revoke(actor=actor, key=key, reason="removed from team")
    record_event(
        actor=actor,
        action="team.remove_member",
        target=team,
        organization_id=team.organization_id,
        changes={"member": [team_membership.user.get_username(), None]},
    )
    team_membership.delete()
    publish_on_commit()


# --------------------------------------------------------------------------- API keys
def _validate_key_fields(organization: Organization, *, scopes, allowed_models, expires_at) -> None:
    errors: dict[str, str] = {}
    if not scopes or any(scope not in SCOPES for scope in scopes):
        errors["scopes"] = f"Choose one or more of: {', '.join(SCOPES)}."
    elif len(set(scopes)) != len(scopes):
        errors["scopes"] = "Scopes must not repeat."
    if allowed_models:
        from controlplane.catalog.services import usable_model_aliases

        usable = usable_model_aliases(organization)
        unknown = sorted(set(allowed_models) - usable)
        if unknown:
            errors["allowed_models"] = f"Not available to this organization: {', '.join(unknown)}."
    if expires_at is not None and expires_at <= timezone.now():
        errors["expires_at"] = "Must be in the future."
    if errors:
        raise ValidationError(errors)


@transaction.atomic
def create_api_key(
    *,
    actor: Actor,
    organization: Organization,
    name: str,
    scopes: list[str],
    team: Team | None = None,
    user=None,
    allowed_models: list[str] | None = None,
    expires_at: dt.datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; return it with its full secret, which is never available again.

    No key is stronger than its maker: see ``controlplane.tenancy.keyrules``."""
    require(actor, "apikey.create", organization)
    if not actor.can("apikey.manage", organization.pk):
        # Members create keys for themselves, in their own teams only.
        if actor.user is None:
            raise PermissionDenied("this key may not create keys")
        if user is not None and user != actor.user:
            raise PermissionDenied("members may only create keys for themselves")
        user = actor.user
        if team is not None and not TeamMembership.objects.filter(team=team, user=user).exists():
            raise PermissionDenied("members may only create keys for teams they belong to")
    if team is not None and team.organization_id != organization.pk:
        raise ValidationError({"team": "Not a team of this organization."})
    if (
        user is not None
        and not Membership.objects.filter(user=user, organization=organization).exists()
    ):
        raise ValidationError({"user": "Not a member of this organization."})
    keyrules.check_key_holder(actor, organization, user)
    allowed_models = list(allowed_models or [])
    _validate_key_fields(
        organization, scopes=scopes, allowed_models=allowed_models, expires_at=expires_at
    )
    keyrules.check_within_creator(
        actor, scopes=scopes, allowed_models=allowed_models, expires_at=expires_at, team=team
    )
    keyrules.check_team_holder(user, team)
    for _attempt in range(3):
        full_key, prefix, secret = generate_api_key()
        if not ApiKey.objects.filter(prefix=prefix).exists():
            break
    else:  # pragma: no cover - 36^12 prefixes
        raise IntegrityError("could not find a free key prefix")
    key = ApiKey(
        organization=organization,
        team=team,
        user=user,
        name=name,
        prefix=prefix,
        secret_hash=hash_api_key_secret(secret, settings.API_KEY_PEPPER),
        scopes=list(scopes),
        allowed_models=allowed_models,
        expires_at=expires_at,
        created_by=actor.user,
        restricted_by=actor.user,
    )
    key.full_clean()
    key.save()
    record_event(
        actor=actor,
        action="apikey.create",
        target=key,
        organization_id=organization.pk,
        changes=diff({}, field_values(key)),
    )
    if actor.api_key is not None:
        _inherit_key_limits(actor=actor, source=actor.api_key, key=key)
    publish_on_commit()
    return key, full_key


def _inherit_key_limits(*, actor: Actor, source: ApiKey, key: ApiKey) -> None:
    """A key made through a key with its own limits gets the same limits."""
    from controlplane.quotas.models import LIMIT_FIELDS, LimitPolicy

    policy = LimitPolicy.objects.filter(api_key=source).first()
    if policy is None:
        return
    copy = LimitPolicy.objects.create(
        organization_id=key.organization_id,
        api_key=key,
        **{name: getattr(policy, name) for name in LIMIT_FIELDS},
    )
    record_event(
        actor=actor,
        action="limits.create",
        target=copy,
        organization_id=key.organization_id,
        changes=diff({}, field_values(copy)) | {"inherited_from": [None, source.display_prefix]},
    )


def _keys_made_or_held_by(user):
    """Live keys that act for ``user``, and the service keys ``user`` created."""
    from django.db.models import Q

    return ApiKey.objects.filter(
        Q(user=user) | Q(user=None, created_by=user), revoked_at=None
    ).select_related("organization")


def _require_key_control(actor: Actor, key: ApiKey) -> None:
    if actor.can("apikey.manage", key.organization_id):
        return
    own = actor.user is not None and key.user_id == actor.user.pk
    if own and actor.can("apikey.create", key.organization_id):
        return
    require(actor, "apikey.manage", key.organization)


def _revoke(*, actor: Actor, key: ApiKey, reason: str = "") -> None:
    key.revoked_at = timezone.now()
    key.save(update_fields=["revoked_at"])
    record_event(
        actor=actor,
        action="apikey.revoke",
        target=key,
        organization_id=key.organization_id,
        changes={"revoked_at": [None, key.revoked_at.isoformat()]}
        | ({"reason": [None, reason]} if reason else {}),
    )


@transaction.atomic
def revoke_api_key(*, actor: Actor, key: ApiKey) -> ApiKey:
    _require_key_control(actor, key)
    if key.revoked_at is None:
        _revoke(actor=actor, key=key)
        publish_on_commit()
    return key


@transaction.atomic
def update_api_key(*, actor: Actor, key: ApiKey, **fields) -> ApiKey:
    _require_key_control(actor, key)
    if key.revoked_at is not None:
        raise ValidationError({"revoked_at": "A revoked key cannot be changed."})
    if "allowed_models" in fields or "expires_at" in fields:
        _validate_key_fields(
            key.organization,
            scopes=key.scopes,
            allowed_models=fields.get("allowed_models", []),
            expires_at=fields.get("expires_at"),
        )
    widened = keyrules.widened_fields(key, fields)
    if widened:
        keyrules.check_may_widen(actor, key, fields)
    changes = apply_changes(key, fields, {"name", "allowed_models", "expires_at"})
    by_someone_else = actor.user is None or actor.user.pk != key.user_id
    if ({"allowed_models", "expires_at"} & set(changes)) and (widened or by_someone_else):
        # Whoever set these restrictions decides who may loosen them again.
        key.restricted_by = actor.user
        key.save(update_fields=["restricted_by"])
    if changes:
        record_event(
            actor=actor,
            action="apikey.update",
            target=key,
            organization_id=key.organization_id,
            changes=changes,
        )
        publish_on_commit()
    return key


def touch_last_used(key: ApiKey, *, every_seconds: int = 60) -> None:
    """Record use without a write per request (not audited: it is telemetry)."""
    now = timezone.now()
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() >= every_seconds:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now


# --------------------------------------------------------------------------- users
@transaction.atomic
def ensure_platform_admin(*, actor: Actor, username: str, email: str, password: str):
    """Create the first platform administrator unless one exists. Returns (user, created)."""
    existing = User.objects.filter(is_superuser=True, is_active=True).order_by("pk").first()
    if existing is not None:
        return existing, False
    user = User(username=username, email=email, is_staff=True, is_superuser=True)
    user.set_password(password)
    user.full_clean(exclude=["password"])
    user.save()
    record_event(
        actor=actor,
        action="user.create_platform_admin",
        target=user,
        target_type="user",
        target_repr=username,
        changes={"username": [None, username], "is_superuser": [None, True]},
    )
    return user, True


USER_FIELDS = {
    "username",
    "email",
    "first_name",
    "last_name",
    "is_active",
    "is_staff",
    "is_superuser",
}


def _other_platform_admins(user) -> bool:
    return User.objects.filter(is_superuser=True, is_active=True).exclude(pk=user.pk).exists()


@transaction.atomic
def create_user(
    *,
    actor: Actor,
    username: str,
    email: str = "",
    password: str | None = None,
    **fields,
):
    """Create an account (platform administrators only). Without a password the account
    cannot sign in until one is set."""
    require(actor, "user.change")
    reject_unknown_fields(fields, USER_FIELDS - {"username", "email"})
    if User.objects.filter(username=username).exists():
        raise ValidationError({"username": f"A user named {username!r} already exists."})
    user = User(username=username, email=email, **fields)
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.full_clean(exclude=["password"])
    user.save()
    record_event(
        actor=actor,
        action="user.create",
        target=user,
        target_type="user",
        target_repr=username,
        changes=diff({}, field_values(user, USER_FIELDS)),
    )
    return user


@transaction.atomic
def update_user(*, actor: Actor, user, **fields):
    """Change an account (platform administrators only). Granting or taking away the
    platform administrator or staff flags is audited like any change; turning
    ``is_active`` off goes through ``deactivate_user`` (their keys are revoked)."""
    require(actor, "user.change")
    reject_unknown_fields(fields, USER_FIELDS, "This field cannot be changed.")
    if fields.get("is_active") is False and user.is_active:
        fields.pop("is_active")
        deactivate_user(actor=actor, user=user)
    if (
        (fields.get("is_superuser") is False)
        and user.is_superuser
        and user.is_active
        and not _other_platform_admins(user)
    ):
        raise ValidationError(
            {"is_superuser": "The platform must keep at least one active administrator."}
        )
    before = field_values(user, fields.keys())
    for name, value in fields.items():
        setattr(user, name, value)
    user.full_clean(exclude=["password"])
    user.save()
    changes = diff(before, field_values(user, fields.keys()))
    if changes:
        record_event(
            actor=actor,
            action="user.update",
            target=user,
            target_type="user",
            target_repr=user.get_username(),
            changes=changes,
        )
    return user


@transaction.atomic
def set_user_password(*, actor: Actor, user, password: str | None) -> None:
    """Set (or, with ``None``, disable) a user's password; the log says that it changed."""
    require(actor, "user.change")
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.save(update_fields=["password"])
    record_event(
        actor=actor,
        action="user.set_password",
        target=user,
        target_type="user",
        target_repr=user.get_username(),
        changes={"password": [None, "set" if password else "disabled"]},
    )


@transaction.atomic
def change_own_password(*, actor: Actor, old_password: str, new_password: str) -> None:
    """A signed-in user changes their own password: the current one proves it is them
    and the new one passes ``AUTH_PASSWORD_VALIDATORS``. A key never changes a password."""
    user = actor.user
    if user is None or actor.api_key is not None or not user.is_active:
        raise PermissionDenied("only a signed-in user may change their own password")
    if not user.check_password(old_password):
        raise ValidationError({"old_password": "This is not your current password."})
    try:
        password_validation.validate_password(new_password, user)
    except ValidationError as exc:
        raise ValidationError({"new_password": exc.messages}) from exc
    user.set_password(new_password)
    user.save(update_fields=["password"])
    record_event(
        actor=actor,
        action="user.change_password",
        target=user,
        target_type="user",
        target_repr=user.get_username(),
        changes={"password": [None, "changed by its user"]},
    )


@transaction.atomic
def deactivate_user(*, actor: Actor, user) -> list[ApiKey]:
    """Switch an account off: it can no longer sign in, and every key that acts for it
    (and every service key it created) is revoked, each revocation audited; the
    gateway snapshot drops them on commit. Returns the revoked keys."""
    require(actor, "user.change")
    if user.is_superuser and user.is_active and not _other_platform_admins(user):
        raise ValidationError(
            {"is_active": "The platform must keep at least one active administrator."}
        )
    was_active = user.is_active
    revoked = list(_keys_made_or_held_by(user))
    for key in revoked:
        _revoke(actor=actor, key=key, reason="user deactivated")
    if was_active:
        user.is_active = False
        user.save(update_fields=["is_active"])
    record_event(
        actor=actor,
        action="user.deactivate",
        target=user,
        target_type="user",
        target_repr=user.get_username(),
        changes={
            "is_active": [was_active, False],
            "revoked_keys": [None, [key.display_prefix for key in revoked]],
        },
    )
    publish_on_commit()
    return revoked
