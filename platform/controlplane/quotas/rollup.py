"""The usage rollups (``UsageHourly`` and, summed from it, ``UsageDaily`` and
``UsageDailyKey``) and the idempotent ledger insert they depend on.

Counting exactly once: ``insert_new_records`` inserts ledger rows with
``ON CONFLICT (request_id) DO NOTHING RETURNING request_id``, so the database itself
says which rows are new; only those are added to the rollup, in the same transaction.
A replayed or duplicated event is a conflict, returns nothing, and adds nothing.
Rollup rows are added to with ``INSERT ... ON CONFLICT (bucket) DO UPDATE SET
n = n + excluded.n``, so two consumers adding to one bucket at once both count.
Both statements are plain SQL that PostgreSQL and SQLite (3.35+) accept alike.

The daily rollups are the hourly one at a coarser grain (``GRAINS``): each new batch's
hourly buckets are summed into their day's rows in the same transaction, so a daily row
is always the sum of its day's hourly rows. Rows of each table are written in bucket
order, so two consumers adding to the same rows lock them in the same order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from django.db import connection, transaction
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDay, TruncHour
from django.utils import timezone

from controlplane.quotas.models import (
    BUCKETS,
    LATENCY_BOUNDS_MS,
    LATENCY_BUCKET_FIELDS,
    ROLLUP_SUM_FIELDS,
    TTFT_BUCKET_FIELDS,
    UsageDaily,
    UsageDailyKey,
    UsageHourly,
    UsageRecord,
)

BucketKey = tuple  # (organization_id, team_id, api_key_id, model, hour)
ONE_DAY = dt.timedelta(days=1)


def bucket_index(ms: float) -> int:
    for index, bound in enumerate(LATENCY_BOUNDS_MS):
        if ms <= bound:
            return index
    return BUCKETS - 1


def hour_of(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def day_of(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


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

    def merge(self, other: Totals) -> None:
        for name, value in other.values.items():
            self.values[name] += value


def bucket_key(record: UsageRecord) -> BucketKey:
    return (
        record.organization_id,
        record.team_id,
        record.api_key_id,
        record.model,
        hour_of(record.occurred_at),
    )


@dataclass(frozen=True)
class Grain:
    """One rollup table: its dimension columns, in the order they make its bucket
    name, and how an hourly bucket key maps to its own key (same order)."""

    model: type
    columns: tuple[str, ...]
    project: Callable[[BucketKey], tuple]
    time_column: str


HOURLY = Grain(
    UsageHourly,
    ("organization_id", "team_id", "api_key_id", "hour", "model"),
    lambda k: (k[0], k[1], k[2], k[4], k[3]),
    "hour",
)
DAILY = Grain(
    UsageDaily,
    ("organization_id", "team_id", "day", "model"),
    lambda k: (k[0], k[1], day_of(k[4]), k[3]),
    "day",
)
DAILY_KEY = Grain(
    UsageDailyKey,
    ("organization_id", "api_key_id", "day"),
    lambda k: (k[0], k[2], day_of(k[4])),
    "day",
)
GRAINS = (HOURLY, DAILY, DAILY_KEY)
DAY_GRAINS = (DAILY, DAILY_KEY)


def _part(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y%m%d%H")
    return str(value)


def bucket_name(key: tuple) -> str:
    """The unique text key of a bucket: its dimension values joined by ``|``."""
    return "|".join(_part(value) for value in key)


def accumulate(records: Iterable[UsageRecord], into: dict | None = None) -> dict:
    buckets = {} if into is None else into
    for record in records:
        buckets.setdefault(bucket_key(record), Totals()).add(record)
    return buckets


def _prep(model, name: str, value):
    return model._meta.get_field(name).get_db_prep_save(value, connection)


def _write(grain: Grain, buckets: dict[tuple, Totals]) -> None:
    """Add ``buckets`` (keys in ``grain.columns`` order) to the grain's table."""
    if not buckets:
        return
    model = grain.model
    q = connection.ops.quote_name
    table = q(model._meta.db_table)
    dims = ["bucket", *grain.columns]
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
        name = bucket_name(key)
        params = [_prep(model, n, v) for n, v in zip(dims, (name, *key), strict=True)]
        params.extend(totals.values[field_name] for field_name in ROLLUP_SUM_FIELDS)
        rows.append(params)
    rows.sort(key=lambda row: row[0])  # one lock order for every writer
    # Only quoted model column names are formatted in; every value is a parameter.
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def project(grain: Grain, buckets: dict) -> dict[tuple, Totals]:
    """Hourly ``buckets`` (from ``accumulate``) summed to ``grain``."""
    if grain is HOURLY:
        return {grain.project(key): totals for key, totals in buckets.items()}
    summed: dict[tuple, Totals] = {}
    for key, totals in buckets.items():
        summed.setdefault(grain.project(key), Totals()).merge(totals)
    return summed


