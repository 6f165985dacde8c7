from django.contrib import admin, messages

from controlplane.audit.admin_base import AuditedModelAdmin
from controlplane.tenancy import services
from controlplane.tenancy.actors import Actor
from controlplane.tenancy.models import ApiKey, Membership, Organization, Team, TeamMembership


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    readonly_fields = ["user", "role", "created_at"]
    can_delete = False


@admin.register(Organization)
class OrganizationAdmin(AuditedModelAdmin):
    list_display = ["slug", "name", "log_prompts", "created_at"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline]


@admin.register(Team)
class TeamAdmin(AuditedModelAdmin):
    list_display = ["slug", "name", "organization"]
    list_filter = ["organization"]


@admin.register(Membership)
class MembershipAdmin(AuditedModelAdmin):
    list_display = ["user", "organization", "role"]
    list_filter = ["role", "organization"]


@admin.register(TeamMembership)
class TeamMembershipAdmin(AuditedModelAdmin):
    list_display = ["user", "team"]


@admin.action(description="Revoke selected keys")
def revoke_keys(modeladmin, request, queryset):
    actor = Actor.for_user(request.user)
    for key in queryset:
        services.revoke_api_key(actor=actor, key=key)
    messages.success(request, f"Revoked {queryset.count()} key(s).")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are created through the API or console (the secret is shown once there);
    here they can be inspected and revoked."""

    list_display = ["name", "display_prefix", "organization", "user", "revoked_at", "expires_at"]
    list_filter = ["organization"]
    readonly_fields = [f.name for f in ApiKey._meta.fields]
    actions = [revoke_keys]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
