"""The agent's own, minimal Celery app: configured only from its settings (broker URL).

It consumes nothing but the node's queue (`protocol.agent_queue(node)`), runs its one
task in the worker's own process (the `solo` pool: the task hands the desired state to
the supervisor living in this process), stores no results, and publishes node reports
to `protocol.FLEET_QUEUE`. It never imports Django or the control plane.

Kombu's ack emulation is off: with it, every consumer of the broker keeps the messages
it is processing in one shared `unacked` hash, which an agent would then need to read
and write, and which holds the other nodes' desired states (with their replica keys).
Without it a desired state being applied when the agent dies is lost, which costs
nothing: the reconciler sends the whole state again until the node reports it applied.
The agent's Redis ACL user (`broker_acl.py`) can therefore be limited to its own queue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Celery
from kombu import Queue

from workers import protocol
from workers.agent.settings import AgentSettings
from workers.protocol import NodeReport

log = logging.getLogger(__name__)


def create_celery_app(settings: AgentSettings, on_desired_state: Callable[[dict], dict]) -> Celery:
    """The Celery app of one agent; `on_desired_state` runs for every desired state."""
    app = Celery(f"agent-{settings.node_name}", set_as_current=False)
    app.conf.update(
        broker_url=settings.broker_url,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a node agent waits for its broker forever
        result_backend=None,
        broker_transport_options={"ack_emulation": False},
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_queues=[Queue(settings.queue, routing_key=settings.queue)],
        task_default_queue=settings.queue,
        task_create_missing_queues=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_pool="solo",
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 3,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 2,
        },
        enable_utc=True,
    )

    @app.task(name=protocol.TASK_APPLY_DESIRED_STATE, ignore_result=True)
    def apply_desired_state(desired_state: dict | None = None, **kwargs) -> dict:
        message = desired_state if desired_state is not None else kwargs.get("state")
        return on_desired_state(message)  # type: ignore[arg-type]

    return app


def send_node_report(app: Celery, report: NodeReport) -> None:
    # declare=[]: the control plane's worker declares the fleet queue; the agent only
    # pushes onto it (its ACL user may not touch the queue's binding table).
    app.send_task(
        protocol.TASK_NODE_REPORT,
        args=[report],
        queue=protocol.FLEET_QUEUE,
        declare=[],
    )
