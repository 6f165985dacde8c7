"""Redis dies with 64 requests in flight across 4 gateway processes and comes back
empty. The processes replay their settle journals, the control plane's ledger consumer
re-seeds the budget counters, and then: the day and month counters equal the ledger's
totals, no concurrency slot is held, and the ledger has exactly one record per
completed request."""

from __future__ import annotations

import threading

import httpx
import pytest
from controlplane.quotas.ledger import LedgerConsumer, ensure_group
from controlplane.quotas.models import UsageRecord
from controlplane.quotas.reseed import seed_counters
from django.db.models import Sum

from gateway import contract
from tests.gateway.fakes import DisposableRedis, SnapshotBuilder, route, wait_for

pytestmark = [pytest.mark.timeout(180), pytest.mark.django_db]

ORG = "6f1f6c59-0000-4000-8000-000000000001"
KEY = "6f1f6c59-0000-4000-8000-000000000002"


def _drain(client) -> None:
    ensure_group(client)
    consumer = LedgerConsumer(client, name="recovery", block_ms=10)
    seed_counters(client)
    while consumer.run_once(block=False).read:
        pass


def _chat(url: str, key: str) -> int:
    return httpx.post(
        url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "chat-model", "messages": [{"role": "user", "content": "hi"}]},
        timeout=60,
    ).status_code


def test_counters_slots_and_ledger_after_redis_restarts_empty(
    upstream_urls, start_processes, fake_a, tmp_path
):
    server = DisposableRedis()
    server.start()
    try:
        client = server.client()
        snap = SnapshotBuilder()
        snap.org(ORG, slug="acme", models=("chat-model",))
        key = snap.key(
            KEY, ORG, limits={"concurrency": 200, "daily_tokens": 10**9, "monthly_tokens": 10**10}
        )
        snap.model("chat-model", [route("a", upstream_urls["a"])])
        snap.publish(client)
        procs = start_processes(
            4,
            GATEWAY_REDIS_URL=server.url,
            # Long enough that 64 admissions at once on a busy machine never wait past
            # it for a pooled connection (that would be a 503 and no usage to check).
            GATEWAY_REDIS_TIMEOUT="1.0",
            GATEWAY_JOURNAL_DIR=str(tmp_path),
        )
        # Some usage reaches the ledger before the loss.
        assert [_chat(procs[i % 4].url, key) for i in range(8)] == [200] * 8
        _drain(client)
        assert UsageRecord.objects.count() == 8

        # All 64 wait on the upstream until Redis has died: none settles before.
        fake_a.hold = True
        statuses: list[int] = []
        threads = [
            threading.Thread(target=lambda i=i: statuses.append(_chat(procs[i % 4].url, key)))
            for i in range(64)
        ]
        for t in threads:
            t.start()
        # all 64 upstream (a refused one would already be in statuses)
        assert wait_for(lambda: fake_a.hits == 8 + 64, timeout=30), statuses
        server.kill()
        fake_a.hold = False
        for t in threads:
            t.join()
        assert statuses == [200] * 64

        server.start()  # empty: no counters, no stream, no seed marker
        client = server.client()
        replayed = wait_for(lambda: client.xlen(contract.USAGE_STREAM) == 64, timeout=60)
        assert replayed, client.xlen(contract.USAGE_STREAM)
        assert wait_for(lambda: all(p.stat().st_size == 0 for p in tmp_path.glob("*.jsonl")))
        _drain(client)

        assert UsageRecord.objects.count() == 72
        assert UsageRecord.objects.values("request_id").distinct().count() == 72
        tokens = UsageRecord.objects.aggregate(p=Sum("prompt_tokens"), c=Sum("completion_tokens"))
        total = tokens["p"] + tokens["c"]
        now = int(client.time()[0])
        day = now // 86400
        base = f"{contract.LIMITS_PREFIX}key:{KEY}"
        assert int(client.get(f"{base}:d:{day}")) == total
        months = [k for k in client.keys(f"{base}:m:*")]
        assert len(months) == 1 and int(client.get(months[0])) == total
        assert client.zcard(f"{base}:conc") == 0
        assert int(client.get(f"{contract.LIMITS_PREFIX}org:{ORG}:d:{day}")) == total
    finally:
        server.cleanup()
