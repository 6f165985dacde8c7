"""Shared DRF plumbing: strict serializers and organization-scoped viewsets.

Every view that shows tenant data goes through ``Model.objects.restrict(actor, ...)``
(see ``controlplane.tenancy.scoping``); an organization the caller cannot see is a
404, one they can see but lack the role for is a 403.
"""

from __future__ import annotations

from collections.abc import Mapping

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, serializers, viewsets

from controlplane.api.authentication import get_actor
from controlplane.tenancy.actors import Actor
from controlplane.tenancy.models import Organization


class StrictFieldsMixin:
    """Refuse unknown fields instead of silently ignoring them."""

    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            writable = {name for name, field in self.fields.items() if not field.read_only}
            unknown = sorted(set(data) - writable)
            if unknown:
                raise exceptions.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class StrictSerializer(StrictFieldsMixin, serializers.Serializer):
    pass


class StrictModelSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    pass


class ActorMixin:
    @property
    def actor(self) -> Actor:
        actor = get_actor(self.request)
        if actor is None:  # authenticated by something that set no actor
            raise exceptions.NotAuthenticated()
        return actor

    def get_serializer_context(self):
        context = super().get_serializer_context()
        if not getattr(self, "swagger_fake_view", False) and get_actor(self.request):
            context["actor"] = self.actor
        return context


def path_parameter(name: str, description: str) -> OpenApiParameter:
    return OpenApiParameter(name, OpenApiTypes.STR, OpenApiParameter.PATH, description=description)


@extend_schema(parameters=[path_parameter("org_slug", "The organization's slug")])
class OrganizationScopedViewSet(ActorMixin, viewsets.GenericViewSet):
    """A resource that lives inside ``/api/v1/organizations/<org_slug>/``.

    Subclasses set ``model``, ``view_action`` (role needed to read) and
    ``change_action`` (role needed to write; finer checks stay in the services).
    """

    model = None
    view_action = ""
    change_action = ""
    lookup_value_regex = "[^/]+"

    def get_organization(self) -> Organization:
        if not hasattr(self, "_organization"):
            self._organization = get_object_or_404(
                Organization.objects.restrict(self.actor, "organization.view"),
                slug=self.kwargs["org_slug"],
            )
        return self._organization

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        organization = self.get_organization()
        if not self.actor.can(self.view_action, organization.pk):
            raise exceptions.PermissionDenied(
                f"Your role in {organization.slug} does not allow this."
            )
        if request.method not in ("GET", "HEAD", "OPTIONS") and not self.actor.can(
            self.change_action, organization.pk
        ):
            raise exceptions.PermissionDenied(
                f"Your role in {organization.slug} does not allow changes here."
            )

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.model.objects.none()
        organization = self.get_organization()
        path = self.model.scope_org_path or "pk"
        return self.model.objects.restrict(self.actor, self.view_action).filter(
            **{path: organization.pk}
        )
