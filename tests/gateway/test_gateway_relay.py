"""The SSE relay: however the upstream splits its bytes, the client gets the same
events, the usage is found, and the gateway's own usage chunk is removed."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from gateway.policy import Plan
from gateway.proxy import _SSERelay, upstream_body

USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}


def stream_bytes(pieces: int, crlf: bool = False) -> bytes:
    events = [
        b"data: "
        + orjson.dumps({"choices": [{"index": 0, "delta": {"content": f"t{i}"}}], "usage": None})
        for i in range(pieces)
    ]
    events.append(b"data: " + orjson.dumps({"choices": [], "usage": USAGE}))
    events.append(b"data: [DONE]")
    sep = b"\r\n\r\n" if crlf else b"\n\n"
    return sep.join(events) + sep


def relay_all(data: bytes, cuts: list[int], strip: bool) -> tuple[bytes, _SSERelay]:
    relay = _SSERelay(strip_usage=strip, collect=True)
    out = []
    previous = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        out.append(relay.feed(data[previous:cut]))
        previous = cut
    out.append(relay.flush())
    return b"".join(out), relay


@given(
    st.integers(min_value=0, max_value=6),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
    st.booleans(),
    st.booleans(),
)
def test_any_chunking_gives_the_same_events(pieces, cuts, strip, crlf):
    data = stream_bytes(pieces, crlf)
    cuts = [c % (len(data) + 1) for c in cuts]
    out, relay = relay_all(data, cuts, strip)
    events = [e for e in out.split(b"\n\n") if e]
    assert relay.usage == (11, 3)
    assert events[-1] == b"data: [DONE]"
    contents = [orjson.loads(e[6:]) for e in events[:-1]]
    texts = [c["choices"][0]["delta"]["content"] for c in contents if c["choices"]]
    assert texts == [f"t{i}" for i in range(pieces)]
    has_usage_chunk = any(c.get("usage") for c in contents)
    assert has_usage_chunk == (not strip)
    assert relay.text_seen() == "".join(texts)
    assert relay.content_events >= pieces


def test_a_partial_event_waits_for_its_end():
    relay = _SSERelay(strip_usage=True)
    assert relay.feed(b'data: {"choices": [{"delta": {"content"') == b""
    assert (
        relay.feed(b': "x"}}]}\n\ndata: {"choi')
        == b'data: {"choices": [{"delta": {"content": "x"}}]}\n\n'
    )
    assert relay.flush() == b'data: {"choi'


def plan(**overrides) -> Plan:
    values = {
        "endpoint": "chat.completions",
        "body": {"model": "alias", "messages": [{"role": "user", "content": "hi"}]},
        "alias": "alias",
        "model": {"task": "chat", "openness": "open-weights", "context_length": None, "routes": []},
        "routes": [],
        "stream": False,
        "client_wants_usage": False,
        "reserve_tokens": 10,
        "prompt_estimate": 5,
        "inject_max_tokens": None,
        "affinity_key": None,
    }
    values.update(overrides)
    return Plan(**values)


ROUTE = {"id": "r", "url": "http://x", "api_key": None, "model": "served", "external": False}


def test_upstream_body_is_the_clients_bytes_when_nothing_changes():
    raw = b'{"model": "alias", "messages": []}'
    same = {**ROUTE, "model": "alias"}
    assert upstream_body(plan(), same, raw) is raw
    rewritten = orjson.loads(upstream_body(plan(), ROUTE, raw))
    assert rewritten["model"] == "served" and rewritten["messages"] == [
        {"role": "user", "content": "hi"}
    ]
    streamed = orjson.loads(upstream_body(plan(stream=True, inject_max_tokens=64), same, raw))
    assert streamed["stream_options"] == {"include_usage": True}
    assert streamed["max_tokens"] == 64
