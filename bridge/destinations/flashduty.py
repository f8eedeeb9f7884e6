"""Flashduty's standard alert endpoint: one POST per event, classified by error code.

This is the only module that knows the HTTP clients' exceptions (:mod:`~bridge.destinations.wire`'s for
direct requests, aiohttp's for requests through a proxy). Every answer is classified by
the envelope's ``error.code`` first (several permanent errors share HTTP 400, and a
2xx may carry an ``error`` object), then by HTTP status.

The integration key lives only in the query string of the request URL; every text
this module produces passes through :func:`redact`.
"""

from __future__ import annotations

import email.utils
import json
import logging
import ssl
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

import aiohttp
import httpx
import orjson
from yarl import URL

from bridge import __version__
from bridge.destinations import INVALID_INTEGRATION_KEY, Outcome, Reason, Verdict, wire

log = logging.getLogger("bridge.flashduty")

#: Documented error codes (spec "Code" table); anything else is reported as "other".
KNOWN_CODES = frozenset(
    {
        "InvalidParameter",
        "InvalidContentType",
        "MethodNotAllowed",
        "Unauthorized",
        "AccessDenied",
        "RequestTooFrequently",
        "RouteNotFound",
        "ResourceNotFound",
        "NoLicense",
        "InternalError",
    }
)
#: The bridge's own codes, for answers that carry no documented Flashduty code (and for a wrong
#: key, which Flashduty reports as InvalidParameter). With KNOWN_CODES, the closed set of values
#: of the ``code`` label of the delivery metrics.
BRIDGE_CODES = frozenset(
    {
        "none",  # delivered
        "network",  # no answer: refused, reset, closed mid-answer, DNS, TLS
        "timeout",  # no complete answer within flashduty.timeout
        "client",  # the request could not be made (an invalid URL)
        "bad_response",  # a 2xx that is not Flashduty's envelope
        "http_3xx",  # a status without Flashduty's envelope (a proxy, a load balancer)
        "http_4xx",
        "http_5xx",
        "http_429",
        "other",  # an undocumented Flashduty code, or a status outside 300-599
        INVALID_INTEGRATION_KEY,
    }
)
ATTEMPT_CODES = KNOWN_CODES | BRIDGE_CODES
_HTTP_CODES = {3: "http_3xx", 4: "http_4xx", 5: "http_5xx"}
_CODE_REASONS = {
    "RequestTooFrequently": (Verdict.RETRY, Reason.RATE_LIMITED),
    "InternalError": (Verdict.RETRY, Reason.SERVER_ERROR),
    "Unauthorized": (Verdict.GIVE_UP, Reason.AUTH),
    "AccessDenied": (Verdict.GIVE_UP, Reason.AUTH),
    "NoLicense": (Verdict.GIVE_UP, Reason.BILLING),
    "ResourceNotFound": (Verdict.GIVE_UP, Reason.BILLING),
}
#: Flashduty's response body is tiny; never buffer more than this of a misbehaving proxy's.
_MAX_RESPONSE_BYTES = 1024 * 1024
_MAX_MESSAGE_CHARS = 500


def with_integration_key(url: str, key: str) -> str:
    """Set ``integration_key`` in ``url``'s query, keeping every other parameter as given."""
    parts = urlsplit(url)
    query = [
        (name, value) for name, value in parse_qsl(parts.query, keep_blank_values=True) if name != "integration_key"
    ]
    query.append(("integration_key", key))
    return urlunsplit(parts._replace(query=urlencode(query)))


def redact(text: str, secret: str) -> str:
    """Remove ``secret`` in every form it can take in a URL or a message."""
    if not secret:
        return text
    for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
        text = text.replace(form, "***")
    return text


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True, slots=True)
class Route:
    """How requests to one destination URL leave through a proxy: the shared aiohttp session, the proxy
    chosen for the URL and its credentials."""

    session: Callable[[], aiohttp.ClientSession]
    proxy: URL
    proxy_auth: aiohttp.BasicAuth | None = None


