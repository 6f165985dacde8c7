"""Fleet mutations: pools and nodes (platform administrators), deployments
(organization administrators for their organization's, platform administrators for
platform deployments and their sharing), and the model-artifact bookkeeping. Same rules as every
service module: atomic, ``actor=``, audit event in the transaction, snapshot published
and the reconciler woken on commit."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Sum

from controlplane.audit.services import (
    apply_changes,
    diff,
    field_values,
    record_event,
    reject_unknown_fields,
)
from controlplane.catalog.models import ModelVersion, SourceType
from controlplane.catalog.models import Task as ModelTask
from controlplane.catalog.secrets import decrypt_secret
from controlplane.catalog.services import (
    usable_model_aliases,
    validate_engine_args,
    validate_manifest,
)
from controlplane.env import env_int, env_str
from controlplane.fleet import placement
from controlplane.fleet.models import (
    ArtifactFetch,
    Deployment,
    Node,
    NodeState,
    Pool,
    Replica,
    ReplicaState,
)
from controlplane.snapshot import publish_on_commit
from controlplane.tenancy.actors import Actor
from controlplane.tenancy.models import Organization
from controlplane.tenancy.permissions import require
from gateway import contract

log = logging.getLogger(__name__)

_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9._/-]{0,63}$")
MAX_LABELS = 32
#: Engine arguments a deployment sets through its own fields, never through engine_args.
DEPLOYMENT_FIELDS_NOT_ARGS = {
    "tensor_parallel_size": "tensor_parallel_size",
    "max_model_len": "max_model_len",
    "gpu_memory_utilization": "gpu_memory_fraction",
    "enable_lora": "enable_lora",
}


def drain_seconds() -> int:
    return env_int("FLEET_DRAIN_SECONDS", 30, minimum=0)


def model_cache_dir() -> Path:
    configured = env_str("FLEET_MODEL_CACHE")
    return Path(configured) if configured else Path(settings.DATA_DIR) / "models"


def validate_labels(value, field: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValidationError({field: "Must be an object of label names to string values."})
    if len(value) > MAX_LABELS:
        raise ValidationError({field: f"At most {MAX_LABELS} labels."})
    errors = []
    for key, item in value.items():
        if not isinstance(key, str) or not _LABEL.match(key):
            errors.append(f"{key!r} is not a valid label name (letters, digits, . _ / -)")
        elif not isinstance(item, str) or not _LABEL_VALUE.match(item):
            errors.append(
                f"{key!r}: the value must be a string of up to 63 letters, digits, . _ / -"
            )
    if errors:
        raise ValidationError({field: errors})
    return dict(value)


def request_reconcile() -> None:
    """Wake the reconciler after the transaction commits (beat also runs it)."""

    def enqueue() -> None:
        from controlplane.fleet.tasks import reconcile

        try:
            reconcile.apply_async(queue="fleet", expires=30)
        except Exception:  # the broker being down must not fail a committed change
            log.warning("could not enqueue the reconciler; beat runs it shortly")

    transaction.on_commit(enqueue)


# --------------------------------------------------------------------------- pools
POOL_FIELDS = {"name", "description", "labels", "strategy", "org_gpu_quota"}


@transaction.atomic
def create_pool(*, actor: Actor, **fields) -> Pool:
    require(actor, "fleet.manage")
    reject_unknown_fields(fields, POOL_FIELDS)
    if Pool.objects.filter(name=fields.get("name")).exists():
        raise ValidationError({"name": f"A pool named {fields['name']!r} already exists."})
    if "labels" in fields:
        fields["labels"] = validate_labels(fields["labels"], "labels")
    pool = Pool(**fields)
    pool.full_clean()
    pool.save()
    record_event(
        actor=actor, action="pool.create", target=pool, changes=diff({}, field_values(pool))
    )
    return pool


@transaction.atomic
def update_pool(*, actor: Actor, pool: Pool, **fields) -> Pool:
    require(actor, "fleet.manage")
    if "name" in fields and fields["name"] != pool.name:
        raise ValidationError({"name": "A pool's name cannot change; agents report it."})
    fields.pop("name", None)
    reject_unknown_fields(fields, POOL_FIELDS)
    if "labels" in fields:
        fields["labels"] = validate_labels(fields["labels"], "labels")
    changes = apply_changes(pool, fields, POOL_FIELDS)
    if changes:
        record_event(actor=actor, action="pool.update", target=pool, changes=changes)
        request_reconcile()
    return pool


@transaction.atomic
def delete_pool(*, actor: Actor, pool: Pool) -> None:
    require(actor, "fleet.manage")
    if pool.nodes.exists() or pool.deployments.exists():
        raise ValidationError(
            {"pool": "The pool still has nodes or deployments; move or delete them first."}
        )
    record_event(
        actor=actor, action="pool.delete", target=pool, changes=diff(field_values(pool), {})
    )
    pool.delete()


# --------------------------------------------------------------------------- nodes
NODE_FIELDS = {"name", "pool", "address", "address_network", "labels"}


@transaction.atomic
def create_node(*, actor: Actor, **fields) -> Node:
    """Register a node ahead of its agent (it stays lost until the agent reports)."""
    require(actor, "fleet.manage")
    reject_unknown_fields(fields, NODE_FIELDS)
    if Node.objects.filter(name=fields.get("name")).exists():
        raise ValidationError({"name": f"A node named {fields['name']!r} already exists."})
    if "labels" in fields:
        fields["labels"] = validate_labels(fields["labels"], "labels")
    node = Node(**fields)
    node.full_clean()
    node.save()
    record_event(
        actor=actor, action="node.create", target=node, changes=diff({}, field_values(node))
    )
    return node


@transaction.atomic
def update_node(*, actor: Actor, node: Node, **fields) -> Node:
    require(actor, "fleet.manage")
    if "name" in fields and fields["name"] != node.name:
        raise ValidationError({"name": "A node's name cannot change; its agent reports it."})
    fields.pop("name", None)
    reject_unknown_fields(fields, {"pool", "address", "address_network", "labels"})
    if "labels" in fields:
        fields["labels"] = validate_labels(fields["labels"], "labels")
    if "pool" in fields and fields["pool"] != node.pool and _active_replicas(node).exists():
        raise ValidationError(
            {"pool": "The node still runs replicas; cordon it and scale them away first."}
        )
    keys = {"pool", "address", "address_network", "labels"} & set(fields)
    before = field_values(node, keys)
    for name, value in fields.items():
        setattr(node, name, value)
    node.full_clean()
    node.save()
    changes = diff(before, field_values(node, keys))
    if changes:
        record_event(actor=actor, action="node.update", target=node, changes=changes)
        if "address" in changes:
            for replica in node.replicas.all():
                set_replica_endpoint(replica, node)
                replica.save(update_fields=["endpoint"])
            publish_on_commit()
        request_reconcile()
    return node


@transaction.atomic
def set_cordoned(*, actor: Actor, node: Node, cordoned: bool) -> Node:
    """A cordoned node keeps its replicas but gets no new ones."""
    require(actor, "fleet.manage")
    if node.cordoned == cordoned:
        return node
    node.cordoned = cordoned
    node.refresh_state()
    node.save(update_fields=["cordoned", "state"])
    record_event(
        actor=actor,
        action="node.cordon" if cordoned else "node.uncordon",
        target=node,
        changes={"cordoned": [not cordoned, cordoned]},
    )
    request_reconcile()
    return node


def _active_replicas(node: Node):
    return node.replicas.exclude(state=ReplicaState.STOPPED)


@transaction.atomic
def delete_node(*, actor: Actor, node: Node) -> None:
    """Forget a node. A node that is not lost must be empty first (cordon it and let
    its replicas move); a lost node's replicas are re-placed elsewhere."""
    require(actor, "fleet.manage")
    if node.state != NodeState.LOST and _active_replicas(node).exists():
        raise ValidationError(
            {"node": "The node still runs replicas; cordon it and move them first."}
        )
    ready = set(node.replicas.filter(state=ReplicaState.READY).values_list("pk", flat=True))
    record_event(
        actor=actor, action="node.delete", target=node, changes=diff(field_values(node), {})
    )
    node.replicas.all().delete()  # the reconciler creates their replacements
    node.delete()
    if ready:
        publish_on_commit()
    request_reconcile()


