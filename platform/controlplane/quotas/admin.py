"""Quotas admin: limit policies change through ``quotas.services``; usage is read-only."""

from django.contrib import admin

from controlplane.audit.admin_base import ServiceModelAdmin
from controlplane.quotas import services
from controlplane.quotas.models import LIMIT_FIELDS, LimitPolicy, UsageRecord


@admin.register(LimitPolicy)
class LimitPolicyAdmin(ServiceModelAdmin):
    list_display = [
        "__str__",
        "model",
        "rpm",
        "tpm",
        "concurrency",
        "daily_tokens",
        "monthly_tokens",
    ]
    list_filter = ["model"]
    fields = ["organization", "team", "api_key", "model", *LIMIT_FIELDS, "fail_mode"]
    create_only_fields = ("organization", "team", "api_key", "model")

    def create_object(self, actor, data):
        return services.create_limit_policy(
            actor=actor,
            organization=data["organization"],
            team=data.get("team"),
            api_key=data.get("api_key"),
            model=data.get("model") or "",
            fail_mode=data.get("fail_mode") or "",
            **{name: data.get(name) for name in LIMIT_FIELDS},
        )

    def update_object(self, actor, obj, changes):
        services.update_limit_policy(actor=actor, policy=obj, **changes)

    def delete_object(self, actor, obj):
        services.delete_limit_policy(actor=actor, policy=obj)


@admin.register(UsageRecord)
class UsageRecordAdmin(ServiceModelAdmin):
    """The usage ledger is written by the gateway's usage stream only."""

    list_display = ["request_id", "occurred_at", "model", "status", "prompt_tokens"]
    list_filter = ["model", "status"]
