"""The control plane's one Celery app (``celery -A controlplane worker|beat``).

The broker is the platform's Redis (``REDIS_URL``, or the embedded server on a
unix socket). Tasks live in each app's ``tasks.py`` and run on named queues;
the beat schedule is in settings (``CELERY_BEAT_SCHEDULE``).
"""

from __future__ import annotations

import logging
import os
import time

from celery import Celery
from celery.beat import PersistentScheduler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("controlplane")
app.config_from_object("django.conf:settings", namespace="CELERY")


def celery_url(url: str) -> str:
    """Celery spells a Redis unix socket ``redis+socket://PATH``."""
    if url.startswith("unix://"):
        return "redis+socket://" + url.removeprefix("unix://")
    return url


@app.on_after_configure.connect
def _configure_broker(sender, **kwargs):
    # After configuration, so reading the settings here does not recurse; the broker
    # defaults to the platform's Redis (which may be the embedded one).
    if not sender.conf.broker_url:
        from controlplane.redis import redis_url

        sender.conf.broker_url = celery_url(redis_url())


app.autodiscover_tasks()


class HeartbeatScheduler(PersistentScheduler):
    """Celery beat's default scheduler that also says it is alive: on each tick (at
    most every few seconds) it sets ``HEARTBEAT_BEAT`` in Redis, with an expiry, so a
    supervisor or a probe can tell a running beat from a crashed one."""

    heartbeat_every = 5.0
    _last_beat = 0.0

    def tick(self, *args, **kwargs):
        now = time.time()
        if now - self._last_beat >= self.heartbeat_every:
            self._last_beat = now
            try:
                from controlplane.redis import get_redis
                from gateway import contract

                get_redis().set(contract.HEARTBEAT_BEAT, now, ex=contract.HEARTBEAT_TTL)
            except Exception as exc:  # a Redis outage must not stop the schedule
                logging.getLogger(__name__).warning("beat heartbeat not written: %s", exc)
        # Tick again soon enough to keep the heartbeat fresh when nothing is due.
        return min(super().tick(*args, **kwargs), self.heartbeat_every)
