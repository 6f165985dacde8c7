"""The node agent assembled: inventory, supervisor, reporter and the Celery worker.

    agent = Agent(AgentSettings.from_env())
    agent.start()          # adopt survivors, start supervising and reporting
    agent.run_worker()     # consume the node's queue until SIGTERM/SIGINT
    agent.stop()           # leave replicas running (or stop them: stop_replicas_on_exit)

Threads: the Celery worker consumes in the main thread (it owns the signal handlers),
the supervisor's asyncio loop and the reporter each run in their own thread.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

from celery.signals import worker_ready

from workers.agent.celery_app import create_celery_app, send_node_report
from workers.agent.http import AgentHttpServer, AgentStatus
from workers.agent.inventory import discover_inventory, load_nvml
from workers.agent.reporter import Reporter
from workers.agent.settings import AgentSettings
from workers.agent.supervisor import DesiredStateError, Supervisor, check_desired_state
from workers.protocol import Inventory, NodeReport

log = logging.getLogger(__name__)


class InventoryCache:
    """The node's inventory, probed again at most every `max_age` seconds."""

    def __init__(self, max_age: float, nvml: Any | None = None):
        self.max_age = max_age
        self._nvml = nvml if nvml is not None else load_nvml()
        self._lock = threading.Lock()
        self._value: Inventory | None = None
        self._taken_at = 0.0

    def __call__(self) -> Inventory:
        with self._lock:
            now = time.monotonic()
            if self._value is None or now - self._taken_at >= self.max_age:
                value = discover_inventory(self._nvml)
                if self._value is None or _devices(value) != _devices(self._value):
                    log.info(
                        "inventory: %s node, devices %s",
                        value["kind"],
                        ", ".join(f"{g['index']}:{g['name']}" for g in value["gpus"]),
                    )
                self._value = value
                self._taken_at = now
            return self._value


def _devices(inventory: Inventory) -> list[tuple[int, str, str]]:
    return [(gpu["index"], gpu["uuid"], gpu["name"]) for gpu in inventory["gpus"]]


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        *,
        nvml: Any | None = None,
        base_env: dict[str, str] | None = None,
    ):
        self.settings = settings
        self.inventory = InventoryCache(max_age=settings.heartbeat_seconds, nvml=nvml)
        self.celery = create_celery_app(settings, self.receive_desired_state)
        self.reporter = Reporter(
            settings,
            snapshot=self._snapshot,
            inventory=self.inventory,
            send=self._send_report,
        )
        self.supervisor = Supervisor(
            settings,
            inventory=self.inventory,
            on_change=self.reporter.notify,
            report_sent=self.reporter.sent,
            base_env=base_env,
            on_fatal=self._supervisor_died,
        )
        self.http: AgentHttpServer | None = None
        if settings.http_port is not None:
            self.http = AgentHttpServer(
                settings.http_host,
                settings.http_port,
                AgentStatus(
                    node=settings.node_name,
                    heartbeat_seconds=settings.heartbeat_seconds,
                    loop_alive=self.supervisor.alive,
                    last_report=lambda: (self.reporter.last_report, self.reporter.last_sent_at),
                ),
            )
        self._started = False
        # SIGTERM/SIGINT caught while starting, before the Celery worker handles them
        self.early_signals: list[int] = []

    def start(self) -> None:
        inventory = self.inventory()
        log.info(
            "node agent %s (pool %s) starting: %s node, %d device(s), queue %s, broker %s",
            self.settings.node_name,
            self.settings.pool,
            inventory["kind"],
            len(inventory["gpus"]),
            self.settings.queue,
            self.settings.redacted_broker_url,
        )
        self.supervisor.start()
        self.reporter.start()
        if self.http is not None:
            self.http.start()
        self._started = True

    def run_worker(self) -> None:
        """Consume the node's queue in this thread until a shutdown signal."""
        if self.early_signals:
            return

        def redeliver(**_kwargs: object) -> None:
            # A signal caught before the worker's own handlers were in place (see
            # __main__) is delivered again now that they are.
            if self.early_signals:
                os.kill(os.getpid(), self.early_signals[0])

        worker_ready.connect(redeliver, weak=False)
        worker = self.celery.Worker(
            queues=[self.settings.queue],
            pool="solo",
            concurrency=1,
            without_gossip=True,
            without_mingle=True,
            without_heartbeat=True,
            hostname=f"agent@{self.settings.node_name}",
            loglevel=self.settings.log_level,
            quiet=True,
        )
        worker.start()

    def stop(self, *, stop_replicas: bool | None = None) -> None:
        if not self._started:
            return
        stop_replicas = (
            self.settings.stop_replicas_on_exit if stop_replicas is None else stop_replicas
        )
        log.info(
            "node agent stopping; replicas %s",
            "are drained and stopped" if stop_replicas else "keep running for re-adoption",
        )
        self.supervisor.stop(stop_replicas=stop_replicas)
        self.reporter.stop(final_report=True)
        if self.http is not None:
            self.http.stop()
        self._started = False

    def receive_desired_state(self, message: dict) -> dict:
        """The Celery task's body: check the message and hand it to the supervisor."""
        try:
            desired_state = check_desired_state(message, self.settings.node_name)
        except DesiredStateError as error:
            log.error("rejected a desired state: %s", error)
            return {"applied": False, "error": str(error)}
        applied = self.supervisor.submit(desired_state).result(timeout=30)
        return {
            "applied": applied,
            "generation": desired_state["generation"],
            "generation_applied": self.supervisor.generation_applied,
        }

    def _supervisor_died(self, error: BaseException) -> None:
        log.critical("the supervisor stopped (%s); shutting the agent down", error)
        os.kill(os.getpid(), signal.SIGTERM)  # the worker's clean shutdown path

    def _snapshot(self):
        return self.supervisor.snapshot()

    def _send_report(self, report: NodeReport) -> None:
        send_node_report(self.celery, report)
