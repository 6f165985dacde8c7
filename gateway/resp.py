"""A lean Redis client for the two Lua scripts on the request path.

Every request makes two Redis calls (admit, settle). Through ``redis.asyncio`` each call
checked a connection out of a pool, went through its retry and parsing layers and cost
more CPU than the rest of the request together. This client keeps one connection per
process and *pipelines* on it: commands are written as they come and replies are matched
to callers in order (Redis answers a connection's commands in order), so concurrent
requests share one socket and Redis reads many commands per wake-up.

It speaks just enough RESP2 for ``EVALSHA``/``EVAL``/``AUTH``/``SELECT``. A command that
times out closes the connection (its replies could no longer be matched) and fails the
commands waiting on it; the next command reconnects. Everything else (snapshot watcher,
usage flushing) uses ``redis.asyncio``.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_INCOMPLETE = object()


class RespError(ResponseError):
    """An error reply from Redis (``-ERR ...``)."""


@dataclass(frozen=True)
class LuaScript:
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.source.encode()).hexdigest()  # noqa: S324 - Redis's id
        object.__setattr__(self, "sha", digest)


@dataclass(frozen=True)
class Endpoint:
    host: str | None
    port: int
    path: str | None
    db: int
    username: str | None
    password: str | None
    tls: bool


def parse_redis_url(url: str) -> Endpoint:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if "password" in query:
        password = query["password"][0]
    db = int(query["db"][0]) if "db" in query else 0
    if parts.scheme == "unix":
        return Endpoint(None, 0, parts.path, db, username, password, False)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"unsupported Redis URL {url!r}")
    path_db = parts.path.lstrip("/")
    if path_db:
        db = int(path_db)
    return Endpoint(
        parts.hostname or "127.0.0.1",
        parts.port or 6379,
        None,
        db,
        username,
        password,
        parts.scheme == "rediss",
    )


def encode_command(args: tuple[Any, ...] | list[Any]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int | float) and not isinstance(arg, bool):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to Redis")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def parse_reply(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """One RESP2 reply starting at ``pos``: ``(value, next position)``, or
    ``(_INCOMPLETE, pos)`` when the buffer does not hold all of it yet."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE, pos
    kind = buf[pos]
    line = bytes(buf[pos + 1 : end])
    after = end + 2
    if kind == 58:  # ':'
        return int(line), after
    if kind == 36:  # '$'
        size = int(line)
        if size < 0:
            return None, after
        if len(buf) < after + size + 2:
            return _INCOMPLETE, pos
        return bytes(buf[after : after + size]), after + size + 2
    if kind == 42:  # '*'
        count = int(line)
        if count < 0:
            return None, after
        items = []
        cursor = after
        for _ in range(count):
            item, cursor = parse_reply(buf, cursor)
            if item is _INCOMPLETE:
                return _INCOMPLETE, pos
            items.append(item)
        return items, cursor
    if kind == 43:  # '+'
        return line.decode(), after
    if kind == 45:  # '-'
        return RespError(line.decode("utf-8", "replace")), after
    raise RedisConnectionError(f"unexpected RESP type byte {kind!r}")


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: deque[asyncio.Future[Any]] = deque()
        self.buffer = bytearray()
        self.closed = False
        # Commands issued in the same loop iteration go out in one write (one syscall).
        self._outgoing: list[bytes] = []
        self._flush_scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos = 0
        try:
            while pos < len(buffer):
                value, pos_after = parse_reply(buffer, pos)
                if value is _INCOMPLETE:
                    break
                pos = pos_after
                if not self.pending:
                    raise RedisConnectionError("reply without a request")
                future = self.pending.popleft()
                if future.done():
                    continue
                if isinstance(value, RespError):
                    future.set_exception(value)
                else:
                    future.set_result(value)
        except (RedisConnectionError, ValueError) as exc:
            self.fail(RedisConnectionError(f"bad reply from Redis: {exc}"))
            return
        del buffer[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.fail(RedisConnectionError("connection to Redis lost"))

    def fail(self, exc: Exception) -> None:
        self.closed = True
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def send(self, payload: bytes) -> asyncio.Future[Any]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.pending.append(future)
        self._outgoing.append(payload)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        outgoing, self._outgoing = self._outgoing, []
        if self.transport is not None and not self.closed and outgoing:
            self.transport.write(b"".join(outgoing) if len(outgoing) > 1 else outgoing[0])


class ScriptClient:
    """Runs Lua scripts on one pipelined connection."""

    def __init__(self, url: str, timeout: float) -> None:
        self.endpoint = parse_redis_url(url)
        self.timeout = timeout
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        ep = self.endpoint
        try:
            async with asyncio.timeout(self.timeout):
                if ep.path is not None:
                    _, conn = await loop.create_unix_connection(_Connection, ep.path)
                else:
                    ctx = ssl.create_default_context() if ep.tls else None
                    _, conn = await loop.create_connection(
                        _Connection,
                        ep.host,
                        ep.port,
                        ssl=ctx,
                        server_hostname=ep.host if ctx else None,
                    )
                setup = []
                if ep.password is not None:
                    auth = (
                        ("AUTH", ep.username, ep.password) if ep.username else ("AUTH", ep.password)
                    )
                    setup.append(conn.send(encode_command(auth)))
                if ep.db:
                    setup.append(conn.send(encode_command(("SELECT", ep.db))))
                for future in setup:
                    await future
        except TimeoutError:
            raise RedisTimeoutError("timed out connecting to Redis") from None
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from None
        self._conn = conn
        return conn

    async def execute(self, *args: Any) -> Any:
        conn = await self._connection()
        future = conn.send(encode_command(args))
        loop = asyncio.get_running_loop()
        handle = loop.call_later(self.timeout, self._expire, conn, future)
        try:
            return await future
        finally:
            handle.cancel()

    def _expire(self, conn: _Connection, future: asyncio.Future[Any]) -> None:
        if not future.done():
            # The reply may still come, but we could no longer tell whose it is.
            conn.fail(RedisTimeoutError(f"Redis did not answer within {self.timeout:g} s"))

    async def run(self, script: LuaScript, keys: list[Any], args: list[Any]) -> Any:
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.execute("EVAL", script.source, len(keys), *keys, *args)

    async def aclose(self) -> None:
        if self._conn is not None:
            self._conn.fail(RedisConnectionError("client closed"))
            self._conn = None
