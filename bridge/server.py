"""The HTTP/1.1 connection: uvicorn's httptools protocol with limits on what a client may make it hold.

uvicorn (with httptools) has no limit on request headers: httptools buffers a header field until
it is complete before ``on_header`` fires, so one connection could send hundreds of MiB of
headers, and a client sending one byte at a time holds a connection for ever. This protocol
counts what arrives until the headers are complete and bounds time:

* **Header size and count** (``limits.max_header_bytes``, ``limits.max_headers``): bytes received
  while the headers are incomplete are counted as they arrive (so the parser never holds more
  than the limit plus one read); more, or more fields, is answered ``431`` and the connection
  closed; the app never sees the request.
* **Header timeout** (``limits.header_timeout``): from connecting, or from the first byte of the
  next request on a kept-alive connection, to the end of the headers; then ``408`` and close
  (slow-header clients, "slowloris").
* **Body timeout** (``limits.body_timeout``): from the end of the headers to the end of the
  body, whatever the app does meanwhile; then ``408`` (unless an answer was already started)
  and close. The app sees the client gone.
* **Keep-alive** (``limits.keepalive_timeout``): an idle connection between requests is closed.

Each refusal is reported to ``on_refused`` with a reason from
:data:`bridge.metrics.HTTP_REFUSED_REASONS`. Connections beyond ``limits.max_connections`` are
answered 503 and closed at once, so at most that many connections hold partial headers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from bridge.config import LimitsConfig
from bridge.responses import new_request_id

#: Bytes of a request line beyond the URL: method, spaces, version, CRLF; of a header: ": " and CRLF.
_LINE_OVERHEAD = 20
_FIELD_OVERHEAD = 4


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header size and count limits and read timeouts."""

    limits: ClassVar[LimitsConfig] = LimitsConfig()
    on_refused: ClassVar[Callable[[str], None]] = staticmethod(lambda reason: None)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.limits.keepalive_timeout  # type: ignore[assignment]  # a float works
        self._in_head = False
        self._head_bytes = 0
        self._header_size = 0
        self._header_count = 0
        self._over: str | None = None
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # -- connection ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            limit = self.limits.max_connections
            self._refuse(503, "too_many_connections", f"{limit} connections are open (limits.max_connections); retry")
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._refused or self.transport.is_closing():
            return
        if self._in_head:
            # Counted after the parser saw it: httptools holds an incomplete header field, so
            # what it holds is bounded by the limit plus this one read.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(431, "headers_too_large", self._size_message())

    # -- parser callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._header_size = _LINE_OVERHEAD
        self._header_count = 0
        self._over = None
        if self._head_timer is None:  # the next request on a kept-alive connection
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._header_size += len(url)
        if self._header_size > self.limits.max_header_bytes:
            self._over = "headers_too_large"

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_size += len(name) + len(value) + _FIELD_OVERHEAD
        if self._header_count > self.limits.max_headers:
            self._over = self._over or "too_many_headers"
            return  # not kept: the request is refused when the headers end
        if self._header_size > self.limits.max_header_bytes:
            self._over = "headers_too_large"
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        if self._over == "too_many_headers":
            self._refuse(
                431, "too_many_headers", f"more than {self.limits.max_headers} header fields (limits.max_headers)"
            )
            return
        if self._over is not None:
            self._refuse(431, "headers_too_large", self._size_message())
            return
        self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if not self._refused:
            super().on_message_complete()

    # -- timers and refusals ---------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_head_timer()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        seconds = self.limits.header_timeout
        self._refuse(
            408, "header_timeout", f"the request headers did not arrive within {seconds:g} s (limits.header_timeout)"
        )

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        seconds = self.limits.body_timeout
        self._refuse(408, "body_timeout", f"the request body did not arrive within {seconds:g} s (limits.body_timeout)")

    def _size_message(self) -> str:
        return f"the request line and headers exceed {self.limits.max_header_bytes} bytes (limits.max_header_bytes)"

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer ``status`` unless an answer is already under way on this connection, then close it.

        A body timeout concerns the request being answered (``self.cycle``): it gets the 408 if
        the app has not started its answer. A header refusal concerns a request the app never
        saw: it is answered only when no earlier (pipelined) request is still being answered.
        """
        self._refused = True
        self._cancel_timers()
        type(self).on_refused(reason)
        cycle = self.cycle
        busy = cycle is not None and not cycle.response_complete
        if reason == "body_timeout" and cycle is not None:
            if not cycle.response_started:
                self.transport.write(_answer(status, message))
        elif not busy:
            self.transport.write(_answer(status, message))
        if cycle is not None and busy:
            cycle.disconnected = True  # whatever the app still sends goes nowhere
            cycle.message_event.set()  # an app waiting for the body sees the client gone
        self.transport.close()


def _answer(status: int, message: str) -> bytes:
    """A whole HTTP answer in the bridge's envelope, closing the connection."""
    code = {408: "RequestTimeout", 503: "ServiceUnavailable"}.get(status, "InvalidParameter")
    error = {"request_id": new_request_id(), "error": {"code": code, "message": message}}
    body = json.dumps(error, separators=(",", ":")).encode()
    head = b"content-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(body)
    return STATUS_LINE[status] + head + body


def protocol_class(limits: LimitsConfig) -> type[BoundedHttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` bound to ``limits``; set ``on_refused`` on it to count."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"limits": limits})
