from celery import shared_task

from controlplane.snapshot import publish_snapshot


@shared_task(name="controlplane.snapshot.republish", ignore_result=True)
def republish_snapshot() -> bool:
    """Safety net: a publish that failed after a commit (Redis down) is repaired here."""
    return publish_snapshot()
