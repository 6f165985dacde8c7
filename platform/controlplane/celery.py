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


@app.on_configure.connect
def _configure_broker(sender, **kwargs):
    from controlplane.redis import redis_url

    url = redis_url()
    if url.startswith("unix://"):
        url = "redis+socket://" + url.removeprefix("unix://")
    sender.conf.broker_url = sender.conf.broker_url or url
    sender.conf.result_backend = None


app.autodiscover_tasks()