class Transports:
    """HTTP for every Flashduty destination.

    Direct requests (no proxy, the usual case) go through :mod:`bridge.destinations.wire`: one
    :class:`~bridge.destinations.wire.Origin` per scheme, host and port, shared by every
    destination there. Measured on the drain of a backlog into a local receiver (bench/), aiohttp's
    request path cost about half of the bridge's CPU per delivered event; a destination sends one
    kind of request to one URL and needs none of what a general client adds (cookies, redirects,
    auth, URL merging). Requests through a proxy (``HTTP(S)_PROXY``/``ALL_PROXY``, unless
    ``NO_PROXY`` names the host) use one aiohttp session, which knows CONNECT tunnels and proxy
    credentials. (Earlier measurements: httpx's ``AsyncClient`` over httpcore about 800 µs of CPU
    per request, aiohttp alone about 110 µs.)

    The proxy is chosen once per destination URL, when the destination is built: aiohttp's own
    ``trust_env`` looks it up again on a worker thread for every request, which cost more than the
    rest of the request. Each pool keeps at most ``connections`` idle connections (one per delivery
    worker). ``SSL_CERT_FILE``/``SSL_CERT_DIR`` apply as in httpx.
    """

    def __init__(self, connections: int) -> None:
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | None = None
        self._origins: dict[tuple[bool, str, int], wire.Origin] = {}

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context(trust_env=True)
        return self._ssl

    def _shared_session(self) -> aiohttp.ClientSession:  # made on first use, inside the running event loop
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._connections,
                # httpx's default: close idle connections before a server's idle timeout can race a request.
                keepalive_timeout=wire.KEEPALIVE,
                ssl=self._ssl_context(),
            )
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
            )
        return self._session

    def origin(self, target: wire.Target) -> wire.Origin:
        """The shared pool of direct connections to ``target``'s scheme, host and port."""
        key = (target.https, target.host, target.port)
        origin = self._origins.get(key)
        if origin is None:
            ssl_context = self._ssl_context() if target.https else None
            origin = self._origins[key] = wire.Origin(
                target, ssl_context, max_idle=self._connections, max_body=_MAX_RESPONSE_BYTES
            )
        return origin

    def proxy_for(self, url: str) -> Route | None:
        """The proxy route for requests to ``url``, or None: connect directly."""
        proxy = environment_proxy(url)
        if proxy is None:
            return None
        parsed = URL(proxy)
        auth = aiohttp.BasicAuth(parsed.user, parsed.password or "") if parsed.user else None
        return Route(self._shared_session, parsed.with_user(None), auth)

    async def aclose(self) -> None:
        for origin in self._origins.values():
            origin.close()
        if self._session is not None:
            await self._session.close()


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (None: connect directly), as curl and httpx read it."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or (parts.hostname and urllib.request.proxy_bypass(parts.hostname)):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def _code_label(code: str) -> str:
    return code if code in KNOWN_CODES else "other"


def _is_wrong_key(code: str, message: str) -> bool:
    """Flashduty's answer to an unknown integration key: InvalidParameter naming ``integration_key``.

    The spec's own example reads ``integration_key is not a valid one``; the bridge always sends
    exactly one key, so an InvalidParameter about it can only mean the key is not accepted.
    """
    return code == "InvalidParameter" and "integration_key" in message.lower()


