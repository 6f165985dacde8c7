"""Run the control plane on one machine: ``python -m controlplane.local``.

Uses the single-machine defaults unless ``DATABASE_URL``/``REDIS_URL`` say otherwise:
a SQLite database and an embedded Redis in the data directory. On first start it
creates a SECRET_KEY file there, applies migrations and creates the first platform
administrator (password from PLATFORM_ADMIN_PASSWORD, or printed once).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _prepare_environment(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PLATFORM_DATA_DIR", str(data_dir))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    if not os.environ.get("SECRET_KEY") and not os.environ.get("SECRET_KEY_FILE"):
        key_file = data_dir / "secret_key"
        if not key_file.exists():
            key_file.write_text(secrets.token_urlsafe(50))
            key_file.chmod(0o600)
        os.environ["SECRET_KEY_FILE"] = str(key_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("PLATFORM_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PLATFORM_PORT", "8000")))
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("PLATFORM_DATA_DIR", ROOT / "data"))
    )
    args = parser.parse_args(argv)
    _prepare_environment(args.data_dir.resolve())

    import django
    from django.core.management import call_command

    django.setup()
    print("applying migrations…", flush=True)
    call_command("migrate", interactive=False, verbosity=0)
    call_command("ensure_admin")
    from django.conf import settings

    Path(settings.STATIC_ROOT).mkdir(parents=True, exist_ok=True)
    url = f"http://{args.host}:{args.port}"
    print(f"data directory: {settings.DATA_DIR}", flush=True)
    print(f"database:       {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}")
    print(f"REST API:       {url}/api/v1/   (docs: {url}/api/docs/)", flush=True)
    print(f"Django admin:   {url}/admin/", flush=True)

    import uvicorn

    uvicorn.run(
        "controlplane.asgi:application",
        host=args.host,
        port=args.port,
        log_level=os.environ.get("LOG_LEVEL", "info").lower(),
        proxy_headers=False,
        lifespan="off",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
