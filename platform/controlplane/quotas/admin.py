from django.contrib import admin

from controlplane.audit.admin_base import AuditedModelAdmin
from controlplane.quotas.models import LimitPolicy, UsageRecord


@admin.register(LimitPolicy)
class LimitPolicyAdmin(AuditedModelAdmin):
    list_display = ["__str__", "rpm", "tpm", "concurrency", "daily_tokens", "monthly_tokens"]


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    list_display = ["request_id", "occurred_at", "model", "status", "prompt_tokens"]
    list_filter = ["model", "status"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
