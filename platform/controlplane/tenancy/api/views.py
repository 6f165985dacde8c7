from __future__ import annotations

import django_filters
from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api.base import ActorMixin, OrganizationScopedViewSet
from controlplane.api.filters import UtcDateTimeFilter
from controlplane.tenancy import services
from controlplane.tenancy.api import serializers as s
from controlplane.tenancy.models import ApiKey, Membership, Organization, Team, TeamMembership

User = get_user_model()


class OrganizationViewSet(
    ActorMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Organizations you belong to (all of them for a platform administrator)."""

    lookup_field = "slug"
    lookup_value_regex = "[^/]+"
    serializer_class = s.OrganizationSerializer
    filterset_fields = ["slug"]
    ordering_fields = ["slug", "name", "created_at"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Organization.objects.none()
        return Organization.objects.restrict(self.actor, "organization.view")

    @extend_schema(
        request=s.OrganizationCreateSerializer, responses={201: s.OrganizationSerializer}
    )
    def create(self, request):
        serializer = s.OrganizationCreateSerializer(
            data=request.data, context=self.get_serializer_context()
        )
        serializer.is_valid(raise_exception=True)
        organization = services.create_organization(actor=self.actor, **serializer.validated_data)
        return Response(
            s.OrganizationSerializer(organization, context=self.get_serializer_context()).data,
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(request=s.OrganizationUpdateSerializer, responses=s.OrganizationSerializer)
    def partial_update(self, request, slug=None):
        organization = self.get_object()
        serializer = s.OrganizationUpdateSerializer(
            organization, data=request.data, partial=True, context=self.get_serializer_context()
        )
        serializer.is_valid(raise_exception=True)
        services.update_organization(
            actor=self.actor, organization=organization, **serializer.validated_data
        )
        return Response(
            s.OrganizationSerializer(organization, context=self.get_serializer_context()).data
        )

    def destroy(self, request, slug=None):
        services.delete_organization(actor=self.actor, organization=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class TeamViewSet(
    OrganizationScopedViewSet,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
):
    model = Team
    view_action = "team.view"
    change_action = "team.change"
    serializer_class = s.TeamSerializer
    filterset_fields = ["slug"]
    ordering_fields = ["slug", "name", "created_at"]

    def get_queryset(self):
        return super().get_queryset().prefetch_related("memberships__user")

    def create(self, request, org_slug=None):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        team = services.create_team(
            actor=self.actor, organization=self.get_organization(), **serializer.validated_data
        )
        return Response(self.get_serializer(team).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.TeamUpdateSerializer, responses=s.TeamSerializer)
    def partial_update(self, request, org_slug=None, pk=None):
        team = self.get_object()
        serializer = s.TeamUpdateSerializer(team, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        services.update_team(actor=self.actor, team=team, **serializer.validated_data)
        return Response(self.get_serializer(team).data)

    def destroy(self, request, org_slug=None, pk=None):
        services.delete_team(actor=self.actor, team=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class TeamMemberViewSet(
    OrganizationScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin
):
    """Who is in which team. Add with ``{"team": id, "username": ...}``."""

    model = TeamMembership
    view_action = "team.view"
    change_action = "team.change"
    serializer_class = s.TeamMemberSerializer
    filterset_fields = ["team"]

    def get_queryset(self):
        return super().get_queryset().select_related("user", "team")

    def create(self, request, org_slug=None):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        organization = self.get_organization()
        team = Team.objects.filter(
            organization=organization, pk=serializer.validated_data["team_id"]
        ).first()
        if team is None:
            raise ValidationError({"team": ["No such team in this organization."]})
        user = User.objects.filter(
            username=serializer.validated_data["user"]["username"],
            memberships__organization=organization,
        ).first()
        if user is None:
            raise ValidationError({"username": ["Not a member of this organization."]})
        membership = services.add_team_member(actor=self.actor, team=team, user=user)
        return Response(self.get_serializer(membership).data, status=status.HTTP_201_CREATED)

    def destroy(self, request, org_slug=None, pk=None):
        services.remove_team_member(actor=self.actor, team_membership=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class MemberViewSet(
    OrganizationScopedViewSet,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
):
    model = Membership
    view_action = "member.view"
    change_action = "member.change"
    serializer_class = s.MembershipSerializer
    filterset_fields = ["role"]
    ordering_fields = ["created_at", "role"]

    def get_queryset(self):
        return super().get_queryset().select_related("user")

    @extend_schema(request=s.MembershipCreateSerializer, responses={201: s.MembershipSerializer})
    def create(self, request, org_slug=None):
        serializer = s.MembershipCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        membership = services.add_member(
            actor=self.actor, organization=self.get_organization(), **serializer.validated_data
        )
        return Response(self.get_serializer(membership).data, status=status.HTTP_201_CREATED)

    def partial_update(self, request, org_slug=None, pk=None):
        membership = self.get_object()
        serializer = self.get_serializer(membership, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        if "role" in serializer.validated_data:
            services.change_member_role(
                actor=self.actor, membership=membership, role=serializer.validated_data["role"]
            )
        return Response(self.get_serializer(membership).data)

    def destroy(self, request, org_slug=None, pk=None):
        services.remove_member(actor=self.actor, membership=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class ApiKeyFilter(django_filters.FilterSet):
    # Sent to the database in UTC: an offset PostgreSQL refuses is a 400, not a 500.
    revoked_at = UtcDateTimeFilter(field_name="revoked_at")

    class Meta:
        model = ApiKey
        fields = ["team", "revoked_at"]


class ApiKeyViewSet(
    OrganizationScopedViewSet,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
):
    """API keys. The full key appears once, in the response to its creation."""

    model = ApiKey
    view_action = "apikey.view"
    change_action = "apikey.create"
    serializer_class = s.ApiKeySerializer
    filterset_class = ApiKeyFilter
    ordering_fields = ["created_at", "name", "last_used_at"]

    def get_queryset(self):
        return super().get_queryset().select_related("team", "user")

    def get_serializer_context(self):
        context = super().get_serializer_context()
        if not getattr(self, "swagger_fake_view", False):
            context["organization"] = self.get_organization()
        return context

    @extend_schema(request=s.ApiKeySerializer, responses={201: s.ApiKeyCreatedSerializer})
    def create(self, request, org_slug=None):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key, full_key = services.create_api_key(
            actor=self.actor, organization=self.get_organization(), **serializer.validated_data
        )
        data = s.ApiKeyCreatedSerializer(key, context=self.get_serializer_context()).data
        data["key"] = full_key
        return Response(data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.ApiKeyUpdateSerializer, responses=s.ApiKeySerializer)
    def partial_update(self, request, org_slug=None, pk=None):
        key = self.get_object()
        serializer = s.ApiKeyUpdateSerializer(
            key, data=request.data, partial=True, context=self.get_serializer_context()
        )
        serializer.is_valid(raise_exception=True)
        services.update_api_key(actor=self.actor, key=key, **serializer.validated_data)
        return Response(self.get_serializer(key).data)

    @extend_schema(request=None, responses=s.ApiKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request, org_slug=None, pk=None):
        key = services.revoke_api_key(actor=self.actor, key=self.get_object())
        return Response(self.get_serializer(key).data)


class MeView(ActorMixin, APIView):
    """Who you are and your role in each organization."""

    @extend_schema(
        responses={
            200: {
                "type": "object",
                "properties": {
                    "username": {"type": "string", "nullable": True},
                    "is_platform_admin": {"type": "boolean"},
                    "via_api_key": {"type": "string", "nullable": True},
                    "organizations": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "slug": {"type": "string"},
                                "role": {"type": "string"},
                            },
                        },
                    },
                },
            }
        }
    )
    def get(self, request):
        actor = self.actor
        orgs = Organization.objects.filter(pk__in=list(actor.roles)).order_by("slug")
        return Response(
            {
                "username": actor.user.get_username() if actor.user else None,
                "is_platform_admin": actor.is_platform_admin,
                "via_api_key": actor.api_key.display_prefix if actor.api_key else None,
                "organizations": [{"slug": o.slug, "role": actor.roles[o.pk]} for o in orgs],
            }
        )