def add_to_rollup(buckets: dict, grains: tuple[Grain, ...] = GRAINS) -> None:
    """Add hourly ``buckets`` (from ``accumulate``) to the rollup tables of ``grains``."""
    for grain in grains:
        _write(grain, project(grain, buckets))


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


def _histogram(value_field: str, names: tuple[str, ...]) -> dict:
    """Aggregates counting the rows of each fixed bucket of ``value_field`` (as
    ``bucket_index`` places a value; NULL counts nowhere)."""
    bounds = (None, *LATENCY_BOUNDS_MS, None)
    counts = {}
    for index, name in enumerate(names):
        low, high = bounds[index], bounds[index + 1]
        where = Q(**{f"{value_field}__isnull": False})
        if low is not None:
            where &= Q(**{f"{value_field}__gt": low})
        if high is not None:
            where &= Q(**{f"{value_field}__lte": high})
        counts[name] = Count("pk", filter=where)
    return counts


def _ledger_sums() -> dict:
    """``ROLLUP_SUM_FIELDS`` as aggregates over UsageRecord, each named ``s_<field>``
    (the plain names are the ledger's own columns)."""
    sums = {
        "requests": Count("pk"),
        "errors_4xx": Count("pk", filter=Q(status__gte=400, status__lt=500)),
        "errors_5xx": Count("pk", filter=Q(status__gte=500)),
        "prompt_tokens": Sum("prompt_tokens"),
        "completion_tokens": Sum("completion_tokens"),
        "latency_ms_sum": Sum("latency_ms"),
        "ttft_ms_sum": Sum("ttft_ms"),
        "ttft_count": Count("ttft_ms"),
        **_histogram("latency_ms", LATENCY_BUCKET_FIELDS),
        **_histogram("ttft_ms", TTFT_BUCKET_FIELDS),
    }
    return {f"s_{name}": aggregate for name, aggregate in sums.items()}


def _totals(row: dict) -> Totals:
    values = {}
    for name in ROLLUP_SUM_FIELDS:
        value = row[f"s_{name}"] or 0
        values[name] = float(value) if name.endswith("_sum") else int(value)
    return Totals(values)


def _copy_grouped(grain: Grain, grouped, time_alias: str) -> None:
    """Write the aggregated rows of ``grouped`` (one per bucket of ``grain``, its time
    column named ``time_alias``, its sums ``s_<field>``) to the grain's table."""
    if connection.vendor == "postgresql":
        _insert_select(grain, grouped, time_alias)
        return
    buckets: dict = {}
    for row in grouped.iterator(chunk_size=5000):
        key = tuple(
            row[time_alias].astimezone(dt.UTC) if c == grain.time_column else row[c]
            for c in grain.columns
        )
        buckets[key] = _totals(row)
        if len(buckets) >= 20_000:
            _write(grain, buckets)
            buckets = {}
    _write(grain, buckets)


