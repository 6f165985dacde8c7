"""Roles inside an organization and what each may do.

One table decides every permission, so the API, the console and the tests read the
same rules. Platform administrators (``User.is_superuser``) may do everything.
"""

from __future__ import annotations

from django.db import models


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer"
    MEMBER = "member", "Member"
    ADMIN = "admin", "Admin"
    OWNER = "owner", "Owner"


RANK = {Role.VIEWER: 0, Role.MEMBER: 1, Role.ADMIN: 2, Role.OWNER: 3}

# action -> the least role that may do it
REQUIRED_ROLE: dict[str, Role] = {
    "organization.view": Role.VIEWER,
    "organization.change": Role.ADMIN,
    "organization.delete": Role.OWNER,
    "team.view": Role.VIEWER,
    "team.change": Role.ADMIN,
    "member.view": Role.VIEWER,
    "member.change": Role.ADMIN,
    "apikey.view": Role.VIEWER,
    "apikey.create": Role.MEMBER,  # members create keys for themselves
    "apikey.manage": Role.ADMIN,  # revoke or edit anyone's key, create team/service keys
    "model_access.view": Role.VIEWER,
    "model_access.change": Role.ADMIN,
    "policy.view": Role.VIEWER,
    "policy.change": Role.ADMIN,
    "limits.view": Role.VIEWER,
    "limits.change": Role.ADMIN,
    "usage.view": Role.MEMBER,
    "audit.view": Role.ADMIN,
    "deployment.view": Role.VIEWER,  # deployments and their replicas
    "deployment.change": Role.ADMIN,  # create, scale, update, delete
}


def role_allows(role: str | None, action: str) -> bool:
    if role is None:
        return False
    return RANK[Role(role)] >= RANK[REQUIRED_ROLE[action]]
