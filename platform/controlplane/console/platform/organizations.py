"""The platform at a glance, and organizations: list, create with an owner, delete."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from controlplane.audit.models import AuditEvent
from controlplane.catalog.models import (
    Model,
)
from controlplane.console.platform.base import (
    PER_PAGE,
    page_context,
    platform_page,
)
from controlplane.console.platform.users import issue_set_password_link, link_page
from controlplane.console.views import service_errors
from controlplane.fleet.models import Node
from controlplane.tenancy import services as tenancy_services
from controlplane.tenancy.models import Organization

User = get_user_model()


# --------------------------------------------------------------------------- index
@require_GET
@platform_page
def index(request):
    counts = {
        "organizations": Organization.objects.count(),
        "models": Model.objects.count(),
        "nodes": Node.objects.count(),
        "users": User.objects.filter(is_active=True).count(),
        "audit_events": AuditEvent.objects.count(),
    }
    return render(
        request, "console/platform/index.html", page_context(request, "index", counts=counts)
    )


# --------------------------------------------------------------------------- organizations
def _organizations_page(request, status=200, **extra):
    organizations = Organization.objects.annotate(members=Count("memberships")).order_by("slug")
    page = Paginator(organizations, PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "console/platform/organizations.html",
        page_context(request, "organizations", page=page, **extra),
        status=status,
    )


@require_GET
@platform_page
def organizations(request):
    return _organizations_page(request)


@require_POST
@platform_page
def organization_create(request):
    """Create an organization with its owner: an existing user, or a new account
    that gets a one-time set-password link (shown once)."""
    actor = request.actor
    form = request.POST
    slug, name = form.get("slug", "").strip(), form.get("name", "").strip()
    owner_name = form.get("owner", "").strip()
    new_owner = form.get("new_owner") == "on"
    errors: dict[str, str] = {}
    if not slug:
        errors["slug"] = "Give the organization a slug."
    if not name:
        errors["name"] = "Give the organization a name."
    if not owner_name:
        errors["owner"] = "Name the owner."
    owner = User.objects.filter(username=owner_name).first() if owner_name else None
    if owner_name and not new_owner and owner is None:
        errors["owner"] = f"No user named {owner_name!r}; tick “create this user” to add one."
    if owner is not None and not owner.is_active:
        errors["owner"] = f"{owner_name} is deactivated."
    if not errors:
        try:
            with transaction.atomic():
                if owner is None:
                    owner = tenancy_services.create_user(
                        actor=actor, username=owner_name, email=form.get("email", "").strip()
                    )
                    link = issue_set_password_link(request, actor=actor, user=owner)
                else:
                    link = None
                organization = tenancy_services.create_organization(
                    actor=actor, slug=slug, name=name, owner=owner
                )
        except ValidationError as exc:
            errors = service_errors(exc)
        else:
            if link:
                return link_page(request, owner, link, created=organization)
            return redirect("console:platform-organizations")
    return _organizations_page(request, status=400, errors=errors, form=form)


@require_POST
@platform_page
def organization_delete(request, slug):
    organization = Organization.objects.filter(slug=slug).first()
    if organization is None:
        raise Http404("No such organization.")
    tenancy_services.delete_organization(actor=request.actor, organization=organization)
    return redirect("console:platform-organizations")
