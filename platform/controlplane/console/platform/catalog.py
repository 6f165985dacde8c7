"""The model catalog: models, versions, remote-code approval, artifact fetches and
upstreams with write-only API keys."""

from __future__ import annotations

import json

from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Count
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from controlplane.catalog import services as catalog_services
from controlplane.catalog.models import (
    Dtype,
    Model,
    ModelVersion,
    Openness,
    Quantization,
    SourceType,
    Task,
)
from controlplane.console.platform.base import (
    PER_PAGE,
    page_context,
    platform_page,
)
from controlplane.console.views import as_uuid, service_errors
from controlplane.fleet import services as fleet_services
from controlplane.fleet.models import ArtifactFetch, Node

# --------------------------------------------------------------------------- catalog
MODEL_TEXT_FIELDS = ("display_name", "description", "publisher", "license_id", "license_name")


def _model_fields(form, *, creating: bool) -> dict:
    fields = {name: form.get(name, "").strip() for name in MODEL_TEXT_FIELDS}
    fields.update(
        task=form.get("task", ""),
        openness=form.get("openness", ""),
        license_url=form.get("license_url", "").strip(),
        commercial_use=form.get("commercial_use") == "on",
    )
    if creating:
        fields["alias"] = form.get("alias", "").strip()
    return fields


def _choices() -> dict:
    return {
        "tasks": Task.choices,
        "opennesses": Openness.choices,
        "source_types": SourceType.choices,
        "dtypes": Dtype.choices,
        "quantizations": Quantization.choices,
    }


def _catalog_page(request, status=200, **extra):
    models = Model.objects.annotate(version_count=Count("versions")).order_by("alias")
    page = Paginator(models, PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "console/platform/catalog.html",
        page_context(request, "catalog", page=page, **_choices(), **extra),
        status=status,
    )


@require_GET
@platform_page
def catalog(request):
    return _catalog_page(request)


@require_POST
@platform_page
def model_create(request):
    try:
        model = catalog_services.create_model(
            actor=request.actor, **_model_fields(request.POST, creating=True)
        )
    except ValidationError as exc:
        return _catalog_page(request, status=400, errors=service_errors(exc), form=request.POST)
    return redirect("console:platform-model", alias=model.alias)


def _model_or_404(alias) -> Model:
    model = Model.objects.filter(alias=alias).first()
    if model is None:
        raise Http404("No such model.")
    return model


def _fetch_view(fetch: ArtifactFetch) -> dict:
    percent = round(100 * fetch.bytes_done / fetch.bytes_total) if fetch.bytes_total else None
    return {"fetch": fetch, "percent": percent}


def _model_page(request, model, status=200, part=None, **extra):
    versions = list(
        model.versions.select_related("trust_remote_code_approved_by").order_by("-created_at")
    )
    fetches: dict = {}
    for fetch in ArtifactFetch.objects.filter(model_version__model=model).select_related("node"):
        fetches.setdefault(fetch.model_version_id, [])
        if len(fetches[fetch.model_version_id]) < 5:
            fetches[fetch.model_version_id].append(_fetch_view(fetch))
    rows = [
        {
            "version": v,
            "fetches": fetches.get(v.pk, []),
            "manifest_files": len(v.file_manifest or {}),
            "engine_args_json": json.dumps(v.engine_args) if v.engine_args else "",
            "remote_code_approved": fleet_services.trust_remote_code(v),
        }
        for v in versions
    ]
    fetching = any(f["fetch"].state in ("queued", "running") for r in rows for f in r["fetches"])
    template = "console/platform/model.html"
    if part == "versions":  # htmx refreshing fetch progress
        template = "console/platform/_versions.html"
    return render(
        request,
        template,
        page_context(
            request,
            "catalog",
            model=model,
            rows=rows,
            fetching=fetching,
            upstreams=model.upstreams.order_by("name"),
            nodes=Node.objects.order_by("name"),
            **_choices(),
            **extra,
        ),
        status=status,
    )


@require_GET
@platform_page
def model_detail(request, alias):
    return _model_page(request, _model_or_404(alias), part=request.GET.get("part"))


@require_POST
@platform_page
def model_edit(request, alias):
    model = _model_or_404(alias)
    try:
        catalog_services.update_model(
            actor=request.actor, model=model, **_model_fields(request.POST, creating=False)
        )
    except ValidationError as exc:
        model.refresh_from_db()
        return _model_page(request, model, status=400, errors={"model": service_errors(exc)})
    return redirect("console:platform-model", alias=model.alias)


