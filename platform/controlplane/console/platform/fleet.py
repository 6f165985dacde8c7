"""The fleet: pools, nodes with heartbeat age and per-GPU memory, cordon/uncordon."""

from __future__ import annotations

from django.db.models import Count
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from controlplane.console.platform.base import (
    page_context,
    platform_page,
)
from controlplane.fleet import services as fleet_services
from controlplane.fleet.models import Node, Pool, Replica, ReplicaState


# --------------------------------------------------------------------------- fleet
def _age(moment, now) -> str:
    if moment is None:
        return "never"
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min ago"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"


def _gpus(node: Node, replicas: list[Replica]) -> list[dict]:
    """Each GPU of the node: total from its inventory, reserved by each deployment
    whose replicas hold it, and what is left."""
    rows = []
    for gpu in sorted((node.inventory or {}).get("gpus", []), key=lambda g: g.get("index", 0)):
        index = int(gpu.get("index", 0))
        total = int(gpu.get("memory_total_mib") or 0)
        holders = [
            {
                "deployment": (
                    f"{r.deployment.organization.slug}/{r.deployment.name}"
                    if r.deployment.organization_id
                    else f"platform/{r.deployment.name}"
                ),
                "mib": r.memory_mib,
            }
            for r in replicas
            if index in (r.gpu_indices or [])
        ]
        reserved = sum(h["mib"] for h in holders)
        rows.append(
            {
                "index": index,
                "name": gpu.get("name", ""),
                "total": total,
                "reserved": reserved,
                "free": max(0, total - reserved),
                "high": total * 9 // 10,
                "holders": holders,
                "over": reserved > total,
            }
        )
    return rows


def _fleet_page(request, status=200, **extra):
    now = timezone.now()
    pools = Pool.objects.annotate(node_count=Count("nodes")).order_by("name")
    nodes = list(Node.objects.select_related("pool").order_by("pool__name", "name"))
    replicas: dict = {}
    for replica in (
        Replica.objects.filter(node__in=nodes)
        .exclude(state=ReplicaState.STOPPED)
        .select_related("deployment__organization")
    ):
        replicas.setdefault(replica.node_id, []).append(replica)
    rows = [
        {
            "node": node,
            "heartbeat_age": _age(node.last_heartbeat, now),
            "gpus": _gpus(node, replicas.get(node.pk, [])),
            "replica_count": len(replicas.get(node.pk, [])),
        }
        for node in nodes
    ]
    return render(
        request,
        "console/platform/fleet.html",
        page_context(request, "fleet", pools=pools, rows=rows, **extra),
        status=status,
    )


@require_GET
@platform_page
def fleet(request):
    return _fleet_page(request)


@require_POST
@platform_page
def node_cordon(request, name):
    node = Node.objects.filter(name=name).first()
    if node is None:
        raise Http404("No such node.")
    fleet_services.set_cordoned(
        actor=request.actor, node=node, cordoned=request.POST.get("cordoned") == "1"
    )
    return redirect("console:platform-fleet")
