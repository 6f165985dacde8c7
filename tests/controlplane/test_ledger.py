"""Usage ledger: every event recorded exactly once, even when the consumer dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from controlplane.quotas.ledger import DEAD_LETTER_STREAM, LedgerConsumer
from controlplane.quotas.models import UsageRecord
from django.conf import settings

from gateway import contract

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def r():
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


def event(request_id: str, org: str, **extra) -> dict:
    return {
        "schema": contract.USAGE_SCHEMA,
        "request_id": request_id,
        "ts": time.time(),
        "org": org,
        "team": None,
        "key": str(uuid.uuid4()),
        "user": None,
        "model": "tiny-chat",
        "endpoint": "chat.completions",
        "replica": "r1",
        "status": 200,
        "prompt_tokens": 12,
        "completion_tokens": 30,
        "latency_ms": 41.5,
        "ttft_ms": 9.0,
    } | extra


def push(client, events):
    pipe = client.pipeline()
    for e in events:
        pipe.xadd(contract.USAGE_STREAM, {"event": json.dumps(e)})
    pipe.execute()


def test_events_are_recorded_once_and_acked(world, r):
    org = str(world.org_a.pk)
    consumer = LedgerConsumer(r, name="t1", batch_size=10)
    push(r, [event(f"req-{i}", org) for i in range(25)])
    push(r, [event("req-3", org), event("req-7", org)])  # a gateway retried two appends
    while consumer.run_once(block=False).read:
        pass
    assert UsageRecord.objects.count() == 25
    record = UsageRecord.objects.get(request_id="req-3")
    assert record.total_tokens == 42 and record.ttft_ms == 9.0
    assert r.xpending(contract.USAGE_STREAM, contract.USAGE_GROUP)["pending"] == 0


def test_bad_events_are_parked_not_blocking(world, r):
    consumer = LedgerConsumer(r, name="t2")
    r.xadd(contract.USAGE_STREAM, {"event": "{not json"})
    push(r, [event("good", str(world.org_a.pk)), {"request_id": "no-org"}])
    result = consumer.run_once(block=False)
    assert result.read == 3 and result.dead == 2
    assert UsageRecord.objects.filter(request_id="good").exists()
    assert r.xlen(DEAD_LETTER_STREAM) == 2
    assert r.xpending(contract.USAGE_STREAM, contract.USAGE_GROUP)["pending"] == 0


def test_abandoned_entries_are_claimed_by_another_consumer(world, r):
    org = str(world.org_a.pk)
    dead = LedgerConsumer(r, name="dead", batch_size=5)
    push(r, [event(f"a-{i}", org) for i in range(5)])
    dead._read(">", None)  # reads, then "dies" before writing or acking
    alive = LedgerConsumer(r, name="alive", claim_idle_ms=0)
    while alive.run_once(block=False).read:
        pass
    assert UsageRecord.objects.filter(request_id__startswith="a-").count() == 5
    assert r.xpending(contract.USAGE_STREAM, contract.USAGE_GROUP)["pending"] == 0


@pytest.mark.django_db(transaction=True)
def test_consumer_killed_mid_batch_loses_and_duplicates_nothing(r, tmp_path):
    from controlplane.tenancy.actors import Actor
    from controlplane.tenancy.services import create_organization

    org = str(create_organization(actor=Actor.system(), slug="ledger", name="L").pk)
    total = 4000
    push(r, [event(f"k-{i}", org) for i in range(total)])
    db = settings.DATABASES["default"]
    env = dict(
        os.environ,
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        REDIS_URL=settings.REDIS_URL,
        SECRET_KEY=settings.SECRET_KEY,
        DJANGO_SETTINGS_MODULE="controlplane.settings",
    )
    command = [
        sys.executable,
        str(ROOT / "manage.py"),
        "consume_usage",
        "--name",
        "c1",
        "--batch-size",
        "50",
    ]
    killed_at = None
    for _attempt in range(5):
        proc = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = UsageRecord.objects.count()
            if done > 0:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        killed_at = UsageRecord.objects.count()
        if killed_at < total:
            break
        UsageRecord.objects.all().delete()
        r.delete(contract.USAGE_STREAM)
        push(r, [event(f"k-{i}", org) for i in range(total)])
    assert killed_at is not None and 0 < killed_at < total, "could not kill the consumer mid-way"
    # A restart under the same name first re-reads its own pending entries.
    subprocess.run(
        [*command, "--once"], env=env, cwd=ROOT, check=True, capture_output=True, timeout=120
    )
    assert UsageRecord.objects.count() == total
    assert UsageRecord.objects.values("request_id").distinct().count() == total
    assert r.xpending(contract.USAGE_STREAM, contract.USAGE_GROUP)["pending"] == 0
