"""The ledger names whose capacity served each request (``owner``) beside the caller,
reads events written before the field existed, and parks a malformed owner instead of
failing the batch."""

from __future__ import annotations

import pytest
import redis
from controlplane.quotas.ledger import DEAD_LETTER_STREAM, LedgerConsumer
from controlplane.quotas.models import UsageRecord
from django.conf import settings

from tests.conftest import client_for
from tests.controlplane.test_ledger import event, push

pytestmark = pytest.mark.django_db


@pytest.fixture
def r():
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


def test_owner_is_recorded_and_shown(world, r):
    org_a, org_b = str(world.org_a.pk), str(world.org_b.pk)
    old = event("old", org_a)  # written before the field existed
    assert "owner" not in old
    push(
        r,
        [
            event("own", org_a, owner=org_a),
            event("platform", org_b, owner=None),
            old,
            event("bad-owner", org_b, owner="not-a-uuid"),
        ],
    )
    result = LedgerConsumer(r, name="owner").run_once(block=False)
    assert result.written == 3 and result.dead == 1
    assert r.xlen(DEAD_LETTER_STREAM) == 1
    owners = {rec.request_id: rec.owner_id for rec in UsageRecord.objects.all()}
    assert owners == {"own": world.org_a.pk, "platform": None, "old": None}

    response = client_for(world.alice).get("/api/v1/organizations/org-a/usage/")
    assert response.status_code == 200
    rows = {row["request_id"]: row for row in response.json()["results"]}
    assert rows["own"]["owner_id"] == org_a and rows["old"]["owner_id"] is None
    assert "platform" not in rows  # B's usage stays B's
