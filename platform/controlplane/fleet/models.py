"""The fleet: pools of GPU nodes, deployments (what an organization wants served) and
replicas (one vLLM server each, placed on a node's GPUs by the reconciler)."""

from __future__ import annotations

import ipaddress
import uuid

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from controlplane.catalog.models import Dtype, ModelVersion, Quantization, alias_validator
from controlplane.tenancy.models import Organization, slug_validator
from controlplane.tenancy.scoping import ScopedQuerySet


class Strategy(models.TextChoices):
    BINPACK = "binpack", "Bin-pack (fill the fullest GPUs)"
    SPREAD = "spread", "Spread (emptiest node first)"


class Pool(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=64, unique=True, validators=[alias_validator])
    description = models.CharField(max_length=500, blank=True)
    labels = models.JSONField(default=dict, blank=True)
    strategy = models.CharField(max_length=8, choices=Strategy.choices, default=Strategy.BINPACK)
    org_gpu_quota = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(100_000)],
        help_text="GPUs one organization's deployments may hold in this pool (empty: no limit)",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    # Platform-wide infrastructure: only platform administrators see pools.
    scope_org_path = "deployments__organization"
    objects = ScopedQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class NodeState(models.TextChoices):
    READY = "ready", "Ready"
    LOST = "lost", "Lost"
    CORDONED = "cordoned", "Cordoned"


def validate_address_network(value: str) -> None:
    """A CIDR network (``10.244.3.0/24``); a lone address is a /32 (or /128)."""
    if not value:
        return
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValidationError(f"{value!r} is not a CIDR network such as 10.244.3.0/24.") from None


def address_in_network(address: str, network: str) -> bool:
    if not network:
        return False
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(network, strict=False)
    except ValueError:
        return False


