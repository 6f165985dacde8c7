from __future__ import annotations

from django.core.exceptions import ValidationError
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response

from controlplane.api.base import ActorMixin, OrganizationScopedViewSet
from controlplane.catalog.models import ModelVersion
from controlplane.fleet import node_auth, services
from controlplane.fleet.api import serializers as s
from controlplane.fleet.models import ArtifactFetch, Deployment, Node, Pool, Replica


class _PlatformAdminViewSet(ActorMixin, viewsets.GenericViewSet):
    """Fleet infrastructure: platform administrators only."""

    lookup_value_regex = "[^/]+"

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if not self.actor.is_platform_admin:
            raise PermissionDenied("Only a platform administrator manages the fleet.")


class PoolViewSet(_PlatformAdminViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """GPU pools: a placement strategy, labels and an optional GPU quota per organization."""

    lookup_field = "name"
    serializer_class = s.PoolSerializer
    filterset_fields = ["strategy"]
    ordering_fields = ["name", "created_at"]

    def get_queryset(self):
        return Pool.objects.all()

    def create(self, request):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        pool = services.create_pool(actor=self.actor, **serializer.validated_data)
        return Response(self.get_serializer(pool).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.PoolUpdateSerializer, responses=s.PoolSerializer)
    def partial_update(self, request, name=None):
        pool = self.get_object()
        serializer = s.PoolUpdateSerializer(pool, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        services.update_pool(actor=self.actor, pool=pool, **serializer.validated_data)
        return Response(self.get_serializer(pool).data)

    def destroy(self, request, name=None):
        services.delete_pool(actor=self.actor, pool=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class NodeViewSet(_PlatformAdminViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """GPU hosts. Administrators register them (which issues the credential their agent
    signs its reports with, shown once), rotate that credential, label, move, cordon
    (no new replicas) and delete them. Reports of unregistered nodes are refused."""

    lookup_field = "name"
    serializer_class = s.NodeSerializer
    filterset_fields = ["state", "cordoned", "pool__name"]
    ordering_fields = ["name", "last_heartbeat"]

    def get_queryset(self):
        return Node.objects.select_related("pool")

    @extend_schema(request=s.NodeRegisterSerializer, responses={201: s.NodeCredentialSerializer})
    def create(self, request):
        serializer = s.NodeRegisterSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        node, secret = node_auth.register_node(actor=self.actor, **serializer.validated_data)
        node.credential = secret
        return Response(s.NodeCredentialSerializer(node).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=s.NodeCredentialSerializer)
    @action(detail=True, methods=["post"], url_path="rotate-credential")
    def rotate_credential(self, request, name=None):
        """A new credential for the node's agent; the previous one stops working."""
        node = self.get_object()
        secret = node_auth.rotate_node_credential(actor=self.actor, node=node)
        node.refresh_from_db()
        node.credential = secret
        return Response(s.NodeCredentialSerializer(node).data)

    @extend_schema(request=s.NodeUpdateSerializer, responses=s.NodeSerializer)
    def partial_update(self, request, name=None):
        node = self.get_object()
        serializer = s.NodeUpdateSerializer(node, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        services.update_node(actor=self.actor, node=node, **serializer.validated_data)
        return Response(self.get_serializer(node).data)

    def destroy(self, request, name=None):
        services.delete_node(actor=self.actor, node=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses=s.NodeSerializer)
    @action(detail=True, methods=["post"])
    def cordon(self, request, name=None):
        node = services.set_cordoned(actor=self.actor, node=self.get_object(), cordoned=True)
        return Response(self.get_serializer(node).data)

    @extend_schema(request=None, responses=s.NodeSerializer)
    @action(detail=True, methods=["post"])
    def uncordon(self, request, name=None):
        node = services.set_cordoned(actor=self.actor, node=self.get_object(), cordoned=False)
        return Response(self.get_serializer(node).data)


class ArtifactFetchViewSet(_PlatformAdminViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """Model files brought into a model cache, with progress (bytes done / total)."""

    serializer_class = s.ArtifactFetchSerializer
    filterset_fields = ["state"]

    def get_queryset(self):
        return ArtifactFetch.objects.select_related("model_version__model", "node")

    @extend_schema(request=s.ArtifactFetchCreateSerializer, responses=s.ArtifactFetchSerializer)
    def create(self, request):
        serializer = s.ArtifactFetchCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        versions = ModelVersion.objects.filter(model__alias=data["model"])
        version = (
            versions.filter(version=data["version"]).first()
            if data.get("version")
            else versions.filter(is_default=True).first()
        )
        if version is None:
            raise ValidationError({"model": "No such model version in the catalog."})
        fetch = services.start_fetch(actor=self.actor, version=version, node=data.get("node"))
        return Response(self.get_serializer(fetch).data, status=status.HTTP_201_CREATED)


class DeploymentViewSet(
    OrganizationScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin
):
    """What the organization serves on the fleet: a catalog model, how many replicas,
    where (pool and label selector) and with which engine arguments. Changing the spec
    rolls the replicas over one at a time; changing ``replicas`` scales."""

    model = Deployment
    view_action = "deployment.view"
    change_action = "deployment.change"
    serializer_class = s.DeploymentSerializer
    filterset_fields = ["name"]
    ordering_fields = ["name", "created_at"]

    def get_queryset(self):
        return (
            super()
            .get_queryset()
            .select_related("model_version__model", "pool", "organization")
            .prefetch_related("replica_set")
        )

    def create(self, request, org_slug=None):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        deployment = services.create_deployment(
            actor=self.actor, organization=self.get_organization(), **serializer.validated_data
        )
        return Response(self.get_serializer(deployment).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.DeploymentUpdateSerializer, responses=s.DeploymentSerializer)
    def partial_update(self, request, org_slug=None, pk=None):
        deployment = self.get_object()
        serializer = s.DeploymentUpdateSerializer(deployment, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        deployment = services.update_deployment(
            actor=self.actor, deployment=deployment, **serializer.validated_data
        )
        return Response(self.get_serializer(self.get_queryset().get(pk=deployment.pk)).data)

    def destroy(self, request, org_slug=None, pk=None):
        services.delete_deployment(actor=self.actor, deployment=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class PlatformDeploymentViewSet(
    _PlatformAdminViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin
):
    """Platform deployments: capacity the platform runs and shares with every
    organization (``shared_with_all``) or a listed set (``shared_with``). An
    organization's own deployments (under its path) serve only that organization."""

    serializer_class = s.PlatformDeploymentSerializer
    filterset_fields = ["name", "shared_with_all"]
    ordering_fields = ["name", "created_at"]

    def get_queryset(self):
        return (
            Deployment.objects.filter(organization__isnull=True)
            .select_related("model_version__model", "pool")
            .prefetch_related("replica_set", "shared_with")
        )

    def create(self, request):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        deployment = services.create_deployment(
            actor=self.actor, organization=None, **serializer.validated_data
        )
        return Response(
            self.get_serializer(self.get_queryset().get(pk=deployment.pk)).data,
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(
        request=s.PlatformDeploymentUpdateSerializer, responses=s.PlatformDeploymentSerializer
    )
    def partial_update(self, request, pk=None):
        deployment = self.get_object()
        serializer = s.PlatformDeploymentUpdateSerializer(
            deployment, data=request.data, partial=True
        )
        serializer.is_valid(raise_exception=True)
        services.update_deployment(
            actor=self.actor, deployment=deployment, **serializer.validated_data
        )
        return Response(self.get_serializer(self.get_queryset().get(pk=deployment.pk)).data)

    def destroy(self, request, pk=None):
        services.delete_deployment(actor=self.actor, deployment=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class ReplicaViewSet(OrganizationScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """The replicas of the organization's deployments: where they run, their state and
    why one could not be placed. Their API keys are never shown."""

    model = Replica
    view_action = "deployment.view"
    change_action = "deployment.change"
    serializer_class = s.ReplicaSerializer
    filterset_fields = ["state", "deployment__name"]
    ordering_fields = ["created_at", "state"]

    def get_queryset(self):
        return super().get_queryset().select_related("deployment", "node")
