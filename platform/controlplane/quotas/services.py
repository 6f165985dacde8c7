"""Limit policies (create, change, remove) and the effective limit of a key."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction

from controlplane.audit.services import apply_changes, diff, field_values, record_event
from controlplane.catalog.models import Model as CatalogModel
from controlplane.quotas.models import LIMIT_FIELDS, LimitPolicy
from controlplane.snapshot import publish_on_commit
from controlplane.tenancy.actors import Actor
from controlplane.tenancy.keyrules import check_key_holder
from controlplane.tenancy.models import ApiKey, Organization, Team
from controlplane.tenancy.permissions import require


def _check_values(limits: dict) -> None:
    unknown = set(limits) - set(LIMIT_FIELDS)
    if unknown:
        raise ValidationError({name: "Unknown limit." for name in sorted(unknown)})
    errors = {
        name: "Must be a positive integer or null."
        for name, value in limits.items()
        if value is not None
        and (isinstance(value, bool) or not isinstance(value, int) or value < 1)
    }
    if errors:
        raise ValidationError(errors)


def _check_fail_mode(value: str, *, is_org_policy: bool) -> None:
    if value not in ("", "closed", "open"):
        raise ValidationError({"fail_mode": "Must be 'closed', 'open' or empty."})
    if value and not is_org_policy:
        raise ValidationError(
            {"fail_mode": "Only an organization's policy for all models has a fail mode."}
        )


@transaction.atomic
def create_limit_policy(
    *,
    actor: Actor,
    organization: Organization,
    team: Team | None = None,
    api_key: ApiKey | None = None,
    model: str = "",
    fail_mode: str = "",
    **limits,
) -> LimitPolicy:
    require(actor, "limits.change", organization)
    _check_values(limits)
    fail_mode = fail_mode or ""
    _check_fail_mode(fail_mode, is_org_policy=team is None and api_key is None and not model)
    model = model or ""
    if model and not CatalogModel.objects.filter(alias=model).exists():
        raise ValidationError({"model": f"No model with the alias '{model}'."})
    if team is not None and api_key is not None:
        raise ValidationError({"team": "A policy applies to a team or a key, not both."})
    if team is not None and team.organization_id != organization.pk:
        raise ValidationError({"team": "Not a team of this organization."})
    if api_key is not None and api_key.organization_id != organization.pk:
        raise ValidationError({"api_key": "Not a key of this organization."})
    existing = LimitPolicy.objects.filter(
        organization=organization, team=team, api_key=api_key, model=model
    )
    if existing.exists():
        subject = "key" if api_key else "team" if team else "organization"
        scope = f"limit policy for the model '{model}'" if model else "limit policy"
        raise ValidationError(
            {
                subject if subject != "key" else "api_key": (
                    f"This {subject} already has a {scope}; change that one."
                )
            }
        )
    policy = LimitPolicy(
        organization=organization,
        team=team,
        api_key=api_key,
        model=model,
        fail_mode=fail_mode,
        **limits,
    )
    policy.full_clean()
    policy.save()
    record_event(
        actor=actor,
        action="limits.create",
        target=policy,
        organization_id=organization.pk,
        changes=diff({}, field_values(policy)),
    )
    publish_on_commit()
    return policy


def _require_key_holder(actor: Actor, policy: LimitPolicy) -> None:
    """A key's own limits are loosened only by someone who could have made that key."""
    if policy.api_key_id is not None:
        check_key_holder(actor, policy.organization, policy.api_key.user)


@transaction.atomic
def update_limit_policy(*, actor: Actor, policy: LimitPolicy, **limits) -> LimitPolicy:
    require(actor, "limits.change", policy.organization)
    _require_key_holder(actor, policy)
    fields = LIMIT_FIELDS
    if "fail_mode" in limits:
        limits["fail_mode"] = limits["fail_mode"] or ""
        _check_fail_mode(
            limits["fail_mode"],
            is_org_policy=policy.subject == "organization" and not policy.model,
        )
        fields = (*LIMIT_FIELDS, "fail_mode")
    _check_values({k: v for k, v in limits.items() if k != "fail_mode"})
    changes = apply_changes(policy, limits, fields)
    if changes:
        record_event(
            actor=actor,
            action="limits.update",
            target=policy,
            organization_id=policy.organization_id,
            changes=changes,
        )
        publish_on_commit()
    return policy


@transaction.atomic
def delete_limit_policy(*, actor: Actor, policy: LimitPolicy) -> None:
    require(actor, "limits.change", policy.organization)
    _require_key_holder(actor, policy)
    record_event(
        actor=actor,
        action="limits.delete",
        target=policy,
        organization_id=policy.organization_id,
        changes=diff(field_values(policy), {}),
    )
    policy.delete()
    publish_on_commit()


def effective_limits(key: ApiKey, model: str = "") -> dict[str, int | None]:
    """The tightest of the key's, its team's and its organization's limits, for all
    models and, when ``model`` is given, for that model."""
    models = [""] if not model else ["", model]
    subjects = list(LimitPolicy.objects.filter(api_key=key, model__in=models))
    if key.team_id:
        subjects += LimitPolicy.objects.filter(team_id=key.team_id, model__in=models)
    subjects += LimitPolicy.objects.filter(
        organization_id=key.organization_id, team=None, api_key=None, model__in=models
    )
    result: dict[str, int | None] = {}
    for name in LIMIT_FIELDS:
        values = [getattr(p, name) for p in subjects if p is not None and getattr(p, name)]
        result[name] = min(values) if values else None
    return result
