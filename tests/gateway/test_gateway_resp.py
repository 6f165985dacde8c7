"""The pipelined Redis client of the request path."""

from __future__ import annotations

import asyncio
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.resp import (
    _INCOMPLETE,
    LuaScript,
    RespError,
    ScriptClient,
    encode_command,
    parse_redis_url,
    parse_reply,
)

replies = st.recursive(
    st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.binary(max_size=50) | st.none(),
    lambda children: st.lists(children, max_size=5),
    max_leaves=20,
)


def encode_reply(value) -> bytes:
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    return b"*%d\r\n" % len(value) + b"".join(encode_reply(v) for v in value)


@given(replies)
def test_parse_reply_round_trip_and_partial_input(value):
    data = encode_reply(value) + b"+OK\r\n"
    parsed, pos = parse_reply(data, 0)
    assert parsed == value
    assert parse_reply(data, pos) == ("OK", len(data))
    for cut in range(len(data) - 5):
        assert parse_reply(data[:cut], 0)[0] is _INCOMPLETE


def test_error_reply_and_encoding():
    err, _ = parse_reply(b"-NOSCRIPT No matching script\r\n", 0)
    assert isinstance(err, RespError) and str(err).startswith("NOSCRIPT")
    assert (
        encode_command(("SET", b"k", 5, 0.5))
        == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n5\r\n$3\r\n0.5\r\n"
    )
    with pytest.raises(TypeError):
        encode_command((object(),))


def test_parse_redis_url():
    ep = parse_redis_url("redis://:s3cret@10.0.0.2:6380/4")
    assert (ep.host, ep.port, ep.db, ep.password, ep.tls) == ("10.0.0.2", 6380, 4, "s3cret", False)
    ep = parse_redis_url("unix:///tmp/redis.sock?db=15")
    assert (ep.path, ep.db) == ("/tmp/redis.sock", 15)
    assert parse_redis_url("rediss://user:pw@host").tls
    with pytest.raises(ValueError):
        parse_redis_url("http://host")


def test_scripts_run_pipelined_and_reload_after_flush(redis_client, redis_url):
    script = LuaScript("return {tonumber(ARGV[1]) * 2, KEYS[1]}")

    async def scenario():
        client = ScriptClient(redis_url, timeout=5)
        try:
            results = await asyncio.gather(*[client.run(script, ["k"], [i]) for i in range(200)])
            assert results == [[2 * i, b"k"] for i in range(200)]
            await client.execute("SCRIPT", "FLUSH")
            assert await client.run(script, ["x"], [21]) == [42, b"x"]  # NOSCRIPT -> EVAL
            with pytest.raises(RespError):
                await client.run(LuaScript("return redis.call('NOPE')"), [], [])
            assert await client.execute("PING") == "PONG"  # the connection survived
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_unresponsive_redis_times_out_and_unreachable_fails_fast():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    port = silent.getsockname()[1]

    async def scenario():
        client = ScriptClient(f"redis://127.0.0.1:{port}/0", timeout=0.2)
        with pytest.raises(RedisTimeoutError):
            await client.execute("PING")
        await client.aclose()
        silent.close()
        client = ScriptClient(f"redis://127.0.0.1:{port}/0", timeout=0.2)
        with pytest.raises(RedisConnectionError):
            await client.execute("PING")

    try:
        asyncio.run(scenario())
    finally:
        silent.close()
