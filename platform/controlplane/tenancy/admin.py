"""The Django admin for organizations, people and keys: every write is a service call
(see ``controlplane.audit.admin_base``), so the admin obeys the same rules as the API
and leaves the same audit trail."""

from contextlib import contextmanager
from contextvars import ContextVar

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.forms import AdminPasswordChangeForm
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from controlplane.audit.admin_base import (
    ReadOnlyInline,
    ServiceModelAdmin,
    ServiceRefused,
    refusal_message,
)
from controlplane.tenancy import services
from controlplane.tenancy.actors import Actor
from controlplane.tenancy.models import ApiKey, Membership, Organization, Team, TeamMembership

User = get_user_model()


class MembershipInline(ReadOnlyInline):
    model = Membership
    fields = readonly_fields = ["user", "role", "created_at"]


@admin.register(Organization)
class OrganizationAdmin(ServiceModelAdmin):
    list_display = ["slug", "name", "log_prompts", "created_at"]
    search_fields = ["slug", "name"]
    fields = ["slug", "name", "log_prompts"]
    create_only_fields = ("slug",)
    inlines = [MembershipInline]

    def create_object(self, actor, data):
        return services.create_organization(
            actor=actor, slug=data["slug"], name=data["name"], log_prompts=data["log_prompts"]
        )

    def update_object(self, actor, obj, changes):
        services.update_organization(actor=actor, organization=obj, **changes)

    def delete_object(self, actor, obj):
        services.delete_organization(actor=actor, organization=obj)


@admin.register(Team)
class TeamAdmin(ServiceModelAdmin):
    list_display = ["slug", "name", "organization"]
    list_filter = ["organization"]
    fields = ["organization", "slug", "name"]
    create_only_fields = ("organization", "slug")

    def create_object(self, actor, data):
        return services.create_team(
            actor=actor, organization=data["organization"], slug=data["slug"], name=data["name"]
        )

    def update_object(self, actor, obj, changes):
        services.update_team(actor=actor, team=obj, **changes)

    def delete_object(self, actor, obj):
        services.delete_team(actor=actor, team=obj)


@admin.register(Membership)
class MembershipAdmin(ServiceModelAdmin):
    list_display = ["user", "organization", "role"]
    list_filter = ["role", "organization"]
    fields = ["user", "organization", "role"]
    create_only_fields = ("user", "organization")

    def create_object(self, actor, data):
        return services.add_member(
            actor=actor,
            organization=data["organization"],
            username=data["user"].get_username(),
            role=data["role"],
        )

    def update_object(self, actor, obj, changes):
        services.change_member_role(actor=actor, membership=obj, role=changes["role"])

    def delete_object(self, actor, obj):
        services.remove_member(actor=actor, membership=obj)


@admin.register(TeamMembership)
class TeamMembershipAdmin(ServiceModelAdmin):
    list_display = ["user", "team"]
    fields = ["team", "user"]

    def create_object(self, actor, data):
        return services.add_team_member(actor=actor, team=data["team"], user=data["user"])

    def delete_object(self, actor, obj):
        services.remove_team_member(actor=actor, team_membership=obj)


@admin.action(description="Revoke selected keys")
def revoke_keys(modeladmin, request, queryset):
    actor = Actor.for_user(request.user)
    with transaction.atomic():
        for key in queryset:
            modeladmin._call(lambda key=key: services.revoke_api_key(actor=actor, key=key))
    modeladmin.message_user(request, f"Revoked {queryset.count()} key(s).", messages.SUCCESS)


revoke_keys.allowed_permissions = ("view",)


@admin.register(ApiKey)
class ApiKeyAdmin(ServiceModelAdmin):
    """Keys are created through the API or console (the secret is shown once there);
    here they can be inspected and revoked."""

    list_display = ["name", "display_prefix", "organization", "user", "revoked_at", "expires_at"]
    list_filter = ["organization"]
    readonly_fields = [f.name for f in ApiKey._meta.fields]
    actions = [revoke_keys]


# --------------------------------------------------------------------------- users
_admin_request: ContextVar = ContextVar("admin_request", default=None)


@contextmanager
def _acting(request):
    token = _admin_request.set(request)
    try:
        yield
    finally:
        _admin_request.reset(token)


class ServicePasswordChangeForm(AdminPasswordChangeForm):
    """Sets the password through ``services.set_user_password`` (audited)."""

    def save(self, commit=True):
        request = _admin_request.get()
        if request is None:  # pragma: no cover - only the admin view uses this form
            raise RuntimeError("the password form is for the admin's password view")
        usable = self.cleaned_data.get("set_usable_password", True)
        password = self.cleaned_data.get("password1") if usable else None
        try:
            services.set_user_password(
                actor=Actor.for_user(request.user), user=self.user, password=password
            )
        except (PermissionDenied, ValidationError) as exc:
            raise ServiceRefused(refusal_message(exc)) from exc
        return self.user


@admin.action(description="Deactivate selected users (revokes their keys)")
def deactivate_users(modeladmin, request, queryset):
    actor = Actor.for_user(request.user)
    revoked = 0
    with transaction.atomic():
        for user in queryset:
            revoked += len(
                modeladmin._call(lambda user=user: services.deactivate_user(actor=actor, user=user))
            )
    modeladmin.message_user(
        request,
        f"Deactivated {queryset.count()} user(s); revoked {revoked} key(s).",
        messages.SUCCESS,
    )


admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(User)
class PlatformUserAdmin(ServiceModelAdmin, UserAdmin):
    """Accounts change through the user services: platform administrator and staff
    flags are audited, deactivation revokes keys, users are deactivated, not deleted."""

    fieldsets = (
        (None, {"fields": ("username", "password")}),
        ("Personal info", {"fields": ("first_name", "last_name", "email")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser")}),
        ("Read-only", {"fields": ("groups", "user_permissions", "last_login", "date_joined")}),
    )
    readonly_fields = ["groups", "user_permissions", "last_login", "date_joined"]
    change_password_form = ServicePasswordChangeForm
    actions = [deactivate_users]

    def create_object(self, actor, data):
        usable = data.get("set_usable_password", True)
        return services.create_user(
            actor=actor,
            username=data["username"],
            password=data.get("password1") if usable else None,
        )

    def update_object(self, actor, obj, changes):
        services.update_user(
            actor=actor, user=obj, **{k: v for k, v in changes.items() if k != "password"}
        )

    def user_change_password(self, request, id, form_url=""):
        try:
            with _acting(request):
                return super().user_change_password(request, id, form_url)
        except ServiceRefused as exc:
            return self._refused(request, exc, request.get_full_path())


@admin.register(Group)
class ReadOnlyGroupAdmin(ServiceModelAdmin, GroupAdmin):
    """Groups grant nothing on this platform (roles do); shown, never changed here."""
