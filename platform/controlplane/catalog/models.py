"""The model catalog: models, their versions (what exactly gets served), licences
and provenance, and per-organization access and policy."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from controlplane.tenancy.models import Organization
from controlplane.tenancy.scoping import ScopedQuerySet

alias_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9._-]{0,63}$",
    "Use 1-64 lowercase letters, digits, dots, underscores and hyphens.",
)


class Task(models.TextChoices):
    CHAT = "chat", "Chat"
    COMPLETION = "completion", "Completion"
    EMBEDDING = "embedding", "Embedding"


class Openness(models.TextChoices):
    OPEN_SOURCE = "open-source", "Open source (weights, code and data)"
    OPEN_WEIGHTS = "open-weights", "Open weights"
    OPEN_ACCESS = "open-access", "Open access (an API someone else controls)"


class SourceType(models.TextChoices):
    HUGGINGFACE = "huggingface", "Hugging Face repository"
    LOCAL = "local", "Local path"
    EXTERNAL = "external", "External OpenAI-compatible API"


class Dtype(models.TextChoices):
    AUTO = "auto", "auto"
    FLOAT32 = "float32", "float32"
    FLOAT16 = "float16", "float16"
    BFLOAT16 = "bfloat16", "bfloat16"


class Quantization(models.TextChoices):
    NONE = "none", "none"
    FP8 = "fp8", "FP8"
    INT8 = "int8", "INT8"
    AWQ = "awq", "AWQ (4-bit)"
    GPTQ = "gptq", "GPTQ (4-bit)"
    BITSANDBYTES = "bitsandbytes", "bitsandbytes (4-bit)"


class Model(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    alias = models.CharField(
        max_length=64, unique=True, validators=[alias_validator], help_text="Public model name"
    )
    display_name = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True, max_length=5000)
    task = models.CharField(max_length=12, choices=Task.choices)
    publisher = models.CharField(max_length=200, blank=True)
    license_id = models.CharField(
        max_length=100, help_text="SPDX identifier (e.g. apache-2.0) or a named licence"
    )
    license_name = models.CharField(max_length=200, blank=True)
    license_url = models.URLField(blank=True)
    commercial_use = models.BooleanField(help_text="Does the licence allow commercial use?")
    openness = models.CharField(max_length=16, choices=Openness.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # The catalog is platform-wide; organizations see the models they were granted.
    scope_org_path = "organization_access__organization"
    objects = ScopedQuerySet.as_manager()

    class Meta:
        ordering = ["alias"]

    def __str__(self) -> str:
        return self.alias


class ModelVersion(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="versions")
    version = models.CharField(max_length=64)
    source_type = models.CharField(max_length=12, choices=SourceType.choices)
    hf_repo = models.CharField(max_length=200, blank=True)
    revision = models.CharField(max_length=40, blank=True, help_text="Pinned commit (40 hex)")
    local_path = models.CharField(max_length=1000, blank=True)
    external_url = models.URLField(blank=True)
    parameter_count = models.BigIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)]
    )
    dtype = models.CharField(max_length=10, choices=Dtype.choices, default=Dtype.AUTO)
    quantization = models.CharField(
        max_length=14, choices=Quantization.choices, default=Quantization.NONE
    )
    context_length = models.PositiveIntegerField(null=True, blank=True)
    engine_args = models.JSONField(default=dict, blank=True)
    file_manifest = models.JSONField(
        default=dict, blank=True, help_text="{relative path: sha256 hex}"
    )
    trust_remote_code = models.BooleanField(default=False)
    trust_remote_code_approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    is_default = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    scope_org_path = "model__organization_access__organization"
    objects = ScopedQuerySet.as_manager()

    class Meta:
        ordering = ["model__alias", "-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["model", "version"], name="model_version_unique"),
            models.UniqueConstraint(
                fields=["model"],
                condition=models.Q(is_default=True),
                name="model_one_default_version",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model.alias}@{self.version}"


class OrganizationModelAccess(models.Model):
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="model_access"
    )
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="organization_access")
    created_at = models.DateTimeField(auto_now_add=True)

    scope_org_path = "organization"
    objects = ScopedQuerySet.as_manager()

    class Meta:
        ordering = ["model__alias"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "model"], name="model_access_unique")
        ]

    def __str__(self) -> str:
        return f"{self.organization} may use {self.model}"


def default_allowed_openness() -> list[str]:
    # Nothing leaves the house unless an organization asks for it.
    return [Openness.OPEN_SOURCE, Openness.OPEN_WEIGHTS]


class OrganizationPolicy(models.Model):
    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="policy", primary_key=True
    )
    allowed_openness = models.JSONField(default=default_allowed_openness)
    require_commercial_use = models.BooleanField(
        default=False, help_text="Refuse models whose licence forbids commercial use."
    )
    updated_at = models.DateTimeField(auto_now=True)

    scope_org_path = "organization"
    objects = ScopedQuerySet.as_manager()

    def __str__(self) -> str:
        return f"policy of {self.organization}"

    def refusal_reason(self, model: Model) -> str | None:
        """Why this policy refuses ``model``, or ``None`` if it allows it."""
        if model.openness not in self.allowed_openness:
            return f"the organization's policy does not allow {model.openness} models"
        if self.require_commercial_use and not model.commercial_use:
            return (
                f"the licence of {model.alias} ({model.license_id}) does not allow commercial "
                "use and the organization's policy requires it"
            )
        return None


class Upstream(models.Model):
    """A static route to an OpenAI-compatible server for a model: a replica started
    by hand or an outside provider (for ``open-access`` models). Replicas that the
    fleet starts are routed without one of these."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="upstreams")
    name = models.CharField(max_length=64, validators=[alias_validator])
    base_url = models.URLField(max_length=500, help_text="Base URL, without the /v1 suffix")
    served_model_name = models.CharField(max_length=200)
    api_key_encrypted = models.TextField(blank=True, editable=False)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    scope_org_path = "model__organization_access__organization"
    objects = ScopedQuerySet.as_manager()

    class Meta:
        ordering = ["model__alias", "name"]
        constraints = [
            models.UniqueConstraint(fields=["model", "name"], name="upstream_unique_name")
        ]

    def __str__(self) -> str:
        return f"{self.model.alias}/{self.name}"
