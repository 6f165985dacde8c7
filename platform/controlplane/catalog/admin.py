from django.contrib import admin

from controlplane.audit.admin_base import AuditedModelAdmin
from controlplane.catalog.models import (
    Model,
    ModelVersion,
    OrganizationModelAccess,
    OrganizationPolicy,
)


class VersionInline(admin.TabularInline):
    model = ModelVersion
    extra = 0
    fields = ["version", "source_type", "hf_repo", "revision", "is_default", "trust_remote_code"]
    readonly_fields = fields


@admin.register(Model)
class ModelAdmin(AuditedModelAdmin):
    list_display = ["alias", "task", "openness", "license_id", "commercial_use", "publisher"]
    list_filter = ["task", "openness", "commercial_use"]
    search_fields = ["alias", "display_name", "publisher"]
    inlines = [VersionInline]


@admin.register(OrganizationModelAccess)
class OrganizationModelAccessAdmin(AuditedModelAdmin):
    list_display = ["organization", "model"]


@admin.register(OrganizationPolicy)
class OrganizationPolicyAdmin(AuditedModelAdmin):
    list_display = ["organization", "allowed_openness", "require_commercial_use"]
