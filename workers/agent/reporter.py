"""Sends this node's whole actual state (a protocol.NodeReport) to the control plane.

A report goes out on start, every heartbeat, and as soon as possible after any replica
changes state. Changes that happen while a report is being sent are coalesced into the
next one; since each report is the whole state, nothing is lost by that, and a report
that could not be sent (broker down) is repaired by the next heartbeat.

`notify()` returns a ticket; `sent(ticket)` is true once a report built after that
notification has gone out. Draining uses it to make sure the control plane was told
`draining` before the replica stops taking requests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from workers import protocol
from workers.agent import AGENT_VERSION
from workers.agent.settings import AgentSettings
from workers.protocol import Inventory, NodeReport, ReplicaReport

log = logging.getLogger(__name__)


class Reporter:
    def __init__(
        self,
        settings: AgentSettings,
        *,
        snapshot: Callable[[], tuple[int, list[ReplicaReport]]],
        inventory: Callable[[], Inventory],
        send: Callable[[NodeReport], None],
    ):
        self.settings = settings
        self._snapshot = snapshot
        self._inventory = inventory
        self._send = send
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._requested = 0  # ticket of the latest notification
        self._sent = 0  # highest ticket covered by a report that went out
        self._thread: threading.Thread | None = None
        self.reports_sent = 0
        self.last_error: str = ""
        # The last report that went out and when (time.monotonic()): the agent's own
        # /healthz and /metrics read them.
        self.last_report: NodeReport | None = None
        self.last_sent_at: float | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="agent-reporter", daemon=True)
        self._thread.start()

    def notify(self) -> int:
        with self._lock:
            self._requested += 1
            ticket = self._requested
        self._wake.set()
        return ticket

    def sent(self, ticket: int) -> bool:
        with self._lock:
            return self._sent >= ticket

    def stop(self, *, final_report: bool = True, timeout: float = 15) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if final_report:
            self.send_now()

    def build_report(self) -> NodeReport:
        """The node's whole actual state, signed with the node secret."""
        generation, replicas = self._snapshot()
        report: NodeReport = {
            "protocol": protocol.PROTOCOL_VERSION,
            "node": self.settings.node_name,
            "pool": self.settings.pool,
            "address": self.settings.address,
            "labels": dict(self.settings.labels),
            "inventory": self._inventory(),
            "generation_applied": generation,
            "replicas": replicas,
            "sent_at": time.time(),
            "agent_version": AGENT_VERSION,
        }
        return protocol.sign_report(report, self.settings.node_secret)

    def send_now(self) -> bool:
        with self._lock:
            ticket = self._requested
        try:
            report = self.build_report()
            self._send(report)
        except Exception as error:  # the broker or the loop; the next heartbeat retries
            self.last_error = f"{type(error).__name__}: {error}"
            log.warning("could not send the node report: %s", self.last_error)
            return False
        with self._lock:
            self._sent = max(self._sent, ticket)
            self.last_report = report
            self.last_sent_at = time.monotonic()
        self.reports_sent += 1
        return True

    def _run(self) -> None:
        self._wake.set()  # the first report goes out at once
        while not self._stop.is_set():
            self._wake.wait(self.settings.heartbeat_seconds)
            if self._stop.is_set():
                break
            self._wake.clear()
            if not self.send_now():
                # Do not spin on a broker that is down; retry within a heartbeat.
                self._stop.wait(min(1.0, self.settings.heartbeat_seconds))
