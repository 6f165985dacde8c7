"""deployments/: the organization's own deployments with their replicas (a table htmx
refreshes every 5 s while the tab is visible) and the platform's shared capacity it may
use; administrators create, scale, edit and delete the organization's deployments.

Which deployments are listed follows the API: the organization's own through
``Deployment.objects.restrict`` (as ``DeploymentViewSet``); the shared capacity by the
rule of ``fleet.services.route_access``: platform deployments shared with every
organization or with this one."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Q
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import path
from django.views.decorators.http import require_GET, require_POST

from controlplane.catalog.services import usable_model_aliases
from controlplane.console.resources.forms import (
    DeploymentCreateForm,
    DeploymentSpecForm,
    ScaleForm,
    service_error,
)
from controlplane.console.views import ORG, _context, as_uuid, org_page
from controlplane.fleet import services as fleet_services
from controlplane.fleet.models import Deployment, Pool, Replica, ReplicaState

#: The replica table shows at most this many rows (a page that polls must stay cheap).
REPLICAS_SHOWN = 200
SPEC_FIELDS = [name for name in DeploymentSpecForm.base_fields if name != "version"]


def _own(request):
    return (
        Deployment.objects.restrict(request.actor, "deployment.view")
        .filter(organization=request.organization)
        .select_related("model_version__model", "pool")
    )


def shared_capacity(organization):
    """Platform deployments whose replicas serve ``organization`` (``route_access``:
    shared with all, or with this organization)."""
    serving = Deployment.objects.filter(organization__isnull=True).filter(
        Q(shared_with_all=True) | Q(shared_with=organization)
    )
    return (
        Deployment.objects.filter(pk__in=serving.values("pk"))
        .select_related("model_version__model")
        .annotate(ready=Count("replica_set", filter=Q(replica_set__state=ReplicaState.READY)))
        .order_by("name")
    )


def _deployment(request, deployment_id) -> Deployment:
    deployment = _own(request).filter(pk=as_uuid(deployment_id)).first()
    if deployment is None:
        raise Http404("No such deployment in this organization.")
    return deployment


def _replicas(request, deployment=None):
    replicas = (
        Replica.objects.restrict(request.actor, "deployment.view")
        .filter(deployment__organization=request.organization)
        .select_related("deployment", "node")
        .order_by("deployment__name", "created_at", "pk")
    )
    if deployment is not None:
        replicas = replicas.filter(deployment=deployment)
    return list(replicas[: REPLICAS_SHOWN + 1])


def _with_load(replica: Replica) -> Replica:
    """The agent's load report as the table shows it (absent figures stay ``None``)."""
    load = replica.load if isinstance(replica.load, dict) else {}
    kv = load.get("kv_cache_usage_perc")  # vLLM's 0..1 ratio despite the name
    replica.kv_cache_percent = round(kv * 100) if isinstance(kv, int | float) else None
    replica.running = load.get("num_requests_running")
    replica.waiting = load.get("num_requests_waiting")
    return replica


def _replica_context(request, deployment=None) -> dict:
    replicas = [_with_load(r) for r in _replicas(request, deployment)]
    return {
        "replicas": replicas[:REPLICAS_SHOWN],
        "replicas_truncated": len(replicas) > REPLICAS_SHOWN,
        "replicas_url_deployment": deployment,
    }


def _pools() -> list[str]:
    # Pool names are what the API's deployment ``pool`` field takes.
    return list(Pool.objects.order_by("name").values_list("name", flat=True))


def _create_form(request, data=None) -> DeploymentCreateForm:
    return DeploymentCreateForm(
        data,
        prefix_id="new",
        pools=_pools(),
        models=sorted(usable_model_aliases(request.organization)),
    )


def _list_page(request, *, create_form=None, status=200):
    deployments = _own(request).annotate(
        ready=Count("replica_set", filter=Q(replica_set__state=ReplicaState.READY))
    )
    extra = {
        "deployments": deployments.order_by("name"),
        "shared": shared_capacity(request.organization),
        **_replica_context(request),
    }
    if request.actor.can("deployment.change", request.organization.pk):
        extra["create_form"] = create_form or _create_form(request)
    return render(
        request, "console/resources/deployments.html", _context(request, **extra), status=status
    )


@require_GET
@org_page("deployment.view")
def deployments(request):
    return _list_page(request)


@require_GET
@org_page("deployment.view")
def deployment_replicas(request):
    """The replica table alone, for htmx to swap in every 5 s."""
    deployment = None
    if request.GET.get("deployment"):
        deployment = _deployment(request, request.GET["deployment"])
    return render(
        request,
        "console/resources/_replicas.html",
        _context(request, **_replica_context(request, deployment)),
    )


