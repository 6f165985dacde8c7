"""The default routing policy: prefix match and load scored together, with the load
bounded at (1 + load_bound) x the mean; unit and property tests of the pure parts."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy import Plan, prompt_blocks
from gateway.routing import PrefixIndex, Router
from tests.gateway.fakes import route


def routes(n: int):
    return [route(f"r{i}", f"http://10.0.0.{i}:8000") for i in range(n)]


def chat_plan(messages, alias="m") -> Plan:
    return Plan(
        endpoint="chat.completions",
        body={"model": alias, "messages": messages},
        alias=alias,
        model={"task": "chat", "openness": "open-weights", "context_length": None, "routes": []},
        routes=[],
        stream=False,
        client_wants_usage=False,
        reserve_tokens=10,
        prompt_estimate=5,
        inject_max_tokens=None,
        affinity_key=None,
    )


SYSTEM = "You are the assistant of the tax department. Answer briefly. " * 10


def test_blocks_of_a_shared_prefix_are_shared_and_chained():
    one = prompt_blocks(
        chat_plan([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "a" * 200}]),
        64,
        256,
    )
    two = prompt_blocks(
        chat_plan([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "b" * 200}]),
        64,
        256,
    )
    shared = len(SYSTEM) // 64
    assert one[:shared] == two[:shared]
    assert one[-1] != two[-1]
    # chained: the same text after a different start is a different block
    other = prompt_blocks(chat_plan([{"role": "system", "content": "x" + SYSTEM}]), 64, 256)
    assert not set(other) & set(one)
    # another model never shares blocks; the cap holds; embeddings have none
    assert not set(
        prompt_blocks(chat_plan([{"role": "system", "content": SYSTEM}], "n"), 64, 256)
    ) & set(one)
    assert len(prompt_blocks(chat_plan([{"role": "system", "content": SYSTEM * 10}]), 64, 5)) == 5


def test_prompt_blocks_never_crash_on_odd_messages():
    odd = [None, 3, {"role": 5, "content": [{"text": 1}, "x", {"text": "y" * 100}]}, {}]
    assert len(prompt_blocks(chat_plan(odd), 8, 256)) >= 1


def test_prefix_index_matches_the_leading_run_and_forgets_the_oldest():
    index = PrefixIndex(capacity=6)
    index.record((1, 2, 3), "a")
    index.record((1, 2, 9), "b")
    assert index.match((1, 2, 3, 4), ["a", "b", "c"]) == {"a": 3, "b": 2, "c": 0}
    assert index.match((7, 2, 3), ["a", "b"]) == {"a": 0, "b": 0}
    index.record((10, 11, 12), "c")  # 7 blocks > 6: 3, the least recently used, goes
    assert len(index) == 6
    assert index.match((1, 2, 3), ["a"]) == {"a": 2}


def test_a_session_sticks_to_the_replica_holding_its_prefix():
    router = Router()
    rs = routes(3)
    blocks = (11, 12, 13)
    first = router.order("m", rs, None, blocks)[0]["id"]
    router.record_prompt(first, blocks)
    for _ in range(10):
        assert router.order("m", rs, None, (*blocks, 14))[0]["id"] == first


def test_without_a_match_the_least_loaded_route_wins():
    router = Router()
    rs = routes(3)
    router.acquire("r0")
    router.acquire("r1")
    assert router.order("m", rs, None, (1, 2))[0]["id"] == "r2"
    rr = Router()  # ties go round-robin
    assert {rr.order("m", rs, None, ())[0]["id"] for _ in range(6)} == {"r0", "r1", "r2"}


def test_an_overloaded_holder_gives_way_and_other_gateways_count():
    router = Router(load_bound=0.25)
    rs = routes(2)
    router.record_prompt("r0", (1, 2, 3))
    router.acquire("r0")
    assert router.order("m", rs, None, (1, 2, 3))[0]["id"] == "r0"  # 1 < cap 2
    router.acquire("r0")
    assert router.order("m", rs, None, (1, 2, 3))[0]["id"] == "r1"  # 2 >= cap 2
    router.release("r0")
    router.remote_outstanding = {"r0": 5}  # another gateway process keeps r0 busy
    assert router.order("m", rs, None, (1, 2, 3))[0]["id"] == "r1"


def test_least_outstanding_and_affinity_stay_available():
    lo = Router(strategy="least-outstanding")
    lo.record_prompt("r0", (1,))  # not indexed outside cache-aware
    assert len(lo.prefixes) == 0
    aff = Router(strategy="affinity")
    assert aff.uses_affinity("m") and not Router().uses_affinity("m")


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=5),
    bound=st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]),
    loads=st.lists(st.integers(min_value=0, max_value=20), min_size=5, max_size=5),
    remote=st.lists(st.integers(min_value=0, max_value=20), min_size=5, max_size=5),
    held=st.lists(st.integers(min_value=0, max_value=4), min_size=5, max_size=5),
    prompt=st.lists(st.integers(min_value=0, max_value=3), min_size=0, max_size=6),
)
def test_the_choice_is_under_the_bound_and_the_best_match_there(
    n, bound, loads, remote, held, prompt
):
    router = Router(load_bound=bound, clock=lambda: 0.0)
    rs = routes(n)
    blocks = tuple(prompt)
    for i, r in enumerate(rs):
        for _ in range(loads[i]):
            router.acquire(r["id"])
        if remote[i]:
            router.remote_outstanding[r["id"]] = remote[i]
        router.record_prompt(r["id"], blocks[: held[i]])
    total = {r["id"]: loads[i] + remote[i] for i, r in enumerate(rs)}
    cap = max(1, math.ceil((1 + bound) * (sum(total.values()) + 1) / n - 1e-9))
    recent = {r["id"]: router.recent(r["id"]) for r in rs}
    recent_cap = (1 + 2 * bound) * (sum(recent.values()) + 1) / n
    chosen = router.order("m", rs, None, blocks)[0]["id"]
    under = [rid for rid, load in total.items() if load < cap]
    assert under, "the least loaded route is always under the bound"
    assert chosen in under  # never past the in-flight bound while another has room
    # under the rate bound too when some route is (the rate bound applies only when some
    # route holds part of the prompt); then the longest match, then load
    matched = router.prefixes.match(blocks, total) if blocks else dict.fromkeys(total, 0)
    both = under
    if any(matched.values()):
        both = [rid for rid in under if recent[rid] < recent_cap] or under
    assert chosen in both
    assert matched[chosen] == max(matched[rid] for rid in both)
    best = [rid for rid in both if matched[rid] == matched[chosen]]
    assert total[chosen] == min(total[rid] for rid in best)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.tuples(st.booleans(), st.integers(0, 3)), min_size=1, max_size=120),
    n=st.integers(min_value=2, max_value=4),
)
def test_a_hot_prefix_never_piles_past_the_bound(steps, n):
    """Arrivals (all with the same hot prefix) and departures in any order: after each
    placement the busiest route holds at most ceil(1.25 x mean) requests."""
    router = Router(load_bound=0.25)
    rs = routes(n)
    hot = (101, 102, 103)
    for arrive, which in steps:
        if arrive:
            total = sum(router.load(r["id"]) for r in rs)
            cap = max(1, math.ceil(1.25 * (total + 1) / n - 1e-9))
            rid = router.order("m", rs, None, hot)[0]["id"]
            router.acquire(rid)
            router.record_prompt(rid, hot)
            assert router.load(rid) <= cap
        else:
            router.release(rs[which % n]["id"])


def test_a_hot_prefix_spreads_even_when_its_requests_never_overlap():
    """One request at a time (the in-flight bound never bites): the holder of the hot
    prefix takes at most its share of the recent requests, then both replicas hold
    the prefix and share by load and round-robin."""
    now = [0.0]
    router = Router(load_bound=0.25, clock=lambda: now[0])
    rs = routes(2)
    hot = (7, 8, 9)
    taken = {"r0": 0, "r1": 0}
    for _ in range(40):
        rid = router.order("m", rs, None, hot)[0]["id"]
        router.acquire(rid)
        router.record_prompt(rid, hot)
        router.release(rid)
        taken[rid] += 1
        now[0] += 0.1
    assert max(taken.values()) <= 1.5 * 40 / 2, taken


def test_with_no_prefix_match_anywhere_load_alone_decides():
    """The request-rate bound spreads a prefix some replica holds; for a prompt no replica
    has seen it must not send the request behind a busier replica (unique prompts would
    wait longer than under least-outstanding)."""
    now = [0.0]
    router = Router(clock=lambda: now[0])
    two = routes(2)
    for _ in range(6):  # r0 took many requests recently, all finished
        router.acquire("r0")
        router.release("r0")
    router.acquire("r1")  # r1 holds one request now
    blocks = (11, 12, 13)  # nobody has these
    for _ in range(4):  # whatever the rotation
        assert router.order("m", two, None, blocks)[0]["id"] == "r0"
    # Once r0 holds this prefix and its recent rate is over the bound, the bound spreads it.
    router.record_prompt("r0", blocks)
    router.record_prompt("r1", blocks)
    assert router.order("m", two, None, blocks)[0]["id"] == "r1"
