"""The delivery path's HTTP/1.1 client: framing, keep-alive, limits, deadlines and TLS, against raw loopback peers."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme

from bridge.destinations import Reason, Verdict
from bridge.destinations.flashduty import FlashdutyDestination, Transports
from bridge.destinations.wire import Answer, NoAnswer, Origin, Target

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b'{"request_id": "r1", "data": {"alert_key": "k"}}'


def ok_answer(body: bytes = OK, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        extra,
        body,
    )


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request: its head and its Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    return head + await reader.readexactly(length)


@contextlib.asynccontextmanager
async def peer(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[int, list[int]]]:
    """A loopback server running ``handler`` per connection; yields its port and a list that counts connections."""
    connections: list[int] = []
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        connections.append(len(connections))
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1], connections
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def origin(port: int, *, max_body: int = 1024, keepalive: float = 5.0, https: bool = False) -> Origin:
    target = Target.parse(f"{'https' if https else 'http'}://127.0.0.1:{port}/push?k=v")
    return Origin(target, None, max_idle=4, max_body=max_body, keepalive=keepalive)


HEAD = b"POST /push?k=v HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n"


def answering(answer: bytes, requests: list[bytes] | None = None) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            if requests is not None:
                requests.append(request)
            writer.write(answer)
            await writer.drain()

    return handler


async def test_requests_reuse_one_kept_alive_connection() -> None:
    requests: list[bytes] = []
    async with peer(answering(ok_answer(), requests)) as (port, connections):
        pool = origin(port)
        answers = [await pool.post(HEAD, b"{}", 2.0) for _ in range(5)]
        pool.close()
    assert answers == [Answer(200, OK)] * 5
    assert len(connections) == 1
    assert requests == [HEAD + b"{}"] * 5


async def test_a_connection_the_server_closes_after_its_answer_is_not_reused() -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok_answer(extra=b"Connection: close\r\n"))
        await writer.drain()

    async with peer(once) as (port, connections):
        pool = origin(port)
        answers = [await pool.post(HEAD, b"{}", 2.0) for _ in range(3)]
        pool.close()
    assert [a.status for a in answers] == [200, 200, 200]
    assert len(connections) == 3


async def test_a_connection_the_peer_closed_while_idle_is_not_reused() -> None:
    async def once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok_answer())  # says nothing about closing, then closes: an idle timeout on its side
        await writer.drain()

    async with peer(once_then_close) as (port, connections):
        pool = origin(port)
        first = await pool.post(HEAD, b"{}", 2.0)
        for _ in range(100):  # until the close has reached the client
            if pool._idle and pool._idle[0].closed:
                break
            await asyncio.sleep(0.01)
        second = await pool.post(HEAD, b"{}", 2.0)
        pool.close()
    assert (first.status, second.status) == (200, 200)
    assert len(connections) == 2


async def test_an_idle_connection_older_than_the_keepalive_is_closed_not_reused() -> None:
    async with peer(answering(ok_answer())) as (port, connections):
        pool = origin(port, keepalive=0.05)
        await pool.post(HEAD, b"{}", 2.0)
        idle = pool._idle[0]
        await asyncio.sleep(0.1)
        await pool.post(HEAD, b"{}", 2.0)
        pool.close()
    assert idle.closed
    assert len(connections) == 2


async def test_an_answer_without_length_ends_where_the_connection_does() -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + OK)
        await writer.drain()

    async with peer(until_close) as (port, _):
        pool = origin(port)
        answer = await pool.post(HEAD, b"{}", 2.0)
        pool.close()
    assert answer == Answer(200, OK)
    assert not pool._idle


async def test_a_chunked_answer_is_put_together_and_retry_after_is_read() -> None:
    chunked = (
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"req\r\n' + b"%x\r\n" % (len(OK) - 5) + OK[5:] + b"\r\n0\r\n\r\n"
    )
    async with peer(answering(chunked)) as (port, connections):
        pool = origin(port)
        answers = [await pool.post(HEAD, b"{}", 2.0) for _ in range(2)]
        pool.close()
    assert answers == [Answer(429, b'{"req' + OK[5:], "7")] * 2
    assert len(connections) == 1


async def test_interim_answers_are_skipped_for_the_final_one() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
    async with peer(answering(interim + ok_answer())) as (port, connections):
        pool = origin(port)
        answers = [await pool.post(HEAD, b"{}", 2.0) for _ in range(2)]
        pool.close()
    assert answers == [Answer(200, OK)] * 2
    assert len(connections) == 1


async def test_an_answer_over_the_body_limit_is_cut_and_its_connection_dropped() -> None:
    big = b"x" * 10_000
    async with peer(answering(ok_answer(big))) as (port, connections):
        pool = origin(port, max_body=100)
        first = await pool.post(HEAD, b"{}", 2.0)
        second = await pool.post(HEAD, b"{}", 2.0)
        pool.close()
    assert first.status == 200 and len(first.body) == 101 and first.body == big[:101]
    assert second.body == first.body
    assert len(connections) == 2


async def test_bytes_nobody_asked_for_make_an_idle_connection_unusable() -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok_answer() + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")  # one answer too many
        await writer.drain()
        with contextlib.suppress(Exception):
            while True:
                await read_request(reader)
                writer.write(ok_answer())
                await writer.drain()

    async with peer(chatty) as (port, connections):
        pool = origin(port)
        await pool.post(HEAD, b"{}", 2.0)
        for _ in range(100):
            if pool._idle and pool._idle[0].closed:
                break
            await asyncio.sleep(0.01)
        second = await pool.post(HEAD, b"{}", 2.0)
        pool.close()
    assert second == Answer(200, OK)
    assert len(connections) == 2


async def test_no_answer_and_a_timeout_leave_no_connection_behind() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()

    async with peer(silent) as (port, _):
        pool = origin(port)
        with pytest.raises(TimeoutError):
            await pool.post(HEAD, b"{}", 0.2)
        assert not pool._idle
    async with peer(garbage) as (port, _):
        pool = origin(port)
        with pytest.raises(NoAnswer, match="not an HTTP answer"):
            await pool.post(HEAD, b"{}", 2.0)
        assert not pool._idle


def test_targets_are_parsed_once_with_host_port_and_encoded_path() -> None:
    target = Target.parse("https://API.Flashcat.cloud/event/push/alert/standard?integration_key=a%2Fb")
    assert (target.https, target.host, target.port, target.authority) == (
        True,
        "api.flashcat.cloud",
        443,
        "api.flashcat.cloud",
    )
    assert target.path == "/event/push/alert/standard?integration_key=a%2Fb"
    assert Target.parse("http://[::1]:8080/x y").authority == "[::1]:8080"
    assert Target.parse("http://[::1]:8080/x y").path == "/x%20y"
    assert Target.parse("http://bücher.example/").host == "xn--bcher-kva.example"
    for bad in ("ftp://host/x", "http:///x", "http://host:99999/x"):
        with pytest.raises(ValueError):
            Target.parse(bad)


# -- through the destination: TLS and the request as Flashduty sees it ------------------------------------------


@pytest.fixture
def ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> trustme.CA:
    """A certificate authority the bridge trusts through SSL_CERT_FILE, as an operator would set it."""
    authority = trustme.CA()
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return authority


def server_context(authority: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(*names).configure_cert(context)
    return context


async def test_https_requests_verify_the_certificate_and_keep_the_connection(ca: trustme.CA) -> None:
    requests: list[bytes] = []
    async with peer(answering(ok_answer(), requests), server_context(ca, "localhost")) as (port, connections):
        transports = Transports(connections=2)
        url = f"https://localhost:{port}/event/push/alert/standard"
        target = FlashdutyDestination("default", url, "s3cret", transports, timeout=2.0)
        outcomes = [await target.send('{"event_status": "Info"}') for _ in range(3)]
        await transports.aclose()
    assert [(o.verdict, o.request_id) for o in outcomes] == [(Verdict.OK, "r1")] * 3
    assert len(connections) == 1
    head = requests[0].split(b"\r\n\r\n")[0].decode()
    assert head.splitlines()[0] == "POST /event/push/alert/standard?integration_key=s3cret HTTP/1.1"
    assert f"Host: localhost:{port}" in head.splitlines()
    assert "Content-Type: application/json" in head.splitlines()
    assert requests[0].endswith(b'\r\n\r\n{"event_status": "Info"}')


async def test_a_certificate_for_another_name_is_a_retryable_network_error_without_the_key(ca: trustme.CA) -> None:
    async with peer(answering(ok_answer()), server_context(ca, "other.example")) as (port, _):
        transports = Transports(connections=2)
        target = FlashdutyDestination("d", f"https://localhost:{port}/x", "s3cret", transports, timeout=2.0)
        outcome = await target.send("{}")
        await transports.aclose()
    assert (outcome.verdict, outcome.reason, outcome.code) == (Verdict.RETRY, Reason.NETWORK, "network")
    assert "certificate" in outcome.message.lower() and "s3cret" not in outcome.message


async def test_a_url_no_request_can_be_made_to_is_given_up_as_a_client_error() -> None:
    transports = Transports(connections=1)
    target = FlashdutyDestination("d", "http://host:99999/x", "s3cret", transports, timeout=1.0)
    outcome = await target.send("{}")
    assert (outcome.verdict, outcome.reason, outcome.code) == (Verdict.GIVE_UP, Reason.REJECTED, "client")
    assert "s3cret" not in outcome.message