# --------------------------------------------------------------------------- deployments
#: Who a platform deployment serves; platform administrators only.
SHARING_FIELDS = {"shared_with_all", "shared_with"}
DEPLOYMENT_FIELDS = {
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
}
#: Written by the autoscaler on every pass; not part of what a user changes.
AUTOSCALER_STATE_FIELDS = ("scaled_at", "busy_at", "active_at")


def served_task(version: ModelVersion) -> str:
    return "embed" if version.model.task == ModelTask.EMBEDDING else "generate"


def effective_max_model_len(deployment: Deployment) -> int | None:
    version = deployment.model_version
    return (
        deployment.max_model_len
        or version.engine_args.get("max_model_len")
        or version.context_length
    )


def effective_dtype(deployment: Deployment) -> str:
    return deployment.dtype or deployment.model_version.dtype


def effective_quantization(deployment: Deployment) -> str:
    return deployment.quantization or deployment.model_version.quantization


def memory_request(deployment: Deployment) -> tuple[int | None, float | None]:
    """(MiB per GPU, fraction of each GPU): exactly one is set."""
    if deployment.gpu_memory_fraction is not None:
        return None, deployment.gpu_memory_fraction
    version = deployment.model_version
    if not version.parameter_count:
        raise ValidationError(
            {
                "gpu_memory_fraction": "The catalog entry does not give the model's parameter "
                "count, so its memory cannot be estimated; set gpu_memory_fraction."
            }
        )
    mib = placement.estimate_memory_mib(
        parameter_count=version.parameter_count,
        dtype=effective_dtype(deployment),
        quantization=effective_quantization(deployment),
        max_model_len=effective_max_model_len(deployment) or 2048,
        tensor_parallel_size=deployment.tensor_parallel_size,
    )
    return mib, None


