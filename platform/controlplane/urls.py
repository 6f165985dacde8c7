from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from controlplane.api.errors import json_error_view
from controlplane.console.views import root as console_root


def healthz(request):
    return JsonResponse({"status": "ok"})


def _platform_administrators_only(request) -> bool:
    """The Django admin lists every organization's rows, so it is for platform
    administrators only; organization roles work through the REST API, which scopes."""
    return request.user.is_active and request.user.is_superuser


admin.site.has_permission = _platform_administrators_only

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/v1/", include("controlplane.api.urls")),
    path("admin/", admin.site.urls),
    path("console/", include("controlplane.console.urls")),
    path("", console_root, name="root"),
]

handler404 = json_error_view(404, "Not found.")
handler500 = json_error_view(500, "Internal error; the request id names it in the server log.")
