"""Console pages: Platform administrator pages under /console/platform/.

Only platform administrators (``user.is_superuser``) see these pages; anyone else
signed in gets a 404, so the pages do not reveal that they exist. Writes go through
the services with ``Actor.for_user`` like every console page; a service's
``ValidationError`` comes back on the form (400), never as a 500. One module per
area: ``organizations``, ``catalog``, ``fleet``, ``users`` (with the public
set-password page) and ``audit``.
"""

from __future__ import annotations

from django.urls import path

from controlplane.console.platform import audit, catalog, fleet, organizations, users
from controlplane.console.platform.base import PREFIX

urlpatterns = [
    path(PREFIX, organizations.index, name="platform"),
    path(PREFIX + "organizations/", organizations.organizations, name="platform-organizations"),
    path(
        PREFIX + "organizations/new/",
        organizations.organization_create,
        name="platform-organization-create",
    ),
    path(
        PREFIX + "organizations/<str:slug>/delete/",
        organizations.organization_delete,
        name="platform-organization-delete",
    ),
    path(PREFIX + "catalog/", catalog.catalog, name="platform-catalog"),
    path(PREFIX + "catalog/new/", catalog.model_create, name="platform-model-create"),
    path(PREFIX + "catalog/models/<str:alias>/", catalog.model_detail, name="platform-model"),
    path(
        PREFIX + "catalog/models/<str:alias>/edit/", catalog.model_edit, name="platform-model-edit"
    ),
    path(
        PREFIX + "catalog/models/<str:alias>/versions/new/",
        catalog.version_create,
        name="platform-version-create",
    ),
    path(
        PREFIX + "catalog/models/<str:alias>/versions/<str:version_id>/edit/",
        catalog.version_edit,
        name="platform-version-edit",
    ),
    path(
        PREFIX + "catalog/models/<str:alias>/versions/<str:version_id>/remote-code/",
        catalog.version_remote_code,
        name="platform-version-remote-code",
    ),
    path(
        PREFIX + "catalog/models/<str:alias>/versions/<str:version_id>/fetch/",
        catalog.version_fetch,
        name="platform-version-fetch",
    ),
    path(
        PREFIX + "catalog/models/<str:alias>/upstreams/new/",
        catalog.upstream_create,
        name="platform-upstream-create",
    ),
    path(
        PREFIX + "catalog/models/<str:alias>/upstreams/<str:upstream_id>/edit/",
        catalog.upstream_edit,
        name="platform-upstream-edit",
    ),
    path(PREFIX + "fleet/", fleet.fleet, name="platform-fleet"),
    path(PREFIX + "fleet/nodes/<str:name>/cordon/", fleet.node_cordon, name="platform-node-cordon"),
    path(PREFIX + "users/", users.users, name="platform-users"),
    path(PREFIX + "users/new/", users.user_create, name="platform-user-create"),
    path(PREFIX + "users/<str:user_id>/link/", users.user_link, name="platform-user-link"),
    path(
        PREFIX + "users/<str:user_id>/deactivate/",
        users.user_deactivate,
        name="platform-user-deactivate",
    ),
    path(PREFIX + "audit/", audit.audit, name="platform-audit"),
    path(PREFIX + "audit/verify/", audit.audit_verify, name="platform-audit-verify"),
    path(
        PREFIX + "audit/verify/result/",
        audit.audit_verify_result,
        name="platform-audit-verify-result",
    ),
    path("set-password/<str:uidb64>/<str:token>/", users.set_password, name="set-password"),
]
