"""The wire contract between the control plane's reconciler and the node agents.

Both sides exchange plain JSON-able dicts through Celery over Redis (the broker);
the agent holds broker credentials only, never database ones.

- The reconciler sends each agent its WHOLE desired state, level-triggered, on the
  agent's own queue ``agent_queue(node_name)`` as task ``TASK_APPLY_DESIRED_STATE``.
  ``generation`` increases with every change; an agent ignores a state whose
  generation is lower than the one it already applied (a stale message never undoes a
  newer one). Sending the same state twice is harmless.
- The agent reports on queue ``FLEET_QUEUE`` with task ``TASK_NODE_REPORT``: on
  start, on every heartbeat (``HEARTBEAT_SECONDS``) and whenever a replica changes
  state. A report is the node's whole actual state, so a lost report is repaired by
  the next one.
- Every report is signed by its node: HMAC-SHA256, keyed with the node's own secret
  (issued when an administrator registers the node), over ``canonical_report()``
  (every field but ``signature``, ``signed_by`` included). The control plane refuses a
  report whose signature does not verify, that names another node than its signer, that
  comes from an unknown node or that reports another address than the registered one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Literal, NotRequired, TypedDict

PROTOCOL_VERSION = 1

FLEET_QUEUE = "fleet"
TASK_APPLY_DESIRED_STATE = "agent.apply_desired_state"
TASK_NODE_REPORT = "fleet.node_report"
HEARTBEAT_SECONDS = 10
#: A node that has not reported for this long is lost; its replicas are re-placed.
NODE_LOST_AFTER_SECONDS = 45


#: The only signature scheme; a report naming another one is refused.
SIGNATURE_ALGORITHM = "hmac-sha256"


def agent_queue(node_name: str) -> str:
    return f"agent.{node_name}"


ReplicaState = Literal["pending", "placed", "starting", "ready", "draining", "stopped", "failed"]


class ModelSource(TypedDict):
    type: Literal["local", "huggingface"]
    path: str  # local directory on the node (after the artifact was fetched there)
    sha256_manifest: dict[str, str]  # relative path -> sha256, may be empty


class ReplicaSpec(TypedDict):
    id: str  # replica id (uuid); also the route id the gateway uses
    deployment: str  # deployment id
    model_alias: str
    served_model_name: str
    source: ModelSource
    task: Literal["generate", "embed"]
    port: int
    api_key: str  # per-replica key; the gateway sends it as Bearer
    gpu_indices: list[int]  # CUDA_VISIBLE_DEVICES; empty on a CPU host
    max_model_len: int
    engine_args: dict[str, object]  # allow-listed vLLM arguments (catalog + deployment)
    trust_remote_code: bool  # only when an admin approved the catalog entry
    spec_hash: str  # changes when anything above changes (a rolling update)


class DesiredState(TypedDict):
    protocol: int
    node: str
    generation: int
    replicas: list[ReplicaSpec]


class GpuInfo(TypedDict):
    index: int
    uuid: str
    name: str
    memory_total_mib: int
    memory_free_mib: int


class Inventory(TypedDict):
    kind: Literal["gpu", "cpu"]
    gpus: list[GpuInfo]  # on a CPU-only host: one pseudo-device sized from host memory
    cpu_count: int
    memory_total_mib: int


class ReplicaLoad(TypedDict, total=False):
    num_requests_running: float
    num_requests_waiting: float
    kv_cache_usage_perc: float
    prompt_tokens_total: float
    generation_tokens_total: float


class ReplicaReport(TypedDict):
    id: str
    spec_hash: str
    state: ReplicaState
    port: int
    pid: int | None
    restarts: int
    last_error: str
    load: ReplicaLoad


class NodeReport(TypedDict):
    protocol: int
    node: str
    pool: str
    address: str  # host the gateway reaches replicas at
    labels: dict[str, str]
    inventory: Inventory
    generation_applied: int
    replicas: list[ReplicaReport]
    sent_at: float  # unix time
    agent_version: NotRequired[str]
    signed_by: NotRequired[str]  # the node whose secret keyed the signature
    signature: NotRequired[str]  # "hmac-sha256:<hex>" over canonical_report()


def canonical_report(report: dict) -> bytes:
    """The bytes a report's signature covers: the report without ``signature`` as
    compact JSON with sorted keys. Both sides compute it from the decoded JSON, so
    whatever survives a JSON round trip verifies (the agent signs the round-tripped
    report)."""
    body = {key: value for key, value in report.items() if key != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def report_signature(report: dict, secret: str) -> str:
    digest = hmac.new(secret.encode(), canonical_report(report), hashlib.sha256).hexdigest()
    return f"{SIGNATURE_ALGORITHM}:{digest}"


def sign_report(report: NodeReport, secret: str) -> NodeReport:
    """The report, normalised by a JSON round trip, with ``signed_by`` and ``signature``."""
    signed = json.loads(json.dumps(report))
    signed["signed_by"] = report["node"]
    signed["signature"] = report_signature(signed, secret)
    return signed


def signature_valid(report: dict, secret: str) -> bool:
    """Whether ``report['signature']`` was made with ``secret`` (constant-time)."""
    claimed = report.get("signature")
    if not isinstance(claimed, str) or not secret:
        return False
    return hmac.compare_digest(claimed.encode(), report_signature(report, secret).encode())
