"""First-run set-up and the service list of the single-machine platform
(used by ``controlplane.local``). Every step is idempotent: a second start reuses
what the first one created."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO_ORG = "demo"
DEMO_KEY_NAME = "demo key"
CREATE_KEY_HINT = ".venv/bin/python manage.py create_api_key demo --name NAME --scopes inference"


@dataclass
class Demo:
    organization: str
    key: str | None  # the full key, only on the start that created it
    key_prefix: str
    chat_model: str
    embedding_model: str

    def ready_message(self, *, console: str, gateway: str) -> str:
        key = self.key or f"<the {self.key_prefix}… key printed on first start>"
        note = (
            "This key is shown only now; keep it."
            if self.key
            else "Lost it? Start with --new-demo-key (revokes it, prints a new one), or: "
            + CREATE_KEY_HINT
        )
        return f"""
================================================================================
 The platform is ready.
   console / REST API : {console}/api/v1/   (docs {console}/api/docs/, admin {console}/admin/)
   gateway (OpenAI)   : {gateway}
   API key            : {key}
   {note}

 Try it:
   curl {gateway}/chat/completions -H "Authorization: Bearer {key}" \\
     -H "Content-Type: application/json" \\
     -d '{{"model": "{self.chat_model}", "max_tokens": 16,
          "messages": [{{"role": "user", "content": "Hello"}}]}}'

   {sys.executable} - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="{gateway}", api_key="{key}")
chat = client.chat.completions.create(model="{self.chat_model}", max_tokens=16,
    messages=[{{"role": "user", "content": "Hello"}}])
print(chat.choices[0].message.content)
emb = client.embeddings.create(model="{self.embedding_model}", input=["a cat", "a kitten"])
print(len(emb.data[0].embedding), "dimensions")
PY
 Stop everything with Ctrl-C.
================================================================================
"""


def bootstrap(
    say: Callable[[str], None], *, with_models: bool = True, new_demo_key: bool = False
) -> Demo:
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    say("applying database migrations")
    call_command("migrate", interactive=False, verbosity=0)
    if connection.vendor == "sqlite":
        # Readers and the one writer stop blocking each other across our processes.
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode=WAL")
    say(f"database ready ({connection.vendor}, data in {settings.DATA_DIR})")
    call_command("ensure_admin")
    demo = _demo_organization(say, with_models=with_models, new_key=new_demo_key)
    _local_node(say)
    from controlplane.snapshot import publish_snapshot

    publish_snapshot()
    return demo


def _demo_organization(say: Callable[[str], None], *, with_models: bool, new_key: bool) -> Demo:
    from controlplane.tenancy.actors import Actor
    from controlplane.tenancy.models import ApiKey, Organization
    from controlplane.tenancy.services import create_api_key, create_organization, revoke_api_key

    actor = Actor.system("single-machine bootstrap")
    organization = Organization.objects.filter(slug=DEMO_ORG).first()
    if organization is None:
        organization = create_organization(actor=actor, slug=DEMO_ORG, name="Demo")
        say("created the demo organization")
    chat_model, embedding_model = (
        _demo_models(say, actor, organization) if with_models else ("tiny-chat", "minilm")
    )
    live = ApiKey.objects.filter(organization=organization, name=DEMO_KEY_NAME, revoked_at=None)
    if new_key:
        for old in live:
            revoke_api_key(actor=actor, key=old)
            say(f"revoked the demo API key {old.display_prefix}… (--new-demo-key)")
    key = live.order_by("created_at").first()
    secret = None
    if key is None:
        key, secret = create_api_key(
            actor=actor,
            organization=organization,
            name=DEMO_KEY_NAME,
            scopes=["inference", "manage"],
        )
        # Printed now, not only in the ready banner: a start that dies before the
        # banner must not lose the only copy of the key.
        say(f"created the demo API key (shown once, keep it): {secret}")
    else:
        say(
            f"the demo API key {key.display_prefix}… was printed when it was created; "
            "to replace it, start with --new-demo-key"
        )
    return Demo(
        organization=organization.slug,
        key=secret,
        key_prefix=key.display_prefix,
        chat_model=chat_model,
        embedding_model=embedding_model,
    )


LOCAL_POOL = "local"
#: Each demo replica reserves this fraction of the machine (on a CPU host vLLM reads it
#: as the share of host memory it may take).
DEMO_MEMORY_FRACTION = 0.2


def _demo_models(say, actor, organization) -> tuple[str, str]:
    """The tiny chat model and MiniLM in the catalog, granted to the demo organization
    and deployed once each on this machine's pool."""
    from django.core.management import call_command

    from controlplane.catalog.models import Model, OrganizationModelAccess
    from controlplane.catalog.services import grant_model_access
    from controlplane.fleet.models import Deployment, Pool
    from controlplane.fleet.services import create_deployment, create_pool

    say("preparing the demo models (the tiny chat model is built on the first start)")
    call_command("make_tiny_model", alias="tiny-chat")
    call_command("register_minilm", alias="minilm")
    pool = Pool.objects.filter(name=LOCAL_POOL).first()
    if pool is None:
        pool = create_pool(actor=actor, name=LOCAL_POOL, strategy="binpack")
        say(f"created the pool {LOCAL_POOL!r} for this machine")
    for alias in ("tiny-chat", "minilm"):
        model = Model.objects.get(alias=alias)
        if not OrganizationModelAccess.objects.filter(
            organization=organization, model=model
        ).exists():
            grant_model_access(actor=actor, organization=organization, model=model)
        if not Deployment.objects.filter(organization=organization, name=alias).exists():
            create_deployment(
                actor=actor,
                organization=organization,
                name=alias,
                model=alias,
                replicas=1,
                pool=pool,
                gpu_memory_fraction=DEMO_MEMORY_FRACTION,
            )
            say(f"deployed {alias} on the pool {LOCAL_POOL!r}")
    return "tiny-chat", "minilm"


