"""The limit scripts against a real Redis: windows, slots, budgets, levels, settling."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid

import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import contract
from gateway.errors import GatewayError
from gateway.limits import _LUA_CALENDAR, Limiter, Subject
from gateway.resp import ScriptClient


def run(coro):
    return asyncio.run(coro)


class Harness:
    def __init__(self, url: str, slot_ttl: float = 60.0) -> None:
        self.url = url
        self.slot_ttl = slot_ttl

    async def __aenter__(self):
        self.redis = aioredis.Redis.from_url(self.url)
        self.scripts = ScriptClient(self.url, timeout=5.0)
        self.limiter = Limiter(self.scripts, self.slot_ttl, 10_000)
        return self

    async def __aexit__(self, *exc):
        await self.scripts.aclose()
        await self.redis.aclose()

    async def admit(self, subjects, reserve=1):
        return await self.limiter.admit(subjects, uuid.uuid4().hex, reserve)

    async def refused(self, subjects, reserve=1) -> GatewayError:
        with pytest.raises(GatewayError) as info:
            await self.admit(subjects, reserve)
        assert info.value.status == 429
        return info.value


def subjects(key=None, team=None, org=None, tag=None):
    tag = tag or uuid.uuid4().hex[:8]
    out = [Subject("key", f"k-{tag}", key or {})]
    if team is not None:
        out.append(Subject("team", f"t-{tag}", team))
    out.append(Subject("org", f"o-{tag}", org or {}))
    return out


def headers(err: GatewayError) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in err.headers}


def test_rpm_admits_exactly_the_limit(redis_client, redis_url):
    async def scenario():
        async with Harness(redis_url) as h:
            s = subjects(key={"rpm": 5})
            for _ in range(5):
                res = await h.admit(s)
            hdr = dict((k.decode(), v.decode()) for k, v in res.headers)
            assert hdr["x-ratelimit-limit-requests"] == "5"
            assert hdr["x-ratelimit-remaining-requests"] == "0"
            err = await h.refused(s)
            assert err.code == "rate_limit_exceeded"
            assert err.reason == "rpm" and err.level == "key"
            hdr = headers(err)
            assert 1 <= int(hdr["retry-after"]) <= 60
            assert hdr["x-ratelimit-limit-requests"] == "5"
            assert hdr["x-ratelimit-remaining-requests"] == "0"

    run(scenario())


def test_tightest_level_wins_and_refusal_writes_nothing(redis_client, redis_url):
    async def scenario():
        async with Harness(redis_url) as h:
            s = subjects(key={"rpm": 10}, team={"rpm": 8}, org={"rpm": 3})
            for _ in range(3):
                await h.admit(s)
            err = await h.refused(s)
            assert err.level == "org"
            key_counts = await h.redis.hgetall(s[0].base + ":rpm")
            seconds = {k: int(v) for k, v in key_counts.items() if k not in (b"t", b"w", b"f")}
            assert sum(seconds.values()) == 3  # refusal left no trace
            assert int(key_counts[b"t"]) == 3  # the running total agrees
            # A sibling key under another org is not affected by this org's limit.
            other = subjects(key={"rpm": 10})
            await h.admit(other)

    run(scenario())


def test_tpm_reserve_then_settle_frees_tokens(redis_client, redis_url):
    async def scenario():
        async with Harness(redis_url) as h:
            s = subjects(key={"tpm": 100})
            first = await h.admit(s, 60)
            err = await h.refused(s, 60)
            assert err.reason == "tpm"
            assert headers(err)["x-ratelimit-remaining-tokens"] == "40"
            await h.limiter.settle(first, 10, "")
            await h.admit(s, 60)  # 10 + 60 <= 100
            err = await h.refused(s, 101)
            assert (err.reason, err.code) == ("tpm_request", "request_too_large")

    run(scenario())


def test_concurrency_slots_release_and_expire(redis_client, redis_url):
    async def scenario():
        async with Harness(redis_url, slot_ttl=1.0) as h:
            s = subjects(team={"concurrency": 2})
            a = await h.admit(s)
            await h.admit(s)
            err = await h.refused(s)
            assert (err.reason, err.code, err.level) == (
                "concurrency",
                "concurrency_limit_exceeded",
                "team",
            )
            await h.limiter.settle(a, 1, "")
            await h.admit(s)  # a's slot was freed
            await h.refused(s)
            await asyncio.sleep(1.2)  # both remaining slots belong to a "dead gateway"
            await h.admit(s)
            await h.admit(s)

    run(scenario())


def test_daily_and_monthly_budgets(redis_client, redis_url):
    async def scenario():
        async with Harness(redis_url) as h:
            s = subjects(org={"daily_tokens": 100})
            r = await h.admit(s, 60)
            err = await h.refused(s, 50)
            assert (err.reason, err.code) == ("daily_tokens", "budget_exceeded")
            now = time.time()
            assert 0 < int(headers(err)["retry-after"]) <= 86400 - int(now) % 86400 + 2
            await h.limiter.settle(r, 20, "")
            await h.admit(s, 50)
            s = subjects(key={"monthly_tokens": 10})
            await h.admit(s, 10)
            err = await h.refused(s, 1)
            assert err.reason == "monthly_tokens"
            assert 0 < int(headers(err)["retry-after"]) <= 31 * 86400

    run(scenario())


def test_usage_is_counted_even_without_limits(redis_client, redis_url):
    async def scenario():
        async with Harness(redis_url) as h:
            s = subjects(tag="free")
            reservation = h.limiter.unlimited(s, "m1")
            event = orjson.dumps({"request_id": "r1"}).decode()
            await h.limiter.settle(reservation, 42, event)
            day = int(time.time()) // 86400
            assert int(await h.redis.get(s[0].base + f":d:{day}")) == 42
            month = dt.datetime.now(dt.UTC).strftime("%Y%m")
            assert int(await h.redis.get(s[1].base + f":m:{month}")) == 42
            entries = await h.redis.xrange(contract.USAGE_STREAM)
            assert [orjson.loads(f[b"event"]) for _, f in entries] == [{"request_id": "r1"}]
            # A budget introduced now sees the 42 tokens already used today.
            limited = [Subject(x.level, x.id, {"daily_tokens": 50}) for x in s]
            err = await h.refused(limited, 10)
            assert err.reason == "daily_tokens"

    run(scenario())


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(min_value=-3000, max_value=200_000))
def test_lua_calendar_matches_python(redis_client, day):
    script = (
        _LUA_CALENDAR
        + """
