from __future__ import annotations

from rest_framework import serializers

from controlplane.api.base import StrictModelSerializer, StrictSerializer
from controlplane.catalog.models import (
    Model,
    ModelVersion,
    Openness,
    OrganizationModelAccess,
    OrganizationPolicy,
    Upstream,
)
from workers.safepath import UnsafePath, check_name


class ModelSerializer(StrictModelSerializer):
    default_version = serializers.SerializerMethodField()

    class Meta:
        model = Model
        fields = [
            "id",
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
            "default_version",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at", "default_version"]

    def get_default_version(self, model) -> str | None:
        for version in model.versions.all():
            if version.is_default:
                return version.version
        return None


class ModelUpdateSerializer(ModelSerializer):
    class Meta(ModelSerializer.Meta):
        read_only_fields = [*ModelSerializer.Meta.read_only_fields, "alias"]


class ModelVersionSerializer(StrictModelSerializer):
    engine_args = serializers.DictField(required=False)
    file_manifest = serializers.DictField(
        child=serializers.CharField(max_length=64), required=False
    )
    trust_remote_code_approved_by = serializers.SerializerMethodField(
        help_text="The platform administrator who approved trust_remote_code"
    )

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "version",
            "source_type",
            "hf_repo",
            "revision",
            "local_path",
            "external_url",
            "parameter_count",
            "dtype",
            "quantization",
            "context_length",
            "engine_args",
            "file_manifest",
            "trust_remote_code",
            "trust_remote_code_approved_by",
            "is_default",
            "created_at",
        ]
        read_only_fields = ["id", "created_at", "trust_remote_code_approved_by"]

    def get_trust_remote_code_approved_by(self, version) -> str | None:
        approver = version.trust_remote_code_approved_by
        return approver.get_username() if approver else None

    def validate_version(self, value: str) -> str:
        try:
            return check_name(value, "version")
        except UnsafePath as exc:
            raise serializers.ValidationError(str(exc)) from None


class ModelVersionUpdateSerializer(ModelVersionSerializer):
    class Meta(ModelVersionSerializer.Meta):
        read_only_fields = [*ModelVersionSerializer.Meta.read_only_fields, "version"]


class UpstreamSerializer(StrictModelSerializer):
    api_key = serializers.CharField(
        write_only=True, required=False, allow_blank=True, max_length=500
    )
    has_api_key = serializers.SerializerMethodField()

    class Meta:
        model = Upstream
        fields = [
            "id",
            "name",
            "base_url",
            "served_model_name",
            "enabled",
            "api_key",
            "has_api_key",
            "created_at",
        ]
        read_only_fields = ["id", "created_at", "has_api_key"]

    def get_has_api_key(self, upstream) -> bool:
        return bool(upstream.api_key_encrypted)


class UpstreamUpdateSerializer(UpstreamSerializer):
    class Meta(UpstreamSerializer.Meta):
        read_only_fields = [*UpstreamSerializer.Meta.read_only_fields, "name"]


class ModelAccessSerializer(StrictSerializer):
    id = serializers.IntegerField(read_only=True)
    model = serializers.SlugRelatedField(slug_field="alias", queryset=Model.objects.all())
    usable = serializers.SerializerMethodField(
        help_text="False when the organization's policy now refuses this model"
    )
    created_at = serializers.DateTimeField(read_only=True)

    def get_usable(self, access: OrganizationModelAccess) -> bool:
        policy = OrganizationPolicy.objects.filter(organization=access.organization_id).first()
        return policy is None or policy.refusal_reason(access.model) is None


class PolicySerializer(StrictModelSerializer):
    allowed_openness = serializers.ListField(
        child=serializers.ChoiceField(choices=Openness.choices), max_length=3
    )

    class Meta:
        model = OrganizationPolicy
        fields = ["allowed_openness", "require_commercial_use", "updated_at"]
        read_only_fields = ["updated_at"]
