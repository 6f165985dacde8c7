"""Console pages: audit/ and playground/ of an organization."""

from __future__ import annotations

import csv
import json

import django_filters
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Q
from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.urls import path
from django.views.decorators.http import require_GET, require_POST
from rest_framework.exceptions import ValidationError as FilterValidationError

from controlplane.audit.api.views import AuditEventFilter, AuditEventSerializer
from controlplane.audit.models import AuditEvent
from controlplane.catalog.models import Task
from controlplane.catalog.services import usable_models
from controlplane.console import playground as relay
from controlplane.console.streaming import streamed
from controlplane.console.views import ORG, _context, _csv_cell, _Echo, org_page

EVENTS_PER_PAGE = 50
EXPORT_FORMATS = ("csv", "jsonl")
EXPORT_COLUMNS = tuple(AuditEventSerializer.Meta.fields)


# --------------------------------------------------------------------------- audit
class ConsoleAuditFilter(AuditEventFilter):
    """The API's filters, read as people type them: an action is a prefix (``apikey``
    finds ``apikey.create``), a target is its id or part of its name."""

    target = django_filters.CharFilter(method="filter_target")

    def filter_action(self, queryset, name, value):
        return queryset.filter(action__startswith=value)

    def filter_target(self, queryset, name, value):
        return queryset.filter(Q(target_id=value) | Q(target_repr__icontains=value))


def _events(request):
    """The organization's events (the API's rule: ``organization_id`` is this one, read
    with ``audit.view``), filtered; ``(queryset, errors)``."""
    events = AuditEvent.objects.filter(organization_id=request.organization.pk).order_by("-seq")
    params = {k: v.strip() for k, v in request.GET.items() if k in FILTER_FIELDS and v.strip()}
    filterset = ConsoleAuditFilter(params, queryset=events)
    if not filterset.is_valid():
        return events.none(), {k: " ".join(v) for k, v in filterset.errors.items()}
    try:
        return filterset.qs, {}
    except FilterValidationError as exc:  # a date PostgreSQL cannot hold
        return events.none(), {k: " ".join(map(str, v)) for k, v in exc.detail.items()}


FILTER_FIELDS = ("actor", "action", "target", "since", "until")


def _is_diff(changes) -> bool:
    return isinstance(changes, dict) and all(
        isinstance(v, list) and len(v) == 2 for v in changes.values()
    )


@require_GET
@org_page("audit.view")
def audit(request):
    events, errors = _events(request)
    page = Paginator(events, EVENTS_PER_PAGE).get_page(request.GET.get("page"))
    filters = {name: request.GET.get(name, "") for name in FILTER_FIELDS}
    return render(
        request,
        "console/operations/audit.html",
        _context(request, page=page, filters=filters, errors=errors),
        status=400 if errors else 200,
    )


def _shown(value) -> str:
    """A recorded value as people read it: text as is, the rest as JSON."""
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, cls=DjangoJSONEncoder)


@require_GET
@org_page("audit.view")
def audit_event(request, seq):
    event = AuditEvent.objects.filter(organization_id=request.organization.pk, seq=seq).first()
    if event is None:
        raise Http404("No such event in this organization.")
    changes = event.changes
    diff = (
        [
            (field, _shown(before), _shown(after))
            for field, (before, after) in sorted(changes.items())
        ]
        if _is_diff(changes)
        else None
    )
    raw = json.dumps(changes, indent=2, sort_keys=True, cls=DjangoJSONEncoder)
    return render(
        request,
        "console/operations/audit_event.html",
        _context(request, event=event, diff=diff, raw=raw),
    )


@require_GET
@org_page("audit.view")
def audit_export(request):
    export_format = request.GET.get("format", "csv")
    events, errors = _events(request)
    if export_format not in EXPORT_FORMATS:
        errors["format"] = "Choose csv or jsonl."
    if errors:
        message = "; ".join(f"{field}: {text}" for field, text in sorted(errors.items()))
        return HttpResponse(message, status=400, content_type="text/plain; charset=utf-8")
    # Oldest first, fetched in chunks: an export of a large log never sits in memory.
    events = events.order_by("seq").iterator(chunk_size=1000)
    rows = _csv_rows(events) if export_format == "csv" else _jsonl_rows(events)
    content_type = "text/csv" if export_format == "csv" else "application/x-ndjson"
    response = streamed(request, rows, content_type=f"{content_type}; charset=utf-8")
    filename = f"audit-{request.organization.slug}.{export_format}"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _event_values(event) -> dict:
    return AuditEventSerializer(event).data


def _csv_rows(events):
    writer = csv.writer(_Echo())
    yield writer.writerow(EXPORT_COLUMNS)
    for event in events:
        values = _event_values(event)
        values["changes"] = json.dumps(values["changes"], sort_keys=True, cls=DjangoJSONEncoder)
        yield writer.writerow([_csv_cell(values[c]) for c in EXPORT_COLUMNS])


def _jsonl_rows(events):
    for event in events:
        yield json.dumps(_event_values(event), sort_keys=True, cls=DjangoJSONEncoder) + "\n"


# --------------------------------------------------------------------------- playground
def _chat_models(organization) -> list:
    return [m for m in usable_models(organization) if m.task == Task.CHAT]


@require_GET
@org_page("usage.view")
def playground(request):
    key = relay.current_key(request)
    return render(
        request,
        "console/operations/playground.html",
        _context(request, models=_chat_models(request.organization), key=key),
    )


def _text(message: str, status: int) -> HttpResponse:
    return HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")


@require_POST
@org_page("usage.view")
def playground_chat(request):
    """Send one prompt to the gateway with the user's playground key and relay the
    answer's text as it arrives (plain text chunks, read by console.js)."""
    organization = request.organization
    aliases = {m.alias for m in _chat_models(organization)}
    model = request.POST.get("model", "")
    prompt = request.POST.get("prompt", "").strip()
    if model not in aliases:
        return _text("Choose one of the organization's chat models.", 400)
    if not prompt:
        return _text("Write a message first.", 400)
    if len(prompt) > relay.MAX_PROMPT_CHARS:
        return _text(f"At most {relay.MAX_PROMPT_CHARS} characters.", 400)
    try:
        secret, created = relay.key_for(request)
    except (ValidationError, PermissionDenied) as exc:
        messages = getattr(exc, "messages", None) or [str(exc)]
        return _text("No playground key: " + " ".join(messages), 403)
    messages = [{"role": "user", "content": prompt}]
    return relay.relay_chat(request, secret, model=model, messages=messages, fresh_key=created)


urlpatterns = [
    path(ORG + "audit/", audit, name="audit"),
    path(ORG + "audit/export/", audit_export, name="audit-export"),
    path(ORG + "audit/<int:seq>/", audit_event, name="audit-event"),
    path(ORG + "playground/", playground, name="playground"),
    path(ORG + "playground/chat/", playground_chat, name="playground-chat"),
]
