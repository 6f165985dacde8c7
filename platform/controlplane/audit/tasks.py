"""Celery tasks of the audit log (queue ``default``)."""

from __future__ import annotations

import dataclasses
import json

from celery import shared_task

from controlplane.audit import checkpoints
from controlplane.audit.chain import verify_chain as walk_chain

#: Where a verification run leaves its result (the console polls it), and how long.
VERIFY_RESULT_KEY = "audit:verify:{run_id}"
VERIFY_RESULT_TTL_SECONDS = 24 * 3600


@shared_task(name="audit.checkpoint", ignore_result=True)
def checkpoint() -> str:
    """Sign the chain's head (beat runs it every AUDIT_CHECKPOINT_INTERVAL_SECONDS when
    a signing key is set). Idempotent: an unchanged head is not signed twice."""
    return checkpoints.checkpoint_if_changed()


def verify_result(run_id: str) -> dict | None:
    """The stored result of verification run ``run_id``, or None while it runs (or once
    it has expired)."""
    from controlplane.redis import get_redis

    raw = get_redis().get(VERIFY_RESULT_KEY.format(run_id=run_id))
    return json.loads(raw) if raw else None


@shared_task(name="audit.verify_chain", ignore_result=True)
def verify_chain(run_id: str) -> dict:
    """Walk the whole chain and leave the outcome (OK, or the first bad ``seq`` and
    why) in Redis under the run's id, where the console reads it: the platform needs
    no Celery result backend. Idempotent: a rerun overwrites the same key."""
    from controlplane.redis import get_redis

    result = dataclasses.asdict(walk_chain())
    get_redis().set(
        VERIFY_RESULT_KEY.format(run_id=run_id), json.dumps(result), ex=VERIFY_RESULT_TTL_SECONDS
    )
    return result
