"""The node agent's own HTTP endpoint (``AGENT_HTTP_PORT``): a liveness probe and the
node's figures for Prometheus.

``GET /healthz``  200 when the supervisor's loop answers and a report went out within
                  three heartbeats; else 503 naming what is wrong.
``GET /metrics``  Prometheus text built from the last report sent: replicas by state,
                  requests running and waiting and KV-cache use per replica, free and
                  total memory per GPU, the age of that report.

Replicas listen on ports chosen at run time, which Prometheus cannot be told about;
this fixed port carries their load figures instead (read by the agent from each
replica's own ``/metrics`` on every health check).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import get_args

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from workers.protocol import NodeReport, ReplicaState

log = logging.getLogger(__name__)

REPORT_HEARTBEATS_ALLOWED = 3
REPLICA_STATES = list(get_args(ReplicaState))


class AgentStatus:
    """What the endpoint reads: the loop's liveness and the reporter's last report."""

    def __init__(
        self,
        *,
        node: str,
        heartbeat_seconds: float,
        loop_alive: Callable[[], bool],
        last_report: Callable[[], tuple[NodeReport | None, float | None]],
    ):
        self.node = node
        self.heartbeat_seconds = heartbeat_seconds
        self.loop_alive = loop_alive
        self.last_report = last_report

    def health(self) -> tuple[bool, dict[str, str]]:
        checks = {"loop": "ok" if self.loop_alive() else "the supervisor loop does not answer"}
        _report, sent_at = self.last_report()
        allowed = REPORT_HEARTBEATS_ALLOWED * self.heartbeat_seconds
        if sent_at is None:
            checks["report"] = "no report sent yet"
        elif time.monotonic() - sent_at > allowed:
            checks["report"] = f"no report sent for more than {allowed:g} s"
        else:
            checks["report"] = "ok"
        return all(value == "ok" for value in checks.values()), checks

    def collect(self):
        report, sent_at = self.last_report()
        age = GaugeMetricFamily(
            "agent_report_age_seconds",
            "Seconds since the agent last sent its node report (NaN: never)",
            labels=["node"],
        )
        age.add_metric([self.node], float("nan") if sent_at is None else time.monotonic() - sent_at)
        yield age
        by_state = GaugeMetricFamily(
            "agent_replicas", "Replicas on this node by state", labels=["node", "state"]
        )
        running = GaugeMetricFamily(
            "agent_replica_requests_running",
            "Requests a replica is processing",
            labels=["node", "replica"],
        )
        waiting = GaugeMetricFamily(
            "agent_replica_requests_waiting",
            "Requests queued in a replica",
            labels=["node", "replica"],
        )
        kv_cache = GaugeMetricFamily(
            "agent_replica_kv_cache_usage_ratio",
            "Fraction of a replica's KV cache in use (0-1)",
            labels=["node", "replica"],
        )
        gpu_free = GaugeMetricFamily(
            "agent_gpu_memory_free_bytes", "Free memory per GPU", labels=["node", "gpu", "uuid"]
        )
        gpu_total = GaugeMetricFamily(
            "agent_gpu_memory_total_bytes", "Memory per GPU", labels=["node", "gpu", "uuid"]
        )
        counts = dict.fromkeys(REPLICA_STATES, 0)
        if report is not None:
            for replica in report["replicas"]:
                counts[replica["state"]] = counts.get(replica["state"], 0) + 1
                load = replica.get("load") or {}
                labels = [self.node, replica["id"]]
                if "num_requests_running" in load:
                    running.add_metric(labels, load["num_requests_running"])
                if "num_requests_waiting" in load:
                    waiting.add_metric(labels, load["num_requests_waiting"])
                if "kv_cache_usage_perc" in load:
                    kv_cache.add_metric(labels, load["kv_cache_usage_perc"])
            if report["inventory"]["kind"] == "gpu":
                for gpu in report["inventory"]["gpus"]:
                    labels = [self.node, str(gpu["index"]), gpu["uuid"]]
                    gpu_free.add_metric(labels, gpu["memory_free_mib"] * 1024 * 1024)
                    gpu_total.add_metric(labels, gpu["memory_total_mib"] * 1024 * 1024)
        for state, count in counts.items():
            by_state.add_metric([self.node, state], count)
        yield from (by_state, running, waiting, kv_cache, gpu_free, gpu_total)


class _Handler(BaseHTTPRequestHandler):
    status: AgentStatus  # set on the class made per server

    def do_GET(self):
        if self.path == "/healthz":
            healthy, checks = self.status.health()
            body = json.dumps({"status": "ok" if healthy else "unhealthy", "checks": checks})
            self._send(200 if healthy else 503, "application/json", body.encode())
        elif self.path == "/metrics":
            registry = CollectorRegistry()
            registry.register(self.status)
            self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
        else:
            self._send(404, "application/json", b'{"error": "not found"}')

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # probes every few seconds: not worth a line
        pass


class AgentHttpServer:
    def __init__(self, host: str, port: int, status: AgentStatus):
        handler = type("AgentHandler", (_Handler,), {"status": status})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="agent-http", daemon=True
        )
        self._thread.start()
        log.info("agent endpoint on %s:%d (/healthz, /metrics)", *self.server.server_address[:2])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
