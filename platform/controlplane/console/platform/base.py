"""What the platform administrator's pages share: the gate (platform administrators
only; anyone else signed in gets a 404, so the pages are not revealed) and small helpers."""

from __future__ import annotations

import functools

from django.http import Http404

from controlplane.console.views import signed_in
from controlplane.tenancy.actors import Actor
from controlplane.tenancy.models import Organization

PER_PAGE = 50
PREFIX = "platform/"


def platform_page(view):
    """A page for platform administrators only: anyone else signed in gets a 404."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_superuser:
            raise Http404("No such page.")
        request.actor = Actor.for_user(request.user)
        return view(request, *args, **kwargs)

    page = signed_in(wrapper)
    page.console_action = "platform"  # read by the role-table test
    return page


def page_context(request, section: str, **extra) -> dict:
    # The organization switcher of base.html: a platform administrator may open any.
    switcher = Organization.objects.order_by("slug")[:200]
    return {"section": section, "organizations": switcher, **extra}


def no_store(response):
    # One-time links and set-password forms: never cached.
    response["Cache-Control"] = "no-store"
    return response
