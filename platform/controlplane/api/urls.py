"""Routes of REST API v1. Organization resources live under
``organizations/<org_slug>/``; the catalog is platform-wide under ``models/``."""

from __future__ import annotations

from django.urls import path
from rest_framework.routers import SimpleRouter

from controlplane.audit.api.views import AuditEventViewSet, OrganizationAuditEventViewSet
from controlplane.catalog.api.views import (
    ModelAccessViewSet,
    ModelVersionViewSet,
    ModelViewSet,
    PolicyViewSet,
    UpstreamViewSet,
)
from controlplane.fleet.api.views import (
    ArtifactFetchViewSet,
    DeploymentViewSet,
    NodeViewSet,
    PlatformDeploymentViewSet,
    PoolViewSet,
    ReplicaViewSet,
)
from controlplane.quotas.api.views import LimitPolicyViewSet, UsageViewSet
from controlplane.tenancy.api.views import (
    ApiKeyViewSet,
    MemberViewSet,
    MeView,
    OrganizationViewSet,
    TeamMemberViewSet,
    TeamViewSet,
)

ORG = r"organizations/(?P<org_slug>[^/.]+)"
MODEL = r"models/(?P<model_alias>[^/]+)"

router = SimpleRouter()
router.register(r"organizations", OrganizationViewSet, basename="organization")
router.register(rf"{ORG}/teams", TeamViewSet, basename="team")
router.register(rf"{ORG}/team-members", TeamMemberViewSet, basename="team-member")
router.register(rf"{ORG}/members", MemberViewSet, basename="member")
router.register(rf"{ORG}/keys", ApiKeyViewSet, basename="apikey")
router.register(rf"{ORG}/model-access", ModelAccessViewSet, basename="model-access")
router.register(rf"{ORG}/limits", LimitPolicyViewSet, basename="limit-policy")
router.register(rf"{ORG}/usage", UsageViewSet, basename="usage")
router.register(rf"{ORG}/audit-events", OrganizationAuditEventViewSet, basename="org-audit-event")
router.register(rf"{ORG}/deployments", DeploymentViewSet, basename="deployment")
router.register(rf"{ORG}/replicas", ReplicaViewSet, basename="replica")
router.register(r"fleet/pools", PoolViewSet, basename="pool")
router.register(r"fleet/nodes", NodeViewSet, basename="node")
router.register(r"fleet/deployments", PlatformDeploymentViewSet, basename="platform-deployment")
router.register(r"fleet/artifact-fetches", ArtifactFetchViewSet, basename="artifact-fetch")
router.register(r"models", ModelViewSet, basename="model")
router.register(rf"{MODEL}/versions", ModelVersionViewSet, basename="model-version")
router.register(rf"{MODEL}/upstreams", UpstreamViewSet, basename="upstream")
router.register(r"audit-events", AuditEventViewSet, basename="audit-event")

urlpatterns = [
    path("me/", MeView.as_view(), name="me"),
    path(
        "organizations/<str:org_slug>/policy/",
        PolicyViewSet.as_view({"get": "retrieve", "patch": "partial_update"}),
        name="policy",
    ),
    *router.urls,
]
