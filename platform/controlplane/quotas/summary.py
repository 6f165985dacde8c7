"""Usage summaries read from the hourly rollup (never the raw ledger), shared by the
API (``usage/summary/``) and the console so both show the same numbers."""

from __future__ import annotations

import datetime as dt

from django.db.models import F, Sum
from django.db.models.functions import TruncDay

from controlplane.quotas.models import (
    LATENCY_BUCKET_FIELDS,
    ROLLUP_SUM_FIELDS,
    TTFT_BUCKET_FIELDS,
    UsageHourly,
)
from controlplane.quotas.rollup import percentile

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


def summarize(
    rows,
    *,
    group_by: str,
    since: dt.datetime,
    until: dt.datetime,
    with_totals: bool = True,
    top: int | None = None,
) -> dict:
    """Sum ``rows`` (a UsageHourly queryset already scoped to one organization) over
    the whole UTC hours in [since, until), grouped by ``group_by``. ``with_totals=False``
    spares the query of the totals (``None``) where a page shows only the groups.
    ``top=N`` keeps the N groups with the most tokens, most first, chosen by the
    database: an organization with thousands of keys sends ten rows, not thousands."""
    rows = rows.filter(hour__gte=since, hour__lt=until).order_by()
    sums = {name: Sum(name) for name in ROLLUP_SUM_FIELDS}
    column = GROUPS[group_by]
    if group_by == "day":
        rows = rows.annotate(day=TruncDay("hour", tzinfo=dt.UTC))
    grouped = rows.values(column).annotate(**sums).order_by(column)
    if top is not None:
        # F() names the sums annotated above (they shadow the columns).
        grouped = grouped.alias(most_tokens=F("prompt_tokens") + F("completion_tokens")).order_by(
            "-most_tokens", column
        )[:top]
    grouped = list(grouped)
    results = []
    for row in grouped:
        group = row[column]
        if isinstance(group, dt.datetime):
            group = group.astimezone(dt.UTC).isoformat()
        elif group is not None:
            group = str(group)
        results.append({"group": group, **_figures(row)})
    totals = None
    if with_totals and top is None:
        # The groups partition the rows: their sums add up to the totals, which spares
        # a second scan of the rollup (the larger part of a page's time at scale).
        totals = _figures({name: sum(r[name] or 0 for r in grouped) for name in sums})
    elif with_totals:
        totals = _figures(rows.aggregate(**sums))
    return {
        "group_by": group_by,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "results": results,
        "totals": totals,
    }


def organization_rows(actor, organization):
    return UsageHourly.objects.restrict(actor, "usage.view").filter(organization_id=organization.pk)
