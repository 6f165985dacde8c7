"""The overview's usage figures for members: per day stacked by model, latency per
hour, and this month's tokens against the monthly limits. All of it reads the rollups
through ``quotas/summary.py`` (never the raw ledger), a fixed number of queries
whatever the traffic."""

from __future__ import annotations

import datetime as dt

from controlplane.quotas import summary
from controlplane.quotas.models import LimitPolicy

#: Models drawn as their own series; the rest are summed as "other models".
TOP_MODELS = 8
OTHER = "other models"
LATENCY_HOURS = 24
#: Share of a monthly budget from which the overview warns, in words.
NEAR_LIMIT = 0.8
METRICS = ("requests", "tokens", "errors")


def _epoch(value: dt.datetime) -> int:
    return int(value.timestamp())


def daily_by_model(rows, *, since: dt.datetime, until: dt.datetime) -> dict:
    """Requests, tokens and errors per UTC day for each model: ``{"days": [iso],
    "models": [alias], "<metric>": {"x": [...], "series": [{"label", "values"}]}}``.
    Days without traffic are left out, as in the per-day table."""
    grouped = summary.grouped_sums(
        rows,
        ("day", "model"),
        since=since,
        until=until,
        fields=("requests", "prompt_tokens", "completion_tokens", "errors_4xx", "errors_5xx"),
    )
    cells: dict[tuple, dict] = {}
    totals: dict[str, int] = {}
    days: list[dt.datetime] = []
    for row in grouped:
        day = row["day"].astimezone(dt.UTC)
        if not days or days[-1] != day:
            days.append(day)
        figures = {
            "requests": row["requests"] or 0,
            "tokens": (row["prompt_tokens"] or 0) + (row["completion_tokens"] or 0),
            "errors": (row["errors_4xx"] or 0) + (row["errors_5xx"] or 0),
        }
        cells[(day, row["model"])] = figures
        totals[row["model"]] = totals.get(row["model"], 0) + figures["tokens"]
    ranked = sorted(totals, key=lambda m: (-totals[m], m))
    models, rest = ranked[:TOP_MODELS], set(ranked[TOP_MODELS:])
    labels = models + ([OTHER] if rest else [])
    result: dict = {"days": [d.isoformat() for d in days], "models": labels}
    for metric in METRICS:
        series = []
        for label in labels:
            members = rest if label == OTHER else {label}
            values = [sum(cells.get((day, m), {}).get(metric, 0) for m in members) for day in days]
            series.append({"label": label, "values": values})
        result[metric] = {"x": [_epoch(d) for d in days], "series": series}
    return result


def series_table(chart: dict, days: list[str]) -> list[dict]:
    """The rows of a chart's data table: one per day, one cell per series, a total."""
    rows = []
    for index, day in enumerate(days):
        values = [s["values"][index] for s in chart["series"]]
        rows.append({"day": day[:10], "values": values, "total": sum(values)})
    return rows


def hourly_latency(rows, *, until: dt.datetime) -> tuple[dict, dict]:
    """``(report, chart)``: the summary grouped by hour over the last day, and its p50 and
    p95 of latency and time to first token as chart series (None where no request)."""
    since = until - dt.timedelta(hours=LATENCY_HOURS)
    report = summary.summarize(rows, group_by="hour", since=since, until=until)
    results = report["results"]
    chart = {
        "x": [_epoch(dt.datetime.fromisoformat(r["group"])) for r in results],
        "series": [
            {"label": label, "values": [r[field] for r in results]}
            for label, field in (
                ("Latency p50 (ms)", "latency_ms_p50"),
                ("Latency p95 (ms)", "latency_ms_p95"),
                ("TTFT p50 (ms)", "ttft_ms_p50"),
                ("TTFT p95 (ms)", "ttft_ms_p95"),
            )
        ],
    }
    return report, chart


def month_start(now: dt.datetime) -> dt.datetime:
    return now.astimezone(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _state(used: int, limit: int | None) -> str:
    if limit is None:
        return "no monthly limit"
    if used >= limit:
        return "limit reached"
    if used >= NEAR_LIMIT * limit:
        return f"over {int(NEAR_LIMIT * 100)} %"
    return "within limit"


def monthly_budgets(actor, organization, rows, *, until: dt.datetime, names: dict) -> dict:
    """This month's tokens of the organization and of each team with traffic or a
    monthly limit, against their all-models ``monthly_tokens`` limits. ``names``: team
    names by id (the overview has them already)."""
    since = month_start(until - dt.timedelta(microseconds=1))
    report = summary.summarize(rows, group_by="team", since=since, until=until, with_totals=False)
    used_by_team = {r["group"]: r["total_tokens"] for r in report["results"] if r["group"]}
    policies = {
        (str(p.team_id) if p.team_id else None): p.monthly_tokens
        for p in LimitPolicy.objects.restrict(actor, "limits.view").filter(
            organization=organization, api_key=None, model=""
        )
    }
    entries = []

    def entry(name: str, kind: str, used: int, limit: int | None) -> dict:
        return {
            "name": name,
            "kind": kind,
            "used": used,
            "limit": limit,
            "percent": round(100 * used / limit) if limit else None,
            "state": _state(used, limit),
        }

    org_used = sum(r["total_tokens"] for r in report["results"])  # with the teamless rows
    entries.append(entry(organization.name, "organization", org_used, policies.get(None)))
    team_ids = set(used_by_team) | {
        team for team, limit in policies.items() if team and limit is not None
    }
    teams = []
    for team_id in team_ids:
        name = names.get(team_id, team_id)
        teams.append(entry(name, "team", used_by_team.get(team_id, 0), policies.get(team_id)))
    entries += sorted(teams, key=lambda e: e["name"].lower())
    return {"since": since, "until": until, "entries": entries}
