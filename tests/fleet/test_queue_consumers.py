"""Every Celery queue the control plane sends to has a consumer: the single-machine
launcher's one worker takes them all; in Kubernetes the worker and the artifact worker
share them out."""

from __future__ import annotations

import pytest
from controlplane import bootstrap
from django.conf import settings

from tests.deploy.conftest import CHART, by_kind, ci_objects, pod_spec

queues_sent_to = {"default", "fleet"} | {r["queue"] for r in settings.CELERY_TASK_ROUTES.values()}


def test_the_queues_sent_to():
    assert queues_sent_to == {"default", "fleet", "artifacts"}


def test_the_launchers_worker_consumes_every_queue(monkeypatch):
    monkeypatch.setenv("REDIS_URL", settings.REDIS_URL)
    services = bootstrap.platform_services(
        host="127.0.0.1", port=8000, gateway_port=8080, control_plane_only=False
    )
    [worker] = [s for s in services if s.name == "worker"]
    queues = set(worker.argv[list(worker.argv).index("-Q") + 1].split(","))
    assert queues == queues_sent_to


@pytest.mark.parametrize("scenario", ["minimal-values.yaml", "ha-values.yaml"])
def test_the_charts_workers_consume_every_queue_once(scenario):
    consumed: list[str] = []
    for deployment in by_kind(ci_objects(CHART / "ci" / scenario), "Deployment"):
        [container] = pod_spec(deployment)["containers"]
        if "worker" in container["command"] and "celery" in container["command"]:
            consumed += container["command"][container["command"].index("-Q") + 1].split(",")
    assert sorted(consumed) == sorted(queues_sent_to)