class FlashdutyDestination:
    """Sends events to one Flashduty integration through the shared :class:`Transports`."""

    def __init__(self, name: str, url: str, integration_key: str, transports: Transports, timeout: float) -> None:
        self.name = name
        full = with_integration_key(url, integration_key)
        self._key = integration_key
        self._timeout = timeout
        self.display_url = redact(full, integration_key)
        user_agent = f"flashduty-bridge/{__version__}"
        self._proxy = transports.proxy_for(url)
        self._origin: wire.Origin | None = None
        self._unusable = ""  # why no request can be made to this URL (no origin, no proxy)
        if self._proxy is not None:
            self._url = URL(full, encoded=True)  # parsed once; with_integration_key already encoded it
            # One deadline for the whole attempt, answer included: per socket operation, a peer that
            # trickles its answer would otherwise hold a worker forever.
            self._timeouts = aiohttp.ClientTimeout(total=timeout)
            self._headers = {"Content-Type": "application/json", "User-Agent": user_agent}
            return
        try:
            target = wire.Target.parse(full)
        except ValueError as exc:
            self._unusable = redact(f"invalid URL: {exc}", integration_key)[:_MAX_MESSAGE_CHARS]
            return
        self._origin = transports.origin(target)
        # Everything but the body's length is the same for every request: made once, as bytes.
        self._head = (
            f"POST {target.path} HTTP/1.1\r\nHost: {target.authority}\r\nUser-Agent: {user_agent}\r\n"
            "Accept: */*\r\nContent-Type: application/json\r\nContent-Length: "
        ).encode("ascii")

    def __repr__(self) -> str:
        return f"FlashdutyDestination({self.name}, {self.display_url})"

    async def send(self, body: str) -> Outcome:
        if self._proxy is not None:
            return await self._send_through_proxy(self._proxy, body)
        if self._origin is None:
            return Outcome(Verdict.GIVE_UP, Reason.REJECTED, "client", self._unusable)
        data = body.encode()
        try:
            answer = await self._origin.post(self._head + b"%d\r\n\r\n" % len(data), data, self._timeout)
        except (OSError, TimeoutError) as exc:  # wire.NoAnswer is an OSError, as are refusals, DNS and TLS
            return self._failed(exc)
        return self.classify(answer.status, answer.body, answer.retry_after)

    async def _send_through_proxy(self, route: Route, body: str) -> Outcome:
        try:
            async with route.session().post(
                self._url,
                data=body.encode(),
                headers=self._headers,
                allow_redirects=False,
                compress=False,
                timeout=self._timeouts,
                proxy=route.proxy,
                proxy_auth=route.proxy_auth,
            ) as response:
                content = response.content
                raw = b""
                while chunk := await content.read(_MAX_RESPONSE_BYTES + 1 - len(raw)):
                    raw += chunk
                    if len(raw) > _MAX_RESPONSE_BYTES:
                        break
                status, retry_after = response.status, response.headers.get("Retry-After")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return self._failed(exc)
        return self.classify(status, raw, retry_after)

    def _failed(self, exc: Exception) -> Outcome:
        """No answer: a timeout, network trouble, or a request that cannot be made."""
        if isinstance(exc, TimeoutError):  # aiohttp's timeouts are TimeoutErrors
            return Outcome(Verdict.RETRY, Reason.TIMEOUT, "timeout", self._describe(exc))
        if isinstance(exc, aiohttp.InvalidURL) or not isinstance(exc, (aiohttp.ClientError, OSError)):
            # Invalid URL and friends: retrying cannot help.
            return Outcome(Verdict.GIVE_UP, Reason.REJECTED, "client", self._describe(exc))
        # Refused, reset, closed mid-answer, a malformed status line: network trouble.
        return Outcome(Verdict.RETRY, Reason.NETWORK, "network", self._describe(exc))

    def _describe(self, exc: BaseException) -> str:
        detail = str(exc) or f"no complete answer within {self._timeout:g}s"
        return redact(f"{type(exc).__name__}: {detail}", self._key)[:_MAX_MESSAGE_CHARS]

    def classify(self, status: int, raw: bytes, retry_after_header: str | None) -> Outcome:
        """Turn one HTTP answer into an :class:`Outcome` (public for tests)."""
        retry_after = _retry_after(retry_after_header)
        envelope: Any = None
        if raw.strip():
            try:
                envelope = orjson.loads(raw)
            except ValueError:  # orjson.JSONDecodeError
                envelope = None
        request_id = None
        error: dict[str, Any] | None = None
        if isinstance(envelope, dict):
            request_id = envelope.get("request_id") if isinstance(envelope.get("request_id"), str) else None
            if isinstance(envelope.get("error"), dict):
                error = envelope["error"]

        if error is not None:
            code = str(error.get("code") or "unknown")
            message = redact(str(error.get("message") or ""), self._key)[:_MAX_MESSAGE_CHARS]
            if _is_wrong_key(code, message):
                message = f"{message} (Flashduty code {code})"
                return Outcome(Verdict.GIVE_UP, Reason.BAD_KEY, INVALID_INTEGRATION_KEY, message, request_id, status)
            verdict, reason = _CODE_REASONS.get(code, (Verdict.GIVE_UP, Reason.REJECTED))
            if code not in _CODE_REASONS and (status == 429 or status >= 500):
                # An unknown code on a transient status: trust the status.
                verdict, reason = Verdict.RETRY, (Reason.RATE_LIMITED if status == 429 else Reason.SERVER_ERROR)
            return Outcome(verdict, reason, _code_label(code), message, request_id, status, retry_after)

        if 200 <= status < 300 and (isinstance(envelope, dict) or not raw.strip()):
            return Outcome(Verdict.OK, Reason.DELIVERED, "none", "", request_id, status)
        snippet = redact(raw[:200].decode(errors="replace"), self._key)
        if 200 <= status < 300:
            return Outcome(
                Verdict.GIVE_UP, Reason.BAD_RESPONSE, "bad_response", f"HTTP {status}: {snippet}", None, status
            )
        if status == 429:
            return Outcome(
                Verdict.RETRY, Reason.RATE_LIMITED, "http_429", f"HTTP 429: {snippet}", request_id, status, retry_after
            )
        if status >= 500 or status == 408:
            return Outcome(
                Verdict.RETRY,
                Reason.SERVER_ERROR,
                _HTTP_CODES.get(status // 100, "other"),
                f"HTTP {status}: {snippet}",
                request_id,
                status,
                retry_after,
            )
        reason = Reason.AUTH if status in (401, 403) else Reason.REJECTED
        return Outcome(
            Verdict.GIVE_UP,
            reason,
            _HTTP_CODES.get(status // 100, "other"),
            f"HTTP {status}: {snippet}",
            request_id,
            status,
        )


class DryRunDestination:
    """No integration key: log each event and keep the latest ones for ``GET /-/dry-run``."""

    def __init__(self, name: str, keep: int = 1000) -> None:
        self.name = name
        self.keep = keep
        self.sent: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        return f"DryRunDestination({self.name})"

    async def send(self, body: str) -> Outcome:
        event = json.loads(body)
        self.sent.append(event)
        del self.sent[: -self.keep]
        log.info("dry-run: would send %s", body)
        return Outcome(Verdict.OK, Reason.DELIVERED, "none", "dry run")