local y, m = civil_from_days(tonumber(ARGV[1]))
return {y, m, days_from_civil(y, m)}
"""
    )
    y, m, first = redis_client.eval(script, 0, day)
    date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
    assert (y, m) == (date.year, date.month)
    assert first == (date.replace(day=1) - dt.date(1970, 1, 1)).days


operations = st.lists(
    st.tuples(st.integers(min_value=1, max_value=40), st.floats(min_value=0, max_value=1)),
    min_size=1,
    max_size=30,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations, st.integers(min_value=1, max_value=150))
def test_budget_model_never_overspends(redis_client, redis_url, ops, budget):
    """Against a model: admit while reserved + spent fits the budget; settle the real
    count (never above the reservation). The counter always equals the model and
    never exceeds the budget."""

    async def scenario():
        async with Harness(redis_url) as h:
            s = subjects(key={"daily_tokens": budget})
            counted = 0
            for reserve, fraction in ops:
                if counted + reserve <= budget:
                    r = await h.admit(s, reserve)
                    actual = int(reserve * fraction)
                    await h.limiter.settle(r, actual, "")
                    counted += actual
                else:
                    err = await h.refused(s, reserve)
                    assert err.reason == "daily_tokens"
                day = int(time.time()) // 86400
                stored = int(await h.redis.get(s[0].base + f":d:{day}") or 0)
                assert stored == counted <= budget

    run(scenario())


def test_admission_is_exact_under_concurrency(redis_client, redis_url):
    """Many concurrent admissions from several connections: exactly the limit passes."""

    async def scenario():
        async with Harness(redis_url) as h:
            s = subjects(key={"rpm": 1000}, team={"rpm": 37}, org={"tpm": 10_000})
            results = await asyncio.gather(
                *[h.limiter.admit(s, uuid.uuid4().hex, 5) for _ in range(120)],
                return_exceptions=True,
            )
            refused = [r for r in results if isinstance(r, BaseException)]
            assert len(results) - len(refused) == 37
            assert {(type(r), r.status, r.level) for r in refused} == {(GatewayError, 429, "team")}

    run(scenario())


def _live_sum(fields: dict, now: int) -> int:
    return sum(
        int(v) for k, v in fields.items() if k not in (b"t", b"w", b"f") and int(k) > now - 60
    )


@pytest.mark.parametrize("bookkeeping", ["swept", "none"])
def test_window_forgets_seconds_that_left_it(redis_client, redis_url, bookkeeping):
    """The running total drops exactly the seconds that left the 60 s window, whether the
    window kept its total (``swept``) or is met without one (a window written by an
    older version: summed in full once). Old seconds are planted, since a test cannot
    wait a minute."""

    async def scenario():
        async with Harness(redis_url) as h:
            s = subjects(key={"rpm": 10, "tpm": 1000})
            now = int((await h.redis.time())[0])
            for kind, counts in (("rpm", (4, 3, 2)), ("tpm", (400, 300, 200))):
                key = s[0].base + ":" + kind
                # 70 s and 61 s ago: outside the window; 30 s ago: inside.
                planted = {now - 70: counts[0], now - 61: counts[1], now - 30: counts[2]}
                if bookkeeping == "swept":
                    planted |= {"t": sum(counts), "w": now - 75, "f": now - 70}
                await h.redis.hset(key, mapping=planted)
                await h.redis.expire(key, 120)
            granted = [await h.admit(s, 100) for _ in range(8)]  # 2 + 8 = 10 requests
            err = await h.refused(s, 100)
            assert err.reason == "rpm"
            assert headers(err)["x-ratelimit-remaining-requests"] == "0"
            for kind, live in (("rpm", 10), ("tpm", 200 + 8 * 100)):
                fields = await h.redis.hgetall(s[0].base + ":" + kind)
                assert str(now - 70).encode() not in fields  # swept away
                assert int(fields[b"t"]) == _live_sum(fields, now) == live, kind
                assert int(fields[b"f"]) == now - 30, kind  # the oldest live second
            # Capacity frees when the oldest live second leaves the window: in ~30 s.
            reset = dict(granted[-1].headers)[b"x-ratelimit-reset-requests"]
            assert 28 <= int(reset.decode().rstrip("s")) <= 31, reset
            # A settle corrects the reservation's second and the total alike.
            await h.limiter.settle(granted[0], 40, "")
            fields = await h.redis.hgetall(s[0].base + ":tpm")
            assert int(fields[b"t"]) == _live_sum(fields, now) == 200 + 7 * 100 + 40
            err = await h.refused(s, 100)  # 940 + 100 > 1000 tokens, or rpm
            assert err.reason in ("rpm", "tpm")

    run(scenario())


def test_each_settle_applies_once_remembered_in_a_bitmap_per_process(redis_client, redis_url):
    """A settle replayed (the journal, after a lost answer) changes nothing. Members made by
    the gateway ('<process>:<hex sequence>') are remembered as bits, a key per million
    requests of a process; any other member as a key of its own."""
    process = uuid.uuid4().hex[:12]
    members = [f"{process}:{n:x}" for n in (0, 1, 0xFFFFF, 0x100000)] + [uuid.uuid4().hex]

    async def scenario():
        async with Harness(redis_url) as h:
            s = subjects(key={"concurrency": 10})
            held = [await h.limiter.admit(s, m, 10) for m in members]
            args = [h.limiter.settle_args(r, 3, '{"n": 1}') for r in held]
            first = [await h.limiter.run_settle(a) for a in args]
            again = [await h.limiter.run_settle(a) for a in args]
            return s, first, again

    before = redis_client.xlen(contract.USAGE_STREAM)
    s, first, again = run(scenario())
    assert first == [True] * 5 and again == [False] * 5
    assert redis_client.xlen(contract.USAGE_STREAM) == before + 5  # one event each
    assert redis_client.zcard(f"{s[0].base}:conc") == 0
    prefix = f"{contract.LIMITS_PREFIX}settled:"
    bitmaps = sorted(k.decode() for k in redis_client.keys(f"{prefix}{process}:*"))
    assert bitmaps == [f"{prefix}{process}:0", f"{prefix}{process}:1"]
    assert redis_client.bitcount(bitmaps[0]) == 3 and redis_client.bitcount(bitmaps[1]) == 1
    assert 0 < redis_client.ttl(bitmaps[0]) <= 900
    assert redis_client.exists(f"{prefix}{members[-1]}")


def _next_month_start(now: float) -> int:
    day = dt.datetime.fromtimestamp(now, dt.UTC).date()
    first = dt.date(day.year + day.month // 12, day.month % 12 + 1, 1)
    return int(dt.datetime(first.year, first.month, 1, tzinfo=dt.UTC).timestamp())


def test_top_up_adds_to_every_level_or_refuses_with_the_budgets_reset(redis_client, redis_url):
    """The top-up of an admitted request (its prompt counted above the estimate) adds to
    the day and month counters of every level when all budgets have room; otherwise it
    changes nothing and its 429 says when the refusing budget resets."""

    async def scenario():
        async with Harness(redis_url) as h:
            s = subjects(key={"daily_tokens": 100}, org={"monthly_tokens": 1000})
            held = await h.limiter.admit(s, "m-1", 30, budget_reserve=None)
            await h.limiter.top_up(held, s, 50)
            assert held.budget_reserved == 80
            daily = await _refused_top_up(h, held, s, 21)  # 80 + 21 > 100
            now = time.time()
            assert daily.reason == "daily_tokens"
            assert 0 < int(headers(daily)["retry-after"]) <= 86400 - int(now) % 86400 + 2
            s[1].limits = {"monthly_tokens": 90}
            monthly = await _refused_top_up(h, held, s, 11)  # 80 + 11 > 90
            now = time.time()
            assert monthly.reason == "monthly_tokens"
            assert abs(int(headers(monthly)["retry-after"]) - (_next_month_start(now) - now)) < 3
            return s, held

    s, held = run(scenario())
    for subject in s:
        assert int(redis_client.get(f"{subject.base}:d:{held.day}")) == 80
        assert int(redis_client.get(f"{subject.base}:m:{held.month}")) == 80


async def _refused_top_up(h, held, s, extra) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await h.limiter.top_up(held, s, extra)
    assert info.value.status == 429 and held.budget_reserved == 80
    return info.value
