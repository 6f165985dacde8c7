from __future__ import annotations

import django_filters
from rest_framework import mixins, serializers, viewsets
from rest_framework.exceptions import PermissionDenied

from controlplane.api.base import ActorMixin, OrganizationScopedViewSet
from controlplane.api.filters import UtcDateTimeFilter
from controlplane.audit.models import AuditEvent


class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = [
            "seq",
            "occurred_at",
            "actor_type",
            "actor_id",
            "actor_label",
            "organization_id",
            "action",
            "target_type",
            "target_id",
            "target_repr",
            "changes",
            "request_id",
            "client_ip",
            "prev_hash",
            "hash",
        ]
        read_only_fields = fields


class AuditEventFilter(django_filters.FilterSet):
    actor = django_filters.CharFilter(
        method="filter_actor", help_text="Actor id, username or key prefix"
    )
    action = django_filters.CharFilter(
        method="filter_action", help_text="Exact action, or a prefix ending in '.' (e.g. apikey.)"
    )
    target = django_filters.CharFilter(field_name="target_id", help_text="Target id")
    since = UtcDateTimeFilter(field_name="occurred_at", lookup_expr="gte")
    until = UtcDateTimeFilter(field_name="occurred_at", lookup_expr="lt")

    class Meta:
        model = AuditEvent
        fields = ["actor_type", "target_type", "request_id"]

    def filter_actor(self, queryset, name, value):
        from django.db.models import Q

        return queryset.filter(Q(actor_id=value) | Q(actor_label=value))

    def filter_action(self, queryset, name, value):
        if value.endswith("."):
            return queryset.filter(action__startswith=value)
        return queryset.filter(action=value)


class OrganizationAuditEventViewSet(
    OrganizationScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin
):
    """This organization's audit events (read-only)."""

    model = AuditEvent
    view_action = "audit.view"
    change_action = "audit.view"
    serializer_class = AuditEventSerializer
    lookup_field = "seq"
    filterset_class = AuditEventFilter
    ordering_fields = ["seq", "occurred_at"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return AuditEvent.objects.none()
        return AuditEvent.objects.filter(organization_id=self.get_organization().pk)


class AuditEventViewSet(
    ActorMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Every audit event, including platform-level ones (platform administrators)."""

    serializer_class = AuditEventSerializer
    lookup_field = "seq"
    filterset_class = AuditEventFilter
    ordering_fields = ["seq", "occurred_at"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return AuditEvent.objects.none()
        if not self.actor.is_platform_admin:
            raise PermissionDenied("Only platform administrators read the whole audit log.")
        return AuditEvent.objects.all()
