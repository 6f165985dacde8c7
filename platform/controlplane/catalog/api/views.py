from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response

from controlplane.api.base import ActorMixin, OrganizationScopedViewSet, path_parameter
from controlplane.catalog import services
from controlplane.catalog.api import serializers as s
from controlplane.catalog.models import (
    Model,
    ModelVersion,
    OrganizationModelAccess,
    OrganizationPolicy,
    Upstream,
)


class ModelViewSet(
    ActorMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """The model catalog. Everyone sees the models their organizations were granted;
    platform administrators see and edit all of it."""

    lookup_field = "alias"
    lookup_value_regex = "[^/]+"
    serializer_class = s.ModelSerializer
    filterset_fields = ["task", "openness", "commercial_use", "publisher", "license_id"]
    ordering_fields = ["alias", "created_at"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Model.objects.none()
        return Model.objects.restrict(self.actor, "model_access.view").prefetch_related("versions")

    def create(self, request):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        model = services.create_model(actor=self.actor, **serializer.validated_data)
        return Response(self.get_serializer(model).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.ModelUpdateSerializer, responses=s.ModelSerializer)
    def partial_update(self, request, alias=None):
        model = self.get_object()
        serializer = s.ModelUpdateSerializer(model, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        services.update_model(actor=self.actor, model=model, **serializer.validated_data)
        return Response(self.get_serializer(model).data)

    def destroy(self, request, alias=None):
        services.delete_model(actor=self.actor, model=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(parameters=[path_parameter("model_alias", "The model's alias")])
class _ModelChildViewSet(ActorMixin, viewsets.GenericViewSet):
    """Resources under ``/models/<alias>/``; readable where the model is."""

    lookup_value_regex = "[^/]+"

    def get_model(self) -> Model:
        if not hasattr(self, "_model"):
            self._model = get_object_or_404(
                Model.objects.restrict(self.actor, "model_access.view"),
                alias=self.kwargs["model_alias"],
            )
        return self._model


class ModelVersionViewSet(_ModelChildViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    serializer_class = s.ModelVersionSerializer
    filterset_fields = ["is_default", "source_type", "dtype", "quantization"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ModelVersion.objects.none()
        return ModelVersion.objects.filter(model=self.get_model()).select_related(
            "trust_remote_code_approved_by"
        )

    def create(self, request, model_alias=None):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version = services.create_version(
            actor=self.actor, model=self.get_model(), **serializer.validated_data
        )
        return Response(self.get_serializer(version).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.ModelVersionUpdateSerializer, responses=s.ModelVersionSerializer)
    def partial_update(self, request, model_alias=None, pk=None):
        version = self.get_object()
        serializer = s.ModelVersionUpdateSerializer(version, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        services.update_version(actor=self.actor, version=version, **serializer.validated_data)
        return Response(self.get_serializer(version).data)

    def destroy(self, request, model_alias=None, pk=None):
        services.delete_version(actor=self.actor, version=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class UpstreamViewSet(_ModelChildViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """Static upstreams of a model (platform administrators only: they hold secrets
    and addresses inside the house)."""

    serializer_class = s.UpstreamSerializer

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if not self.actor.is_platform_admin:
            self.get_model()  # 404 first for a model the caller cannot see
            raise PermissionDenied("Only a platform administrator manages upstreams.")

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Upstream.objects.none()
        return Upstream.objects.filter(model=self.get_model())

    def create(self, request, model_alias=None):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        upstream = services.create_upstream(
            actor=self.actor, model=self.get_model(), **serializer.validated_data
        )
        return Response(self.get_serializer(upstream).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.UpstreamUpdateSerializer, responses=s.UpstreamSerializer)
    def partial_update(self, request, model_alias=None, pk=None):
        upstream = self.get_object()
        serializer = s.UpstreamUpdateSerializer(upstream, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        services.update_upstream(actor=self.actor, upstream=upstream, **serializer.validated_data)
        return Response(self.get_serializer(upstream).data)

    def destroy(self, request, model_alias=None, pk=None):
        services.delete_upstream(actor=self.actor, upstream=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class ModelAccessViewSet(
    OrganizationScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin
):
    """Which catalog models this organization may use. Grant with ``{"model": alias}``."""

    model = OrganizationModelAccess
    view_action = "model_access.view"
    change_action = "model_access.change"
    serializer_class = s.ModelAccessSerializer

    def get_queryset(self):
        return super().get_queryset().select_related("model")

    def create(self, request, org_slug=None):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        access = services.grant_model_access(
            actor=self.actor,
            organization=self.get_organization(),
            model=serializer.validated_data["model"],
        )
        return Response(self.get_serializer(access).data, status=status.HTTP_201_CREATED)

    def destroy(self, request, org_slug=None, pk=None):
        services.revoke_model_access(actor=self.actor, access=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class PolicyViewSet(OrganizationScopedViewSet):
    """The organization's model policy (one per organization)."""

    model = OrganizationPolicy
    view_action = "policy.view"
    change_action = "policy.change"
    serializer_class = s.PolicySerializer
    pagination_class = None

    def _policy(self) -> OrganizationPolicy:
        return get_object_or_404(self.get_queryset())

    def retrieve(self, request, org_slug=None):
        return Response(self.get_serializer(self._policy()).data)

    def partial_update(self, request, org_slug=None):
        serializer = self.get_serializer(self._policy(), data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        policy = services.update_policy(
            actor=self.actor, organization=self.get_organization(), **serializer.validated_data
        )
        return Response(self.get_serializer(policy).data)
