"""``python -m gateway``: serve the gateway with uvicorn (uvloop + httptools).

Command-line options override the matching ``GATEWAY_*`` variables; the settings are
validated here, before any worker starts, so a bad value stops the launch with a clear
message instead of a crash loop.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile

from gateway.settings import Settings, SettingsError

# The access log writes a line per request: leave out what its format never shows (the
# caller's file and line, found by walking the stack; thread and multiprocessing names),
# as the "Optimization" section of the logging documentation describes. At module level,
# so the worker processes uvicorn spawns (they import this module again) do it too.
logging._srcfile = None  # type: ignore[attr-defined]
logging.logThreads = False
logging.logMultiprocessing = False


def logging_config(level: str) -> dict[str, object]:
    fmt = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": fmt}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "gateway": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--host", help="bind address (GATEWAY_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (GATEWAY_PORT, default 8080)")
    parser.add_argument("--workers", type=int, help="worker processes (GATEWAY_WORKERS)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    for option, variable in (
        ("host", "GATEWAY_HOST"),
        ("port", "GATEWAY_PORT"),
        ("workers", "GATEWAY_WORKERS"),
        ("log_level", "GATEWAY_LOG_LEVEL"),
    ):
        value = getattr(args, option)
        if value is not None:
            os.environ[variable] = str(value)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2

    owned_metrics_dir = None
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        owned_metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = owned_metrics_dir
    elif os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Samples of a previous run would be added to this one's.
        directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.unlink(os.path.join(directory, name))

    import uvicorn  # after PROMETHEUS_MULTIPROC_DIR is set for the workers

    try:
        uvicorn.run(
            "gateway.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_config=logging_config(settings.log_level),
            timeout_graceful_shutdown=30,
            timeout_keep_alive=settings.keep_alive_timeout,
            server_header=False,
            # The gateway never looks at the client address; skip the middleware.
            proxy_headers=False,
        )
    finally:
        if owned_metrics_dir is not None:
            shutil.rmtree(owned_metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
