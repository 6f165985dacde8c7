"""The console's list pages and overview run as many queries for a big organization as
for a small one: the same count with 5 and with 60 keys, members, teams, limits and
usage rows (no query per row). How fast they are at full scale is measured by
``bench/console.py``, not here: timings on a shared machine would make flaky tests."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from controlplane.quotas import summary
from controlplane.quotas.models import LimitPolicy, UsageRecord
from controlplane.quotas.rollup import record_usage
from controlplane.tenancy.actors import Actor
from controlplane.tenancy.models import ApiKey, Membership, Team, TeamMembership
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

MODELS = ("tiny-chat", "embed", "coder", "vision")

ORG_PAGES = (
    ("overview", {}),
    ("overview", {"days": "30"}),
    ("usage", {"group_by": "day"}),
    ("usage", {"group_by": "hour"}),
    ("usage", {"group_by": "model"}),
    ("usage", {"group_by": "team"}),
    ("usage", {"group_by": "key"}),
    ("usage", {"group_by": "key", "format": "csv"}),
    ("keys", {}),
    ("keys", {"q": "scale"}),
    ("members", {}),
    ("members", {"q": "scale"}),
    ("teams", {}),
    ("models", {}),
    ("limits", {}),
    ("audit", {}),
)
PLATFORM_PAGES = ("platform-organizations", "platform-users")


def grow(world, count: int) -> None:
    """Give org A ``count`` more of everything the lists and the overview show."""
    org = world.org_a
    start = Team.objects.filter(organization=org).count()
    users = get_user_model().objects.bulk_create(
        get_user_model()(username=f"scale-{start + i}", password="!") for i in range(count)
    )
    Membership.objects.bulk_create(
        Membership(user=u, organization=org, role="member") for u in users
    )
    teams = Team.objects.bulk_create(
        Team(organization=org, slug=f"scale-{start + i}", name=f"Scale {start + i}")
        for i in range(count)
    )
    TeamMembership.objects.bulk_create(
        TeamMembership(team=t, user=u) for t, u in zip(teams, users, strict=True)
    )
    keys = ApiKey.objects.bulk_create(
        ApiKey(
            organization=org,
            team=t,
            user=u,
            name=f"scale key {start + i}",
            prefix=uuid.uuid4().hex[:12],
            secret_hash=uuid.uuid4().hex * 2,
            scopes=["inference"],
            expires_at=timezone.now() + dt.timedelta(days=3) if i % 2 else None,
        )
        for i, (t, u) in enumerate(zip(teams, users, strict=True))
    )
    LimitPolicy.objects.bulk_create(
        [LimitPolicy(organization=org, team=t, monthly_tokens=10**6) for t in teams]
        + [LimitPolicy(organization=org, api_key=k, rpm=60) for k in keys]
    )
    now = timezone.now()
    record_usage(
        [
            UsageRecord(
                request_id=f"scale-{start + i}",
                organization_id=org.pk,
                team_id=key.team_id,
                api_key_id=key.pk,
                user_id=str(key.user_id),
                model=MODELS[i % len(MODELS)],
                endpoint="chat",
                status=(200, 200, 429, 502)[i % 4],
                prompt_tokens=10 + i,
                completion_tokens=5,
                latency_ms=40.0 * (i % 30),
                ttft_ms=20.0 if i % 2 else None,
                occurred_at=now - dt.timedelta(hours=i * 3),  # over about a week
            )
            for i, key in enumerate(keys)
        ]
    )


def query_counts(world) -> dict[str, int]:
    owner, root = Client(), Client()
    owner.force_login(world.alice)
    root.force_login(world.root)
    team = Team.objects.filter(organization=world.org_a).order_by("slug").first()
    urls = [
        (reverse(f"console:{name}", kwargs={"org_slug": "org-a"}), params, owner)
        for name, params in ORG_PAGES
    ]
    urls.append(
        (reverse("console:team", kwargs={"org_slug": "org-a", "team_id": team.pk}), {}, owner)
    )
    urls += [(reverse(f"console:{name}"), {}, root) for name in PLATFORM_PAGES]
    counts = {}
    for url, params, client in urls:
        with CaptureQueriesContext(connection) as captured:
            response = client.get(url, params)
            if response.streaming:
                b"".join(response.streaming_content)
        assert response.status_code == 200, (url, params)
        counts[f"{url} {sorted(params.items())}"] = len(captured)
    return counts


@pytest.mark.django_db
def test_query_counts_do_not_grow_with_the_organization(world):
    grow(world, 5)
    small = query_counts(world)
    grow(world, 55)
    large = query_counts(world)
    assert large == small


@pytest.mark.django_db
def test_usage_pages_run_a_bounded_number_of_queries(world, django_assert_max_num_queries):
    grow(world, 60)
    client = Client()
    client.force_login(world.alice)
    url = reverse("console:usage", kwargs={"org_slug": "org-a"})
    for group in ("day", "hour", "model", "team", "key"):
        with django_assert_max_num_queries(10):  # session, org, roles, report, totals, names
            response = client.get(url, {"group_by": group})
        assert response.status_code == 200 and b"<table" in response.content


@pytest.mark.django_db
def test_overview_top_lists_hold_the_ten_biggest(world):
    """The overview's top keys, teams and models are chosen by the database: the ten
    with the most tokens, the most first."""
    grow(world, 60)
    client = Client()
    client.force_login(world.alice)
    response = client.get(reverse("console:overview", kwargs={"org_slug": "org-a"}))
    top = response.context["top"]
    everything = summary.summarize(
        summary.organization_rows(Actor.for_user(world.alice), world.org_a),
        group_by="key",
        since=dt.datetime.fromisoformat(response.context["by_day"]["since"]),
        until=dt.datetime.fromisoformat(response.context["by_day"]["until"]),
    )["results"]
    biggest = sorted(everything, key=lambda r: (-r["total_tokens"], r["group"]))[:10]
    assert len(everything) > 10 and top["key"] == biggest
    assert [r["total_tokens"] for r in top["model"]] == sorted(
        (r["total_tokens"] for r in top["model"]), reverse=True
    )


@pytest.mark.django_db
def test_summary_totals_added_from_the_groups_match_the_database(world):
    """Totals are the sum of the groups (no second scan): the same figures, percentiles
    included, as summing the rollup rows in the database."""
    from controlplane.quotas.models import ROLLUP_SUM_FIELDS
    from django.db.models import Sum

    grow(world, 60)
    rows = summary.organization_rows(Actor.for_user(world.alice), world.org_a)
    until = timezone.now() + dt.timedelta(hours=1)
    since = until - dt.timedelta(days=30)
    expected = summary._figures(
        rows.hourly.filter(hour__gte=since, hour__lt=until).aggregate(
            **{name: Sum(name) for name in ROLLUP_SUM_FIELDS}
        )
    )
    assert expected["requests"] == 60 and expected["latency_ms_p95"] is not None
    for group_by in summary.GROUPS:
        report = summary.summarize(rows, group_by=group_by, since=since, until=until)
        assert report["totals"] == pytest.approx(expected), group_by


@pytest.mark.django_db
def test_usage_by_key_lists_the_biggest_keys_and_the_csv_all(world, monkeypatch):
    from controlplane.console import views

    monkeypatch.setattr(views, "USAGE_ROWS_SHOWN", 10)
    grow(world, 60)
    client = Client()
    client.force_login(world.alice)
    url = reverse("console:usage", kwargs={"org_slug": "org-a"})
    week = {"group_by": "key", "since": (timezone.now() - dt.timedelta(days=30)).isoformat()}
    response = client.get(url, week)
    shown = response.context["shown"]
    report = response.context["report"]
    everything = summary.summarize(
        summary.organization_rows(Actor.for_user(world.alice), world.org_a),
        group_by="key",
        since=dt.datetime.fromisoformat(report["since"]),
        until=dt.datetime.fromisoformat(report["until"]),
    )["results"]
    assert [r["total_tokens"] for r in shown] == sorted(
        (r["total_tokens"] for r in everything), reverse=True
    )[:10]
    # The shown keys' figures are whole, not only the tokens they were ranked by.
    by_group = {r["group"]: r for r in everything}
    assert all(r == by_group[r["group"]] for r in shown)
    assert b"The 10 of 60 keys with the most tokens" in response.content
    assert response.content.count(b"scale key ") == 10  # names of the shown keys only
    csv_response = client.get(url, week | {"format": "csv"})
    assert len(b"".join(csv_response.streaming_content).splitlines()) == 61
