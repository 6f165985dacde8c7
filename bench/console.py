"""How fast the console's main pages render for a large organization.

Run (PostgreSQL from DATABASE_URL, whose server gets a throwaway database
``sap_bench_console`` that this script creates, migrates, fills and drops)::

    .venv/bin/python bench/console.py [--rows N] [--keys N] [--members N] [--repeat N]
                                      [--keep] [--reuse]

It seeds one organization with 5,000 API keys, 2,000 members, 50 teams, eight granted
models, a few limits and audit events, and 1,000,000 usage ledger rows spread over 30
days, models, teams and keys (``--rows``; skewed so a few keys carry most traffic),
written with one ``INSERT ... SELECT generate_series`` statement; the hourly rollup is
then rebuilt with the project's own ``rollup.rebuild``. Each page is then rendered as
the owner (platform pages as a platform administrator) with Django's test client,
once to warm up and ``--repeat`` times measured, and a table prints the median and
worst time, the number of SQL queries and whether the page took under one second.
``--keep`` leaves the database for another run; ``--reuse`` uses a kept one as is.

Seeding 1M rows takes about a minute and rebuilding the rollups from them (with
``rollup.rebuild``, as ``manage.py rebuild_usage_rollup`` does) well under another;
``--keep`` then ``--reuse`` when changing pages.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[1]
for entry in (REPO, REPO / "platform"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

BENCH_DB = "sap_bench_console"
MODELS = ("chat-large", "chat-small", "coder", "embed", "vision", "rerank", "tiny", "long")
TEAMS = 50


def _server_url(name: str) -> str:
    url = urlsplit(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/sap"))
    if url.scheme not in ("postgres", "postgresql", "pgsql"):
        raise SystemExit("bench/console.py needs a PostgreSQL DATABASE_URL")
    return urlunsplit((url.scheme, url.netloc, "/" + name, url.query, ""))


def _admin(sql: str) -> bool:
    """Run one statement on the server's ``postgres`` database; False if it failed
    because the database exists (for CREATE) or is absent (for DROP)."""
    import psycopg

    with psycopg.connect(_server_url("postgres"), autocommit=True) as conn:
        try:
            conn.execute(sql)
        except (psycopg.errors.DuplicateDatabase, psycopg.errors.InvalidCatalogName):
            return False
    return True


def _setup_django(database: str) -> None:
    os.environ["DATABASE_URL"] = _server_url(database)
    os.environ.setdefault("SECRET_KEY", "bench-secret-key-not-for-production-use")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    import django

    django.setup()
    from django.test.utils import setup_test_environment

    setup_test_environment()  # the test client's host and captured templates


def seed(*, rows: int, keys: int, members: int) -> None:
    import datetime as dt
    import uuid

    from controlplane.audit.services import record_event
    from controlplane.catalog.models import Model, OrganizationModelAccess
    from controlplane.quotas import rollup
    from controlplane.quotas.models import LimitPolicy, UsageRecord
    from controlplane.tenancy.actors import Actor
    from controlplane.tenancy.models import ApiKey, Membership, Organization, Team, TeamMembership
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.utils import timezone

    started = time.monotonic()
    call_command("migrate", verbosity=0)
    User = get_user_model()
    User.objects.create_superuser("root", "root@example.com", "bench-password")
    owner = User.objects.create_user("owner", "owner@example.com", "bench-password")
    org = Organization.objects.create(slug="big", name="Big organization")
    Organization.objects.create(slug="other", name="Another organization")
    users = User.objects.bulk_create(
        User(username=f"user{i:05d}", email=f"user{i:05d}@example.com", password="!")
        for i in range(members - 1)
    )
    roles = ("member", "member", "member", "viewer", "admin")
    Membership.objects.bulk_create(
        [Membership(user=owner, organization=org, role="owner")]
        + [Membership(user=u, organization=org, role=roles[i % 5]) for i, u in enumerate(users)]
    )
    teams = Team.objects.bulk_create(
        Team(organization=org, slug=f"team-{i:02d}", name=f"Team {i:02d}") for i in range(TEAMS)
    )
    TeamMembership.objects.bulk_create(
        TeamMembership(team=teams[i % TEAMS], user=u) for i, u in enumerate(users)
    )
    now = timezone.now()
    api_keys = ApiKey.objects.bulk_create(
        ApiKey(
            organization=org,
            team=teams[i % TEAMS],
            user=users[i % len(users)] if i % 10 else None,
            name=f"key {i:05d}",
            prefix=uuid.uuid4().hex[:12],
            secret_hash=uuid.uuid4().hex * 2,
            scopes=["chat", "embeddings"],
            expires_at=now + dt.timedelta(days=i % 400 - 30) if i % 3 == 0 else None,
            revoked_at=now if i % 17 == 0 else None,
            created_by=owner,
        )
        for i in range(keys)
    )
    catalog = Model.objects.bulk_create(
        Model(
            alias=alias,
            task="chat",
            license_id="apache-2.0",
            commercial_use=True,
            openness="open-weights",
        )
        for alias in MODELS
    )
    OrganizationModelAccess.objects.bulk_create(
        OrganizationModelAccess(organization=org, model=m) for m in catalog
    )
    LimitPolicy.objects.bulk_create(
        [LimitPolicy(organization=org, monthly_tokens=10**10, rpm=10_000)]
        + [LimitPolicy(organization=org, team=t, monthly_tokens=10**9) for t in teams]
        + [LimitPolicy(organization=org, api_key=k, rpm=600) for k in api_keys[:200]]
    )
    system = Actor(system_label="bench")
    with transaction.atomic():
        for i in range(2000):
            record_event(
                actor=system,
                action="apikey.create",
                target=api_keys[i],
                organization_id=org.pk,
            )
    print(f"seeded people, keys and audit in {time.monotonic() - started:.0f} s", flush=True)

    started = time.monotonic()
    table = connection.ops.quote_name(UsageRecord._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute("SELECT setseed(0.42)")
        cursor.execute(
            "CREATE TEMP TABLE bench_keys AS SELECT (row_number() OVER (ORDER BY id)) - 1 AS n,"
            " id, team_id, user_id FROM tenancy_apikey WHERE organization_id = %s",
            [org.pk],
        )
        # Key n ** 4-skewed: a few keys carry most requests, as in real traffic; each
        # key mostly uses one model.
        cursor.execute(
            f"INSERT INTO {table} (request_id, organization_id, team_id, api_key_id, user_id,"  # noqa: S608
            " model, endpoint, replica, owner_id, status, prompt_tokens, completion_tokens,"
            " latency_ms, ttft_ms, error, occurred_at, recorded_at)"
            " SELECT 'bench-' || s.g, %(org)s, k.team_id, k.id, coalesce(k.user_id::text, ''),"
            " (%(models)s::text[])[1 + (k.n + (CASE WHEN s.g %% 5 = 0 THEN s.g ELSE 0 END))"
            " %% %(nmodels)s], 'chat', 'replica-' || (s.g %% 4), NULL,"
            " CASE WHEN s.g %% 50 = 0 THEN 429 WHEN s.g %% 333 = 0 THEN 502 ELSE 200 END,"
            " 20 + s.g %% 900, 5 + (s.g * 7) %% 400, 40 + (s.g * 7919) %% 4000,"
            " CASE WHEN s.g %% 3 = 0 THEN NULL ELSE 10 + (s.g * 31) %% 900 END,"
            " CASE WHEN s.g %% 50 = 0 THEN 'rate_limited' ELSE '' END,"
            " now() - s.ago, now() - s.ago"
            " FROM (SELECT g, floor(%(keys)s * power(random(), 4))::int AS kn,"
            "  random() * interval '30 days' AS ago"
            "  FROM generate_series(0::bigint, %(rows)s - 1) g) s"
            " JOIN bench_keys k ON k.n = s.kn",
            {
                "org": org.pk,
                "models": list(MODELS),
                "nmodels": len(MODELS),
                "keys": len(api_keys),
                "rows": rows,
            },
        )
        cursor.execute(f"ANALYZE {table}")
    print(f"inserted {rows} ledger rows in {time.monotonic() - started:.0f} s", flush=True)
    started = time.monotonic()
    read = rollup.rebuild()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
        cursor.execute("SELECT count(*) FROM quotas_usagehourly")
        buckets = cursor.fetchone()[0]
    print(
        f"rebuilt the rollup from {read} rows into {buckets} hourly buckets in "
        f"{time.monotonic() - started:.0f} s",
        flush=True,
    )


def pages() -> list[tuple[str, str]]:
    from django.urls import reverse

    def org(name: str, query: str = "") -> str:
        return reverse(f"console:{name}", kwargs={"org_slug": "big"}) + query

    return [
        ("overview 7 days", org("overview")),
        ("overview 30 days", org("overview", "?days=30")),
        ("usage by day", org("usage", "?group_by=day")),
        ("usage by model", org("usage", "?group_by=model")),
        ("usage by key", org("usage", "?group_by=key")),
        ("keys page 1", org("keys")),
        ("keys search", org("keys", "?q=key 0042")),
        ("members page 1", org("members")),
        ("members search", org("members", "?q=user0042")),
        ("teams", org("teams")),
        ("models", org("models")),
        ("deployments", org("deployments")),
        ("limits", org("limits")),
        ("audit", org("audit")),
        ("platform organizations", reverse("console:platform-organizations")),
        ("platform users", reverse("console:platform-users")),
    ]


def measure(repeat: int) -> list[tuple]:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    User = get_user_model()
    owner, root = Client(), Client()
    owner.force_login(User.objects.get(username="owner"))
    root.force_login(User.objects.get(username="root"))
    table = []
    for name, url in pages():
        client = root if name.startswith("platform") else owner
        response = client.get(url)  # warm up
        if response.status_code != 200:
            raise SystemExit(f"{name}: {url} answered {response.status_code}")
        times = []
        queries = 0
        for _ in range(repeat):
            with CaptureQueriesContext(connection) as captured:
                started = time.perf_counter()
                client.get(url)
                times.append((time.perf_counter() - started) * 1000)
            queries = len(captured)
        table.append((name, statistics.median(times), max(times), queries))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="usage ledger rows")
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5, help="measured renders per page")
    parser.add_argument("--keep", action="store_true", help="leave the database for --reuse")
    parser.add_argument("--reuse", action="store_true", help="use a kept, seeded database")
    args = parser.parse_args()

    created = _admin(f'CREATE DATABASE "{BENCH_DB}"')
    if not created and not args.reuse:
        raise SystemExit(f"database {BENCH_DB} exists: drop it, or pass --reuse")
    try:
        _setup_django(BENCH_DB)
        if created:
            seed(rows=args.rows, keys=args.keys, members=args.members)
        table = measure(args.repeat)
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            _admin(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
    print(f"\n{'page':<24} {'median ms':>10} {'max ms':>8} {'queries':>8}  < 1 s")
    for name, median, worst, queries in table:
        ok = "yes" if worst < 1000 else "NO"
        print(f"{name:<24} {median:>10.1f} {worst:>8.1f} {queries:>8}  {ok}")


if __name__ == "__main__":
    main()