def engine_args_for(deployment: Deployment) -> dict:
    """The allow-listed vLLM arguments of the catalog version and the deployment."""
    version = deployment.model_version
    args = {
        k: v
        for k, v in {**version.engine_args, **deployment.engine_args}.items()
        if k not in ("max_model_len", "gpu_memory_utilization")
    }
    args["tensor_parallel_size"] = deployment.tensor_parallel_size
    dtype = effective_dtype(deployment)
    if dtype and dtype != "auto":
        args["dtype"] = dtype
    quantization = effective_quantization(deployment)
    if quantization and quantization != "none":
        args["quantization"] = quantization
    if deployment.enable_lora:
        args["enable_lora"] = True
    return dict(sorted(args.items()))


def deployment_spec(deployment: Deployment) -> dict:
    """What a replica runs; its hash changing is a rolling update."""
    version = deployment.model_version
    return {
        "model_version": str(version.pk),
        "alias": version.model.alias,
        "source": [version.source_type, version.hf_repo, version.revision, version.local_path],
        "manifest": version.file_manifest,
        "trust_remote_code": trust_remote_code(version),
        "task": served_task(version),
        "max_model_len": effective_max_model_len(deployment),
        "gpu_memory_fraction": deployment.gpu_memory_fraction,
        "engine_args": engine_args_for(deployment),
        "pool": str(deployment.pool_id),
        "selector": deployment.selector,
    }


