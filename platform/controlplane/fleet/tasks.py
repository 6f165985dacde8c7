"""Celery tasks of the fleet (queue ``fleet``; artifact fetches on ``artifacts``, so a
long download never holds up node reports). Thin: the work is in ``reconciler``
and ``artifacts``; every task is idempotent and takes ids or plain JSON."""

from __future__ import annotations

from celery import shared_task

from controlplane.fleet import artifacts, reconciler
from workers import protocol


@shared_task(name="fleet.reconcile", ignore_result=True)
def reconcile() -> bool:
    """One level-triggered pass (beat runs it every few seconds)."""
    return reconciler.reconcile_once()


@shared_task(name=protocol.TASK_NODE_REPORT, ignore_result=True)
def node_report(report: protocol.NodeReport) -> str:
    """An agent's whole actual state (heartbeat and every replica change)."""
    return reconciler.handle_node_report(report)


@shared_task(name="fleet.fetch_artifact", ignore_result=True)
def fetch_artifact(fetch_id: str) -> str:
    """Bring a model version's files into the model cache, verifying every checksum."""
    return artifacts.run_fetch(fetch_id)
