"""Catalog admin: writes go through ``catalog.services`` (see ``audit.admin_base``)."""

from django.contrib import admin

from controlplane.audit.admin_base import ReadOnlyInline, ServiceModelAdmin
from controlplane.catalog import services
from controlplane.catalog.models import (
    Model,
    ModelVersion,
    OrganizationModelAccess,
    OrganizationPolicy,
)


class VersionInline(ReadOnlyInline):
    model = ModelVersion
    fields = ["version", "source_type", "hf_repo", "revision", "is_default", "trust_remote_code"]
    readonly_fields = fields


@admin.register(Model)
class ModelAdmin(ServiceModelAdmin):
    list_display = ["alias", "task", "openness", "license_id", "commercial_use", "publisher"]
    list_filter = ["task", "openness", "commercial_use"]
    search_fields = ["alias", "display_name", "publisher"]
    fields = [
        "alias",
        "display_name",
        "description",
        "task",
        "publisher",
        "license_id",
        "license_name",
        "license_url",
        "commercial_use",
        "openness",
    ]
    create_only_fields = ("alias",)
    inlines = [VersionInline]

    def create_object(self, actor, data):
        return services.create_model(actor=actor, **{k: data[k] for k in self.fields})

    def update_object(self, actor, obj, changes):
        services.update_model(actor=actor, model=obj, **changes)

    def delete_object(self, actor, obj):
        services.delete_model(actor=actor, model=obj)


@admin.register(OrganizationModelAccess)
class OrganizationModelAccessAdmin(ServiceModelAdmin):
    list_display = ["organization", "model"]
    fields = ["organization", "model"]

    def create_object(self, actor, data):
        return services.grant_model_access(
            actor=actor, organization=data["organization"], model=data["model"]
        )

    def delete_object(self, actor, obj):
        services.revoke_model_access(actor=actor, access=obj)


@admin.register(OrganizationPolicy)
class OrganizationPolicyAdmin(ServiceModelAdmin):
    """Every organization has one policy (made with it); here it can be changed."""

    list_display = ["organization", "allowed_openness", "require_commercial_use"]
    fields = ["organization", "allowed_openness", "require_commercial_use"]
    readonly_fields = ["organization"]

    def update_object(self, actor, obj, changes):
        services.update_policy(actor=actor, organization=obj.organization, **changes)
