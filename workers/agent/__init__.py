"""The node agent: one per GPU host, supervising that host's vLLM replicas.

- `settings`: configuration from environment variables, checked at start.
- `inventory`: GPUs through NVML, or one CPU pseudo-device (`nvml_probe` prints it).
- `engine`: a ReplicaSpec to the engine's argv and env (through workers.engine.launch).
- `processes`, `statefile`: engine processes, and what survives an agent restart.
- `replica`, `supervisor`: each replica's lifecycle; convergence on the desired state.
- `reporter`, `celery_app`, `service`: NodeReports out, desired states in, assembled.

Run it with `python -m workers.agent`; see README.md in this folder. Nothing here
imports Django or the control plane: the agent holds broker credentials only.
"""

AGENT_VERSION = "0.1.0"
