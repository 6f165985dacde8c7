"""Django admin that writes audit events like every other entry point.

Changes made in the admin run in the admin's own transaction; this base class records
the event (with the changed fields) in that transaction and republishes the gateway
snapshot on commit.
"""

from __future__ import annotations

from django.contrib import admin

from controlplane.audit.services import diff, field_values, record_event
from controlplane.snapshot import publish_on_commit
from controlplane.tenancy.actors import Actor


def _organization_id(obj):
    path = getattr(type(obj), "scope_org_path", None)
    if path == "":
        return obj.pk
    if path == "organization":
        return obj.organization_id
    return None


class AuditedModelAdmin(admin.ModelAdmin):
    def save_model(self, request, obj, form, change):
        before = {}
        if change:
            before = field_values(type(obj).objects.get(pk=obj.pk))
        super().save_model(request, obj, form, change)
        label = type(obj)._meta.model_name
        record_event(
            actor=Actor.for_user(request.user),
            action=f"{label}.{'update' if change else 'create'}",
            target=obj,
            organization_id=_organization_id(obj),
            changes=diff(before, field_values(obj)) | {"via": [None, "django-admin"]},
        )
        publish_on_commit()

    def delete_model(self, request, obj):
        record_event(
            actor=Actor.for_user(request.user),
            action=f"{type(obj)._meta.model_name}.delete",
            target=obj,
            organization_id=_organization_id(obj),
            changes=diff(field_values(obj), {}) | {"via": [None, "django-admin"]},
        )
        super().delete_model(request, obj)
        publish_on_commit()

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)
