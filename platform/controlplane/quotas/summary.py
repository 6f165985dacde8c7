"""Usage summaries read from the rollups (never the raw ledger), shared by the API
(``usage/summary/``) and the console so both show the same numbers.

A range is read from the coarsest rollup that answers it exactly: its whole UTC days
from a daily table (``UsageDaily``, or ``UsageDailyKey`` for figures per key), the
hours before the first and after the last whole day from ``UsageHourly``, and the
pieces added up. A month of an organization with thousands of keys is then a few
thousand daily rows instead of hundreds of thousands of hourly ones."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Q, QuerySet, Sum
from django.db.models.functions import TruncDay

from controlplane.quotas.models import (
    LATENCY_BUCKET_FIELDS,
    ROLLUP_SUM_FIELDS,
    TTFT_BUCKET_FIELDS,
    UsageDaily,
    UsageDailyKey,
    UsageHourly,
)
from controlplane.quotas.rollup import ONE_DAY, day_of, percentile

GROUPS = {
    "day": "day",
    "hour": "hour",
    "team": "team_id",
    "model": "model",
    "key": "api_key_id",
}
# Most buckets one summary may return: ranges beyond it are refused, not truncated.
MAX_HOURS = {"hour": 24 * 31}
MAX_RANGE = dt.timedelta(days=400)


def _figures(row: dict) -> dict:
    requests = row["requests"] or 0
    latency = [row[name] or 0 for name in LATENCY_BUCKET_FIELDS]
    ttft = [row[name] or 0 for name in TTFT_BUCKET_FIELDS]
    prompt, completion = row["prompt_tokens"] or 0, row["completion_tokens"] or 0
    errors_4xx, errors_5xx = row["errors_4xx"] or 0, row["errors_5xx"] or 0
    return {
        "requests": requests,
        "errors_4xx": errors_4xx,
        "errors_5xx": errors_5xx,
        "error_rate": (errors_4xx + errors_5xx) / requests if requests else 0.0,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "latency_ms_avg": (row["latency_ms_sum"] or 0) / requests if requests else None,
        "latency_ms_p50": percentile(latency, 0.5),
        "latency_ms_p95": percentile(latency, 0.95),
        "ttft_ms_avg": (row["ttft_ms_sum"] or 0) / row["ttft_count"] if row["ttft_count"] else None,
        "ttft_ms_p50": percentile(ttft, 0.5),
        "ttft_ms_p95": percentile(ttft, 0.95),
    }


@dataclass(frozen=True)
class UsageRows:
    """One organization's rollup rows as the caller may see them, at each grain."""

    hourly: QuerySet
    daily: QuerySet
    daily_key: QuerySet


def organization_rows(actor, organization) -> UsageRows:
    def scoped(model) -> QuerySet:
        return model.objects.restrict(actor, "usage.view").filter(organization_id=organization.pk)

    return UsageRows(scoped(UsageHourly), scoped(UsageDaily), scoped(UsageDailyKey))


def _pieces(rows: UsageRows, columns: tuple[str, ...], since, until) -> list[tuple]:
    """``(queryset, time column, since, until)`` pieces that cover [since, until)
    exactly, each range read from one table."""
    if "hour" in columns:
        return [(rows.hourly, "hour", since, until)]
    daily = rows.daily_key if "api_key_id" in columns else rows.daily
    first = day_of(since) if since == day_of(since) else day_of(since) + ONE_DAY
    last = day_of(until)
    if first >= last:
        return [(rows.hourly, "hour", since, until)]
    pieces = [(daily, "day", first, last)]
    if since < first:
        pieces.append((rows.hourly, "hour", since, first))
    if last < until:
        pieces.append((rows.hourly, "hour", last, until))
    return pieces


def _in_range(rows: QuerySet, time_column: str, since, until, columns, where=None) -> QuerySet:
    rows = rows.filter(**{f"{time_column}__gte": since, f"{time_column}__lt": until}).order_by()
    if "day" in columns and time_column == "hour":
        rows = rows.annotate(day=TruncDay("hour", tzinfo=dt.UTC))
    if where is not None:
        rows = rows.filter(where)
    return rows


def _normal(value):
    return value.astimezone(dt.UTC) if isinstance(value, dt.datetime) else value


def _order(values: tuple) -> tuple:
    """Ascending with NULL last, as PostgreSQL orders."""
    return tuple((value is None, value) for value in values)


