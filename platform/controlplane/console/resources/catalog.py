"""models/: the catalog models an organization may use, with their licence, openness,
commercial-use and task as text badges; administrators grant and revoke access (within
the organization's policy) and edit the policy and prompt logging."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import path
from django.views.decorators.http import require_GET, require_POST

from controlplane.catalog import services as catalog_services
from controlplane.catalog.models import Model, OrganizationModelAccess, OrganizationPolicy
from controlplane.console.resources.forms import GrantForm, PolicyForm, service_error
from controlplane.console.views import ORG, _context, org_page
from controlplane.tenancy import services as tenancy_services


def _policy_initial(organization, policy) -> dict:
    return {
        "allowed_openness": policy.allowed_openness if policy else [],
        "require_commercial_use": policy.require_commercial_use if policy else False,
        "log_prompts": organization.log_prompts,
    }


def _page(request, *, grant_form=None, policy_form=None, status=200):
    organization, actor = request.organization, request.actor
    accesses = (
        OrganizationModelAccess.objects.restrict(actor, "model_access.view")
        .filter(organization=organization)
        .select_related("model")
        .order_by("model__alias")
    )
    policy = (
        OrganizationPolicy.objects.restrict(actor, "policy.view")
        .filter(organization=organization)
        .first()
    )
    usable = {model.pk for model in catalog_services.usable_models(organization)}
    rows = [
        {
            "access": access,
            "model": access.model,
            "usable": access.model_id in usable,
            "refusal": None
            if access.model_id in usable or policy is None
            # Granted earlier, refused by the policy as it stands now.
            else policy.refusal_reason(access.model),
        }
        for access in accesses
    ]
    return render(
        request,
        "console/resources/models.html",
        _context(
            request,
            rows=rows,
            policy=policy,
            openness_labels=dict(PolicyForm.base_fields["allowed_openness"].choices),
            grant_form=grant_form or GrantForm(prefix_id="grant"),
            policy_form=policy_form
            or PolicyForm(prefix_id="policy", initial=_policy_initial(organization, policy)),
        ),
        status=status,
    )


@require_GET
@org_page("model_access.view")
def models(request):
    return _page(request)


@require_POST
@org_page("model_access.change")
def model_grant(request):
    organization, actor = request.organization, request.actor
    form = GrantForm(request.POST, prefix_id="grant")
    status = 400
    if form.is_valid():
        model = Model.objects.filter(alias=form.cleaned_data["model"]).first()
        if model is None:
            form.add_error("model", "No model with this alias in the catalog.")
        else:
            try:
                catalog_services.grant_model_access(
                    actor=actor, organization=organization, model=model
                )
            except (ValidationError, PermissionDenied) as exc:
                status = service_error(form, exc)
            else:
                return redirect("console:models", org_slug=organization.slug)
    return _page(request, grant_form=form, status=status)


@require_POST
@org_page("model_access.change")
def model_revoke(request, alias):
    organization, actor = request.organization, request.actor
    access = (
        OrganizationModelAccess.objects.restrict(actor, "model_access.view")
        .filter(organization=organization, model__alias=alias)
        .select_related("model", "organization")
        .first()
    )
    if access is None:
        raise Http404("This organization has no access to that model.")
    catalog_services.revoke_model_access(actor=actor, access=access)
    return redirect("console:models", org_slug=organization.slug)


@require_POST
@org_page("policy.change")
def model_policy(request):
    organization, actor = request.organization, request.actor
    form = PolicyForm(request.POST, prefix_id="policy")
    status = 400
    if form.is_valid():
        data = form.cleaned_data
        try:
            # One change for the people who made it: both or neither.
            with transaction.atomic():
                catalog_services.update_policy(
                    actor=actor,
                    organization=organization,
                    allowed_openness=list(data["allowed_openness"]),
                    require_commercial_use=data["require_commercial_use"],
                )
                tenancy_services.update_organization(
                    actor=actor, organization=organization, log_prompts=data["log_prompts"]
                )
        except (ValidationError, PermissionDenied) as exc:
            organization.refresh_from_db()
            status = service_error(form, exc)
        else:
            return redirect("console:models", org_slug=organization.slug)
    return _page(request, policy_form=form, status=status)


urlpatterns = [
    path(ORG + "models/", models, name="models"),
    path(ORG + "models/grant/", model_grant, name="model-grant"),
    path(ORG + "models/policy/", model_policy, name="model-policy"),
    path(ORG + "models/<str:alias>/revoke/", model_revoke, name="model-revoke"),
]