def spec_hash(deployment: Deployment) -> str:
    canonical = json.dumps(deployment_spec(deployment), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def trust_remote_code(version: ModelVersion) -> bool:
    """Only a catalog entry a platform administrator approved runs remote code."""
    return bool(version.trust_remote_code and version.trust_remote_code_approved_by_id)


def _resolve_version(organization: Organization | None, alias, version_name) -> ModelVersion:
    """The catalog version to deploy. An organization deploys only models it may use; a
    platform deployment may run any catalog model (sharing decides who uses it)."""
    if organization is None:
        if (
            not isinstance(alias, str)
            or not ModelVersion.objects.filter(model__alias=alias).exists()
        ):
            raise ValidationError({"model": f"{alias!r} is not a model in the catalog."})
    elif not isinstance(alias, str) or alias not in usable_model_aliases(organization):
        raise ValidationError({"model": f"{alias!r} is not a model {organization.slug} may use."})
    versions = ModelVersion.objects.filter(model__alias=alias).select_related("model")
    version = (
        versions.filter(version=version_name).first()
        if version_name
        else versions.filter(is_default=True).first()
    )
    if version is None:
        raise ValidationError(
            {"version": f"{alias} has no version {version_name!r}."}
            if version_name
            else {"version": f"{alias} has no default version; name one."}
        )
    if version.source_type == SourceType.EXTERNAL:
        raise ValidationError(
            {"model": f"{alias} is served by an external API; nothing to deploy."}
        )
    return version


def _validate_deployment(deployment: Deployment) -> None:
    deployment.selector = validate_labels(deployment.selector, "selector")
    validate_engine_args(deployment.engine_args)
    for arg, field in DEPLOYMENT_FIELDS_NOT_ARGS.items():
        if arg in deployment.engine_args:
            raise ValidationError({"engine_args": f"Set {arg!r} with the {field} field."})
    deployment.full_clean(exclude=["organization", "model_version", "pool", "spec_hash"])
    version = deployment.model_version
    max_len = effective_max_model_len(deployment)
    if max_len is None:
        raise ValidationError(
            {"max_model_len": "The catalog entry does not give a context length; set it."}
        )
    if version.context_length and max_len > version.context_length:
        raise ValidationError(
            {"max_model_len": f"At most the model's context length ({version.context_length})."}
        )
    memory_request(deployment)  # raises when the memory need is unknown
    _validate_autoscaling(deployment)


def _validate_autoscaling(deployment: Deployment) -> None:
    """Autoscaling is on with ``min_replicas``; it then needs ``max_replicas`` at least
    as large, and the replica count starts inside the bounds."""
    low, high = deployment.min_replicas, deployment.max_replicas
    if low is None:
        if high is not None:
            raise ValidationError({"min_replicas": "Set min_replicas too to autoscale."})
        return
    if high is None:
        raise ValidationError({"max_replicas": "Autoscaling needs max_replicas."})
    if high < max(low, 1):
        raise ValidationError({"max_replicas": "Must be at least min_replicas, and at least 1."})
    if deployment.scale_target == "kv_cache" and deployment.scale_target_value > 1:
        raise ValidationError({"scale_target_value": "KV-cache usage is between 0 and 1."})
    deployment.replicas = min(max(deployment.replicas, low), high)


def _check_quota(deployment: Deployment) -> None:
    quota = deployment.pool.org_gpu_quota
    if quota is None or deployment.organization_id is None:
        return  # the quota is per organization; platform capacity is the platform's own
    # Serialise quota checks per pool so two concurrent requests cannot both fit.
    Pool.objects.select_for_update().filter(pk=deployment.pool_id).first()
    others = (
        Deployment.objects.filter(organization=deployment.organization, pool=deployment.pool)
        .exclude(pk=deployment.pk)
        .aggregate(gpus=Sum(F("replicas") * F("tensor_parallel_size")))["gpus"]
        or 0
    )
    most = deployment.max_replicas if deployment.autoscaled else deployment.replicas
    wanted = most * deployment.tensor_parallel_size
    if others + wanted > quota:
        raise ValidationError(
            {
                "replicas": f"Pool {deployment.pool.name} allows {quota} GPUs per organization; "
                f"{deployment.organization.slug} holds {others} elsewhere and this needs {wanted}."
            }
        )


def _audit_values(deployment: Deployment) -> dict:
    values = field_values(deployment)
    values.pop("spec_hash", None)
    for name in AUTOSCALER_STATE_FIELDS:
        values.pop(name, None)
    return values


def _sharing_values(deployment: Deployment) -> dict:
    """Who a platform deployment serves, for the audit log (organization slugs)."""
    if deployment.pk is None or deployment.organization_id is not None:
        return {}
    return {
        "shared_with": sorted(deployment.shared_with.values_list("slug", flat=True)),
    }


def _check_sharing_fields(organization: Organization | None, fields: dict) -> None:
    """Only platform deployments are shared, and only platform administrators share
    (the permission check of a platform deployment already demands one)."""
    if organization is not None:
        reject_unknown_fields(
            {k: v for k, v in fields.items() if k in SHARING_FIELDS},
            (),
            "Only a platform deployment is shared; an organization's deployment serves "
            "only its organization.",
        )


def _validate_shared_with(value) -> list[Organization]:
    if value is None:
        return []
    if not isinstance(value, list | tuple | set):
        raise ValidationError({"shared_with": "Must be a list of organizations."})
    organizations = []
    for item in value:
        if isinstance(item, Organization):
            organizations.append(item)
            continue
        found = Organization.objects.filter(slug=item).first() if isinstance(item, str) else None
        if found is None:
            raise ValidationError({"shared_with": f"No organization {item!r}."})
        organizations.append(found)
    return organizations


@transaction.atomic
def create_deployment(*, actor: Actor, organization: Organization | None, **fields) -> Deployment:
    """An organization's deployment (``organization`` given: it serves that
    organization only) or a platform deployment (``organization=None``, platform
    administrators only: it serves the organizations it is shared with)."""
    require(actor, "deployment.change", organization)
    reject_unknown_fields(fields, DEPLOYMENT_FIELDS | SHARING_FIELDS)
    _check_sharing_fields(organization, fields)
    if "pool" not in fields:
        raise ValidationError({"pool": "This field is required."})
    shared_with = _validate_shared_with(fields.pop("shared_with", None))
    name = fields.get("name")
    if Deployment.objects.filter(organization=organization, name=name).exists():
        owner = organization.slug if organization is not None else "The platform"
        raise ValidationError({"name": f"{owner} already has a deployment {name!r}."})
    version = _resolve_version(organization, fields.pop("model", None), fields.pop("version", None))
    deployment = Deployment(organization=organization, model_version=version, **fields)
    _validate_deployment(deployment)
    _check_quota(deployment)
    deployment.spec_hash = spec_hash(deployment)
    deployment.save()
    if shared_with:
        deployment.shared_with.set(shared_with)
    record_event(
        actor=actor,
        action="deployment.create",
        target=deployment,
        organization_id=organization.pk if organization is not None else None,
        changes=diff({}, {**_audit_values(deployment), **_sharing_values(deployment)}),
    )
    if deployment.autoscaled:
        publish_on_commit()  # the gateways hold its requests during a cold start
    request_reconcile()
    return deployment


@transaction.atomic
def update_deployment(*, actor: Actor, deployment: Deployment, **fields) -> Deployment:
    """Scale (``replicas``), change the spec (a rolling update) or, for a platform
    deployment, change who it serves (``shared_with_all``, ``shared_with``)."""
    require(actor, "deployment.change", deployment.organization)
    if "name" in fields and fields["name"] != deployment.name:
        raise ValidationError({"name": "A deployment's name cannot change."})
    fields.pop("name", None)
    reject_unknown_fields(fields, DEPLOYMENT_FIELDS | SHARING_FIELDS)
    _check_sharing_fields(deployment.organization, fields)
    deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
    before = _audit_values(deployment)
    sharing_before = _sharing_values(deployment)
    if "shared_with" in fields:
        deployment.shared_with.set(_validate_shared_with(fields.pop("shared_with")))
    sharing_changes = diff(sharing_before, _sharing_values(deployment))
    if "model" in fields or "version" in fields:
        alias = fields.pop("model", deployment.model_version.model.alias)
        version_name = fields.pop("version", None)
        deployment.model_version = _resolve_version(deployment.organization, alias, version_name)
    for name, value in fields.items():
        setattr(deployment, name, value)
    _validate_deployment(deployment)
    _check_quota(deployment)
    deployment.spec_hash = spec_hash(deployment)
    changes = diff(before, _audit_values(deployment))
    spec_changes = {k: v for k, v in changes.items() if k != "shared_with_all"}
    if spec_changes:
        deployment.generation += 1
        changes["generation"] = [deployment.generation - 1, deployment.generation]
    if changes:
        deployment.save()
    changes.update(sharing_changes)
    if changes:
        record_event(
            actor=actor,
            action="deployment.update",
            target=deployment,
            organization_id=deployment.organization_id,
            changes=changes,
        )
        if spec_changes:
            request_reconcile()
        if "shared_with_all" in changes or sharing_changes or "min_replicas" in changes:
            publish_on_commit()  # who may use its replicas, or cold starts, changed
    return deployment


@transaction.atomic
def delete_deployment(*, actor: Actor, deployment: Deployment) -> None:
    """Its replicas leave the gateway's routes at once and their nodes stop them."""
    require(actor, "deployment.change", deployment.organization)
    record_event(
        actor=actor,
        action="deployment.delete",
        target=deployment,
        organization_id=deployment.organization_id,
        changes=diff(_audit_values(deployment), {}),
    )
    deployment.delete()
    publish_on_commit()
    request_reconcile()


# --------------------------------------------------------------------------- routes
def set_replica_endpoint(replica: Replica, node: Node) -> None:
    host = node.address or node.name
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    replica.endpoint = f"http://{host}:{replica.port}" if replica.port else ""


def route_access(deployment: Deployment) -> tuple[str | None, list[str] | None]:
    """``(owner, orgs)`` of a deployment's routes (see ``contract.Route``): an
    organization's deployment serves its owner only; a platform deployment serves every
    organization (``None``) or the listed ones (possibly none)."""
    if deployment.organization_id is not None:
        owner = str(deployment.organization_id)
        return owner, [owner]
    if deployment.shared_with_all:
        return None, None
    return None, sorted(str(org.pk) for org in deployment.shared_with.all())


def autoscaled_aliases() -> set[str]:
    """Aliases served by an autoscaled deployment: the gateways hold their requests
    while no replica is ready (a cold start) instead of refusing them."""
    return set(
        Deployment.objects.filter(min_replicas__isnull=False).values_list(
            "model_version__model__alias", flat=True
        )
    )


def replica_routes() -> dict[str, list[contract.Route]]:
    """Gateway routes of the READY replicas, by model alias, each saying who may use it."""
    routes: dict[str, list[contract.Route]] = {}
    replicas = (
        Replica.objects.filter(state=ReplicaState.READY, node__state__in=["ready", "cordoned"])
        .select_related("deployment__model_version__model")
        .prefetch_related("deployment__shared_with")
        .order_by("id")
    )
    for replica in replicas:
        alias = replica.deployment.model_version.model.alias
        owner, orgs = route_access(replica.deployment)
        routes.setdefault(alias, []).append(
            {
                "id": str(replica.pk),
                "url": replica.endpoint,
                "api_key": decrypt_secret(replica.api_key_encrypted),
                "model": alias,
                "external": False,
                "owner": owner,
                "orgs": orgs,
            }
        )
    return routes


# --------------------------------------------------------------------------- artifacts
def cache_path_for(version: ModelVersion) -> Path:
    """The version's folder in the model cache; proven to stay inside the cache."""
    from workers.safepath import UnsafePath, check_name, path_within

    try:
        name = check_name(version.version, "version")
        return path_within(model_cache_dir(), version.model.alias, f"{name}-{str(version.pk)[:8]}")
    except UnsafePath as exc:
        raise ValidationError({"version": str(exc)}) from None


@transaction.atomic
def start_fetch(*, actor: Actor, version: ModelVersion, node: Node | None = None) -> ArtifactFetch:
    """Queue bringing ``version``'s files into the model cache (of ``node``, or the
    shared one)."""
    require(actor, "fleet.manage")
    if version.source_type == SourceType.EXTERNAL:
        raise ValidationError({"model": "An external model has no files to fetch."})
    running = ArtifactFetch.objects.filter(
        model_version=version, node=node, state__in=["queued", "running"]
    ).first()
    if running is not None:
        return running
    fetch = ArtifactFetch.objects.create(
        model_version=version, node=node, target_path=str(cache_path_for(version))
    )
    record_event(
        actor=actor,
        action="artifact.fetch",
        target=fetch,
        changes={
            "model_version": [None, str(version)],
            "node": [None, node.name if node else None],
        },
    )

    def enqueue() -> None:
        from controlplane.fleet.tasks import fetch_artifact

        try:
            fetch_artifact.apply_async(args=[str(fetch.pk)], queue="artifacts")
        except Exception:
            log.exception("could not enqueue artifact fetch %s", fetch.pk)

    transaction.on_commit(enqueue)
    return fetch


@transaction.atomic
def record_manifest(*, actor: Actor, version: ModelVersion, manifest: dict) -> ModelVersion:
    """Record the checksums of a version's files on first import (trust on first use;
    every later fetch is verified against them)."""
    require(actor, "catalog.change")
    validate_manifest(manifest)
    version = ModelVersion.objects.select_for_update().get(pk=version.pk)
    if version.file_manifest:
        if version.file_manifest != manifest:
            raise ValidationError(
                {"file_manifest": "The version already has a different manifest."}
            )
        return version
    version.file_manifest = dict(sorted(manifest.items()))
    version.save(update_fields=["file_manifest"])
    record_event(
        actor=actor,
        action="model_version.manifest_recorded",
        target=version,
        changes={"file_manifest": [None, f"{len(manifest)} files"]},
    )
    return version
