from __future__ import annotations

from rest_framework import serializers

from controlplane.api.base import StrictModelSerializer
from controlplane.quotas.models import LIMIT_FIELDS, LimitPolicy, UsageRecord
from controlplane.tenancy.models import ApiKey, Team


class LimitPolicySerializer(StrictModelSerializer):
    subject = serializers.CharField(read_only=True)
    team = serializers.PrimaryKeyRelatedField(
        queryset=Team.objects.none(), required=False, allow_null=True
    )
    api_key = serializers.PrimaryKeyRelatedField(
        queryset=ApiKey.objects.none(), required=False, allow_null=True
    )

    class Meta:
        model = LimitPolicy
        fields = [
            "id",
            "subject",
            "team",
            "api_key",
            "model",
            *LIMIT_FIELDS,
            "fail_mode",
            "updated_at",
        ]
        read_only_fields = ["id", "subject", "updated_at"]
        extra_kwargs = {name: {"max_value": 10**15} for name in LIMIT_FIELDS}
        # One policy per subject and model: the service checks it and names the field
        # (DRF's validators derived from the conditional constraints would demand fields).
        validators: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        organization = self.context.get("organization")
        if organization is not None:
            self.fields["team"].queryset = Team.objects.filter(organization=organization)
            self.fields["api_key"].queryset = ApiKey.objects.filter(organization=organization)


class LimitPolicyUpdateSerializer(LimitPolicySerializer):
    class Meta(LimitPolicySerializer.Meta):
        read_only_fields = [
            *LimitPolicySerializer.Meta.read_only_fields,
            "team",
            "api_key",
            "model",
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].read_only = True
        self.fields["api_key"].read_only = True
        self.fields["model"].read_only = True


class UsageRecordSerializer(serializers.ModelSerializer):
    total_tokens = serializers.IntegerField(read_only=True)

    class Meta:
        model = UsageRecord
        fields = [
            "request_id",
            "team_id",
            "api_key_id",
            "user_id",
            "model",
            "endpoint",
            "replica",
            "owner_id",
            "status",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "latency_ms",
            "ttft_ms",
            "error",
            "occurred_at",
        ]
        read_only_fields = fields