@require_POST
@org_page("deployment.change")
def deployment_create(request):
    organization, actor = request.organization, request.actor
    form = _create_form(request, request.POST)
    status = 400
    if form.is_valid():
        try:
            fields = form.service_fields()
            fields["pool"] = Pool.objects.get(name=fields["pool"])
            deployment = fleet_services.create_deployment(
                actor=actor, organization=organization, **fields
            )
        except (ValidationError, PermissionDenied) as exc:
            status = service_error(form, exc)
        else:
            return redirect(
                "console:deployment", org_slug=organization.slug, deployment_id=deployment.pk
            )
    return _list_page(request, create_form=form, status=status)


def _spec_initial(deployment: Deployment) -> dict:
    initial = {name: getattr(deployment, name) for name in SPEC_FIELDS}
    initial["pool"] = deployment.pool.name
    initial["version"] = deployment.model_version.version
    return initial


def _scale_initial(deployment: Deployment) -> dict:
    return {
        "replicas": deployment.replicas,
        "min_replicas": deployment.min_replicas,
        "max_replicas": deployment.max_replicas,
    }


def _detail_page(request, deployment, *, scale_form=None, spec_form=None, status=200):
    extra = {"deployment": deployment, **_replica_context(request, deployment)}
    if request.actor.can("deployment.change", request.organization.pk):
        extra["scale_form"] = scale_form or ScaleForm(
            prefix_id="scale", initial=_scale_initial(deployment)
        )
        extra["spec_form"] = spec_form or DeploymentSpecForm(
            prefix_id="spec", pools=_pools(), initial=_spec_initial(deployment)
        )
    return render(
        request, "console/resources/deployment.html", _context(request, **extra), status=status
    )


@require_GET
@org_page("deployment.view")
def deployment(request, deployment_id):
    return _detail_page(request, _deployment(request, deployment_id))


def _update(request, deployment, form, fields: dict):
    try:
        fleet_services.update_deployment(actor=request.actor, deployment=deployment, **fields)
    except (ValidationError, PermissionDenied) as exc:
        return service_error(form, exc)
    return None


@require_POST
@org_page("deployment.change")
def deployment_scale(request, deployment_id):
    deployment = _deployment(request, deployment_id)
    form = ScaleForm(request.POST, prefix_id="scale")
    status = 400
    if form.is_valid():
        status = _update(request, deployment, form, dict(form.cleaned_data))
        if status is None:
            return redirect(
                "console:deployment",
                org_slug=request.organization.slug,
                deployment_id=deployment.pk,
            )
        deployment.refresh_from_db()
    return _detail_page(request, deployment, scale_form=form, status=status)


@require_POST
@org_page("deployment.change")
def deployment_update(request, deployment_id):
    deployment = _deployment(request, deployment_id)
    form = DeploymentSpecForm(request.POST, prefix_id="spec", pools=_pools())
    status = 400
    if form.is_valid():
        try:
            fields = form.service_fields()
        except ValidationError as exc:
            status = service_error(form, exc)
        else:
            fields["pool"] = Pool.objects.get(name=fields["pool"])
            if fields.get("version") == deployment.model_version.version:
                # Unchanged: not resolved again (a model whose grant was since revoked
                # keeps running the version it has until someone changes it).
                fields.pop("version")
            elif "version" in fields:
                fields["model"] = deployment.model_version.model.alias
            status = _update(request, deployment, form, fields)
            if status is None:
                return redirect(
                    "console:deployment",
                    org_slug=request.organization.slug,
                    deployment_id=deployment.pk,
                )
        deployment.refresh_from_db()
    return _detail_page(request, deployment, spec_form=form, status=status)


@require_POST
@org_page("deployment.change")
def deployment_delete(request, deployment_id):
    deployment = _deployment(request, deployment_id)
    fleet_services.delete_deployment(actor=request.actor, deployment=deployment)
    return redirect("console:deployments", org_slug=request.organization.slug)


urlpatterns = [
    path(ORG + "deployments/", deployments, name="deployments"),
    path(ORG + "deployments/replicas/", deployment_replicas, name="deployment-replicas"),
    path(ORG + "deployments/new/", deployment_create, name="deployment-create"),
    path(ORG + "deployments/<str:deployment_id>/", deployment, name="deployment"),
    path(ORG + "deployments/<str:deployment_id>/scale/", deployment_scale, name="deployment-scale"),
    path(
        ORG + "deployments/<str:deployment_id>/edit/", deployment_update, name="deployment-update"
    ),
    path(
        ORG + "deployments/<str:deployment_id>/delete/", deployment_delete, name="deployment-delete"
    ),
]
