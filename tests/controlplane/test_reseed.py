"""Redis is a cache of the ledger: day and month counters lost with Redis are rebuilt
from the ledger plus the events still in the stream, exactly once, before any budget is
checked again. The gateway side is the real limiter against the same Redis."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid

import pytest
import redis
from controlplane.quotas.ledger import LedgerConsumer, ensure_group
from controlplane.quotas.models import UsageRecord
from controlplane.quotas.reseed import apply_seed, prepare_seed, seed_counters
from django.conf import settings
from django.db.models import Sum

from gateway import contract
from gateway.limits import Limiter, LimitsUnavailable, Subject
from gateway.resp import ScriptClient

ORG = str(uuid.uuid4())
TEAM = str(uuid.uuid4())
KEY = str(uuid.uuid4())


@pytest.fixture
def r():
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


def _event(request_id: str, ts: float, prompt: int, completion: int, model="tiny-chat") -> dict:
    return {
        "schema": contract.USAGE_SCHEMA,
        "request_id": request_id,
        "ts": ts,
        "org": ORG,
        "team": TEAM,
        "key": KEY,
        "user": None,
        "model": model,
        "endpoint": "chat.completions",
        "replica": "r1",
        "status": 200,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "latency_ms": 1.0,
        "ttft_ms": None,
    }


def _record(event: dict) -> UsageRecord:
    return UsageRecord.objects.create(
        request_id=event["request_id"],
        organization_id=event["org"],
        team_id=event["team"],
        api_key_id=event["key"],
        model=event["model"],
        endpoint=event["endpoint"],
        status=200,
        prompt_tokens=event["prompt_tokens"],
        completion_tokens=event["completion_tokens"],
        occurred_at=dt.datetime.fromtimestamp(event["ts"], tz=dt.UTC),
    )


def _push(client, event) -> None:
    client.xadd(contract.USAGE_STREAM, {"event": json.dumps(event)})


def _subjects(model=None, budget=None) -> list[Subject]:
    limits = {} if budget is None else {"daily_tokens": budget}
    out = [
        Subject("key", KEY, limits),
        Subject("team", TEAM, {}),
        Subject("org", ORG, {}),
    ]
    if model:
        out += [Subject(s.level, s.id, {}, model) for s in out]
    return out


def _counter(client, level: str, subject: str, period: str, model: str | None = None) -> int:
    now = int(client.time()[0])
    day = now // 86400
    moment = dt.datetime.fromtimestamp(now, tz=dt.UTC)
    suffix = f"d:{day}" if period == "d" else f"m:{moment.year * 100 + moment.month}"
    value = client.get(f"{Subject(level, subject, {}, model).base}:{suffix}")
    return int(value or 0)


def _ledger(period: str, model: str | None = None, **subject) -> int:
    now = dt.datetime.now(dt.UTC)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "m":
        start = start.replace(day=1)
    rows = UsageRecord.objects.filter(occurred_at__gte=start, **subject)
    if model:
        rows = rows.filter(model=model)
    total = rows.aggregate(p=Sum("prompt_tokens"), c=Sum("completion_tokens"))
    return (total["p"] or 0) + (total["c"] or 0)


def run(coro):
    return asyncio.run(coro)


def test_counters_are_rebuilt_from_ledger_and_stream_once(world, r):
    now = time.time()
    day_start = now - now % 86400
    month_start = dt.datetime.fromtimestamp(day_start, tz=dt.UTC).replace(day=1).timestamp()
    earlier_this_month = month_start + 60 if month_start < day_start else day_start + 1
    # In the ledger only (consumed before Redis was lost).
    _record(_event("old-1", now - 10, 100, 20))
    _record(_event("old-2", earlier_this_month, 1000, 0))
    _record(_event("old-3", month_start - 86400, 5000, 0))  # last month: not counted
    _record(_event("old-4", now - 5, 7, 3, model="minilm"))
    # In the stream and already in the ledger (consumed, not yet trimmed): counted once.
    both = _event("both-1", now - 4, 50, 5)
    _record(both)
    _push(r, both)
    # In the stream only (appended after the loss, not consumed yet).
    _push(r, _event("new-1", now - 1, 30, 3))
    r.xadd(contract.USAGE_STREAM, {"event": "not json"})

    async def before_seed():
        scripts = ScriptClient(settings.REDIS_URL, timeout=5.0)
        limiter = Limiter(scripts, 60.0, 10_000)
        try:
            with pytest.raises(LimitsUnavailable, match="not seeded"):
                await limiter.admit(_subjects("tiny-chat", budget=10**6), "m1", 10)
            # Without a budget: admitted, and no counter is written before the seed.
            early = await limiter.admit(_subjects("tiny-chat"), "m2", 10)
            assert early.budget_reserved == 0 and early.epoch == ""
            return early
        finally:
            await scripts.aclose()

    early = run(before_seed())
    assert not [k for k in r.keys(contract.LIMITS_PREFIX + "*") if b":d:" in k]

    # A seeder that read the totals, then lost the race, writes nothing: not even over
    # counters that moved on since the winner's seed.
    late_args = prepare_seed(r)
    assert seed_counters(r) is True
    r.incrby(f"{Subject('org', ORG, {}).base}:d:{int(r.time()[0]) // 86400}", 1)
    assert apply_seed(r, late_args) == 0
    r.decrby(f"{Subject('org', ORG, {}).base}:d:{int(r.time()[0]) // 86400}", 1)
    assert seed_counters(r) is False

    stream_only = 33
    for level, subject, field in (("key", KEY, "api_key_id"), ("team", TEAM, "team_id")):
        for period in ("d", "m"):
            expected = _ledger(period, **{field: subject}) + stream_only
            assert _counter(r, level, subject, period) == expected, (level, period)
            expected = _ledger(period, "tiny-chat", **{field: subject}) + stream_only
            assert _counter(r, level, subject, period, "tiny-chat") == expected
    assert _counter(r, "org", ORG, "d") == 120 + 10 + 55 + stream_only + (
        1000 if earlier_this_month >= day_start else 0
    )
    assert _counter(r, "org", ORG, "m") == 120 + 1000 + 10 + 55 + stream_only
    assert _counter(r, "key", KEY, "m", "minilm") == 10

    # A request admitted before the seed settles after it: charged in full, once.
    async def settle(reservation, request_id, actual):
        scripts = ScriptClient(settings.REDIS_URL, timeout=5.0)
        limiter = Limiter(scripts, 60.0, 10_000)
        try:
            event = _event(request_id, time.time(), actual - 10, 10)
            await limiter.settle(reservation, actual, json.dumps(event))
        finally:
            await scripts.aclose()

    async def admit_budgeted():
        scripts = ScriptClient(settings.REDIS_URL, timeout=5.0)
        limiter = Limiter(scripts, 60.0, 10_000)
        try:
            return await limiter.admit(_subjects("tiny-chat", budget=10**6), "m3", 100)
        finally:
            await scripts.aclose()

    before = _counter(r, "key", KEY, "d")
    run(settle(early, "late-1", 40))
    assert _counter(r, "key", KEY, "d") == before + 40

    # Reserved in one seed epoch; Redis loses everything but the stream and is seeded
    # again; then the request settles: its reservation is gone, so the full count.
    held = run(admit_budgeted())
    assert held.budget_reserved == 100 and held.epoch
    assert _counter(r, "key", KEY, "d") == before + 40 + 100
    for key in r.keys(contract.LIMITS_PREFIX + "*"):
        r.delete(key)
    assert seed_counters(r) is True
    reseeded = _counter(r, "key", KEY, "d")
    run(settle(held, "late-2", 25))
    assert _counter(r, "key", KEY, "d") == reseeded + 25

    # Once the consumer has recorded the stream, the counters equal the ledger's totals.
    ensure_group(r)
    consumer = LedgerConsumer(r, name="t", block_ms=10)
    while consumer.run_once(block=False).read:
        pass
    for level, subject, field in (("key", KEY, "api_key_id"), ("team", TEAM, "team_id")):
        for period in ("d", "m"):
            assert _counter(r, level, subject, period) == _ledger(period, **{field: subject})
    assert _counter(r, "org", ORG, "m") == _ledger("m", organization_id=ORG)


def test_reseed_on_sqlite(tmp_path):
    """The single-machine default database: the ledger consumer seeds the counters there
    too (PostgreSQL's isolation statement does not exist on SQLite)."""
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "SECRET_KEY", "DJANGO_SETTINGS_MODULE")
    } | {
        "PLATFORM_DATA_DIR": str(tmp_path / "data"),
        "SECRET_KEY": "sqlite-reseed-test-secret-key",
        "REDIS_URL": settings.REDIS_URL,
    }
    script = textwrap.dedent(
        """
        import datetime as dt, uuid
        from controlplane.redis import get_redis
        from controlplane.quotas.models import UsageRecord
        from controlplane.quotas.reseed import seed_counters
        from gateway import contract
        client = get_redis()
        client.delete(contract.LIMITS_SEEDED_KEY)
        org = uuid.uuid4()
        UsageRecord.objects.create(
            request_id=uuid.uuid4().hex, organization_id=org, model="m", endpoint="chat",
            status=200, prompt_tokens=7, completion_tokens=3,
            occurred_at=dt.datetime.now(dt.UTC))
        assert seed_counters(client) is True
        mine = [k for k in client.scan_iter(contract.LIMITS_PREFIX + "*") if str(org).encode() in k]
        assert mine, "no counter seeded for the organization"
        assert all(int(client.get(k)) == 10 for k in mine), [client.get(k) for k in mine]
        client.delete(*mine)
        print("sqlite-seed-ok")
        """
    )
    for argv in (["migrate", "--no-input"], ["shell", "-c", script]):
        result = subprocess.run(
            [sys.executable, str(root / "manage.py"), *argv],
            env=env, cwd=root, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    assert "sqlite-seed-ok" in result.stdout, result.stderr[-3000:]
