"""Who is acting: a user (console session), an API key (automation) or the system
(management commands, tasks). Service functions take ``actor=`` and the audit log
records it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from controlplane.tenancy.roles import RANK, Role, role_allows


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
        """A key acts inside its own organization only, never above its maker: with its
        user's current role there (none once the user is deactivated or has left), or,
        for a service key that belongs to no user, as an admin at most and no higher
        than whoever created it stands there now."""
        from controlplane.tenancy.models import Membership

        def current_role(user_id) -> str | None:
            return (
                Membership.objects.filter(user_id=user_id, organization_id=key.organization_id)
                .values_list("role", flat=True)
                .first()
            )

        role: str | None
        if key.user_id is not None:
            role = current_role(key.user_id) if key.user.is_active else None
        else:
            role = Role.ADMIN
            creator = key.created_by
            if creator is not None and not (creator.is_active and creator.is_superuser):
                made_by = current_role(creator.pk) if creator.is_active else None
                if made_by is None:
                    role = None
                elif RANK[Role(made_by)] < RANK[Role.ADMIN]:
                    role = made_by
        roles = {key.organization_id: role} if role else {}
        return cls(user=key.user if key.user_id else None, api_key=key, roles=roles)

    @property
    def is_service_key(self) -> bool:
        """A key that belongs to no user (automation)."""
        return self.api_key is not None and self.api_key.user_id is None

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
