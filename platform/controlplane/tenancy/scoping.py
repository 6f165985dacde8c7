"""Tenant scoping in one place.

Every API view, console view and service that reads tenant data starts from
``Model.objects.restrict(actor, action)``. A model says how to reach its
organization with the class attribute ``scope_org_path`` (``""`` for Organization
itself). A platform administrator sees everything; anyone else sees the rows of
organizations where their role allows ``action``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import models

if TYPE_CHECKING:
    from controlplane.tenancy.actors import Actor


class ScopedQuerySet(models.QuerySet):
    def restrict(self, actor: Actor | None, action: str) -> ScopedQuerySet:
        if actor is None:
            return self.none()
        if actor.is_platform_admin:
            return self
        path = self.model.scope_org_path
        lookup = f"{path}__in" if path else "pk__in"
        allowed = self.filter(**{lookup: actor.org_ids_allowing(action)})
        if "__" in path:
            # The path may cross a to-many relation; a subquery keeps rows unique.
            return self.filter(pk__in=allowed.values("pk"))
        return allowed
