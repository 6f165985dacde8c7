from __future__ import annotations

import django_filters
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.response import Response

from controlplane.api.base import OrganizationScopedViewSet
from controlplane.api.filters import UtcDateTimeFilter
from controlplane.quotas import services, summary
from controlplane.quotas.api import serializers as s
from controlplane.quotas.models import LimitPolicy, UsageRecord


class LimitPolicyViewSet(
    OrganizationScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin
):
    """Limits of the organization (no team, no key), of a team, or of a key; for all
    models (no ``model``) or for one model alias."""

    model = LimitPolicy
    view_action = "limits.view"
    change_action = "limits.change"
    serializer_class = s.LimitPolicySerializer
    filterset_fields = ["team", "api_key", "model"]

    def get_serializer_context(self):
        context = super().get_serializer_context()
        if not getattr(self, "swagger_fake_view", False):
            context["organization"] = self.get_organization()
        return context

    def create(self, request, org_slug=None):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        policy = services.create_limit_policy(
            actor=self.actor, organization=self.get_organization(), **serializer.validated_data
        )
        return Response(self.get_serializer(policy).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.LimitPolicyUpdateSerializer, responses=s.LimitPolicySerializer)
    def partial_update(self, request, org_slug=None, pk=None):
        policy = self.get_object()
        serializer = s.LimitPolicyUpdateSerializer(
            policy, data=request.data, partial=True, context=self.get_serializer_context()
        )
        serializer.is_valid(raise_exception=True)
        services.update_limit_policy(actor=self.actor, policy=policy, **serializer.validated_data)
        return Response(self.get_serializer(policy).data)

    def destroy(self, request, org_slug=None, pk=None):
        services.delete_limit_policy(actor=self.actor, policy=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class UsageFilter(django_filters.FilterSet):
    since = UtcDateTimeFilter(field_name="occurred_at", lookup_expr="gte")
    until = UtcDateTimeFilter(field_name="occurred_at", lookup_expr="lt")

    class Meta:
        model = UsageRecord
        fields = ["model", "api_key_id", "team_id", "status"]


class UsageViewSet(OrganizationScopedViewSet, mixins.ListModelMixin):
    """The usage ledger: one record per request the gateway handled."""

    model = UsageRecord
    view_action = "usage.view"
    change_action = "usage.view"
    serializer_class = s.UsageRecordSerializer
    filterset_class = UsageFilter
    ordering_fields = ["occurred_at", "prompt_tokens", "completion_tokens", "latency_ms"]

    @extend_schema(parameters=[s.UsageSummaryQuerySerializer], responses=s.UsageSummarySerializer)
    @action(detail=False, methods=["get"], url_path="summary", filter_backends=[])
    def summary(self, request, org_slug=None):
        """Requests, errors, tokens and latency percentiles per day, hour, team, model
        or key, read from the hourly rollup (whole UTC hours)."""
        query = s.UsageSummaryQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        rows = summary.organization_rows(self.actor, self.get_organization())
        return Response(summary.summarize(rows, **query.validated_data))