#: This machine's node: the agent reports this address, the gateway reaches replicas there.
LOCAL_NODE_ADDRESS = "127.0.0.1"


def local_node_name() -> str:
    return os.environ.get("AGENT_NODE_NAME", "local")


def local_node_secret_file() -> Path:
    from django.conf import settings

    return settings.DATA_DIR / "node-secrets" / f"{local_node_name()}.secret"


def _local_node(say: Callable[[str], None]) -> None:
    """Register this machine's node ahead of its agent (reports of unregistered nodes
    are refused) and keep its credential where only the agent is pointed at it
    (``AGENT_NODE_SECRET_FILE``, mode 0600). A node without a usable credential (from
    before credentials, or its file lost) gets a new one."""
    from controlplane.fleet.models import Node, Pool
    from controlplane.fleet.node_auth import (
        node_secret,
        register_node,
        rotate_node_credential,
        write_secret_file,
    )
    from controlplane.fleet.services import create_pool
    from controlplane.tenancy.actors import Actor

    actor = Actor.system("single-machine bootstrap")
    name, path = local_node_name(), local_node_secret_file()
    node = Node.objects.filter(name=name).first()
    if node is None:
        pool = Pool.objects.filter(name=LOCAL_POOL).first() or create_pool(
            actor=actor, name=LOCAL_POOL, strategy="binpack"
        )
        _, secret = register_node(actor=actor, name=name, pool=pool, address=LOCAL_NODE_ADDRESS)
        write_secret_file(path, secret)
        say(f"registered this machine as the node {name!r}")
        return
    stored = path.read_text().strip() if path.is_file() else None
    if stored is None or stored != node_secret(node):
        write_secret_file(path, rotate_node_credential(actor=actor, node=node))
        say(f"issued a new credential for the node {name!r}")


def _error_line(text: str) -> str:
    """The line of a traceback that says what went wrong."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    named = [line for line in lines if "Error" in line or "error:" in line]
    return (named or lines or [""])[-1][:200]


def wait_for_models(
    demo: Demo, say: Callable[[str], None], *, stop: Callable[[], bool], timeout: float = 900
) -> bool:
    """Wait until every demo model has a ready replica and the gateway's snapshot routes
    to it, telling each replica's state as it changes. False on timeout or stop."""
    import json
    import time

    from django.db import close_old_connections

    from controlplane.fleet.models import Replica
    from controlplane.redis import get_redis
    from gateway import contract

    aliases = {demo.chat_model, demo.embedding_model}
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while not stop() and time.monotonic() < deadline:
        close_old_connections()
        replicas = Replica.objects.filter(
            deployment__organization__slug=demo.organization
        ).select_related("deployment")
        for replica in replicas:
            note = f"{replica.deployment.name} replica: {replica.state}"
            if replica.state == "failed" and replica.last_error:
                note += f" ({_error_line(replica.last_error)})"
            if seen.get(str(replica.pk)) != note:
                seen[str(replica.pk)] = note
                say(note)
        raw = get_redis().get(contract.SNAPSHOT_KEY)
        routed = {
            alias
            for alias, entry in (json.loads(raw)["models"] if raw else {}).items()
            if entry["routes"]
        }
        if aliases <= routed:
            return True
        time.sleep(1)
    return False


def _python_service_env() -> dict[str, str]:
    return {
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), str(ROOT)]),
    }


def _celery_worker_ready(name: str):
    """Ready when the worker answers a Celery ping addressed to it by name."""

    def check() -> bool:
        from controlplane.celery import app

        try:
            return bool(app.control.ping(destination=[name], timeout=1.0))
        except Exception:
            return False

    return check


