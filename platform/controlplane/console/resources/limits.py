"""limits/: the limit policies of an organization, its teams and keys (for all models
and per model) with the current day and month use read from the gateway's own Redis
counters; administrators create, change and remove policies.

The counters are the gateway's (``gateway/limits.py``: ``<base>:d:<days since epoch>``,
``<base>:m:<yyyymm>``, days by Redis server time): the page shows what admission will
count against, and "unavailable" when that store cannot be read."""

from __future__ import annotations

import datetime as dt
import logging

import redis
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import path
from django.views.decorators.http import require_GET, require_POST

from controlplane import redis as controlplane_redis
from controlplane.catalog.models import OrganizationModelAccess
from controlplane.console.resources.forms import (
    LIMIT_LABELS,
    LimitCreateForm,
    LimitValuesForm,
    limit_form_initial,
    service_error,
)
from controlplane.console.views import ORG, _context, as_uuid, org_page
from controlplane.quotas import services as quota_services
from controlplane.quotas.models import LimitPolicy
from controlplane.tenancy.models import ApiKey, Team
from gateway import contract
from gateway.limits import Subject

log = logging.getLogger(__name__)
SUBJECT_ORDER = {"organization": 0, "team": 1, "key": 2}


def counter_base(level: str, subject_id, model: str = "") -> str:
    """The gateway's counter prefix of one subject (and model)."""
    return Subject(level, str(subject_id), {}, model or None).base


def policy_base(policy: LimitPolicy) -> str:
    if policy.api_key_id:
        return counter_base("key", policy.api_key_id, policy.model)
    if policy.team_id:
        return counter_base("team", policy.team_id, policy.model)
    return counter_base("org", policy.organization_id, policy.model)


class CountersUnavailable(Exception):
    pass


def read_counters(bases: list[str]) -> dict[str, tuple[int, int]]:
    """Tokens counted today and this month (UTC, Redis server time) per counter base."""
    try:
        client = controlplane_redis.get_redis()
        seconds, _micros = client.time()
        day = int(seconds) // 86400
        start = dt.datetime.fromtimestamp(day * 86400, tz=dt.UTC)
        month = start.year * 100 + start.month
        pipe = client.pipeline(transaction=False)
        pipe.exists(contract.LIMITS_SEEDED_KEY)
        for base in bases:
            pipe.get(f"{base}:d:{day}")
            pipe.get(f"{base}:m:{month}")
        values = pipe.execute()
    except redis.RedisError as exc:
        log.warning("limit counters unavailable: %s", exc)
        raise CountersUnavailable("the limit store cannot be reached") from None
    if not values[0]:
        # Redis restarted empty: the ledger consumer re-seeds the counters shortly.
        raise CountersUnavailable("the counters are being rebuilt from the usage ledger")
    counts = values[1:]
    return {
        base: (int(counts[2 * i] or 0), int(counts[2 * i + 1] or 0)) for i, base in enumerate(bases)
    }


def _policies(request) -> list[LimitPolicy]:
    policies = (
        LimitPolicy.objects.restrict(request.actor, "limits.view")
        .filter(organization=request.organization)
        .select_related("team", "api_key")
    )
    return sorted(
        policies,
        key=lambda p: (
            SUBJECT_ORDER[p.subject],
            (p.team.name if p.team_id else p.api_key.name if p.api_key_id else ""),
            p.model,
        ),
    )


def _with_use(request, policies: list[LimitPolicy]) -> dict:
    """The policies with their subject's use today and this month, and the
    organization's own use, or the reason the counters are unavailable."""
    org_base = counter_base("org", request.organization.pk)
    bases = [org_base, *(policy_base(p) for p in policies)]
    try:
        counts = read_counters(bases)
    except CountersUnavailable as exc:
        for policy in policies:
            policy.used_today = policy.used_month = None
        return {"counters_unavailable": str(exc)}
    for policy in policies:
        policy.used_today, policy.used_month = counts[policy_base(policy)]
    today, month = counts[org_base]
    return {"org_today": today, "org_month": month}


def _granted_models(request) -> list[str]:
    return list(
        OrganizationModelAccess.objects.restrict(request.actor, "model_access.view")
        .filter(organization=request.organization)
        .order_by("model__alias")
        .values_list("model__alias", flat=True)
    )


def _teams(request):
    return (
        Team.objects.restrict(request.actor, "team.view")
        .filter(organization=request.organization)
        .order_by("name")
    )


