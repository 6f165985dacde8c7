"""The whole audit log, and chain verification run as a Celery task that the page polls."""

from __future__ import annotations

import logging
import uuid

import redis
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from controlplane.audit import tasks as audit_tasks
from controlplane.audit.models import AuditEvent
from controlplane.console.platform.base import (
    PER_PAGE,
    page_context,
    platform_page,
)
from controlplane.tenancy.models import Organization

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- audit log
VERIFY_SESSION_KEY = "console:audit-verify-run"


def _verify_state(request) -> dict:
    run_id = request.session.get(VERIFY_SESSION_KEY)
    if not run_id:
        return {"state": "none"}
    try:
        result = audit_tasks.verify_result(run_id)
    except redis.RedisError as exc:
        log.warning("audit verification result unavailable: %s", exc)
        return {"state": "unavailable", "run_id": run_id}
    if result is None:
        return {"state": "running", "run_id": run_id}
    return {"state": "done", "run_id": run_id, "result": result}


def _audit_page(request, verify: dict, status: int = 200):
    events = AuditEvent.objects.order_by("-seq")
    prefix = request.GET.get("action", "").strip()[:64]
    if prefix:
        events = events.filter(action__startswith=prefix)
    page = Paginator(events, PER_PAGE).get_page(request.GET.get("page"))
    org_ids = {e.organization_id for e in page if e.organization_id}
    slugs = {
        str(pk): slug
        for pk, slug in Organization.objects.filter(pk__in=org_ids).values_list("pk", "slug")
    }
    return render(
        request,
        "console/platform/audit.html",
        page_context(request, "audit", page=page, prefix=prefix, slugs=slugs, verify=verify),
        status=status,
    )


@require_GET
@platform_page
def audit(request):
    return _audit_page(request, _verify_state(request))


@require_POST
@platform_page
def audit_verify(request):
    """Start a verification of the whole chain on a worker; the page then polls."""
    run_id = str(uuid.uuid4())
    try:
        audit_tasks.verify_chain.apply_async(args=[run_id], task_id=run_id, queue="default")
    except Exception as exc:  # the broker being down is a message, not a 500
        log.warning("could not start the audit verification: %s", exc)
        request.session.pop(VERIFY_SESSION_KEY, None)
        unavailable = {"state": "unavailable"}
        if request.headers.get("HX-Request") == "true":
            # htmx swaps only successful responses: the message must come as a 200.
            return render(request, "console/platform/_verify.html", {"verify": unavailable})
        return _audit_page(request, unavailable, status=503)
    request.session[VERIFY_SESSION_KEY] = run_id
    if request.headers.get("HX-Request") == "true":
        return render(request, "console/platform/_verify.html", {"verify": _verify_state(request)})
    return redirect("console:platform-audit")


@require_GET
@platform_page
def audit_verify_result(request):
    return render(request, "console/platform/_verify.html", {"verify": _verify_state(request)})
