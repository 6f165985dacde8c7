from django.contrib import admin

from controlplane.audit.admin_base import AuditedModelAdmin
from controlplane.fleet.models import ArtifactFetch, Deployment, Node, Pool, Replica


@admin.register(Pool)
class PoolAdmin(AuditedModelAdmin):
    list_display = ["name", "strategy", "org_gpu_quota"]


@admin.register(Node)
class NodeAdmin(AuditedModelAdmin):
    list_display = ["name", "pool", "state", "cordoned", "last_heartbeat", "generation_applied"]
    list_filter = ["state", "pool"]
    readonly_fields = [
        "inventory",
        "reported_labels",
        "last_heartbeat",
        "generation_applied",
        "generation_desired",
    ]


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    """Read-only here: deployments change through the API (validation, quotas)."""

    list_display = ["name", "organization", "model_version", "replicas", "pool", "generation"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Replica)
class ReplicaAdmin(admin.ModelAdmin):
    list_display = ["id", "deployment", "node", "state", "gpu_indices", "port", "restarts"]
    list_filter = ["state"]
    exclude = ["api_key_encrypted"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(ArtifactFetch)
class ArtifactFetchAdmin(admin.ModelAdmin):
    list_display = ["model_version", "node", "state", "bytes_done", "bytes_total"]

    def has_add_permission(self, request):
        return False