def ranking(
    rows: UsageRows, columns: tuple[str, ...], *, since: dt.datetime, until: dt.datetime
) -> list[tuple[tuple, int]]:
    """Every group's ``(values of columns, tokens)``, the most tokens first: two sums a
    row, so ranking thousands of keys costs a fraction of summing all their figures."""
    groups = grouped_sums(
        rows, columns, since=since, until=until, fields=("prompt_tokens", "completion_tokens")
    )
    totals = [
        (tuple(g[c] for c in columns), g["prompt_tokens"] + g["completion_tokens"]) for g in groups
    ]
    return sorted(totals, key=lambda item: (-item[1], _order(item[0])))


def _one_of(columns: tuple[str, ...], keys: list[tuple]) -> Q:
    """Rows in any of the groups ``keys`` (NULL matched as NULL)."""
    where = Q(pk__in=[])
    for key in keys:
        group = Q()
        for column, value in zip(columns, key, strict=True):
            group &= Q(**{f"{column}__isnull": True} if value is None else {column: value})
        where |= group
    return where


def grouped_sums(
    rows: UsageRows,
    columns: tuple[str, ...],
    *,
    since: dt.datetime,
    until: dt.datetime,
    fields: tuple[str, ...] = ROLLUP_SUM_FIELDS,
    top: int | None = None,
    ranked: list[tuple[tuple, int]] | None = None,
) -> list[dict]:
    """``fields`` summed per value of ``columns`` (of ``GROUPS``' columns) over the
    whole UTC hours in [since, until): one dict a group, ordered by ``columns`` (NULL
    last), or with ``top=N`` the N groups with the most tokens, most first (chosen
    from ``ranked``, ``ranking()``'s answer, when the caller has it). When one table
    answers the whole range the database sums; otherwise the pieces are added up
    here."""
    where = None
    if top is not None:
        if ranked is None:
            ranked = ranking(rows, columns, since=since, until=until)
        chosen = [key for key, _ in ranked[:top]]
        if not chosen:
            return []
        where = _one_of(columns, chosen)
    sums = {name: Sum(name) for name in fields}
    merged: dict[tuple, dict] = {}
    for piece in _pieces(rows, columns, since, until):
        for row in _in_range(*piece, columns, where).values(*columns).annotate(**sums):
            key = tuple(_normal(row[c]) for c in columns)
            into = merged.get(key)
            if into is None:
                merged[key] = {c: k for c, k in zip(columns, key, strict=True)} | {
                    name: row[name] or 0 for name in fields
                }
            else:
                for name in fields:
                    into[name] += row[name] or 0
    if top is not None:
        return [merged[key] for key in chosen if key in merged]
    return [merged[key] for key in sorted(merged, key=_order)]


def _added_up(groups: list[dict]) -> dict:
    """The figures of groups that partition a range, summed."""
    return {name: sum(g[name] or 0 for g in groups) for name in ROLLUP_SUM_FIELDS}


def summarize(
    rows: UsageRows,
    *,
    group_by: str,
    since: dt.datetime,
    until: dt.datetime,
    with_totals: bool = True,
    top: int | None = None,
) -> dict:
    """Sum the rollup ``rows`` of one organization over the whole UTC hours in
    [since, until), grouped by ``group_by``. ``with_totals=False`` spares the totals
    (``None``) where a page shows only the groups. ``top=N`` keeps the N groups with
    the most tokens, most first: an organization with thousands of keys sends ten
    rows, not thousands; the report then also says how many ``groups`` there are."""
    column = GROUPS[group_by]
    ranked = None if top is None else ranking(rows, (column,), since=since, until=until)
    grouped = grouped_sums(rows, (column,), since=since, until=until, top=top, ranked=ranked)
    results = []
    for row in grouped:
        group = row[column]
        if isinstance(group, dt.datetime):
            group = group.isoformat()
        elif group is not None:
            group = str(group)
        results.append({"group": group, **_figures(row)})
    totals = None
    if with_totals and top is None:
        # The groups partition the rows: their sums add up to the totals, which spares
        # a second scan of the rollup (the larger part of a page's time at scale).
        totals = _figures(_added_up(grouped))
    elif with_totals:
        # Only the top groups are here: the days (a daily table's few rows) add up to all.
        totals = _figures(_added_up(grouped_sums(rows, ("day",), since=since, until=until)))
    report = {
        "group_by": group_by,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "results": results,
        "totals": totals,
    }
    if ranked is not None:
        report["groups"] = len(ranked)
    return report
