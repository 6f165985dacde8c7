"""Fleet admin: pools and nodes change through ``fleet.services``; deployments are
deleted through it (created and changed through the API, which checks quotas and
specs); replicas and artifact fetches belong to the reconciler and are read-only."""

from django.contrib import admin

from controlplane.audit.admin_base import ServiceModelAdmin
from controlplane.fleet import services
from controlplane.fleet.models import ArtifactFetch, Deployment, Node, Pool, Replica


@admin.register(Pool)
class PoolAdmin(ServiceModelAdmin):
    list_display = ["name", "strategy", "org_gpu_quota"]
    fields = ["name", "description", "labels", "strategy", "org_gpu_quota"]
    create_only_fields = ("name",)

    def create_object(self, actor, data):
        return services.create_pool(actor=actor, **{k: data[k] for k in self.fields})

    def update_object(self, actor, obj, changes):
        services.update_pool(actor=actor, pool=obj, **changes)

    def delete_object(self, actor, obj):
        services.delete_pool(actor=actor, pool=obj)


@admin.register(Node)
class NodeAdmin(ServiceModelAdmin):
    list_display = ["name", "pool", "state", "cordoned", "last_heartbeat", "generation_applied"]
    list_filter = ["state", "pool"]
    fields = [
        "name",
        "pool",
        "address",
        "labels",
        "cordoned",
        "state",
        "inventory",
        "reported_labels",
        "last_heartbeat",
        "generation_applied",
        "generation_desired",
    ]
    readonly_fields = [
        "state",
        "inventory",
        "reported_labels",
        "last_heartbeat",
        "generation_applied",
        "generation_desired",
    ]
    create_only_fields = ("name",)

    def create_object(self, actor, data):
        node = services.create_node(
            actor=actor, **{k: data[k] for k in ("name", "pool", "address", "labels")}
        )
        if data.get("cordoned"):
            services.set_cordoned(actor=actor, node=node, cordoned=True)
        return node

    def update_object(self, actor, obj, changes):
        if "cordoned" in changes:
            services.set_cordoned(actor=actor, node=obj, cordoned=changes.pop("cordoned"))
        if changes:
            services.update_node(actor=actor, node=obj, **changes)

    def delete_object(self, actor, obj):
        services.delete_node(actor=actor, node=obj)


@admin.register(Deployment)
class DeploymentAdmin(ServiceModelAdmin):
    list_display = ["name", "organization", "model_version", "replicas", "pool", "generation"]

    def delete_object(self, actor, obj):
        services.delete_deployment(actor=actor, deployment=obj)


@admin.register(Replica)
class ReplicaAdmin(ServiceModelAdmin):
    list_display = ["id", "deployment", "node", "state", "gpu_indices", "port", "restarts"]
    list_filter = ["state"]
    exclude = ["api_key_encrypted"]


@admin.register(ArtifactFetch)
class ArtifactFetchAdmin(ServiceModelAdmin):
    list_display = ["model_version", "node", "state", "bytes_done", "bytes_total"]
