"""Django admin that writes through the service functions, like every other entry point.

The admin is one more client of ``services.py``: a subclass says which service creates,
changes and deletes its model (``create_object``, ``update_object``, ``delete_object``),
and whatever it leaves out is read-only here. The service checks the signed-in user's
permission (``Actor.for_user``), applies its rules, writes the audit event and
republishes the gateway snapshot. When a service refuses, the admin's transaction rolls
back (the admin log entry included) and the page shows the service's message.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import HttpResponseRedirect

from controlplane.tenancy.actors import Actor


class ServiceRefused(Exception):
    """A service function said no; carries its message to the admin page."""


def refusal_message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        if hasattr(exc, "error_dict"):
            return "; ".join(
                f"{field}: {' '.join(msgs)}" if field != "__all__" else " ".join(msgs)
                for field, msgs in exc.message_dict.items()
            )
        return " ".join(exc.messages)
    return str(exc) or "Not allowed."


def _overrides(admin_obj, name: str) -> bool:
    return getattr(type(admin_obj), name) is not getattr(ServiceModelAdmin, name)


class ServiceModelAdmin(admin.ModelAdmin):
    """A ModelAdmin whose writes are service calls; read-only where a subclass names none."""

    #: Fields that may be set when an object is added but not changed afterwards.
    create_only_fields: tuple[str, ...] = ()

    # --------------------------------------------------------------- what subclasses name
    def create_object(self, actor: Actor, data: dict[str, Any]):
        """Create through a service from the form's cleaned data; return the object."""
        raise NotImplementedError

    def update_object(self, actor: Actor, obj, changes: dict[str, Any]) -> None:
        """Change ``obj`` (as stored) through a service; ``changes`` holds changed fields."""
        raise NotImplementedError

    def delete_object(self, actor: Actor, obj) -> None:
        raise NotImplementedError

    # --------------------------------------------------------------- permissions
    def has_add_permission(self, request, *args) -> bool:
        return _overrides(self, "create_object") and super().has_add_permission(request, *args)

    def has_change_permission(self, request, obj=None) -> bool:
        return _overrides(self, "update_object") and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return _overrides(self, "delete_object") and super().has_delete_permission(request, obj)

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            fields += [name for name in self.create_only_fields if name not in fields]
        return fields

    # --------------------------------------------------------------- writes
    @staticmethod
    def actor(request) -> Actor:
        return Actor.for_user(request.user)

    def _call(self, func, *args) -> Any:
        try:
            return func(*args)
        except (ValidationError, PermissionDenied) as exc:
            raise ServiceRefused(refusal_message(exc)) from exc

    def save_model(self, request, obj, form, change):
        if change:
            stored = type(obj).objects.get(pk=obj.pk)
            changes = {name: form.cleaned_data[name] for name in form.changed_data}
            if changes:
                self._call(self.update_object, self.actor(request), stored, changes)
        else:
            created = self._call(self.create_object, self.actor(request), form.cleaned_data)
            obj.pk = created.pk
            obj._state.adding = False
        obj.refresh_from_db()

    def save_related(self, request, form, formsets, change):
        """Nothing to save: inlines are read-only and relations change through services."""
        for formset in formsets:  # what the admin's change message reads
            formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []

    def delete_model(self, request, obj):
        self._call(self.delete_object, self.actor(request), obj)

    def get_deleted_objects(self, objs, request):
        # What a deletion takes with it is the service's call (it refuses or cascades),
        # not the per-model delete permission of the rows it cascades to.
        deleted, counts, _perms_needed, protected = super().get_deleted_objects(objs, request)
        return deleted, counts, set(), protected

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for obj in queryset:
                self.delete_model(request, obj)

    # --------------------------------------------------------------- refusals
    def _refused(self, request, exc: ServiceRefused, to: str):
        self.message_user(request, f"Not changed: {exc}", messages.ERROR)
        return HttpResponseRedirect(to)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ServiceRefused as exc:
            return self._refused(request, exc, request.get_full_path())

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except ServiceRefused as exc:
            return self._refused(request, exc, request.path.rsplit("delete/", 1)[0] + "change/")

    def changelist_view(self, request, extra_context=None):
        try:
            return super().changelist_view(request, extra_context)
        except ServiceRefused as exc:
            return self._refused(request, exc, request.get_full_path())


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
