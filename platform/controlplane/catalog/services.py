"""Catalog mutations (platform administrators) and organization access and policy
(organization administrators). Same rules as every service module: atomic, ``actor=``,
audit event in the transaction, snapshot published on commit."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import PurePosixPath

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from controlplane.audit.services import (
    apply_changes,
    diff,
    field_values,
    record_event,
    reject_unknown_fields,
)
from controlplane.catalog.models import (
    Model,
    ModelVersion,
    Openness,
    OrganizationModelAccess,
    OrganizationPolicy,
    SourceType,
    Upstream,
)
from controlplane.catalog.secrets import decrypt_secret, encrypt_secret
from controlplane.netsafety import check_url
from controlplane.snapshot import publish_on_commit
from controlplane.tenancy.actors import Actor
from controlplane.tenancy.models import Organization
from controlplane.tenancy.permissions import require
from workers.safepath import UnsafePath, check_name

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_HF_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")

#: vLLM engine arguments an admin may set per version, with their types. Anything that
#: loads code (trust_remote_code) or touches the host is deliberately absent.
ENGINE_ARGS: dict[str, type | tuple[type, ...]] = {
    "max_model_len": int,
    "gpu_memory_utilization": (int, float),
    "tensor_parallel_size": int,
    "pipeline_parallel_size": int,
    "max_num_seqs": int,
    "max_num_batched_tokens": int,
    "enable_prefix_caching": bool,
    "enable_chunked_prefill": bool,
    "enforce_eager": bool,
    "kv_cache_dtype": str,
    "enable_lora": bool,
    "max_loras": int,
    "max_lora_rank": int,
    "block_size": int,
    "swap_space": (int, float),
    "seed": int,
    "tokenizer_mode": str,
}
MANIFEST_MAX_FILES = 10_000


def validate_engine_args(args) -> dict:
    if not isinstance(args, dict):
        raise ValidationError({"engine_args": "Must be an object of vLLM argument names."})
    errors = []
    for name, value in args.items():
        expected = ENGINE_ARGS.get(name)
        if expected is None:
            errors.append(f"{name!r} is not an allowed engine argument")
        elif isinstance(value, bool) and expected is not bool:
            errors.append(f"{name!r} must be a number")
        elif not isinstance(value, expected):
            errors.append(f"{name!r} has the wrong type")
        elif isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            errors.append(f"{name!r} must not be negative")
        elif isinstance(value, str) and len(value) > 64:
            errors.append(f"{name!r} is too long")
    if errors:
        raise ValidationError({"engine_args": errors})
    return args


def validate_manifest(manifest) -> dict:
    if not isinstance(manifest, dict):
        raise ValidationError({"file_manifest": "Must be an object {relative path: sha256}."})
    if len(manifest) > MANIFEST_MAX_FILES:
        raise ValidationError({"file_manifest": f"At most {MANIFEST_MAX_FILES} files."})
    errors = []
    for path, digest in manifest.items():
        pure = PurePosixPath(path)
        if (
            not path
            or len(path) > 500
            or pure.is_absolute()
            or ".." in pure.parts
            or "\\" in path
            or "\x00" in path
        ):
            errors.append(f"{path!r} is not a safe relative path")
        elif not isinstance(digest, str) or not _SHA256.match(digest):
            errors.append(f"{path!r}: the checksum must be 64 lowercase hex characters")
    if errors:
        raise ValidationError({"file_manifest": errors})
    return manifest


def _validate_source(version: ModelVersion) -> None:
    errors: dict[str, str] = {}
    if version.source_type == SourceType.HUGGINGFACE:
        if not _HF_REPO.match(version.hf_repo or ""):
            errors["hf_repo"] = "Give the repository as owner/name."
        if not _COMMIT.match(version.revision or ""):
            errors["revision"] = "Pin the revision to a full 40-character commit hash."
    elif version.source_type == SourceType.LOCAL:
        path = PurePosixPath(version.local_path or "")
        if not version.local_path or not path.is_absolute() or ".." in path.parts:
            errors["local_path"] = "Give an absolute path without '..'."
    elif (
        version.source_type == SourceType.EXTERNAL
        and version.model.openness != Openness.OPEN_ACCESS
    ):
        errors["source_type"] = "Only open-access models are served by an external API."
    if errors:
        raise ValidationError(errors)


# --------------------------------------------------------------------------- models
MODEL_FIELDS = {
    "alias",
    "display_name",
    "description",
    "task",
    "publisher",
    "license_id",
    "license_name",
    "license_url",
    "commercial_use",
    "openness",
}


@transaction.atomic
def create_model(*, actor: Actor, **fields) -> Model:
    require(actor, "catalog.change")
    reject_unknown_fields(fields, MODEL_FIELDS)
    if Model.objects.filter(alias=fields.get("alias")).exists():
        raise ValidationError({"alias": f"A model named {fields['alias']!r} already exists."})
    model = Model(**fields)
    model.full_clean()
    model.save()
    record_event(
        actor=actor, action="model.create", target=model, changes=diff({}, field_values(model))
    )
    publish_on_commit()
    return model


@transaction.atomic
def update_model(*, actor: Actor, model: Model, **fields) -> Model:
    require(actor, "catalog.change")
    if "alias" in fields and fields["alias"] != model.alias:
        raise ValidationError({"alias": "A model's alias cannot change; keys and clients use it."})
    fields.pop("alias", None)
    changes = apply_changes(model, fields, MODEL_FIELDS)
    if changes:
        record_event(actor=actor, action="model.update", target=model, changes=changes)
        publish_on_commit()
    return model


@transaction.atomic
def delete_model(*, actor: Actor, model: Model) -> None:
    require(actor, "catalog.change")
    record_event(
        actor=actor, action="model.delete", target=model, changes=diff(field_values(model), {})
    )
    model.delete()
    publish_on_commit()


VERSION_FIELDS = {
    "version",
    "source_type",
    "hf_repo",
    "revision",
    "local_path",
    "external_url",
    "parameter_count",
    "dtype",
    "quantization",
    "context_length",
    "engine_args",
    "file_manifest",
    "trust_remote_code",
    "is_default",
}


def validate_version_name(value) -> str:
    """A version name becomes a folder of the model cache: one safe path component."""
    try:
        return check_name(value, "version")
    except UnsafePath as exc:
        raise ValidationError({"version": str(exc)}) from None


def _apply_version_fields(actor: Actor, version: ModelVersion, fields: dict) -> None:
    reject_unknown_fields(fields, VERSION_FIELDS)
    if "version" in fields:
        validate_version_name(fields["version"])
    if "engine_args" in fields:
        validate_engine_args(fields["engine_args"])
    if "file_manifest" in fields:
        validate_manifest(fields["file_manifest"])
    if fields.get("trust_remote_code") and not version.trust_remote_code:
        if not actor.is_platform_admin or actor.user is None:
            raise PermissionDenied("only a platform administrator may approve trust_remote_code")
        version.trust_remote_code_approved_by = actor.user
    if fields.get("trust_remote_code") is False:
        version.trust_remote_code_approved_by = None
    for name, value in fields.items():
        setattr(version, name, value)
    _validate_source(version)
    version.full_clean(exclude=["model"])
    if version.is_default:
        ModelVersion.objects.filter(model=version.model, is_default=True).exclude(
            pk=version.pk
        ).update(is_default=False)


@transaction.atomic
def create_version(*, actor: Actor, model: Model, **fields) -> ModelVersion:
    require(actor, "catalog.change")
    if ModelVersion.objects.filter(model=model, version=fields.get("version")).exists():
        raise ValidationError({"version": "This model already has a version with that name."})
    version = ModelVersion(model=model)
    if not model.versions.exists():
        fields.setdefault("is_default", True)
    _apply_version_fields(actor, version, fields)
    version.save()
    record_event(
        actor=actor,
        action="model_version.create",
        target=version,
        changes=diff({}, field_values(version)),
    )
    publish_on_commit()
    return version


@transaction.atomic
def update_version(*, actor: Actor, version: ModelVersion, **fields) -> ModelVersion:
    require(actor, "catalog.change")
    before = field_values(version)
    _apply_version_fields(actor, version, fields)
    version.save()
    changes = diff(before, field_values(version))
    if changes:
        record_event(actor=actor, action="model_version.update", target=version, changes=changes)
        publish_on_commit()
    return version


@transaction.atomic
def delete_version(*, actor: Actor, version: ModelVersion) -> None:
    require(actor, "catalog.change")
    record_event(
        actor=actor,
        action="model_version.delete",
        target=version,
        changes=diff(field_values(version), {}),
    )
    version.delete()
    publish_on_commit()


# --------------------------------------------------------------------------- upstreams
@transaction.atomic
def create_upstream(
    *, actor: Actor, model: Model, name: str, base_url: str, served_model_name: str, api_key=""
) -> Upstream:
    require(actor, "catalog.change")
    external = model.openness == Openness.OPEN_ACCESS
    check_url(base_url, allow_internal=not external, field="base_url")
    if Upstream.objects.filter(model=model, name=name).exists():
        raise ValidationError({"name": "This model already has an upstream with that name."})
    upstream = Upstream(
        model=model,
        name=name,
        base_url=base_url.rstrip("/"),
        served_model_name=served_model_name,
        api_key_encrypted=encrypt_secret(api_key),
    )
    upstream.full_clean()
    upstream.save()
    record_event(
        actor=actor,
        action="upstream.create",
        target=upstream,
        changes=diff({}, field_values(upstream, {"name", "base_url", "served_model_name"})),
    )
    publish_on_commit()
    return upstream


@transaction.atomic
def update_upstream(*, actor: Actor, upstream: Upstream, api_key=None, **fields) -> Upstream:
    require(actor, "catalog.change")
    allowed = {"base_url", "served_model_name", "enabled"}
    reject_unknown_fields(fields, allowed, "This field cannot be changed.")
    if "base_url" in fields:
        external = upstream.model.openness == Openness.OPEN_ACCESS
        check_url(fields["base_url"], allow_internal=not external, field="base_url")
        fields["base_url"] = fields["base_url"].rstrip("/")
    before = field_values(upstream, allowed)
    for name, value in fields.items():
        setattr(upstream, name, value)
    changes = diff(before, field_values(upstream, allowed))
    if api_key is not None:
        upstream.api_key_encrypted = encrypt_secret(api_key)
        changes["api_key"] = ["(hidden)", "(replaced)"]
    upstream.full_clean()
    upstream.save()
    if changes:
        record_event(actor=actor, action="upstream.update", target=upstream, changes=changes)
        publish_on_commit()
    return upstream


@transaction.atomic
def delete_upstream(*, actor: Actor, upstream: Upstream) -> None:
    require(actor, "catalog.change")
    record_event(
        actor=actor,
        action="upstream.delete",
        target=upstream,
        changes=diff(field_values(upstream, {"name", "base_url"}), {}),
    )
    upstream.delete()
    publish_on_commit()


def routes_by_alias() -> dict[str, list[dict]]:
    """Gateway routes of the catalog's upstreams, by model alias. Platform
    administrators register them (outside providers, or servers run outside the fleet),
    so they belong to the platform and serve every organization allowed the model."""
    routes: dict[str, list[dict]] = defaultdict(list)
    for upstream in Upstream.objects.filter(enabled=True).select_related("model"):
        routes[upstream.model.alias].append(
            {
                "id": f"upstream-{upstream.name}",
                "url": upstream.base_url,
                "api_key": decrypt_secret(upstream.api_key_encrypted),
                "model": upstream.served_model_name,
                "external": upstream.model.openness == Openness.OPEN_ACCESS,
                "owner": None,
                "orgs": None,
            }
        )
    return dict(routes)


# --------------------------------------------------------------------------- access & policy
def usable_models(organization: Organization) -> list[Model]:
    """Models this organization may use: granted, and allowed by its policy."""
    policy = OrganizationPolicy.objects.filter(organization=organization).first()
    granted = Model.objects.filter(organization_access__organization=organization)
    return [m for m in granted if policy is None or policy.refusal_reason(m) is None]


def usable_model_aliases(organization: Organization) -> set[str]:
    return {m.alias for m in usable_models(organization)}


def usable_aliases_by_org() -> dict:
    policies = {p.organization_id: p for p in OrganizationPolicy.objects.all()}
    result: dict = defaultdict(set)
    for access in OrganizationModelAccess.objects.select_related("model"):
        policy = policies.get(access.organization_id)
        if policy is None or policy.refusal_reason(access.model) is None:
            result[access.organization_id].add(access.model.alias)
    return result


@transaction.atomic
def grant_model_access(
    *, actor: Actor, organization: Organization, model: Model
) -> OrganizationModelAccess:
    require(actor, "model_access.change", organization)
    policy, _ = OrganizationPolicy.objects.get_or_create(organization=organization)
    reason = policy.refusal_reason(model)
    if reason:
        raise ValidationError({"model": f"Cannot grant {model.alias}: {reason}."})
    if OrganizationModelAccess.objects.filter(organization=organization, model=model).exists():
        raise ValidationError({"model": f"{model.alias} is already granted."})
    access = OrganizationModelAccess.objects.create(organization=organization, model=model)
    record_event(
        actor=actor,
        action="model_access.grant",
        target=access,
        target_repr=f"{organization.slug} may use {model.alias}",
        organization_id=organization.pk,
        changes={"model": [None, model.alias]},
    )
    publish_on_commit()
    return access


@transaction.atomic
def revoke_model_access(*, actor: Actor, access: OrganizationModelAccess) -> None:
    require(actor, "model_access.change", access.organization)
    record_event(
        actor=actor,
        action="model_access.revoke",
        target=access,
        target_repr=f"{access.organization.slug} may use {access.model.alias}",
        organization_id=access.organization_id,
        changes={"model": [access.model.alias, None]},
    )
    access.delete()
    publish_on_commit()


@transaction.atomic
def update_policy(*, actor: Actor, organization: Organization, **fields) -> OrganizationPolicy:
    require(actor, "policy.change", organization)
    policy, _ = OrganizationPolicy.objects.get_or_create(organization=organization)
    allowed = {"allowed_openness", "require_commercial_use"}
    reject_unknown_fields(fields, allowed)
    if "allowed_openness" in fields:
        value = fields["allowed_openness"]
        if not isinstance(value, list) or any(v not in Openness.values for v in value):
            raise ValidationError({"allowed_openness": f"A list of: {', '.join(Openness.values)}."})
        fields["allowed_openness"] = sorted(set(value))
    changes = apply_changes(policy, fields, allowed)
    if changes:
        record_event(
            actor=actor,
            action="policy.update",
            target=policy,
            organization_id=organization.pk,
            changes=changes,
        )
        publish_on_commit()
    return policy
