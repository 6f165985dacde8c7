"""The control plane (Django project). Importing it loads the Celery app so that
``@shared_task`` functions bind to it."""

from controlplane.celery import app as celery_app

__all__ = ["celery_app"]
