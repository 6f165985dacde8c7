from __future__ import annotations

from django.core.exceptions import PermissionDenied

from controlplane.tenancy.actors import Actor
from controlplane.tenancy.roles import REQUIRED_ROLE


def require(actor: Actor, action: str, organization=None) -> None:
    """Raise PermissionDenied unless ``actor`` may do ``action`` in ``organization``
    (or, with no organization, unless the actor is a platform administrator)."""
    if actor.is_platform_admin:
        return
    if organization is not None and actor.can(action, organization.pk):
        return
    if organization is None:
        raise PermissionDenied("only a platform administrator may do this")
    role = REQUIRED_ROLE[action]
    raise PermissionDenied(f"this needs the {role.value} role or higher in {organization.slug}")