def _heartbeat_ready(key: str, *, since: float):
    """Ready when the service wrote its heartbeat key after ``since`` (unix time)."""

    def check() -> bool:
        from controlplane.redis import get_redis

        try:
            value = get_redis().get(key)
        except Exception:
            return False
        return value is not None and float(value) >= since

    return check


def _node_reported(name: str, *, since: float):
    """Ready when the control plane has a report from the node agent, newer than
    ``since``: the agent runs, reaches the broker, and its reports are accepted."""

    def check() -> bool:
        import datetime as dt

        from django.db import close_old_connections

        from controlplane.fleet.models import Node

        close_old_connections()
        after = dt.datetime.fromtimestamp(since, tz=dt.UTC)
        return Node.objects.filter(name=name, last_heartbeat__gte=after).exists()

    return check


def platform_services(*, host: str, port: int, gateway_port: int, control_plane_only: bool):
    import socket
    import time

    from django.conf import settings

    from gateway import contract
    from workers.supervisor import Service, http_ready

    python = sys.executable
    env = _python_service_env()
    started = time.time()
    services = [
        Service(
            "control-plane",
            [python, "-m", "uvicorn", "controlplane.asgi:application", "--host", host,
             "--port", str(port), "--lifespan", "off", "--no-access-log"],
            # The console's playground talks to the gateway this run starts.
            env=env | {"CONSOLE_GATEWAY_URL": os.environ.get(
                "CONSOLE_GATEWAY_URL", f"http://{host}:{gateway_port}/v1")},
            ready=http_ready(f"http://{host}:{port}/healthz"),
            detail=f"http://{host}:{port}/api/v1/",
        ),
    ]  # fmt: skip
    if control_plane_only:
        return services
    # A name of this run's own, so another platform's worker on a shared Redis cannot
    # answer the readiness ping for it.
    worker_name = f"local-{os.getpid()}@{socket.gethostname()}"
    # The gateway needs Redis, the key pepper and its own settings; not the database.
    gateway_env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("GATEWAY_") or k in ("ALLOWED_INTERNAL_HOSTS", "PROMETHEUS_MULTIPROC_DIR")
    }
    services += [
        Service(
            "gateway",
            [python, "-m", "gateway", "--host", host, "--port", str(gateway_port)],
            env=env | gateway_env | {
                "REDIS_URL": os.environ["REDIS_URL"],
                "GATEWAY_WORKERS": os.environ.get("GATEWAY_WORKERS", "2"),
                "API_KEY_PEPPER": settings.API_KEY_PEPPER.decode(),
            },
            inherit_env=False,
            ready=http_ready(f"http://{host}:{gateway_port}/readyz"),
            detail=f"http://{host}:{gateway_port}/v1",
        ),
        Service(
            "worker",
            # One worker takes every queue here; Kubernetes runs "artifacts" apart.
            [python, "-m", "celery", "-A", "controlplane", "worker",
             "-Q", "default,fleet,artifacts", "--concurrency", "2", "--loglevel", "INFO",
             "-n", worker_name],
            env=env,
            ready=_celery_worker_ready(worker_name),
        ),
        Service(
            "beat",
            [python, "-m", "celery", "-A", "controlplane", "beat", "--loglevel", "INFO",
             "-s", str(settings.DATA_DIR / "celerybeat-schedule")],
            env=env,
            ready=_heartbeat_ready(contract.HEARTBEAT_BEAT, since=started),
        ),
        Service(
            "usage-ledger",
            [python, str(ROOT / "manage.py"), "consume_usage", "--name", "local"],
            env=env,
            ready=_heartbeat_ready(contract.HEARTBEAT_LEDGER + "local", since=started),
        ),
        Service(
            "node-agent",
            [python, "-m", "workers.agent"],
            # Broker credentials only: the agent never sees the database.
            env={
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(ROOT),
                "AGENT_BROKER_URL": os.environ["REDIS_URL"],
                "AGENT_NODE_NAME": local_node_name(),
                # registered by bootstrap; reports from another address are refused
                "AGENT_ADDRESS": LOCAL_NODE_ADDRESS,
                "AGENT_NODE_SECRET_FILE": str(local_node_secret_file()),
                "AGENT_POOL": LOCAL_POOL,
                "AGENT_STATE_DIR": str(settings.DATA_DIR / "agent"),
                "AGENT_MODEL_CACHE_DIR": str(settings.DATA_DIR / "models"),
                # One machine, one Ctrl-C: the replicas stop with the platform.
                "AGENT_STOP_REPLICAS_ON_EXIT": "true",
                # On a CPU host, skipping torch.compile halves the replicas' start time.
                "AGENT_ENFORCE_EAGER": os.environ.get("AGENT_ENFORCE_EAGER", "true"),
            },
            # Its own settings only: no database URL, secret key or admin password.
            inherit_env=False,
            ready=_node_reported(os.environ.get("AGENT_NODE_NAME", "local"), since=started),
            stop_timeout=60,
        ),
    ]  # fmt: skip
    return services