def _insert_select(grain: Grain, grouped, time_alias: str) -> None:
    """PostgreSQL: ``INSERT ... SELECT`` from the grouped query, so no row crosses into
    Python; the bucket name is built in SQL exactly as ``bucket_name`` builds it."""
    q = connection.ops.quote_name
    inner, params = grouped.query.sql_with_params()

    def source(column: str) -> str:
        return "g." + q(time_alias if column == grain.time_column else column)

    # The truncated time as a UTC wall-clock timestamp, whether the truncation gave a
    # timestamp or a timestamptz (Django's connections run in UTC).
    moment = f"({source(grain.time_column)})::timestamp"
    parts, values = [], []
    for column in grain.columns:
        if column == grain.time_column:
            parts.append(f"to_char({moment}, 'YYYYMMDDHH24')")
            values.append(f"{moment} AT TIME ZONE 'UTC'")
        else:
            parts.append(f"coalesce({source(column)}::text, '-')")
            values.append(source(column))
    values += [f"coalesce(g.{q('s_' + name)}, 0)" for name in ROLLUP_SUM_FIELDS]
    columns = ["bucket", *grain.columns, *ROLLUP_SUM_FIELDS]
    bucket = " || '|' || ".join(parts)
    # Only quoted column names and Django's own compiled query are formatted in; every
    # value is a parameter of that query.
    sql = (
        f"INSERT INTO {q(grain.model._meta.db_table)} ({', '.join(q(c) for c in columns)}) "  # noqa: S608
        f"SELECT {bucket}, {', '.join(values)} FROM ({inner}) g"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def rebuild(*, since: dt.datetime | None = None, until: dt.datetime | None = None) -> int:
    """Recompute the rollups from the ledger for whole hours in [since, until) (all of
    it when both are None): UsageHourly from UsageRecord, then the daily tables of
    every day those hours touch from UsageHourly. Returns the number of ledger rows
    read. The database does the summing (one grouped query a table), so a million
    rows take seconds, not the minutes of loading each row. Runs in one transaction
    that locks the rollup tables, so the ledger consumer waits rather than adding to
    buckets being recomputed."""
    since = hour_of(since) if since else None
    until = hour_of(until) if until else None
    with transaction.atomic():
        if connection.vendor == "postgresql":
            tables = ", ".join(connection.ops.quote_name(g.model._meta.db_table) for g in GRAINS)
            with connection.cursor() as cursor:
                cursor.execute(f"LOCK TABLE {tables} IN SHARE ROW EXCLUSIVE MODE")
        hourly = UsageHourly.objects.all()
        ledger = UsageRecord.objects.all().order_by()
        if since:
            hourly = hourly.filter(hour__gte=since)
            ledger = ledger.filter(occurred_at__gte=since)
        if until:
            hourly = hourly.filter(hour__lt=until)
            ledger = ledger.filter(occurred_at__lt=until)
        hourly.delete()
        grouped = (
            ledger.annotate(bucket_hour=TruncHour("occurred_at", tzinfo=dt.UTC))
            .values("organization_id", "team_id", "api_key_id", "model", "bucket_hour")
            .annotate(**_ledger_sums())
            .order_by()
        )
        _copy_grouped(HOURLY, grouped, "bucket_hour")
        read = hourly.aggregate(read=Sum("requests"))["read"] or 0
        # The days these hours touch, whole: a daily row sums all the hours of its day.
        first_day = day_of(since) if since else None
        after_last_day = day_of(until - dt.timedelta(microseconds=1)) + ONE_DAY if until else None
        source = UsageHourly.objects.all().order_by()
        if first_day:
            source = source.filter(hour__gte=first_day)
        if after_last_day:
            source = source.filter(hour__lt=after_last_day)
        for grain in DAY_GRAINS:
            rows = grain.model.objects.all()
            if first_day:
                rows = rows.filter(day__gte=first_day)
            if after_last_day:
                rows = rows.filter(day__lt=after_last_day)
            rows.delete()
            dims = [c for c in grain.columns if c != "day"]
            grouped = (
                source.annotate(bucket_day=TruncDay("hour", tzinfo=dt.UTC))
                .values(*dims, "bucket_day")
                .annotate(**{f"s_{name}": Sum(name) for name in ROLLUP_SUM_FIELDS})
                .order_by()
            )
            _copy_grouped(grain, grouped, "bucket_day")
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
