"""The hourly usage rollup (``UsageHourly``) and the idempotent ledger insert it
depends on.

Counting exactly once: ``insert_new_records`` inserts ledger rows with
``ON CONFLICT (request_id) DO NOTHING RETURNING request_id``, so the database itself
says which rows are new; only those are added to the rollup, in the same transaction.
A replayed or duplicated event is a conflict, returns nothing, and adds nothing.
Rollup rows are added to with ``INSERT ... ON CONFLICT (bucket) DO UPDATE SET
n = n + excluded.n``, so two consumers adding to one bucket at once both count.
Both statements are plain SQL that PostgreSQL and SQLite (3.35+) accept alike.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.db import connection, transaction
from django.utils import timezone

from controlplane.quotas.models import (
    BUCKETS,
    LATENCY_BOUNDS_MS,
    LATENCY_BUCKET_FIELDS,
    ROLLUP_SUM_FIELDS,
    TTFT_BUCKET_FIELDS,
    UsageHourly,
    UsageRecord,
)

BucketKey = tuple  # (organization_id, team_id, api_key_id, model, hour)


def bucket_index(ms: float) -> int:
    for index, bound in enumerate(LATENCY_BOUNDS_MS):
        if ms <= bound:
            return index
    return BUCKETS - 1


def hour_of(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


@dataclass
class Totals:
    values: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ROLLUP_SUM_FIELDS, 0))

    def add(self, record: UsageRecord) -> None:
        v = self.values
        v["requests"] += 1
        if 400 <= record.status < 500:
            v["errors_4xx"] += 1
        elif record.status >= 500:
            v["errors_5xx"] += 1
        v["prompt_tokens"] += record.prompt_tokens
        v["completion_tokens"] += record.completion_tokens
        v["latency_ms_sum"] += record.latency_ms
        v[LATENCY_BUCKET_FIELDS[bucket_index(record.latency_ms)]] += 1
        if record.ttft_ms is not None:
            v["ttft_ms_sum"] += record.ttft_ms
            v["ttft_count"] += 1
            v[TTFT_BUCKET_FIELDS[bucket_index(record.ttft_ms)]] += 1


def bucket_key(record: UsageRecord) -> BucketKey:
    return (
        record.organization_id,
        record.team_id,
        record.api_key_id,
        record.model,
        hour_of(record.occurred_at),
    )


def bucket_name(key: BucketKey) -> str:
    org, team, api_key, model, hour = key
    parts = [str(org), str(team or "-"), str(api_key or "-"), hour.strftime("%Y%m%d%H"), model]
    return "|".join(parts)


def accumulate(records: Iterable[UsageRecord], into: dict | None = None) -> dict:
    buckets = {} if into is None else into
    for record in records:
        buckets.setdefault(bucket_key(record), Totals()).add(record)
    return buckets


def _prep(model, name: str, value):
    return model._meta.get_field(name).get_db_prep_save(value, connection)


def add_to_rollup(buckets: dict) -> None:
    """Add ``buckets`` (from ``accumulate``) to UsageHourly."""
    if not buckets:
        return
    table = connection.ops.quote_name(UsageHourly._meta.db_table)
    q = connection.ops.quote_name
    dims = ["bucket", "organization_id", "team_id", "api_key_id", "model", "hour"]
    columns = dims + list(ROLLUP_SUM_FIELDS)
    updates = ", ".join(f"{q(c)} = {table}.{q(c)} + excluded.{q(c)}" for c in ROLLUP_SUM_FIELDS)
    # One single-row statement run for every bucket: the drivers prepare it once
    # (psycopg pipelines the rows), where one statement of thousands of parameters spent
    # most of its time in the client parsing its placeholders.
    sql = (
        f"INSERT INTO {table} ({', '.join(q(c) for c in columns)}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * len(columns))}) "
        f"ON CONFLICT ({q('bucket')}) DO UPDATE SET {updates}"
    )
    rows = []
    for key, totals in buckets.items():
        org, team, api_key, model, hour = key
        dim_values = [bucket_name(key), org, team, api_key, model, hour]
        params = [_prep(UsageHourly, n, v) for n, v in zip(dims, dim_values, strict=True)]
        params.extend(totals.values[name] for name in ROLLUP_SUM_FIELDS)
        rows.append(params)
    # Only quoted model column names are formatted in; every value is a parameter.
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def insert_new_records(records: list[UsageRecord]) -> list[UsageRecord]:
    """Insert ledger rows, skipping request ids already recorded (or repeated within
    ``records``: the first wins); returns the rows this call inserted."""
    unique: dict[str, UsageRecord] = {}
    for record in records:
        unique.setdefault(record.request_id, record)
    if not unique:
        return []
    meta = UsageRecord._meta
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    q = connection.ops.quote_name
    table = q(meta.db_table)
    column_list = ", ".join(q(f.column) for f in fields)
    inserted: set[str] = set()
    items = list(unique.values())
    per_statement = max(1, 30_000 // len(fields))
    for start in range(0, len(items), per_statement):
        chunk = items[start : start + per_statement]
        rows, params = [], []
        for record in chunk:
            for f in fields:
                params.append(f.get_db_prep_save(f.pre_save(record, add=True), connection))
            rows.append("(" + ", ".join(["%s"] * len(fields)) + ")")
        # Only quoted model column names are formatted in; every value is a parameter.
        sql = (
            f"INSERT INTO {table} ({column_list}) VALUES {', '.join(rows)} "  # noqa: S608
            f"ON CONFLICT ({q('request_id')}) DO NOTHING RETURNING {q('request_id')}"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            inserted.update(row[0] for row in cursor.fetchall())
    return [record for record in items if record.request_id in inserted]


@transaction.atomic
def record_usage(records: list[UsageRecord]) -> int:
    """Write ledger rows and their rollup in one transaction; returns how many rows
    were new."""
    new = insert_new_records(records)
    add_to_rollup(accumulate(new))
    return len(new)


def rebuild(*, since: dt.datetime | None = None, until: dt.datetime | None = None) -> int:
    """Recompute UsageHourly from the ledger for whole hours in [since, until) (all of
    it when both are None); returns the number of ledger rows read. Runs in one
    transaction that locks the rollup table, so the ledger consumer waits rather than
    adding to buckets being recomputed."""
    since = hour_of(since) if since else None
    until = hour_of(until) if until else None
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    f"LOCK TABLE {connection.ops.quote_name(UsageHourly._meta.db_table)} "
                    "IN SHARE ROW EXCLUSIVE MODE"
                )
        hourly = UsageHourly.objects.all()
        ledger = UsageRecord.objects.all().order_by()
        if since:
            hourly = hourly.filter(hour__gte=since)
            ledger = ledger.filter(occurred_at__gte=since)
        if until:
            hourly = hourly.filter(hour__lt=until)
            ledger = ledger.filter(occurred_at__lt=until)
        hourly.delete()
        read = 0
        buckets: dict = {}
        for record in ledger.only(
            "organization_id",
            "team_id",
            "api_key_id",
            "model",
            "occurred_at",
            "status",
            "prompt_tokens",
            "completion_tokens",
            "latency_ms",
            "ttft_ms",
        ).iterator(chunk_size=5000):
            accumulate([record], buckets)
            read += 1
            if len(buckets) >= 20_000:
                add_to_rollup(buckets)
                buckets = {}
        add_to_rollup(buckets)
    return read


def percentile(counts: list[int], fraction: float) -> float | None:
    """The bucket bound below which ``fraction`` of the counted requests fall; None
    without requests; the last bound for the overflow bucket (a floor, not a value)."""
    total = sum(counts)
    if not total:
        return None
    target = fraction * total
    running = 0
    for index, count in enumerate(counts):
        running += count
        if running >= target:
            return float(LATENCY_BOUNDS_MS[min(index, len(LATENCY_BOUNDS_MS) - 1)])
    return float(LATENCY_BOUNDS_MS[-1])


def now_hour() -> dt.datetime:
    return hour_of(timezone.now())
