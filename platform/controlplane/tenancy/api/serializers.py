from __future__ import annotations

from django.contrib.auth import get_user_model
from rest_framework import serializers

from controlplane.api.base import StrictModelSerializer, StrictSerializer
from controlplane.tenancy.models import ApiKey, Membership, Organization, Team
from controlplane.tenancy.roles import Role
from gateway.contract import SCOPES

User = get_user_model()


class OrganizationSerializer(StrictModelSerializer):
    role = serializers.SerializerMethodField(help_text="Your role in this organization")

    class Meta:
        model = Organization
        fields = ["id", "slug", "name", "log_prompts", "created_at", "role"]
        read_only_fields = ["id", "created_at", "role"]

    def get_role(self, organization) -> str | None:
        actor = self.context.get("actor")
        return actor.role_in(organization.pk) if actor else None


class OrganizationCreateSerializer(OrganizationSerializer):
    owner = serializers.SlugRelatedField(
        slug_field="username",
        queryset=User.objects.filter(is_active=True),
        required=False,
        write_only=True,
        help_text="Username of the first owner",
    )

    class Meta(OrganizationSerializer.Meta):
        fields = [*OrganizationSerializer.Meta.fields, "owner"]


class OrganizationUpdateSerializer(OrganizationSerializer):
    class Meta(OrganizationSerializer.Meta):
        read_only_fields = ["id", "slug", "created_at", "role"]


class TeamSerializer(StrictModelSerializer):
    members = serializers.SerializerMethodField()

    class Meta:
        model = Team
        fields = ["id", "slug", "name", "created_at", "members"]
        read_only_fields = ["id", "created_at", "members"]

    def get_members(self, team) -> list[str]:
        return [tm.user.get_username() for tm in team.memberships.select_related("user")]


class TeamUpdateSerializer(TeamSerializer):
    class Meta(TeamSerializer.Meta):
        read_only_fields = ["id", "slug", "created_at", "members"]


class TeamMemberSerializer(StrictSerializer):
    id = serializers.IntegerField(read_only=True)
    team = serializers.UUIDField(source="team_id")
    username = serializers.CharField(source="user.username", max_length=150)
    created_at = serializers.DateTimeField(read_only=True)


class MembershipSerializer(StrictModelSerializer):
    username = serializers.CharField(source="user.username", read_only=True)
    email = serializers.CharField(source="user.email", read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "username", "email", "role", "created_at"]
        read_only_fields = ["id", "username", "email", "created_at"]


class MembershipCreateSerializer(StrictSerializer):
    username = serializers.RegexField(r"^[\w.@+-]+$", max_length=150)
    email = serializers.EmailField(required=False, allow_blank=True, max_length=254)
    role = serializers.ChoiceField(choices=Role.choices)


class ApiKeySerializer(StrictModelSerializer):
    prefix = serializers.CharField(source="display_prefix", read_only=True)
    team = serializers.PrimaryKeyRelatedField(
        queryset=Team.objects.none(), required=False, allow_null=True
    )
    user = serializers.SlugRelatedField(
        slug_field="username", queryset=User.objects.none(), required=False, allow_null=True
    )
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=SCOPES), min_length=1, max_length=len(SCOPES)
    )
    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, max_length=500
    )
    is_active = serializers.SerializerMethodField()

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "prefix",
            "team",
            "user",
            "scopes",
            "allowed_models",
            "expires_at",
            "revoked_at",
            "last_used_at",
            "created_at",
            "is_active",
        ]
        read_only_fields = ["id", "prefix", "revoked_at", "last_used_at", "created_at"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        organization = self.context.get("organization")
        if organization is not None:
            # Ids from another organization do not resolve: a 400 naming the field.
            self.fields["team"].queryset = Team.objects.filter(organization=organization)
            self.fields["user"].queryset = User.objects.filter(
                memberships__organization=organization
            )

    def get_is_active(self, key) -> bool:
        return key.is_active()


class ApiKeyUpdateSerializer(ApiKeySerializer):
    class Meta(ApiKeySerializer.Meta):
        read_only_fields = [
            *ApiKeySerializer.Meta.read_only_fields,
            "team",
            "user",
            "scopes",
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in ("team", "user", "scopes"):
            self.fields[name].read_only = True


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(
        read_only=True, help_text="The full key. It is shown only in this response."
    )

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