class Node(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=64, unique=True, validators=[alias_validator])
    pool = models.ForeignKey(Pool, on_delete=models.PROTECT, related_name="nodes")
    address = models.CharField(max_length=255, blank=True)
    # Where a pod network gives the agent a new address on each restart (Kubernetes):
    # a report signed with the node's own secret may move ``address`` within this CIDR.
    # Empty: reports never move the address.
    address_network = models.CharField(
        max_length=64, blank=True, validators=[validate_address_network]
    )
    labels = models.JSONField(default=dict, blank=True, help_text="Set by administrators")
    reported_labels = models.JSONField(default=dict, blank=True, help_text="Set by the agent")
    state = models.CharField(max_length=8, choices=NodeState.choices, default=NodeState.LOST)
    cordoned = models.BooleanField(default=False)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    last_report_sent_at = models.FloatField(default=0, help_text="sent_at of the newest report")
    inventory = models.JSONField(default=dict, blank=True)
    agent_version = models.CharField(max_length=64, blank=True)
    generation_applied = models.BigIntegerField(default=0)
    generation_desired = models.BigIntegerField(default=0)
    desired_hash = models.CharField(max_length=64, blank=True)
    # The secret the agent signs its reports with (HMAC), encrypted at rest like the
    # replica keys (catalog/secrets.py): verifying an HMAC needs the secret itself.
    credential_encrypted = models.TextField(blank=True, editable=False)
    credential_issued_at = models.DateTimeField(null=True, blank=True, editable=False)
    refused_reports = models.PositiveBigIntegerField(
        default=0, editable=False, help_text="Reports refused (bad signature, address, ...)"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    scope_org_path = "replicas__deployment__organization"
    objects = ScopedQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def effective_labels(self) -> dict:
        return {**self.pool.labels, **self.reported_labels, **self.labels}

    def refresh_state(self) -> None:
        if self.state != NodeState.LOST:
            self.state = NodeState.CORDONED if self.cordoned else NodeState.READY


class ScaleTarget(models.TextChoices):
    WAITING = "waiting", "Requests waiting per replica"
    KV_CACHE = "kv_cache", "KV-cache usage"


class Deployment(models.Model):
    """Capacity belongs to its owner. An organization's deployment serves only that
    organization. A platform deployment (``organization`` empty, created by platform
    administrators) serves the organizations it is shared with: every one when
    ``shared_with_all``, else those in ``shared_with``; shared with none, it serves
    nobody."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(
        Organization,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="deployments",
        help_text="The owner; empty for a platform deployment",
    )
    shared_with_all = models.BooleanField(
        default=False, help_text="Platform deployment usable by every organization"
    )
    shared_with = models.ManyToManyField(
        Organization,
        blank=True,
        related_name="shared_deployments",
        help_text="Organizations a platform deployment serves (when not shared with all)",
    )
    name = models.CharField(max_length=50, validators=[slug_validator])
    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, related_name="deployments"
    )
    replicas = models.PositiveIntegerField(default=1, validators=[MaxValueValidator(64)])
    # Autoscaling (on when min_replicas is set): the reconciler moves ``replicas``
    # inside [min_replicas, max_replicas] from the replicas' load reports.
    min_replicas = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(64)],
        help_text="Autoscale from this many replicas (0: scale to zero when idle)",
    )
    max_replicas = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(64)],
        help_text="Autoscale up to this many replicas",
    )
    scale_target = models.CharField(
        max_length=8,
        choices=ScaleTarget.choices,
        default=ScaleTarget.WAITING,
        help_text="What the autoscaler holds at its target value",
    )
    scale_target_value = models.FloatField(
        default=2.0,
        validators=[MinValueValidator(0.01), MaxValueValidator(1000.0)],
        help_text="Requests waiting per replica, or KV-cache usage (0..1), to scale up above",
    )
    scale_down_delay_seconds = models.PositiveIntegerField(
        default=300,
        validators=[MinValueValidator(1), MaxValueValidator(86_400)],
        help_text="Seconds without load above the target (and since the last change) "
        "before scaling down",
    )
    scaled_at = models.DateTimeField(null=True, blank=True, editable=False)
    busy_at = models.DateTimeField(null=True, blank=True, editable=False)
    active_at = models.DateTimeField(null=True, blank=True, editable=False)
    pool = models.ForeignKey(Pool, on_delete=models.PROTECT, related_name="deployments")
    selector = models.JSONField(default=dict, blank=True)
    tensor_parallel_size = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(16)]
    )
    max_model_len = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(16), MaxValueValidator(10_000_000)]
    )
    gpu_memory_fraction = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.01), MaxValueValidator(1.0)],
        help_text="Reserve this fraction of each GPU instead of the estimate",
    )
    dtype = models.CharField(max_length=10, choices=Dtype.choices, blank=True)
    quantization = models.CharField(max_length=14, choices=Quantization.choices, blank=True)
    enable_lora = models.BooleanField(default=False)
    engine_args = models.JSONField(default=dict, blank=True)
    spec_hash = models.CharField(max_length=64, editable=False)
    generation = models.PositiveBigIntegerField(default=1, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    scope_org_path = "organization"
    objects = ScopedQuerySet.as_manager()

    class Meta:
        ordering = ["organization", "name"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "name"], name="deployment_unique_name"),
            models.UniqueConstraint(
                fields=["name"],
                condition=models.Q(organization__isnull=True),
                name="deployment_unique_platform_name",
            ),
            models.CheckConstraint(
                condition=models.Q(organization__isnull=True) | models.Q(shared_with_all=False),
                name="deployment_only_platform_shared",
            ),
        ]

    def __str__(self) -> str:
        owner = self.organization.slug if self.organization_id else "platform"
        return f"{owner}/{self.name}"

    @property
    def is_platform(self) -> bool:
        return self.organization_id is None

    @property
    def autoscaled(self) -> bool:
        return self.min_replicas is not None


class ReplicaState(models.TextChoices):
    PENDING = "pending", "Pending (waiting for placement)"
    PLACED = "placed", "Placed (sent to its node)"
    STARTING = "starting", "Starting"
    READY = "ready", "Ready (serving)"
    DRAINING = "draining", "Draining"
    STOPPED = "stopped", "Stopped"
    FAILED = "failed", "Failed"


class Replica(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="replica_set")
    node = models.ForeignKey(
        Node, on_delete=models.SET_NULL, null=True, blank=True, related_name="replicas"
    )
    gpu_indices = models.JSONField(default=list, blank=True)
    memory_mib = models.PositiveIntegerField(default=0, help_text="Reserved per GPU")
    port = models.PositiveIntegerField(null=True, blank=True)
    endpoint = models.CharField(max_length=300, blank=True)
    api_key_encrypted = models.TextField(blank=True, editable=False)
    state = models.CharField(
        max_length=8, choices=ReplicaState.choices, default=ReplicaState.PENDING
    )
    restarts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    spec_hash = models.CharField(max_length=64)
    generation = models.PositiveBigIntegerField(default=1)
    placement_reason = models.TextField(blank=True)
    load = models.JSONField(default=dict, blank=True)
    drain_started_at = models.DateTimeField(null=True, blank=True)
    # The node generation that no longer contains this replica (set once drained).
    removed_at_generation = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    state_changed_at = models.DateTimeField(auto_now_add=True)

    scope_org_path = "deployment__organization"
    objects = ScopedQuerySet.as_manager()

    class Meta:
        ordering = ["deployment", "created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["node", "port"],
                condition=models.Q(node__isnull=False, port__isnull=False),
                name="replica_unique_node_port",
            )
        ]

    def __str__(self) -> str:
        return f"{self.deployment}#{str(self.id)[:8]}"


class FetchState(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class ArtifactFetch(models.Model):
    """Bringing a model version's files onto a node's model cache, with progress."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.CASCADE, related_name="fetches"
    )
    node = models.ForeignKey(
        Node, on_delete=models.CASCADE, null=True, blank=True, related_name="fetches"
    )
    target_path = models.CharField(max_length=1000)
    state = models.CharField(max_length=8, choices=FetchState.choices, default=FetchState.QUEUED)
    bytes_done = models.BigIntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    files_done = models.PositiveIntegerField(default=0)
    files_total = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    scope_org_path = "node__replicas__deployment__organization"
    objects = ScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"fetch {self.model_version} -> {self.node or 'shared cache'}"
