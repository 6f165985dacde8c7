"""A small HTTP/1.1 client for upstream calls: keep-alive pooling, streaming bodies,
and the three timeouts the proxy needs (connect, first byte, idle between chunks).

Why not httpx: on the gateway's hot path its per-request cost was most of the
gateway's own overhead; this client is an ``asyncio.Protocol`` around ``httptools``
(the parser uvicorn uses) and does only what proxying needs: POST a body, read the
status and headers, then the body chunk by chunk with back-pressure.

External upstreams (outside providers) are "guarded": their host is resolved once per
connection through ``gateway.netguard``, checked, and the socket goes to the checked
address (TLS still verifies the certificate for the name, and the Host header keeps
it), so a DNS answer that changes after the check cannot point the gateway inside the
house. Replica routes are internal by design and connect directly. Redirects are
never followed: a 3xx goes back to the client as it came.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

from gateway.netguard import NetGuard, UnsafeURL

_READ_HIGH_WATER = 256 * 1024


class UpstreamError(Exception):
    """The upstream could not be reached or broke the exchange.

    ``kind``: ``connect`` (no connection; safe to retry elsewhere), ``first_byte``
    (no response within the first-byte timeout), ``idle`` (no data between chunks
    within the idle timeout), ``closed`` (connection lost mid-response), ``protocol``.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int
    base_path: str
    #: Resolve, check with the URL guard and connect to the checked address.
    guarded: bool = False

    @property
    def host_header(self) -> bytes:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (host if self.port == default else f"{host}:{self.port}").encode()


def parse_origin(url: str, guarded: bool = False) -> Origin:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"unsupported upstream URL {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Origin(parts.scheme, parts.hostname, port, parts.path.rstrip("/"), guarded)


