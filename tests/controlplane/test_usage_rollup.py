"""The usage rollups (hourly, daily per team and model, daily per key) equal the
ledger they summarise, however often the stream replays or repeats events; summaries
over any range add the daily and hourly pieces up to the ledger's own sums; the
summary API reads them with the API's roles; the rebuild command recomputes them; and
the same SQL works on SQLite."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections import defaultdict

import pytest
import redis
from controlplane.quotas.ledger import LedgerConsumer
from controlplane.quotas.models import (
    LATENCY_BUCKET_FIELDS,
    ROLLUP_SUM_FIELDS,
    TTFT_BUCKET_FIELDS,
    UsageDaily,
    UsageDailyKey,
    UsageHourly,
    UsageRecord,
)
from controlplane.quotas.rollup import DAILY, DAILY_KEY, bucket_name
from django.conf import settings
from django.core.management import call_command
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from gateway import contract
from tests.conftest import client_for
from tests.controlplane.test_single_machine import ROOT

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC).timestamp()
TEAMS = [None, str(uuid.UUID(int=1)), str(uuid.UUID(int=2))]
KEYS = [None, str(uuid.UUID(int=11)), str(uuid.UUID(int=12))]


@pytest.fixture
def r():
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


def ledger_totals() -> dict:
    """What the rollup must hold, computed from UsageRecord alone (independently of
    the rollup code: its own hour truncation and bucketing)."""
    expected: dict = defaultdict(lambda: dict.fromkeys(ROLLUP_SUM_FIELDS, 0))
    bounds = (25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000)

    def bucket(ms):
        return next((i for i, b in enumerate(bounds) if ms <= b), len(bounds))

    for rec in UsageRecord.objects.all():
        hour = rec.occurred_at.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
        key = (rec.organization_id, rec.team_id, rec.api_key_id, rec.model, hour)
        v = expected[key]
        v["requests"] += 1
        v["errors_4xx"] += 400 <= rec.status < 500
        v["errors_5xx"] += rec.status >= 500
        v["prompt_tokens"] += rec.prompt_tokens
        v["completion_tokens"] += rec.completion_tokens
        v["latency_ms_sum"] += rec.latency_ms
        v[LATENCY_BUCKET_FIELDS[bucket(rec.latency_ms)]] += 1
        if rec.ttft_ms is not None:
            v["ttft_ms_sum"] += rec.ttft_ms
            v["ttft_count"] += 1
            v[TTFT_BUCKET_FIELDS[bucket(rec.ttft_ms)]] += 1
    return dict(expected)


def rollup_totals() -> dict:
    found = {}
    for row in UsageHourly.objects.all():
        key = (row.organization_id, row.team_id, row.api_key_id, row.model, row.hour)
        assert key not in found, f"two rollup rows for {key}"
        # Rebuilt rows (named in SQL on PostgreSQL) and added rows share one name.
        assert row.bucket == bucket_name(
            (row.organization_id, row.team_id, row.api_key_id, row.hour, row.model)
        )
        found[key] = {name: getattr(row, name) for name in ROLLUP_SUM_FIELDS}
    return found


def day_totals(hourly: dict, dims) -> dict:
    """``hourly`` (keyed as ``ledger_totals``) summed per UTC day over the positions
    ``dims`` of its key (hour last)."""
    days: dict = defaultdict(lambda: dict.fromkeys(ROLLUP_SUM_FIELDS, 0))
    for key, values in hourly.items():
        day = key[4].replace(hour=0)
        into = days[(*(key[i] for i in dims), day)]
        for name, value in values.items():
            into[name] += value
    return dict(days)


def table_totals(model, dims: tuple[str, ...], columns: tuple[str, ...]) -> dict:
    found = {}
    for row in model.objects.all():
        key = (*(getattr(row, d) for d in dims), row.day)
        assert key not in found, f"two {model.__name__} rows for {key}"
        assert row.day == row.day.replace(hour=0, minute=0, second=0, microsecond=0)
        assert row.bucket == bucket_name(tuple(getattr(row, c) for c in columns)), row.bucket
        found[key] = {name: getattr(row, name) for name in ROLLUP_SUM_FIELDS}
    return found


def assert_same(found: dict, expected: dict, what: str) -> None:
    assert found.keys() == expected.keys(), what
    for key, values in expected.items():
        for name, value in values.items():
            assert found[key][name] == pytest.approx(value), (what, key, name)


def assert_rollup_matches_ledger():
    expected = ledger_totals()
    assert_same(rollup_totals(), expected, "hourly")
    # The daily tables: the same ledger, per (org, team, model, day) and (org, key, day).
    assert_same(
        table_totals(UsageDaily, ("organization_id", "team_id", "model"), DAILY.columns),
        day_totals(expected, (0, 1, 3)),
        "daily",
    )
    assert_same(
        table_totals(UsageDailyKey, ("organization_id", "api_key_id"), DAILY_KEY.columns),
        day_totals(expected, (0, 2)),
        "daily per key",
    )


events = st.fixed_dictionaries(
    {
        "request_id": st.sampled_from([f"req-{i}" for i in range(12)]),
        "team": st.sampled_from(TEAMS),
        "key": st.sampled_from(KEYS),
        "model": st.sampled_from(["tiny-chat", "embed"]),
        "status": st.sampled_from([200, 200, 429, 400, 500, 502]),
        "prompt_tokens": st.integers(0, 5000),
        "completion_tokens": st.integers(0, 5000),
        "latency_ms": st.floats(0, 120_000, allow_nan=False),
        "ttft_ms": st.none() | st.floats(0, 70_000, allow_nan=False),
        # Across a UTC midnight, so daily rows get hours of two days.
        "ts": st.floats(T0 + 13 * 3600, T0 + 17 * 3600, allow_nan=False),
    }
)


@hsettings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    batches=st.lists(st.lists(events, max_size=8), min_size=1, max_size=5),
    replays=st.lists(st.integers(0, 4), max_size=4),
)
def test_rollup_equals_ledger_after_replays_and_duplicates(world, r, batches, replays):
    for model in (UsageRecord, UsageHourly, UsageDaily, UsageDailyKey):
        model.objects.all().delete()
    consumer = LedgerConsumer(r, name="prop")
    org = str(world.org_a.pk)
    delivered = []
    for n, batch in enumerate(batches):
        entries = [
            (f"{n}-{i}".encode(), {b"event": json.dumps({"org": org, **e}).encode()})
            for i, e in enumerate(batch)
        ]
        delivered.append(entries)
        consumer.process(entries)
    # The stream redelivers whole batches (a consumer died before its ack, or an
    # entry was claimed from a dead one): nothing may be counted twice.
    for index in replays:
        consumer.process(delivered[index % len(delivered)])
    assert_rollup_matches_ledger()
    ids = {e["request_id"] for batch in batches for e in batch}
    assert sum(row.requests for row in UsageHourly.objects.all()) == len(ids)


def test_consumer_replay_after_crash_counts_once(world, r):
    """A consumer that wrote but died before its ack re-reads its pending entries."""
    from tests.controlplane.test_ledger import event, push

    org = str(world.org_a.pk)
    push(r, [event(f"c-{i}", org, ts=T0 + i) for i in range(30)])
    first = LedgerConsumer(r, name="crashy", batch_size=30)
    entries = first._read(">", None)
    first.process(entries)
    r.xgroup_setid(contract.USAGE_STREAM, contract.USAGE_GROUP, "0")  # unacked again
    again = LedgerConsumer(r, name="other", batch_size=30)
    while again.run_once(block=False).read:
        pass
    assert UsageRecord.objects.count() == 30
    assert sum(h.requests for h in UsageHourly.objects.all()) == 30
    assert_rollup_matches_ledger()


def test_rebuild_command_restores_the_rollup(world, r):
    from tests.controlplane.test_ledger import event, push

    org = str(world.org_a.pk)
    push(
        r, [event(f"b-{i}", org, ts=T0 + i * 600, status=500 if i % 4 else 200) for i in range(20)]
    )
    consumer = LedgerConsumer(r, name="rb")
    while consumer.run_once(block=False).read:
        pass
    assert_rollup_matches_ledger()
    UsageHourly.objects.filter(hour__gte=dt.datetime.fromtimestamp(T0 + 3600, dt.UTC)).delete()
    UsageHourly.objects.update(requests=999)
    UsageDaily.objects.update(errors_5xx=0)
    UsageDailyKey.objects.all().delete()
    call_command("rebuild_usage_rollup")
    assert_rollup_matches_ledger()
    # A bounded rebuild touches only its hours.
    UsageHourly.objects.update(prompt_tokens=0)
    call_command(
        "rebuild_usage_rollup",
        "--since",
        dt.datetime.fromtimestamp(T0, dt.UTC).isoformat(),
        "--until",
        dt.datetime.fromtimestamp(T0 + 3600, dt.UTC).isoformat(),
    )
    first_hour = dt.datetime.fromtimestamp(T0, dt.UTC)
    assert all(h.prompt_tokens > 0 for h in UsageHourly.objects.filter(hour=first_hour))
    assert all(h.prompt_tokens == 0 for h in UsageHourly.objects.exclude(hour=first_hour))
    # ... and the whole days those hours touch, from the hourly rows as they now are.
    day = first_hour.replace(hour=0)
    in_day = UsageHourly.objects.filter(hour__gte=day, hour__lt=day + dt.timedelta(days=1))
    assert (
        sum(d.prompt_tokens for d in UsageDaily.objects.filter(day=day))
        == sum(h.prompt_tokens for h in in_day)
        > 0
    )
    assert sum(d.prompt_tokens for d in UsageDailyKey.objects.filter(day=day)) == sum(
        h.prompt_tokens for h in in_day
    )


@hsettings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    start=st.integers(0, 70),
    length=st.integers(1, 72),
    group_by=st.sampled_from(["day", "team", "model", "key"]),
    top=st.none() | st.integers(1, 3),
)
def test_summaries_over_any_range_add_up_the_ledger(
    world, spread_usage, start, length, group_by, top
):
    """Whole days come from the daily tables and the hours around them from the hourly
    one: for any range of whole hours, every grouping equals the ledger's own sums."""
    from controlplane.quotas import summary
    from controlplane.tenancy.actors import Actor

    since = spread_usage + dt.timedelta(hours=start)
    until = since + dt.timedelta(hours=length)
    column = {"day": "day", "team": "team", "model": "model", "key": "key"}[group_by]
    expected: dict = defaultdict(lambda: [0, 0, []])
    for rec in UsageRecord.objects.filter(
        organization_id=world.org_a.pk, occurred_at__gte=since, occurred_at__lt=until
    ):
        group = {
            "day": rec.occurred_at.astimezone(dt.UTC)
            .replace(hour=0, minute=0, second=0, microsecond=0)
            .isoformat(),
            "team": str(rec.team_id) if rec.team_id else None,
            "model": rec.model,
            "key": str(rec.api_key_id) if rec.api_key_id else None,
        }[column]
        expected[group][0] += 1
        expected[group][1] += rec.total_tokens
    rows = summary.organization_rows(Actor.for_user(world.alice), world.org_a)
    report = summary.summarize(rows, group_by=group_by, since=since, until=until, top=top)
    found = {r["group"]: [r["requests"], r["total_tokens"]] for r in report["results"]}
    wanted = {g: v[:2] for g, v in expected.items()}
    if top is None:
        assert found == wanted
        assert report["totals"]["requests"] == sum(v[0] for v in wanted.values())
    else:
        ranked = sorted(wanted.values(), key=lambda v: -v[1])
        assert sorted((v[1] for v in found.values()), reverse=True) == [v[1] for v in ranked[:top]]
        assert all(found[g] == wanted[g] for g in found)