def _create_form(request, data=None) -> LimitCreateForm:
    return LimitCreateForm(
        data, prefix_id="new", teams=_teams(request), models=_granted_models(request)
    )


def _list_page(request, *, create_form=None, status=200):
    policies = _policies(request)
    extra = {"policies": policies, "limit_labels": LIMIT_LABELS, **_with_use(request, policies)}
    if request.actor.can("limits.change", request.organization.pk):
        extra["create_form"] = create_form or _create_form(request)
    return render(
        request, "console/resources/limits.html", _context(request, **extra), status=status
    )


@require_GET
@org_page("limits.view")
def limits(request):
    return _list_page(request)


def _subject(request, form) -> dict | None:
    """The team or key the new policy applies to, or None after a form error."""
    data = form.cleaned_data
    if data["subject"] == "team":
        team = _teams(request).filter(pk=as_uuid(data.get("team"))).first()
        if team is None:
            form.add_error("team", "Choose a team of this organization.")
            return None
        return {"team": team}
    if data["subject"] == "key":
        prefix = (data.get("api_key") or "").strip().removeprefix("sk-")
        key = (
            ApiKey.objects.restrict(request.actor, "apikey.view")
            .filter(organization=request.organization, prefix=prefix)
            .first()
            if prefix
            else None
        )
        if key is None:
            form.add_error("api_key", "No key of this organization has this prefix.")
            return None
        return {"api_key": key}
    return {}


@require_POST
@org_page("limits.change")
def limit_create(request):
    form = _create_form(request, request.POST)
    status = 400
    if form.is_valid():
        subject = _subject(request, form)
        if subject is not None:
            try:
                quota_services.create_limit_policy(
                    actor=request.actor,
                    organization=request.organization,
                    model=form.cleaned_data.get("model") or "",
                    **subject,
                    **form.limits(),
                )
            except (ValidationError, PermissionDenied) as exc:
                status = service_error(form, exc)
            else:
                return redirect("console:limits", org_slug=request.organization.slug)
    return _list_page(request, create_form=form, status=status)


def _policy(request, policy_id) -> LimitPolicy:
    policy = (
        LimitPolicy.objects.restrict(request.actor, "limits.view")
        .filter(organization=request.organization, pk=as_uuid(policy_id))
        .select_related("team", "api_key__user", "organization")
        .first()
    )
    if policy is None:
        raise Http404("No such limit policy in this organization.")
    return policy


def _has_fail_mode(policy: LimitPolicy) -> bool:
    return policy.subject == "organization" and not policy.model


def _detail_page(request, policy, *, form=None, status=200):
    extra = {"policy": policy, "limit_labels": LIMIT_LABELS, **_with_use(request, [policy])}
    if request.actor.can("limits.change", request.organization.pk):
        extra["form"] = form or LimitValuesForm(
            prefix_id="limits",
            fail_mode=_has_fail_mode(policy),
            initial=limit_form_initial(policy),
        )
    return render(
        request, "console/resources/limit.html", _context(request, **extra), status=status
    )


@require_GET
@org_page("limits.view")
def limit(request, policy_id):
    return _detail_page(request, _policy(request, policy_id))


@require_POST
@org_page("limits.change")
def limit_update(request, policy_id):
    policy = _policy(request, policy_id)
    form = LimitValuesForm(request.POST, prefix_id="limits", fail_mode=_has_fail_mode(policy))
    status = 400
    if form.is_valid():
        try:
            quota_services.update_limit_policy(actor=request.actor, policy=policy, **form.limits())
        except (ValidationError, PermissionDenied) as exc:
            status = service_error(form, exc)
            policy.refresh_from_db()
        else:
            return redirect("console:limits", org_slug=request.organization.slug)
    return _detail_page(request, policy, form=form, status=status)


@require_POST
@org_page("limits.change")
def limit_delete(request, policy_id):
    policy = _policy(request, policy_id)
    quota_services.delete_limit_policy(actor=request.actor, policy=policy)
    return redirect("console:limits", org_slug=request.organization.slug)


urlpatterns = [
    path(ORG + "limits/", limits, name="limits"),
    path(ORG + "limits/new/", limit_create, name="limit-create"),
    path(ORG + "limits/<str:policy_id>/", limit, name="limit"),
    path(ORG + "limits/<str:policy_id>/edit/", limit_update, name="limit-update"),
    path(ORG + "limits/<str:policy_id>/delete/", limit_delete, name="limit-delete"),
]
