"""Who is acting: a user (console session), an API key (automation) or the system
(management commands, tasks). Service functions take ``actor=`` and the audit log
records it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from controlplane.tenancy.roles import Role, role_allows


@dataclass
class Actor:
    user: Any = None  # django User or None
    api_key: Any = None  # tenancy.ApiKey or None
    system_label: str | None = None
    roles: dict[uuid.UUID, str] = field(default_factory=dict)

    @classmethod
    def for_user(cls, user) -> Actor:
        from controlplane.tenancy.models import Membership

        roles = dict(Membership.objects.filter(user=user).values_list("organization_id", "role"))
        return cls(user=user, roles=roles)

    @classmethod
    def for_key(cls, key) -> Actor:
        """A key acts inside its own organization only: with its user's current role
        there, or as an admin for a service key that belongs to no user."""
        from controlplane.tenancy.models import Membership

        if key.user_id is None:
            role: str | None = Role.ADMIN
        else:
            role = (
                Membership.objects.filter(user_id=key.user_id, organization_id=key.organization_id)
                .values_list("role", flat=True)
                .first()
            )
        roles = {key.organization_id: role} if role else {}
        return cls(user=key.user if key.user_id else None, api_key=key, roles=roles)

    @classmethod
    def system(cls, label: str = "system") -> Actor:
        return cls(system_label=label)

    @property
    def is_platform_admin(self) -> bool:
        if self.system_label is not None:
            return True
        return (
            self.api_key is None
            and self.user is not None
            and self.user.is_active
            and self.user.is_superuser
        )

    def role_in(self, org_id) -> str | None:
        if self.is_platform_admin:
            return Role.OWNER
        return self.roles.get(org_id)

    def can(self, action: str, org_id) -> bool:
        return self.is_platform_admin or role_allows(self.roles.get(org_id), action)

    def org_ids_allowing(self, action: str) -> list[uuid.UUID]:
        return [org_id for org_id, role in self.roles.items() if role_allows(role, action)]

    def audit_identity(self) -> tuple[str, str, str]:
        if self.system_label is not None:
            return "system", "", self.system_label
        if self.api_key is not None:
            return "key", str(self.api_key.pk), self.api_key.display_prefix
        return "user", str(self.user.pk), self.user.get_username()
