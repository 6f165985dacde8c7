"""Guards for URLs that users or admins hand to the platform (no SSRF).

The logic lives in ``gateway.netguard`` (Django-free, shared with the gateway and the
artifact fetcher); this module reads ``ALLOWED_INTERNAL_HOSTS`` and turns a refusal
into a ``ValidationError`` naming the field.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError

from controlplane.env import env_list
from gateway.netguard import CheckedTarget, NetGuard, UnsafeURL


def guard() -> NetGuard:
    """A guard with the administrator's ``ALLOWED_INTERNAL_HOSTS``."""
    return NetGuard(env_list("ALLOWED_INTERNAL_HOSTS"))


def check_url(url: str, *, allow_internal: bool, field: str = "url") -> CheckedTarget:
    """Refuse a URL that is not http(s) or, unless ``allow_internal``, one whose host
    resolves to a private, loopback, link-local or otherwise internal address. Hosts in
    the ``ALLOWED_INTERNAL_HOSTS`` setting are exempt (an admin's choice); cloud
    metadata addresses never are."""
    try:
        return guard().check_url(url, allow_internal=allow_internal)
    except UnsafeURL as exc:
        raise ValidationError({field: str(exc)}) from None
