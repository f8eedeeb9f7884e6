"""HTTP/1.1 POSTs to one origin over kept-alive connections: the delivery path's own client.

Delivery sends one kind of request, a small JSON POST, to a few URLs, thousands of times a
second in a backlog. A general client spends most of its time on what this path never needs
(cookies, redirects, URL merging, tracing, per-request timeout objects): measured on the drain
of a backlog into a local receiver, aiohttp's request path was about half of the bridge's CPU
per delivered event. This module keeps only what delivery needs, and leaves HTTP's framing to
``httptools`` (llhttp, the parser uvicorn serves with):

* :meth:`Origin.post` sends one request on an idle connection of the pool, or a new one, and
  returns an :class:`Answer` (status, ``Retry-After``, at most ``max_body`` bytes of body), the final
  one: interim 1xx answers (``100 Continue``, ``103 Early Hints``) are skipped;
* one deadline covers the whole attempt, connecting and TLS included: a peer that trickles its
  answer byte by byte cannot hold a worker beyond it (:class:`TimeoutError`);
* no answer at all (refused, reset, DNS, TLS, closed mid-answer, not HTTP) raises
  :class:`NoAnswer` (an :class:`OSError`), with the cause in its message;
* a connection goes back to the pool only after a complete answer that both sides keep alive,
  and an idle one is closed after ``keepalive`` seconds, before a server's own idle timeout
  can race a request (httpx's and aiohttp's default, 5 s); one that the peer closed while idle is
  never reused;
* the pool holds at most ``max_idle`` idle connections; how many are busy at once is bounded by
  the caller (the dispatcher runs at most ``delivery.workers`` attempts).

Requests through a proxy do not come here (see :class:`~bridge.destinations.flashduty.Transports`).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from typing import cast
from urllib.parse import quote, urlsplit

import httptools

#: Idle connections are closed after this long (seconds).
KEEPALIVE = 5.0
#: Characters a request target may carry as they are (RFC 3986 pchar and query, and % of an encoded one).
_SAFE = "/%?=&:@!$'()*+,;~-._"


class NoAnswer(ConnectionError):
    """The attempt got no complete HTTP answer: refused, reset, closed mid-answer, or not HTTP."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    retry_after: str | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """Where requests go, parsed once: scheme, host, port, and the request target (path and query)."""

    https: bool
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        """``ValueError`` for a URL this client cannot send to (not http/https, no host, a bad port)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL with a host: {parts.scheme}://{parts.hostname or ''}")
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)  # .port raises ValueError for a bad one
        host = parts.hostname.encode("idna").decode("ascii")  # UnicodeError is a ValueError
        # Percent-encode what is not already (a % stays: the URL may be encoded already).
        path = quote(parts.path or "/", safe=_SAFE) + (f"?{quote(parts.query, safe=_SAFE)}" if parts.query else "")
        return cls(https, host, port, path)

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.https else 80
        return host if self.port == default else f"{host}:{self.port}"


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the answer it is waiting for; the parser's callbacks fill it in."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_body: int) -> None:
        self._loop = loop
        self._max_body = max_body
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[Answer] | None = None
        self._reset()

    def _reset(self) -> None:
        self._body: list[bytes] = []
        self._size = 0
        self._retry_after: str | None = None
        self._framed = False  # Content-Length or chunked: the answer's end is known without a close
        self._headers_done = False

    # -- used by Origin ---------------------------------------------------------------

    def request(self, data: bytes) -> asyncio.Future[Answer]:
        assert self.transport is not None and self._waiter is None
        self._reset()
        self._waiter = self._loop.create_future()
        self.transport.write(data)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            self.close()  # bytes nobody asked for: this connection's framing cannot be trusted any more
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(NoAnswer(f"not an HTTP answer: {exc}"))

    def eof_received(self) -> bool | None:
        self.closed = True
        return None  # close the transport; connection_lost settles an answer still waiting

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        if self._headers_done and not self._framed:
            self._complete()  # an answer without Content-Length or chunks ends where the connection does
        else:
            self._fail(NoAnswer(f"connection closed before the answer was complete{f': {exc}' if exc else ''}"))

    # -- httptools' callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None:
            self.close()  # a second answer to one request, in the same read: as above

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"retry-after":
            self._retry_after = value.decode("latin-1")
        elif lower in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        if self._size <= self._max_body:
            self._body.append(body)
            self._size += len(body)
            if self._size > self._max_body:
                # Enough to classify; the rest is not read, so the connection cannot be used again.
                self._complete()
                self.close()

    def on_message_complete(self) -> None:
        if 100 <= self._parser.get_status_code() < 200:
            self._reset()  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            return
        if not self._parser.should_keep_alive():
            self.closed = True
        self._complete()

    def _complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            body = b"".join(self._body)[: self._max_body + 1]
            waiter.set_result(Answer(self._parser.get_status_code(), body, self._retry_after))

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()


class Origin:
    """Kept-alive connections to one scheme, host and port."""

    def __init__(
        self,
        target: Target,
        ssl_context: ssl.SSLContext | None,
        *,
        max_idle: int,
        max_body: int,
        keepalive: float = KEEPALIVE,
    ) -> None:
        self.target = target
        self._ssl = ssl_context if target.https else None
        self._max_idle = max_idle
        self._max_body = max_body
        self._keepalive = keepalive
        self._idle: list[_Connection] = []

    async def post(self, head: bytes, body: bytes, timeout: float) -> Answer:
        """Send ``head`` (the request line and headers, ending in an empty line) and ``body``; the answer.

        Raises :class:`TimeoutError` when no complete answer arrives within ``timeout`` seconds,
        :class:`NoAnswer` (or another :class:`OSError`) when none arrives at all.
        """
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(timeout):
                connection = self._idle_connection() or await self._connect()
                answer = await connection.request(head + body)
        except BaseException:
            if connection is not None:
                connection.close()  # its state is unknown (cancelled, timed out, broken): never reuse it
            raise
        if connection.closed or len(self._idle) >= self._max_idle:
            connection.close()
        else:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        return answer

    def _idle_connection(self) -> _Connection | None:
        expired = time.monotonic() - self._keepalive
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the least likely to be timed out by the peer
            if not connection.closed and connection.idle_since > expired:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        target = self.target
        try:
            _, connection = await loop.create_connection(
                lambda: _Connection(loop, self._max_body),
                target.host,
                target.port,
                ssl=self._ssl,
                server_hostname=target.host if self._ssl is not None else None,
            )
        except ssl.SSLError as exc:
            raise NoAnswer(f"TLS: {exc}") from exc
        return connection

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
