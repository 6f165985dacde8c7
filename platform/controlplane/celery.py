"""The control plane's one Celery app (``celery -A controlplane worker|beat``).

The broker is the platform's Redis (``REDIS_URL``, or the embedded server on a
unix socket). Tasks live in each app's ``tasks.py`` and run on named queues;
the beat schedule is in settings (``CELERY_BEAT_SCHEDULE``).
"""

from __future__ import annotations

import os

from celery import Celery

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
