from __future__ import annotations

import datetime as dt

from rest_framework import serializers

from controlplane.api.base import StrictModelSerializer
from controlplane.quotas import rollup
from controlplane.quotas.models import LIMIT_FIELDS, LimitPolicy, UsageRecord
from controlplane.quotas.summary import GROUPS, MAX_HOURS, MAX_RANGE
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


class UsageSummaryQuerySerializer(serializers.Serializer):
    """Query of ``usage/summary/``: whole UTC hours in [since, until), default the last
    7 days; ``since`` is rounded down and ``until`` up to the hour."""

    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)
    group_by = serializers.ChoiceField(choices=sorted(GROUPS), default="day")

    def validate(self, data):
        now = rollup.now_hour() + dt.timedelta(hours=1)
        try:
            until = data.get("until")
            until = (
                rollup.hour_of(until)
                + (
                    dt.timedelta(hours=1)
                    if until and until != rollup.hour_of(until)
                    else dt.timedelta()
                )
                if until
                else now
            )
            since = data.get("since")
            since = rollup.hour_of(since) if since else until - dt.timedelta(days=7)
        except OverflowError:
            raise serializers.ValidationError({"since": ["Date out of range."]}) from None
        if since >= until:
            raise serializers.ValidationError({"since": ["Must be before until."]})
        limit = MAX_RANGE
        if data["group_by"] == "hour":
            limit = dt.timedelta(hours=MAX_HOURS["hour"])
        if until - since > limit:
            raise serializers.ValidationError(
                {"until": [f"The range may span at most {limit.days} days for this grouping."]}
            )
        return {"since": since, "until": until, "group_by": data["group_by"]}


class UsageSummaryTotalsSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    errors_4xx = serializers.IntegerField()
    errors_5xx = serializers.IntegerField()
    error_rate = serializers.FloatField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    latency_ms_avg = serializers.FloatField(allow_null=True)
    latency_ms_p50 = serializers.FloatField(allow_null=True)
    latency_ms_p95 = serializers.FloatField(allow_null=True)
    ttft_ms_avg = serializers.FloatField(allow_null=True)
    ttft_ms_p50 = serializers.FloatField(allow_null=True)
    ttft_ms_p95 = serializers.FloatField(allow_null=True)


class UsageSummaryRowSerializer(UsageSummaryTotalsSerializer):
    group = serializers.CharField(allow_null=True)


class UsageSummarySerializer(serializers.Serializer):
    group_by = serializers.CharField()
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    results = UsageSummaryRowSerializer(many=True)
    totals = UsageSummaryTotalsSerializer()