class _Connection(asyncio.Protocol):
    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self.reused = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.message_done = False
        self.keep_alive = False
        self.length_known = False
        self.bytes_received = 0
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.bytes_received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # pragma: no cover - never asked for
            self._fail(UpstreamError("protocol", "unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError("protocol", f"malformed upstream response: {exc}"))
        if self.buffered > _READ_HIGH_WATER and not self.paused and self.transport:
            self.paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.message_done and not self.length_known:
            self.message_done = True  # body delimited by the connection's end
        elif not self.message_done and self.error is None:
            self.error = UpstreamError("closed", "upstream closed the connection")
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        self.error = error
        self.close()
        self._wake()

    # -- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        for name, value in self.headers:
            if name == b"content-length" or (
                name == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                self.length_known = True
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        self.message_done = True
        self._wake()

    # -- helpers
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float, kind: str) -> None:
        self._waiter = self.loop.create_future()
        handle = self.loop.call_later(timeout, self._timeout_waiter, self._waiter)
        try:
            await self._waiter
        finally:
            handle.cancel()
            self._waiter = None
        if getattr(self, "_timed_out", False):
            self._timed_out = False
            raise UpstreamError(kind, f"upstream sent nothing for {timeout:g} s")

    def _timeout_waiter(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            self._timed_out = True
            waiter.set_result(None)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamResponse:
    def __init__(self, conn: _Connection, client: UpstreamClient, idle_timeout: float) -> None:
        self._conn = conn
        self._client = client
        self.idle_timeout = idle_timeout
        self.status = conn.status
        self.headers = conn.headers
        self._released = False

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def next_chunk(self, timeout: float | None = None) -> bytes | None:
        """The next piece of the body as it arrived, or ``None`` at its end."""
        conn = self._conn
        while True:
            if conn.chunks:
                data = b"".join(conn.chunks) if len(conn.chunks) > 1 else conn.chunks[0]
                conn.chunks.clear()
                conn.buffered = 0
                if conn.paused and conn.transport is not None and not conn.closed:
                    conn.paused = False
                    conn.transport.resume_reading()
                return data
            if conn.message_done:
                self.release()
                return None
            if conn.error is not None:
                error = conn.error
                self.release()
                raise error
            await conn.wait(self.idle_timeout if timeout is None else timeout, "idle")

    async def read(self) -> bytes:
        parts = []
        while (chunk := await self.next_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._client._release(self._conn)

    def abort(self) -> None:
        """Drop the connection (the client went away or we gave up on the answer)."""
        if not self._released:
            self._released = True
            self._conn.close()


class UpstreamClient:
    def __init__(
        self,
        *,
        connect_timeout: float,
        first_byte_timeout: float,
        idle_timeout: float,
        max_idle_per_origin: int = 256,
        guard: NetGuard | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.first_byte_timeout = first_byte_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle_per_origin
        self.guard = guard or NetGuard()
        self._idle: dict[Origin, list[_Connection]] = {}
        self._origins: dict[tuple[str, bool], Origin] = {}
        self._ssl: ssl.SSLContext | None = None

    def origin(self, url: str, guarded: bool = False) -> Origin:
        origin = self._origins.get((url, guarded))
        if origin is None:
            origin = self._origins[(url, guarded)] = parse_origin(url, guarded)
        return origin

    async def _addresses(self, origin: Origin) -> list[str]:
        """Where to connect: the checked addresses of a guarded origin (resolved once,
        here), else the host as written."""
        if not origin.guarded:
            return [origin.host]
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, self.guard.check_host, origin.host, origin.port)
        except UnsafeURL as exc:
            raise UpstreamError("connect", f"refused by the URL guard: {exc}") from None

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        ssl_ctx = None
        if origin.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            ssl_ctx = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout):
                addresses = await self._addresses(origin)
                for index, address in enumerate(addresses):
                    try:
                        _, conn = await loop.create_connection(
                            lambda: _Connection(origin),
                            address,
                            origin.port,
                            ssl=ssl_ctx,
                            server_hostname=origin.host if ssl_ctx else None,
                        )
                        break
                    except OSError:
                        if index == len(addresses) - 1:
                            raise
        except TimeoutError:
            raise UpstreamError(
                "connect", f"connecting to {origin.host}:{origin.port} timed out"
            ) from None
        except OSError as exc:
            raise UpstreamError(
                "connect", f"cannot connect to {origin.host}:{origin.port}: {exc.strerror or exc}"
            ) from None
        return conn

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                conn.reused = True
                return conn
        return None

    def _release(self, conn: _Connection) -> None:
        if conn.closed or not conn.message_done or not conn.keep_alive or conn.chunks:
            conn.close()
            return
        idle = self._idle.setdefault(conn.origin, [])
        if len(idle) >= self.max_idle:
            conn.close()
            return
        conn._reset()
        idle.append(conn)

    async def post(
        self,
        url: str,
        path: str,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        *,
        guarded: bool = False,
    ) -> UpstreamResponse:
        """Send a POST and wait for the status line and headers (first-byte timeout).
        ``guarded``: an external upstream, reached only at addresses the guard passed."""
        origin = self.origin(url, guarded)
        head = b"".join(
            [
                b"POST ",
                origin.base_path.encode(),
                path.encode(),
                b" HTTP/1.1\r\nhost: ",
                origin.host_header,
                b"\r\ncontent-length: ",
                str(len(body)).encode(),
                b"\r\n",
                *[name + b": " + value + b"\r\n" for name, value in headers],
                b"\r\n",
            ]
        )
        for attempt in range(2):
            conn = self._take_idle(origin) if attempt == 0 else None
            if conn is None:
                conn = await self._connect(origin)
            assert conn.transport is not None
            conn.transport.write(head + body)
            try:
                while not conn.headers_done:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait(self.first_byte_timeout, "first_byte")
            except UpstreamError as exc:
                conn.close()
                # A pooled connection the server had already closed: nothing was
                # processed, so one more try on a fresh connection is safe.
                if conn.reused and conn.bytes_received == 0 and exc.kind == "closed":
                    continue
                if exc.kind == "closed" and conn.bytes_received == 0:
                    raise UpstreamError("connect", str(exc)) from None
                raise
            return UpstreamResponse(conn, self, self.idle_timeout)
        raise UpstreamError("connect", "upstream keeps closing connections")  # pragma: no cover

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
