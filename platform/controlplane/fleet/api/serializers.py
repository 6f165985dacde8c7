from __future__ import annotations

from rest_framework import serializers

from controlplane.api.base import StrictModelSerializer, StrictSerializer
from controlplane.catalog.models import Dtype, Quantization
from controlplane.fleet.models import ArtifactFetch, Deployment, Node, Pool, Replica
from controlplane.tenancy.models import Organization


class _LabelValue(serializers.CharField):
    """A label value is a string; numbers are refused, not silently converted."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            raise serializers.ValidationError("Must be a string.")
        return super().to_internal_value(data)


def _labels_field(**kwargs):
    return serializers.DictField(
        child=_LabelValue(max_length=63, allow_blank=True), required=False, **kwargs
    )


class PoolSerializer(StrictModelSerializer):
    labels = _labels_field()
    nodes = serializers.SerializerMethodField()

    class Meta:
        model = Pool
        fields = [
            "id",
            "name",
            "description",
            "labels",
            "strategy",
            "org_gpu_quota",
            "nodes",
            "created_at",
        ]
        read_only_fields = ["id", "nodes", "created_at"]

    def get_nodes(self, pool) -> int:
        return pool.nodes.count()


class PoolUpdateSerializer(PoolSerializer):
    class Meta(PoolSerializer.Meta):
        read_only_fields = [*PoolSerializer.Meta.read_only_fields, "name"]


class NodeSerializer(StrictModelSerializer):
    pool = serializers.SlugRelatedField(slug_field="name", queryset=Pool.objects.all())
    labels = _labels_field()
    reported_labels = serializers.DictField(read_only=True)
    inventory = serializers.DictField(read_only=True)
    replicas = serializers.SerializerMethodField()

    class Meta:
        model = Node
        fields = [
            "id",
            "name",
            "pool",
            "address",
            "address_network",
            "labels",
            "reported_labels",
            "state",
            "cordoned",
            "last_heartbeat",
            "inventory",
            "agent_version",
            "generation_applied",
            "generation_desired",
            "replicas",
            "credential_issued_at",
            "refused_reports",
            "created_at",
        ]
        read_only_fields = [
            "id",
            "state",
            "cordoned",
            "last_heartbeat",
            "agent_version",
            "generation_applied",
            "generation_desired",
            "replicas",
            "credential_issued_at",
            "refused_reports",
            "created_at",
        ]
        extra_kwargs = {
            "address": {"help_text": "Where the gateway reaches the node's replicas; "
                        "reports never change it, unless inside address_network"},
            "address_network": {"help_text": "CIDR (e.g. the pod network of a Kubernetes "
                                "node) within which reports signed by this node may move "
                                "its address; empty: never"},
        }  # fmt: skip

    def get_replicas(self, node) -> int:
        return node.replicas.count()


class NodeRegisterSerializer(NodeSerializer):
    class Meta(NodeSerializer.Meta):
        extra_kwargs = {"address": {"required": True, "allow_blank": False}}


class NodeCredentialSerializer(NodeSerializer):
    """A node with its credential: the secret its agent signs reports with
    (``AGENT_NODE_SECRET``), shown only in this response."""

    credential = serializers.CharField(read_only=True)

    class Meta(NodeSerializer.Meta):
        fields = [*NodeSerializer.Meta.fields, "credential"]


class NodeUpdateSerializer(NodeSerializer):
    class Meta(NodeSerializer.Meta):
        read_only_fields = [*NodeSerializer.Meta.read_only_fields, "name"]


class _ModelAliasField(serializers.CharField):
    def get_attribute(self, instance):
        return instance.model_version.model.alias


class _VersionNameField(serializers.CharField):
    def get_attribute(self, instance):
        return instance.model_version.version


class DeploymentSerializer(StrictModelSerializer):
    model = _ModelAliasField(
        max_length=64, help_text="Alias of a catalog model the organization may use"
    )
    version = _VersionNameField(
        max_length=64, required=False, help_text="Catalog version (default: the default one)"
    )
    pool = serializers.SlugRelatedField(slug_field="name", queryset=Pool.objects.all())
    selector = _labels_field()
    engine_args = serializers.DictField(required=False)
    dtype = serializers.ChoiceField(choices=Dtype.choices, required=False, allow_blank=True)
    quantization = serializers.ChoiceField(
        choices=Quantization.choices, required=False, allow_blank=True
    )
    status = serializers.SerializerMethodField()

    class Meta:
        model = Deployment
        fields = [
            "id",
            "name",
            "model",
            "version",
            "replicas",
            "pool",
            "selector",
            "tensor_parallel_size",
            "max_model_len",
            "gpu_memory_fraction",
            "dtype",
            "quantization",
            "enable_lora",
            "engine_args",
            "min_replicas",
            "max_replicas",
            "scale_target",
            "scale_target_value",
            "scale_down_delay_seconds",
            "scaled_at",
            "spec_hash",
            "generation",
            "status",
            "created_at",
            "updated_at",
        ]
        read_only_fields = [
            "id",
            "scaled_at",
            "spec_hash",
            "generation",
            "status",
            "created_at",
            "updated_at",
        ]

    def get_status(self, deployment) -> dict[str, int]:
        counts: dict[str, int] = {"desired": deployment.replicas, "current": 0}
        for replica in deployment.replica_set.all():
            counts[replica.state] = counts.get(replica.state, 0) + 1
            if replica.spec_hash == deployment.spec_hash:
                counts["current"] += 1
        return counts


class DeploymentUpdateSerializer(DeploymentSerializer):
    model = _ModelAliasField(max_length=64, required=False)
    pool = serializers.SlugRelatedField(
        slug_field="name", queryset=Pool.objects.all(), required=False
    )

    class Meta(DeploymentSerializer.Meta):
        read_only_fields = [*DeploymentSerializer.Meta.read_only_fields, "name"]


_SHARING_HELP = (
    "Slugs of the organizations this platform deployment serves (ignored while "
    "shared_with_all is true)"
)


class PlatformDeploymentSerializer(DeploymentSerializer):
    """A platform deployment: the platform's capacity, shared with every organization
    (``shared_with_all``) or the listed ones (``shared_with``); shared with none, it
    serves nobody."""

    model = _ModelAliasField(max_length=64, help_text="Alias of a catalog model")
    shared_with = serializers.SlugRelatedField(
        slug_field="slug",
        queryset=Organization.objects.all(),
        many=True,
        required=False,
        help_text=_SHARING_HELP,
    )

    class Meta(DeploymentSerializer.Meta):
        fields = [
            *DeploymentSerializer.Meta.fields[:2],
            "shared_with_all",
            "shared_with",
            *DeploymentSerializer.Meta.fields[2:],
        ]


class PlatformDeploymentUpdateSerializer(PlatformDeploymentSerializer):
    model = _ModelAliasField(max_length=64, required=False)
    pool = serializers.SlugRelatedField(
        slug_field="name", queryset=Pool.objects.all(), required=False
    )

    class Meta(PlatformDeploymentSerializer.Meta):
        read_only_fields = [*DeploymentSerializer.Meta.read_only_fields, "name"]


class ReplicaSerializer(serializers.ModelSerializer):
    deployment = serializers.SlugRelatedField(slug_field="name", read_only=True)
    node = serializers.SlugRelatedField(slug_field="name", read_only=True)
    gpu_indices = serializers.ListField(child=serializers.IntegerField(), read_only=True)
    load = serializers.DictField(read_only=True)

    class Meta:
        model = Replica
        fields = [
            "id",
            "deployment",
            "node",
            "gpu_indices",
            "memory_mib",
            "port",
            "endpoint",
            "state",
            "restarts",
            "last_error",
            "spec_hash",
            "generation",
            "placement_reason",
            "load",
            "created_at",
            "state_changed_at",
        ]
        read_only_fields = fields


class ArtifactFetchSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model_version.model.alias", read_only=True)
    version = serializers.CharField(source="model_version.version", read_only=True)
    node = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = ArtifactFetch
        fields = [
            "id",
            "model",
            "version",
            "node",
            "target_path",
            "state",
            "bytes_done",
            "bytes_total",
            "files_done",
            "files_total",
            "error",
            "created_at",
            "finished_at",
        ]
        read_only_fields = fields


class ArtifactFetchCreateSerializer(StrictSerializer):
    model = serializers.CharField(max_length=64)
    version = serializers.CharField(max_length=64, required=False)
    node = serializers.SlugRelatedField(
        slug_field="name", queryset=Node.objects.all(), required=False, allow_null=True
    )