def _int_or_none(value, field: str):
    value = (value or "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValidationError({field: "Give a whole number."}) from None


def _version_fields(form) -> dict:
    fields = {
        name: form.get(name, "").strip()
        for name in (
            "version",
            "source_type",
            "hf_repo",
            "revision",
            "local_path",
            "external_url",
            "dtype",
            "quantization",
        )
    }
    fields["parameter_count"] = _int_or_none(form.get("parameter_count"), "parameter_count")
    fields["context_length"] = _int_or_none(form.get("context_length"), "context_length")
    fields["is_default"] = form.get("is_default") == "on"
    engine_args = form.get("engine_args", "").strip()
    try:
        fields["engine_args"] = json.loads(engine_args) if engine_args else {}
    except ValueError:
        message = 'Give a JSON object, e.g. {"max_num_seqs": 8}.'
        raise ValidationError({"engine_args": message}) from None
    return fields


def _version_or_404(model, version_id) -> ModelVersion:
    version = model.versions.filter(pk=as_uuid(version_id)).first()
    if version is None:
        raise Http404("No such version.")
    return version


@require_POST
@platform_page
def version_create(request, alias):
    model = _model_or_404(alias)
    try:
        catalog_services.create_version(
            actor=request.actor, model=model, **_version_fields(request.POST)
        )
    except ValidationError as exc:
        return _model_page(
            request,
            model,
            status=400,
            errors={"new_version": service_errors(exc)},
            form=request.POST,
        )
    return redirect("console:platform-model", alias=model.alias)


@require_POST
@platform_page
def version_edit(request, alias, version_id):
    model = _model_or_404(alias)
    version = _version_or_404(model, version_id)
    try:
        fields = _version_fields(request.POST)
        # A version's name is its folder in the model cache: it does not change.
        fields.pop("version", None)
        catalog_services.update_version(actor=request.actor, version=version, **fields)
    except ValidationError as exc:
        return _model_page(
            request,
            model,
            status=400,
            errors={str(version.pk): service_errors(exc)},
            form=request.POST,
        )
    return redirect("console:platform-model", alias=model.alias)


@require_POST
@platform_page
def version_remote_code(request, alias, version_id):
    """Approve (or withdraw) running the repository's own code for one version:
    ``trust_remote_code`` with the approving administrator recorded."""
    model = _model_or_404(alias)
    version = _version_or_404(model, version_id)
    approve = request.POST.get("approve") == "1"
    try:
        catalog_services.update_version(
            actor=request.actor, version=version, trust_remote_code=approve
        )
    except ValidationError as exc:
        return _model_page(
            request, model, status=400, errors={str(version.pk): service_errors(exc)}
        )
    return redirect("console:platform-model", alias=model.alias)


@require_POST
@platform_page
def version_fetch(request, alias, version_id):
    model = _model_or_404(alias)
    version = _version_or_404(model, version_id)
    node = None
    if request.POST.get("node"):
        node = Node.objects.filter(pk=as_uuid(request.POST["node"])).first()
        if node is None:
            return _model_page(
                request, model, status=400, errors={str(version.pk): {"node": "No such node."}}
            )
    try:
        fleet_services.start_fetch(actor=request.actor, version=version, node=node)
    except ValidationError as exc:
        return _model_page(
            request, model, status=400, errors={str(version.pk): service_errors(exc)}
        )
    return redirect("console:platform-model", alias=model.alias)


@require_POST
@platform_page
def upstream_create(request, alias):
    model = _model_or_404(alias)
    form = request.POST
    try:
        catalog_services.create_upstream(
            actor=request.actor,
            model=model,
            name=form.get("name", "").strip(),
            base_url=form.get("base_url", "").strip(),
            served_model_name=form.get("served_model_name", "").strip(),
            api_key=form.get("api_key", ""),
        )
    except ValidationError as exc:
        # The key the administrator typed is not sent back, even on an error.
        kept = {k: v for k, v in form.items() if k != "api_key"}
        return _model_page(
            request, model, status=400, errors={"new_upstream": service_errors(exc)}, form=kept
        )
    return redirect("console:platform-model", alias=model.alias)


@require_POST
@platform_page
def upstream_edit(request, alias, upstream_id):
    model = _model_or_404(alias)
    upstream = model.upstreams.filter(pk=as_uuid(upstream_id)).first()
    if upstream is None:
        raise Http404("No such upstream.")
    form = request.POST
    # Write-only key: blank keeps the stored one, "clear" removes it.
    api_key = form.get("api_key") or None
    if form.get("clear_api_key") == "on":
        api_key = ""
    try:
        catalog_services.update_upstream(
            actor=request.actor,
            upstream=upstream,
            api_key=api_key,
            base_url=form.get("base_url", "").strip(),
            served_model_name=form.get("served_model_name", "").strip(),
            enabled=form.get("enabled") == "on",
        )
    except ValidationError as exc:
        upstream.refresh_from_db()
        return _model_page(
            request, model, status=400, errors={str(upstream.pk): service_errors(exc)}
        )
    return redirect("console:platform-model", alias=model.alias)
