"""No key stronger than its maker.

Who may create (or widen) a key that acts for whom, and within which bounds:

- owners (and platform administrators) may create any key;
- admins create keys for themselves, for users of a lower role (member, viewer) and
  service keys (no user); members create keys for themselves only;
- a service key never creates a ``manage`` key and never changes members or roles;
- a key created through a key stays inside the creating key: its scopes, models
  (a non-empty list when the creator has one), expiry (no later; set when the creator
  has one), team (the creator's, when it has one) and limits (copied);
- a key charged to a team belongs to a member of that team;
- a key's restrictions are widened only by someone who could have created it that wide;
  a member widens a key only when they set its restrictions themselves.

At use, ``Actor.for_key`` gives a key its user's current role, membership and active
state, so a key never acts above its user either.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError

from controlplane.tenancy.actors import Actor
from controlplane.tenancy.models import ApiKey, Membership, Organization, Team, TeamMembership
from controlplane.tenancy.roles import RANK, Role
from gateway.contract import SCOPE_MANAGE


def _rank(role: str | None) -> int:
    return -1 if role is None else RANK[Role(role)]


def check_key_holder(actor: Actor, organization: Organization, user) -> None:
    """Raise PermissionDenied unless ``actor`` may make a key that acts as ``user``
    (``None``: a service key) in ``organization``."""
    if actor.is_platform_admin:
        return
    role = actor.role_in(organization.pk)
    if role == Role.OWNER:
        return
    is_self = user is not None and actor.user is not None and user.pk == actor.user.pk
    if is_self:
        if actor.can("apikey.create", organization.pk):
            return
        raise PermissionDenied(f"your role in {organization.slug} does not allow keys")
    if not actor.can("apikey.manage", organization.pk):
        if actor.user is None:
            raise PermissionDenied("this key may not create keys")
        raise PermissionDenied("members may only create keys for themselves")
    if user is None:
        return  # admins create service keys
    holder = (
        Membership.objects.filter(user=user, organization=organization)
        .values_list("role", flat=True)
        .first()
    )
    if holder is not None and _rank(holder) >= _rank(role):
        raise PermissionDenied(
            f"{user.get_username()} is {holder} in {organization.slug}: an admin creates keys "
            "only for themselves, for members and viewers, or as service keys"
        )


def check_within_creator(
    actor: Actor, *, scopes, allowed_models, expires_at, team: Team | None
) -> None:
    """A key created or widened through a key stays inside that key."""
    if actor.is_service_key and SCOPE_MANAGE in scopes:
        raise PermissionDenied("a service key cannot create keys with the 'manage' scope")
    creator: ApiKey | None = actor.api_key
    if creator is None:
        return
    errors: dict[str, str] = {}
    extra = sorted(set(scopes) - set(creator.scopes))
    if extra:
        errors["scopes"] = f"Beyond the scopes of the key in use: {', '.join(extra)}."
    if creator.allowed_models:
        outside = sorted(set(allowed_models) - set(creator.allowed_models))
        if not allowed_models:
            errors["allowed_models"] = (
                "The key in use is limited to some models; name them (a subset of "
                f"{', '.join(creator.allowed_models)})."
            )
        elif outside:
            errors["allowed_models"] = f"Beyond the models of the key in use: {', '.join(outside)}."
    if creator.expires_at is not None and (expires_at is None or expires_at > creator.expires_at):
        errors["expires_at"] = (
            f"Must be set, no later than the key in use expires ({creator.expires_at.isoformat()})."
        )
    if creator.team_id is not None and (team is None or team.pk != creator.team_id):
        errors["team"] = "Must be the team of the key in use."
    if errors:
        raise ValidationError(errors)


def check_team_holder(user, team: Team | None) -> None:
    if team is None or user is None:
        return
    if not TeamMembership.objects.filter(team=team, user=user).exists():
        raise ValidationError(
            {
                "team": f"{user.get_username()} is not in team {team.slug}; a key is charged "
                "to a team its user belongs to."
            }
        )


def widened_fields(key: ApiKey, fields: dict) -> list[str]:
    """The restrictions that ``fields`` would loosen on ``key``."""
    widened = []
    if "allowed_models" in fields:
        new = set(fields["allowed_models"] or [])
        old = set(key.allowed_models)
        if old and (not new or not new <= old):
            widened.append("allowed_models")
    if "expires_at" in fields:
        new_expiry = fields["expires_at"]
        if key.expires_at is not None and (new_expiry is None or new_expiry > key.expires_at):
            widened.append("expires_at")
    return widened


def check_may_widen(actor: Actor, key: ApiKey, fields: dict) -> None:
    """Raise unless ``actor`` could have created ``key`` as wide as ``fields`` make it."""
    organization = key.organization
    check_key_holder(actor, organization, key.user)
    check_within_creator(
        actor,
        scopes=key.scopes,
        allowed_models=fields.get("allowed_models", key.allowed_models) or [],
        expires_at=fields.get("expires_at", key.expires_at),
        team=key.team,
    )
    if actor.is_platform_admin or actor.can("apikey.manage", organization.pk):
        return
    # A member on their own key: only restrictions they set themselves come off.
    if actor.user is None or key.restricted_by_id != actor.user.pk:
        raise PermissionDenied(
            "someone else set this key's restrictions; you may narrow them, not widen them"
        )