@pytest.fixture
def spread_usage(world, r):
    """Ledger rows of both organizations every 37 minutes over four days, on three
    teams, three keys and two models; returns the first hour."""
    from tests.controlplane.test_ledger import event, push

    start = dt.datetime(2026, 11, 2, 0, 0, tzinfo=dt.UTC)
    orgs = [str(world.org_a.pk), str(world.org_b.pk)]
    push(
        r,
        [
            event(
                f"spread-{i}",
                orgs[i % 7 == 0],
                ts=start.timestamp() + 5 + i * 37 * 60,
                team=TEAMS[i % 3],
                key=KEYS[i % 3],
                model=("tiny-chat", "embed")[i % 2],
                prompt_tokens=i,
            )
            for i in range(4 * 24 * 60 // 37)
        ],
    )
    consumer = LedgerConsumer(r, name="spread")
    while consumer.run_once(block=False).read:
        pass
    return start


def seed(world, r):
    from tests.controlplane.test_ledger import event, push

    org_a, org_b = str(world.org_a.pk), str(world.org_b.pk)
    push(
        r,
        [
            event("s1", org_a, ts=T0 + 10, model="tiny-chat", latency_ms=50.0, ttft_ms=8.0),
            event("s2", org_a, ts=T0 + 20, model="tiny-chat", latency_ms=400.0, status=500),
            event("s3", org_a, ts=T0 + 86400, model="embed", prompt_tokens=100, ttft_ms=None),
            event("s4", org_b, ts=T0 + 30, model="tiny-chat", prompt_tokens=7777),
        ],
    )
    consumer = LedgerConsumer(r, name="seed")
    while consumer.run_once(block=False).read:
        pass


URL = "/api/v1/organizations/org-a/usage/summary/"
RANGE = {"since": "2026-11-01T00:00:00Z", "until": "2026-11-10T00:00:00Z"}


def test_summary_groups_and_totals(world, r):
    seed(world, r)
    client = client_for(world.bob)  # member
    by_model = client.get(URL, RANGE | {"group_by": "model"})
    assert by_model.status_code == 200, by_model.content
    body = by_model.json()
    rows = {row["group"]: row for row in body["results"]}
    assert rows.keys() == {"tiny-chat", "embed"}  # org B's row is not here
    assert rows["tiny-chat"]["requests"] == 2 and rows["tiny-chat"]["errors_5xx"] == 1
    assert rows["tiny-chat"]["error_rate"] == 0.5
    assert rows["tiny-chat"]["latency_ms_p50"] == 50.0
    assert rows["tiny-chat"]["latency_ms_p95"] == 500.0
    assert rows["embed"]["prompt_tokens"] == 100 and rows["embed"]["ttft_ms_p50"] is None
    assert body["totals"]["requests"] == 3
    assert body["totals"]["total_tokens"] == sum(
        rec.total_tokens for rec in UsageRecord.objects.filter(organization_id=world.org_a.pk)
    )
    # A platform administrator sees every organization: the URL's one still bounds it.
    as_root = client_for(world.root).get(URL, RANGE | {"group_by": "model"}).json()
    assert as_root["totals"]["requests"] == 3
    by_day = client.get(URL, RANGE | {"group_by": "day"}).json()
    assert [(row["group"], row["requests"]) for row in by_day["results"]] == [
        ("2026-11-02T00:00:00+00:00", 2),
        ("2026-11-03T00:00:00+00:00", 1),
    ]
    by_hour = client.get(
        URL, {"since": "2026-11-02T09:30:00Z", "until": "2026-11-02T09:40:00Z", "group_by": "hour"}
    ).json()  # rounded out to the whole hour 09:00-10:00
    assert [row["requests"] for row in by_hour["results"]] == [2]
    for group_by in ("team", "key"):
        response = client.get(URL, RANGE | {"group_by": group_by})
        assert response.status_code == 200
        assert sum(row["requests"] for row in response.json()["results"]) == 3


@pytest.mark.parametrize(
    "caller,expected",
    [
        ("alice", 200),
        ("bob", 200),
        ("victor", 403),
        ("oscar", 404),
        ("root", 200),
        (None, 403),
    ],
)
def test_summary_roles(world, caller, expected):
    client = client_for(getattr(world, caller) if caller else None)
    response = client.get(URL)
    assert response.status_code in ((401, 403) if caller is None else (expected,)), caller


@pytest.mark.parametrize(
    "params,field",
    [
        ({"group_by": "week"}, "group_by"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-11-05T00:00:00Z", "until": "2026-11-01T00:00:00Z"}, "since"),
        ({"since": "2020-01-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
        (
            {"since": "2026-01-01T00:00:00Z", "until": "2026-03-01T00:00:00Z", "group_by": "hour"},
            "until",
        ),
        ({"since": "0001-01-01T00:00:00+15:00"}, "since"),
    ],
)
def test_summary_bad_input_names_the_field(world, params, field):
    response = client_for(world.alice).get(URL, params)
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"], response.json()


@pytest.fixture
def sqlite_env(tmp_path):
    """The single-machine default: no DATABASE_URL, so SQLite under the data dir."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DJANGO_SETTINGS_MODULE")
    }
    return clean | {
        "PLATFORM_DATA_DIR": str(tmp_path / "data"),
        "SECRET_KEY": "sqlite-rollup-test-secret-key",
    }


def test_rollup_on_sqlite(sqlite_env):
    """The insert-returning and upsert statements on the single-machine database."""
    script = textwrap.dedent(
        """
        import datetime as dt, uuid
        from controlplane.quotas.models import UsageDaily, UsageDailyKey, UsageHourly, UsageRecord
        from controlplane.quotas.rollup import rebuild, record_usage
        org = uuid.uuid4()
        t = dt.datetime(2026, 11, 2, 9, 5, tzinfo=dt.UTC)
        def rec(i):
            return UsageRecord(request_id=f"q{i}", organization_id=org, model="m",
                endpoint="chat", status=200 if i % 2 else 503, prompt_tokens=i,
                latency_ms=30.0 * i, ttft_ms=None if i % 3 else 5.0, occurred_at=t)
        assert record_usage([rec(i) for i in range(10)] + [rec(3)]) == 10
        assert record_usage([rec(i) for i in range(5, 15)]) == 5
        rows = list(UsageHourly.objects.all())
        assert len(rows) == 1 and rows[0].requests == 15, rows
        assert rows[0].prompt_tokens == sum(range(15)) and rows[0].errors_5xx == 8
        assert rows[0].ttft_count == 5
        assert UsageDaily.objects.get().requests == UsageDailyKey.objects.get().requests == 15
        UsageHourly.objects.update(requests=0)
        UsageDaily.objects.update(requests=0)
        assert rebuild() == 15
        assert UsageHourly.objects.get().requests == 15
        assert UsageDaily.objects.get().prompt_tokens == sum(range(15))
        assert UsageDaily.objects.get().requests == UsageDailyKey.objects.get().requests == 15
        print("sqlite-ok")
        """
    )
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "migrate", "--no-input"],
        env=sqlite_env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "shell", "-c", script],
        env=sqlite_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "sqlite-ok" in result.stdout, result.stderr
