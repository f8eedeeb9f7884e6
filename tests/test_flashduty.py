"""The Flashduty destination: URL handling, redaction and the classification of every answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from bridge.destinations import INVALID_INTEGRATION_KEY, Outcome, Reason, Verdict
from bridge.destinations.flashduty import (
    ATTEMPT_CODES,
    KNOWN_CODES,
    FlashdutyDestination,
    Transports,
    environment_proxy,
    redact,
    with_integration_key,
)
from tests.support.procs import free_port

KEY = "k3y/with+odd=chars&more"


def destination(url: str = "http://127.0.0.1:1/event/push/alert/standard") -> FlashdutyDestination:
    return FlashdutyDestination("default", url, KEY, Transports(connections=4), timeout=2.0)


def test_integration_key_is_set_and_other_query_parameters_kept() -> None:
    """Only integration_key is set or replaced; dynamic-assignment parameters survive as given."""
    url = with_integration_key(
        "https://h/event/push/alert/standard?layer_person_reset_1_emails=a%40b.c&integration_key=old", KEY
    )
    assert url.startswith("https://h/event/push/alert/standard?layer_person_reset_1_emails=a%40b.c&integration_key=")
    assert "old" not in url
    assert httpx.URL(url).params["integration_key"] == KEY


def test_redact_removes_raw_and_url_encoded_forms() -> None:
    """The key disappears whether it appears raw, percent-encoded or plus-encoded."""
    url = with_integration_key("https://h/p", KEY)
    assert KEY not in redact(f"{url} {KEY}", KEY)
    assert "k3y" not in redact(f"{url} {KEY}", KEY)
    assert destination().display_url.endswith("integration_key=***")


def ok(status: int, body: bytes, retry_after: str | None = None) -> tuple[Verdict, Reason, str]:
    outcome = destination().classify(status, body, retry_after)
    return outcome.verdict, outcome.reason, outcome.code


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b'{"request_id": "r", "data": {"alert_key": "k"}}', (Verdict.OK, Reason.DELIVERED, "none")),
        (200, b"", (Verdict.OK, Reason.DELIVERED, "none")),
        (200, b'{"request_id": "r", "error": {"code": "NoLicense"}}', (Verdict.GIVE_UP, Reason.BILLING, "NoLicense")),
        (200, b"<html>login</html>", (Verdict.GIVE_UP, Reason.BAD_RESPONSE, "bad_response")),
        (400, b'{"error": {"code": "InvalidParameter"}}', (Verdict.GIVE_UP, Reason.REJECTED, "InvalidParameter")),
        (400, b'{"error": {"code": "ResourceNotFound"}}', (Verdict.GIVE_UP, Reason.BILLING, "ResourceNotFound")),
        (400, b'{"error": {"code": "MethodNotAllowed"}}', (Verdict.GIVE_UP, Reason.REJECTED, "MethodNotAllowed")),
        (401, b'{"error": {"code": "Unauthorized"}}', (Verdict.GIVE_UP, Reason.AUTH, "Unauthorized")),
        (403, b'{"error": {"code": "AccessDenied"}}', (Verdict.GIVE_UP, Reason.AUTH, "AccessDenied")),
        (404, b'{"error": {"code": "RouteNotFound"}}', (Verdict.GIVE_UP, Reason.REJECTED, "RouteNotFound")),
        (
            429,
            b'{"error": {"code": "RequestTooFrequently"}}',
            (Verdict.RETRY, Reason.RATE_LIMITED, "RequestTooFrequently"),
        ),
        (500, b'{"error": {"code": "InternalError"}}', (Verdict.RETRY, Reason.SERVER_ERROR, "InternalError")),
        (503, b'{"error": {"code": "SomethingNew"}}', (Verdict.RETRY, Reason.SERVER_ERROR, "other")),
        (400, b'{"error": {"code": "SomethingNew"}}', (Verdict.GIVE_UP, Reason.REJECTED, "other")),
        (502, b"<html>bad gateway</html>", (Verdict.RETRY, Reason.SERVER_ERROR, "http_5xx")),
        (429, b"slow down", (Verdict.RETRY, Reason.RATE_LIMITED, "http_429")),
        (401, b"", (Verdict.GIVE_UP, Reason.AUTH, "http_4xx")),
        (413, b"too big", (Verdict.GIVE_UP, Reason.REJECTED, "http_4xx")),
        (302, b"moved", (Verdict.GIVE_UP, Reason.REJECTED, "http_3xx")),
        (600, b"", (Verdict.RETRY, Reason.SERVER_ERROR, "other")),
    ],
)
def test_answers_are_classified_by_error_code_first(
    status: int, body: bytes, expected: tuple[Verdict, Reason, str]
) -> None:
    """Several permanent errors share 400, and a 2xx may carry an error: the code decides."""
    assert ok(status, body) == expected


#: Flashduty's answer to a wrong integration key (the spec's own error example).
WRONG_KEY_ANSWER = (
    b'{"request_id": "0ace00116215abc0ba4e52449bd305b0",'
    b' "error": {"code": "InvalidParameter", "message": "integration_key is not a valid one"}}'
)


def test_a_wrong_integration_key_is_its_own_reason_and_code() -> None:
    """400 InvalidParameter "integration_key is not a valid one" is a bad key, not a bad event."""
    outcome = destination().classify(400, WRONG_KEY_ANSWER, None)
    assert (outcome.verdict, outcome.reason, outcome.code) == (
        Verdict.GIVE_UP,
        Reason.BAD_KEY,
        INVALID_INTEGRATION_KEY,
    )
    assert outcome.code == "InvalidIntegrationKey"
    assert outcome.request_id == "0ace00116215abc0ba4e52449bd305b0"
    # Flashduty's own words and code stay in the dead letter.
    assert "integration_key is not a valid one" in outcome.message and "InvalidParameter" in outcome.message
    # Any other InvalidParameter is still about the event.
    bad_event = b'{"error": {"code": "InvalidParameter", "message": "title_rule: required"}}'
    other = destination().classify(400, bad_event, None)
    assert (other.reason, other.code) == (Reason.REJECTED, "InvalidParameter")


@pytest.mark.parametrize("status", [*range(200, 210), *range(300, 310), *range(400, 432), *range(500, 512), 600, 999])
@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html/>",
        b'{"data": {}}',
        WRONG_KEY_ANSWER,
        *(b'{"error": {"code": "%s"}}' % code.encode() for code in sorted(KNOWN_CODES)),
    ],
)
def test_every_answer_gets_a_code_from_the_closed_set(status: int, body: bytes) -> None:
    """The `code` label of the delivery metrics only takes values listed in ATTEMPT_CODES (and the README)."""
    assert destination().classify(status, body, None).code in ATTEMPT_CODES


def test_retry_after_seconds_and_http_date_are_read() -> None:
    """Retry-After as delta-seconds or as an HTTP date becomes seconds to wait."""
    assert destination().classify(429, b"", "7").retry_after == 7.0
    assert destination().classify(429, b"", "Wed, 21 Oct 2015 07:28:00 GMT").retry_after == 0.0
    assert destination().classify(429, b"", "soon").retry_after is None


def test_request_id_and_message_are_kept_and_key_redacted() -> None:
    """The request_id for support and the message are kept; an echoed key is masked."""
    outcome = destination().classify(
        400, f'{{"request_id": "abc", "error": {{"code": "InvalidParameter", "message": "bad {KEY}"}}}}'.encode(), None
    )
    assert outcome.request_id == "abc"
    assert outcome.message == "bad ***"


async def test_connection_refused_is_a_retryable_network_error() -> None:
    """Nothing listening on the port: retry, reason network, and no key in the message."""
    outcome = await send_to(f"http://127.0.0.1:{free_port()}/event/push/alert/standard")
    assert (outcome.verdict, outcome.reason) == (Verdict.RETRY, Reason.NETWORK)
    assert KEY not in outcome.message


@contextlib.asynccontextmanager
async def raw_peer(
    answer: Callable[[asyncio.StreamWriter], Awaitable[None]], heads: list[bytes] | None = None
) -> AsyncIterator[str]:
    """A TCP peer on loopback that reads the request head (kept in ``heads``), then answers as ``answer`` says."""

    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if heads is not None:
                heads.append(head)
            await answer(writer)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/event/push/alert/standard"
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def send_to(url: str, timeout: float = 2.0) -> Outcome:
    transports = Transports(connections=2)
    target = FlashdutyDestination("default", url, KEY, transports, timeout)
    try:
        return await target.send('{"title_rule": "x", "event_status": "Info"}')
    finally:
        await transports.aclose()


async def test_a_peer_that_never_answers_is_a_retryable_timeout() -> None:
    async def silent(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async with raw_peer(silent) as url:
        outcome = await send_to(url, timeout=0.3)
    assert (outcome.verdict, outcome.reason, outcome.code) == (Verdict.RETRY, Reason.TIMEOUT, "timeout")
    assert KEY not in outcome.message


async def test_an_answer_trickling_past_the_deadline_is_a_timeout() -> None:
    """Each byte arrives well within a read timeout; the whole answer does not arrive within the deadline."""

    async def trickle(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.05)

    async with raw_peer(trickle) as url:
        outcome = await send_to(url, timeout=0.5)
    assert (outcome.verdict, outcome.reason) == (Verdict.RETRY, Reason.TIMEOUT)


@pytest.mark.parametrize(
    "answer",
    [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{", b"NOT HTTP AT ALL\r\n\r\n"],
    ids=["closed-mid-answer", "garbled-status-line"],
)
async def test_a_broken_answer_is_a_retryable_network_error(answer: bytes) -> None:
    async def broken(writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        await writer.drain()

    async with raw_peer(broken) as url:
        outcome = await send_to(url)
    assert (outcome.verdict, outcome.reason, outcome.code) == (Verdict.RETRY, Reason.NETWORK, "network")
    assert KEY not in outcome.message


async def test_the_environment_proxy_carries_the_request_and_no_proxy_bypasses_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP_PROXY is honoured (chosen once per URL); NO_PROXY hosts connect directly."""
    seen: list[bytes] = []

    async def proxy(writer: asyncio.StreamWriter) -> None:
        body = b'{"request_id": "via-proxy", "data": {"alert_key": "k"}}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
        writer.write(body)
        await writer.drain()

    async with raw_peer(proxy, seen) as proxy_url:
        proxy_origin = proxy_url.split("/event")[0]
        monkeypatch.setenv("HTTP_PROXY", proxy_origin)
        monkeypatch.setenv("NO_PROXY", "direct.invalid")
        assert environment_proxy("http://flashduty.invalid/x") == proxy_origin
        assert environment_proxy("http://direct.invalid/x") is None
        # flashduty.invalid cannot resolve: only the proxy can answer for it.
        outcome = await send_to("http://flashduty.invalid/event/push/alert/standard")
        direct = await send_to("http://direct.invalid/event/push/alert/standard")
    assert (outcome.verdict, outcome.request_id) == (Verdict.OK, "via-proxy")
    assert seen and seen[0].startswith(b"POST http://flashduty.invalid/event/push/alert/standard?integration_key=")
    assert (direct.verdict, direct.reason) == (Verdict.RETRY, Reason.NETWORK)
    assert len(seen) == 1
