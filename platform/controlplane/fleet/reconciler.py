"""The reconciler's side effects on the database and the agents.

``reconcile()`` runs one level-triggered pass: mark silent nodes lost, apply the pure
plan (``fleet.reconcile``), place pending replicas (``fleet.placement``), and send every
node whose desired state changed (or that has not applied it yet) its whole desired
state. ``handle_node_report()`` applies one agent report. Both write an audit event and
republish the gateway snapshot when the set of READY replicas changes, so the gateway
routes to ready replicas only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import secrets

from django.db import connection, transaction
from django.utils import timezone

from controlplane.audit.services import record_event
from controlplane.catalog.secrets import decrypt_secret, encrypt_secret
from controlplane.env import env_int
from controlplane.fleet import autoscale, node_auth, placement, reconcile
from controlplane.fleet import services as fleet_services
from controlplane.fleet.models import (
    ArtifactFetch,
    Deployment,
    FetchState,
    Node,
    NodeState,
    Pool,
    Replica,
    ReplicaState,
)
from controlplane.snapshot import publish_on_commit
from controlplane.tenancy.actors import Actor
from gateway import contract
from workers import protocol

log = logging.getLogger(__name__)
RECONCILER = Actor.system("fleet-reconciler")
_LOCK_ID = 0x666C656574  # "fleet"


def port_range() -> tuple[int, int]:
    low = env_int("FLEET_PORT_MIN", 20000, minimum=1024)
    high = env_int("FLEET_PORT_MAX", 29999, minimum=low)
    return low, high


def send_to_agent(state: protocol.DesiredState) -> None:
    """Put the node's desired state on its agent's queue (overridden in tests)."""
    from controlplane.celery import app

    app.send_task(
        protocol.TASK_APPLY_DESIRED_STATE,
        args=[state],
        queue=protocol.agent_queue(state["node"]),
        expires=protocol.NODE_LOST_AFTER_SECONDS,
    )


def _send_on_commit(state: protocol.DesiredState) -> None:
    def send() -> None:
        try:
            send_to_agent(state)
        except Exception:  # resent by the next pass: the node has not applied it
            log.exception("could not send the desired state to %s", state["node"])

    transaction.on_commit(send)


def _lock() -> bool:
    """One reconciler at a time (PostgreSQL advisory lock; SQLite transactions are
    IMMEDIATE and so serialised already)."""
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_LOCK_ID])
        return bool(cursor.fetchone()[0])


def _ready_set() -> set:
    return set(
        Replica.objects.filter(
            state=ReplicaState.READY, node__state__in=["ready", "cordoned"]
        ).values_list("pk", "endpoint")
    )


def _announce_route_changes(before: set, after: set) -> None:
    """An audit event per replica entering or leaving the routes (it also moves the
    snapshot version forward), then publish."""
    if before == after:
        return
    changed = {pk for pk, _ in before ^ after}
    ready_ids = {pk for pk, _ in after}
    for replica in Replica.objects.filter(pk__in=changed).select_related("deployment"):
        serving = replica.pk in ready_ids
        record_event(
            actor=RECONCILER,
            action="replica.route_add" if serving else "replica.route_remove",
            target=replica,
            organization_id=replica.deployment.organization_id,
            changes={"routed": [not serving, serving], "endpoint": [None, replica.endpoint]},
        )
    gone = changed - {r.pk for r in Replica.objects.filter(pk__in=changed)}
    for pk in sorted(gone, key=str):
        record_event(
            actor=RECONCILER,
            action="replica.route_remove",
            target_type="replica",
            target_id=str(pk),
            target_repr=str(pk),
            changes={"routed": [True, False]},
        )
    publish_on_commit()


def _set_state(replica: Replica, state: str, now: dt.datetime) -> None:
    if replica.state != state:
        replica.state = state
        replica.state_changed_at = now


# --------------------------------------------------------------------------- reconcile
def _mark_lost_nodes(now: dt.datetime) -> None:
    cutoff = now - dt.timedelta(seconds=protocol.NODE_LOST_AFTER_SECONDS)
    for node in Node.objects.exclude(state=NodeState.LOST).filter(last_heartbeat__lt=cutoff):
        node.state = NodeState.LOST
        node.save(update_fields=["state"])
        record_event(
            actor=RECONCILER,
            action="node.lost",
            target=node,
            changes={
                "state": ["ready", "lost"],
                "last_heartbeat": [None, str(node.last_heartbeat)],
            },
        )


def demand_times() -> dict[str, float]:
    """When a gateway last held a request for each model alias that had no replica
    (the gateways' demand signal); empty when Redis is unreachable."""
    from controlplane.redis import get_redis

    try:
        client = get_redis()
        keys = list(client.scan_iter(match=contract.DEMAND_PREFIX + "*", count=200))
        values = client.mget(keys) if keys else []
    except Exception:  # the autoscaler then just does not wake anything this pass
        log.warning("could not read the gateways' demand signals", exc_info=True)
        return {}
    times: dict[str, float] = {}
    for key, value in zip(keys, values, strict=True):
        key = key.decode() if isinstance(key, bytes) else key
        try:
            times[key[len(contract.DEMAND_PREFIX) :]] = float(value)
        except (TypeError, ValueError):
            continue
    return times


def _ts(value: dt.datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _autoscale(now: dt.datetime) -> None:
    """Move each autoscaled deployment's replica count (``fleet.autoscale``); every
    change is an audited system event with its reason."""
    deployments = list(
        Deployment.objects.select_for_update(of=("self",))
        .filter(min_replicas__isnull=False)
        .select_related("model_version__model")
    )
    if not deployments:
        return
    demand = demand_times()
    ready = Replica.objects.filter(
        deployment__in=deployments,
        state=ReplicaState.READY,
        node__state__in=["ready", "cordoned"],
    )
    loads: dict = {}
    ready_since: dict = {}
    for replica in ready:
        loads.setdefault(replica.deployment_id, []).append(replica.load or {})
        ready_since[replica.deployment_id] = max(
            ready_since.get(replica.deployment_id, 0.0), replica.state_changed_at.timestamp()
        )
    for deployment in deployments:
        policy = autoscale.ScalePolicy(
            min_replicas=deployment.min_replicas,
            max_replicas=deployment.max_replicas or 0,
            target=deployment.scale_target,
            target_value=deployment.scale_target_value,
            scale_down_delay=deployment.scale_down_delay_seconds,
        )
        ready_loads = tuple(loads.get(deployment.pk, ()))
        dirty = []
        if autoscale.is_busy(policy, ready_loads):
            deployment.busy_at = now
            dirty.append("busy_at")
        if autoscale.is_active(ready_loads):
            deployment.active_at = now
            dirty.append("active_at")
        decision = autoscale.decide_scale(
            policy,
            autoscale.ScaleInputs(
                desired=deployment.replicas,
                ready_loads=ready_loads,
                now=now.timestamp(),
                # A user's change (creation included) counts as a change too, and so
                # does a replica becoming ready: it gets the whole delay to take work.
                changed_at=max(
                    _ts(deployment.scaled_at) or 0.0,
                    deployment.updated_at.timestamp(),
                    ready_since.get(deployment.pk, 0.0),
                ),
                busy_at=_ts(deployment.busy_at),
                active_at=_ts(deployment.active_at),
                demand_at=demand.get(deployment.model_version.model.alias),
            ),
        )
        if decision is not None:
            record_event(
                actor=RECONCILER,
                action="deployment.autoscale",
                target=deployment,
                organization_id=deployment.organization_id,
                changes={
                    "replicas": [deployment.replicas, decision.replicas],
                    "reason": [None, decision.reason],
                },
            )
            log.info(
                "%s: %d -> %d replicas (%s)",
                deployment,
                deployment.replicas,
                decision.replicas,
                decision.reason,
            )
            deployment.replicas = decision.replicas
            deployment.scaled_at = now
            dirty += ["replicas", "scaled_at"]
        if dirty:
            deployment.save(update_fields=dirty)


def _apply_plan(now: dt.datetime) -> None:
    deployments = list(Deployment.objects.all())
    views = [
        reconcile.DeploymentView(id=str(d.pk), replicas=d.replicas, spec_hash=d.spec_hash)
        for d in deployments
    ]
    # Row locks: a concurrent report must not write back a state read before this pass.
    rows = Replica.objects.select_for_update(of=("self",)).select_related("node", "deployment")
    replicas = {str(r.pk): r for r in rows}
    replica_views = [
        reconcile.ReplicaView(
            id=pk,
            deployment=str(r.deployment_id),
            spec_hash=r.spec_hash,
            state=r.state,
            created_at=r.created_at.timestamp(),
            node=r.node.name if r.node else None,
            node_lost=bool(r.node and r.node.state == NodeState.LOST),
            drain_started_at=r.drain_started_at.timestamp() if r.drain_started_at else None,
            load=r.load or {},
        )
        for pk, r in replicas.items()
    ]
    by_id = {str(d.pk): d for d in deployments}
    actions = reconcile.plan_reconcile(
        views,
        replica_views,
        now=now.timestamp(),
        drain_seconds=fleet_services.drain_seconds(),
    )
    for action in actions:
        if isinstance(action, reconcile.Create):
            deployment = by_id[action.deployment]
            for _ in range(action.count):
                replica = Replica.objects.create(
                    deployment=deployment,
                    spec_hash=deployment.spec_hash,
                    generation=deployment.generation,
                )
                record_event(
                    actor=RECONCILER,
                    action="replica.create",
                    target=replica,
                    organization_id=deployment.organization_id,
                    changes={
                        "deployment": [None, str(deployment)],
                        "spec_hash": [None, replica.spec_hash],
                    },
                )
            continue
        replica = replicas[action.replica]
        org_id = replica.deployment.organization_id
        if isinstance(action, reconcile.Forget):
            record_event(
                actor=RECONCILER,
                action="replica.delete",
                target=replica,
                organization_id=org_id,
                changes={"state": [replica.state, None], "reason": [None, action.reason]},
            )
            replica.delete()
        elif isinstance(action, reconcile.Drain):
            record_event(
                actor=RECONCILER,
                action="replica.drain",
                target=replica,
                organization_id=org_id,
                changes={"state": [replica.state, "draining"], "reason": [None, action.reason]},
            )
            _set_state(replica, ReplicaState.DRAINING, now)
            replica.drain_started_at = now
            replica.save()
        elif isinstance(action, reconcile.Stop):
            record_event(
                actor=RECONCILER,
                action="replica.stop",
                target=replica,
                organization_id=org_id,
                changes={"state": [replica.state, "stopped"], "reason": [None, action.reason]},
            )
            _set_state(replica, ReplicaState.STOPPED, now)
            replica.save()


def _allocate_port(used: set[int]) -> int | None:
    low, high = port_range()
    for port in range(low, high + 1):
        if port not in used:
            return port
    return None


def _place_pending(now: dt.datetime) -> None:
    pending = list(
        Replica.objects.filter(state=ReplicaState.PENDING, node=None).select_related(
            "deployment__model_version__model", "deployment__pool"
        )
    )
    if not pending:
        return
    by_pool: dict = {}
    for replica in pending:
        by_pool.setdefault(replica.deployment.pool_id, []).append(replica)
    for pool_id, replicas in sorted(by_pool.items(), key=lambda item: str(item[0])):
        pool = Pool.objects.get(pk=pool_id)
        nodes = list(Node.objects.filter(pool=pool).select_related("pool"))
        node_views = [
            placement.Node(
                name=n.name,
                gpus=tuple(
                    placement.Gpu(int(g["index"]), int(g["memory_total_mib"]))
                    for g in (n.inventory or {}).get("gpus", [])
                ),
                labels=n.effective_labels,
                schedulable=n.state == NodeState.READY,
            )
            for n in nodes
        ]
        existing = [
            placement.Placed(
                node=r.node.name,
                gpu_indices=tuple(r.gpu_indices),
                memory_mib=r.memory_mib,
                deployment=str(r.deployment_id),
            )
            for r in Replica.objects.filter(node__pool=pool).select_related("node")
        ]
        requests = []
        for replica in replicas:
            mib, fraction = fleet_services.memory_request(replica.deployment)
            requests.append(
                placement.ReplicaRequest(
                    id=str(replica.pk),
                    deployment=str(replica.deployment_id),
                    tensor_parallel_size=replica.deployment.tensor_parallel_size,
                    memory_mib=mib,
                    memory_fraction=fraction,
                    selector=replica.deployment.selector,
                )
            )
        result = placement.place_replicas(requests, node_views, existing, pool.strategy)
        node_by_name = {n.name: n for n in nodes}
        ports: dict[str, set[int]] = {}
        for replica in replicas:
            assignment = result.assignments.get(str(replica.pk))
            if assignment is None:
                reason = result.refusals[str(replica.pk)]
                if replica.placement_reason != reason:
                    replica.placement_reason = reason
                    replica.save(update_fields=["placement_reason"])
                continue
            node = node_by_name[assignment.node]
            if node.name not in ports:
                ports[node.name] = set(
                    Replica.objects.filter(node=node)
                    .exclude(port=None)
                    .values_list("port", flat=True)
                )
            port = _allocate_port(ports[node.name])
            if port is None:
                replica.placement_reason = f"node {node.name} has no free port left"
                replica.save(update_fields=["placement_reason"])
                continue
            ports[node.name].add(port)
            replica.node = node
            replica.gpu_indices = list(assignment.gpu_indices)
            replica.memory_mib = assignment.memory_mib
            replica.port = port
            replica.api_key_encrypted = encrypt_secret(secrets.token_urlsafe(32))
            fleet_services.set_replica_endpoint(replica, node)
            replica.placement_reason = ""
            _set_state(replica, ReplicaState.PLACED, now)
            replica.save()
            record_event(
                actor=RECONCILER,
                action="replica.place",
                target=replica,
                organization_id=replica.deployment.organization_id,
                changes={
                    "node": [None, node.name],
                    "gpu_indices": [None, replica.gpu_indices],
                    "port": [None, port],
                },
            )


def _source_for(version, node: Node) -> protocol.ModelSource:
    done = (
        ArtifactFetch.objects.filter(model_version=version, state=FetchState.DONE)
        .filter(node__in=[node.pk, None])
        .order_by("-finished_at")
        .first()
    )
    if done is not None:
        path = done.target_path
    elif version.source_type == "local":
        path = version.local_path
    else:
        path = str(fleet_services.cache_path_for(version))
    return {
        "type": "local" if version.source_type == "local" or done else "huggingface",
        "path": path,
        "sha256_manifest": dict(version.file_manifest or {}),
    }


def _gpu_total(node: Node, index: int) -> int:
    for gpu in (node.inventory or {}).get("gpus", []):
        if int(gpu.get("index", -1)) == index:
            return int(gpu.get("memory_total_mib") or 0)
    return 0


def replica_spec(replica: Replica, node: Node) -> protocol.ReplicaSpec:
    deployment = replica.deployment
    version = deployment.model_version
    engine_args = fleet_services.engine_args_for(deployment)
    totals = [_gpu_total(node, i) for i in replica.gpu_indices]
    if totals and min(totals) > 0 and replica.memory_mib:
        # vLLM claims this fraction of each GPU: exactly what the scheduler reserved.
        engine_args["gpu_memory_utilization"] = round(
            min(0.95, replica.memory_mib / min(totals)), 3
        )
    on_cpu = (node.inventory or {}).get("kind") == "cpu"
    return {
        "id": str(replica.pk),
        "deployment": str(deployment.pk),
        "model_alias": version.model.alias,
        "served_model_name": version.model.alias,
        "source": _source_for(version, node),
        "task": fleet_services.served_task(version),  # type: ignore[typeddict-item]
        "port": replica.port or 0,
        "api_key": decrypt_secret(replica.api_key_encrypted) or "",
        "gpu_indices": [] if on_cpu else list(replica.gpu_indices),
        "max_model_len": fleet_services.effective_max_model_len(deployment) or 2048,
        "engine_args": engine_args,
        "trust_remote_code": fleet_services.trust_remote_code(version),
        "spec_hash": replica.spec_hash,
    }


def desired_state(node: Node) -> protocol.DesiredState:
    replicas = (
        node.replicas.filter(state__in=reconcile.ON_NODE)
        .select_related("deployment__model_version__model")
        .order_by("id")
    )
    return {
        "protocol": protocol.PROTOCOL_VERSION,
        "node": node.name,
        "generation": node.generation_desired,
        "replicas": [replica_spec(r, node) for r in replicas],
    }


def _state_hash(state: protocol.DesiredState) -> str:
    body = json.dumps(state["replicas"], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def _push_desired_states() -> None:
    for node in Node.objects.select_for_update().order_by("name"):
        state = desired_state(node)
        digest = _state_hash(state)
        if digest != node.desired_hash:
            node.generation_desired += 1
            node.desired_hash = digest
            node.save(update_fields=["generation_desired", "desired_hash"])
            state["generation"] = node.generation_desired
            node.replicas.filter(state=ReplicaState.STOPPED, removed_at_generation=None).update(
                removed_at_generation=node.generation_desired
            )
        elif node.generation_applied >= node.generation_desired:
            continue  # the agent has it
        if node.state != NodeState.LOST:
            _send_on_commit(state)


def reconcile_once(now: dt.datetime | None = None) -> bool:
    """One pass; returns False when another reconciler holds the lock."""
    now = now or timezone.now()
    with transaction.atomic():
        if not _lock():
            return False
        before = _ready_set()
        _mark_lost_nodes(now)
        _autoscale(now)
        _apply_plan(now)
        _place_pending(now)
        _push_desired_states()
        _announce_route_changes(before, _ready_set())
    return True


# --------------------------------------------------------------------------- reports
class BadReport(ValueError):
    pass


def _validate_report(report) -> None:
    if not isinstance(report, dict):
        raise BadReport("a report must be an object")
    if report.get("protocol") != protocol.PROTOCOL_VERSION:
        raise BadReport(f"protocol {report.get('protocol')!r} is not {protocol.PROTOCOL_VERSION}")
    for key, kind in (
        ("node", str),
        ("pool", str),
        ("address", str),
        ("labels", dict),
        ("inventory", dict),
        ("generation_applied", int),
        ("replicas", list),
        ("sent_at", (int, float)),
    ):
        if not isinstance(report.get(key), kind):
            raise BadReport(f"{key} is missing or has the wrong type")
    gpus = report["inventory"].get("gpus", [])
    if not isinstance(gpus, list) or not all(
        isinstance(g, dict)
        and isinstance(g.get("index"), int)
        and isinstance(g.get("memory_total_mib"), int)
        for g in gpus
    ):
        raise BadReport("inventory.gpus must list objects with index and memory_total_mib")
    for item in report["replicas"]:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise BadReport("every replica report needs an id")


def _move_node_address(node: Node, address: str) -> None:
    record_event(
        actor=RECONCILER,
        action="node.address_move",
        target=node,
        changes={"address": [node.address, address]},
    )
    node.address = address
    for replica in node.replicas.all():
        fleet_services.set_replica_endpoint(replica, node)
        replica.save(update_fields=["endpoint"])
    publish_on_commit()


def handle_node_report(report, now: dt.datetime | None = None) -> str:
    """Apply one agent report; returns what happened (for logs and tests). Only a
    report signed by the registered node it names, from the node's registered address,
    is applied (``node_auth``); a refused one is counted and audited and changes
    nothing else. A report older than the newest one applied changes nothing."""
    now = now or timezone.now()
    try:
        _validate_report(report)
    except BadReport as exc:
        log.warning("node report dropped: %s", exc)
        return "invalid"
    with transaction.atomic():
        node = Node.objects.select_for_update().filter(name=report["node"]).first()
        reason, charged = node_auth.check_report(report, node)
        if reason is not None:
            node_auth.refuse_report(report, reason, charged)
            return f"refused: {reason}"
        if report["sent_at"] <= node.last_report_sent_at:
            return "stale"
        before = _ready_set()
        if report["address"] != node.address:
            # Signed by the node itself and inside the network an administrator
            # registered for it (node_auth): a pod that came back with a new IP.
            _move_node_address(node, report["address"])
        node.last_report_sent_at = float(report["sent_at"])
        node.last_heartbeat = now
        node.reported_labels = {
            str(k)[:63]: str(v)[:63] for k, v in list(report["labels"].items())[:32]
        }
        node.inventory = report["inventory"]
        node.agent_version = str(report.get("agent_version", ""))[:64]
        node.generation_applied = max(node.generation_applied, report["generation_applied"])
        if node.state == NodeState.LOST:
            node.state = NodeState.READY
            node.refresh_state()
            record_event(
                actor=RECONCILER,
                action="node.recover",
                target=node,
                changes={"state": ["lost", node.state]},
            )
        node.save()
        reported = {item["id"]: item for item in report["replicas"]}
        rows = Replica.objects.select_for_update(of=("self",)).filter(node=node)
        for replica in rows.select_related("deployment"):
            item = reported.get(str(replica.pk))
            if replica.state == ReplicaState.STOPPED:
                gone = item is None or item.get("state") == "stopped"
                applied = (replica.removed_at_generation or 0) <= node.generation_applied
                if gone and replica.removed_at_generation and applied:
                    replica.delete()
                continue
            if item is None or item.get("spec_hash") != replica.spec_hash:
                continue
            state = reconcile.next_state(replica.state, str(item.get("state")))
            _set_state(replica, state, now)
            replica.restarts = max(0, int(item.get("restarts") or 0))
            replica.last_error = str(item.get("last_error") or "")[:4000]
            if state == ReplicaState.FAILED and not replica.last_error:
                replica.last_error = "the agent reports the process stopped"
            load = item.get("load")
            replica.load = (
                {k: float(v) for k, v in load.items() if isinstance(v, int | float)}
                if isinstance(load, dict)
                else {}
            )
            if item.get("port") and item["port"] != replica.port:
                log.warning(
                    "replica %s reports port %s, not %s", replica.pk, item["port"], replica.port
                )
            fleet_services.set_replica_endpoint(replica, node)
            replica.save()
        _resend_if_agent_lost_replicas(node, reported)
        _announce_route_changes(before, _ready_set())
    return "applied"


def _resend_if_agent_lost_replicas(node: Node, reported: dict) -> None:
    """Level-triggered, both ways: an agent that says it applied the newest desired
    state but does not hold every replica of it (it restarted and stopped them on exit,
    or lost its state) gets that state again, under a new generation."""
    if node.generation_applied < node.generation_desired:
        return  # the agent has not applied the newest state yet; it will hold them
    wanted = node.replicas.filter(state__in=reconcile.ON_NODE).exclude(state=ReplicaState.DRAINING)
    if any(str(pk) not in reported for pk in wanted.values_list("pk", flat=True)):
        log.info("node %s does not hold all its replicas; sending its state again", node.name)
        node.desired_hash = ""  # differs from every state: the next pass bumps and sends
        node.save(update_fields=["desired_hash"])
        fleet_services.request_reconcile()
