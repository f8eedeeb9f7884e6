"""The HTTP side of intake: receive (every sender) and render, around one pipeline.

What a 200 means: every alert of the request was mapped to a Flashduty event and
**committed to the outbox on disk**. Delivery happens afterwards, with retries.
A 4xx means the body can never be accepted (Alertmanager does not retry 4xx). A 503
means the bridge cannot take it now (outbox full or unwritable), and Alertmanager
retries 5xx. The bridge never answers 429: Alertmanager would drop the notification.

:func:`receive` runs the stages in order. On the event loop: read the body (bounded),
authenticate it, read the passthrough key; then the pure stages of :func:`bridge.intake.prepare`
(decode → parse → route → map); then, on the loop again, store. :func:`count` is the one
place a request's outcome and notes become metrics (and its template errors one log line);
:func:`render` runs the same stages without the store, and counts nothing.

Where the pure stages run (:func:`run_pipeline`): built-in senders without template overrides,
with bodies up to ``limits.inline_bytes``, right here on the loop (their cost is linear in the
body, a few milliseconds at that size); everything else in a worker process under the request's
CPU and memory budget (:mod:`bridge.workers`): 422 over budget, 503 when every worker is busy.
Every body first takes its size from the in-flight budget (:mod:`bridge.admission`), waiting
briefly for room, else 503.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from bridge import admin, contract, intake
from bridge.admission import NoRoom, Reservation
from bridge.auth import Unauthorized
from bridge.config import Config
from bridge.contract import Rejection
from bridge.intake import NotForwarded, Prepared, Received, Refused
from bridge.metrics import Metrics
from bridge.outbox import OutboxUnavailable
from bridge.passthrough import PassthroughRefused
from bridge.responses import envelope, fast_envelope, new_request_id
from bridge.routing import passthrough_destination
from bridge.runtime import Runtime
from bridge.sources import alertmanager, grafana
from bridge.sources import standard as standard_module
from bridge.ui.session import console_request_ok
from bridge.workers import OverBudget, Overloaded, WorkerLost

if TYPE_CHECKING:
    from bridge.app import Bridge

log = logging.getLogger("bridge.app")

BUILTIN_SOURCES = ("alertmanager", "grafana", "standard")
#: Methods routed to the standard API's handler, which answers all but POST as Flashduty does.
STANDARD_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


class BodyTooLarge(Exception):
    pass


#: Seconds a sender is asked to wait before retrying a 503 for overload.
RETRY_AFTER = 1


async def read_body(request: Request, limit: int, reservation: Reservation | None = None) -> bytes:
    """The raw body, refused (BodyTooLarge) before it is read whole when it exceeds ``limit`` bytes.

    With a ``reservation``, the body's size is taken from the in-flight budget before it is read
    (the declared Content-Length at once, else as chunks arrive); raises NoRoom when it does not fit.
    """
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and len(declared) < 20:
        if int(declared) > limit:
            raise BodyTooLarge(f"body is {int(declared)} bytes, the limit is {limit} (max_body_bytes)")
        if reservation is not None:
            await reservation.grow_to(int(declared))
    # ASGI messages read as Request.stream() reads them, without its async generator: most
    # bodies are one message, and the generator's setup and two steps cost more than the read.
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await request.receive()
        if message["type"] != "http.request":  # http.disconnect
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        if not chunk:
            continue
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body exceeds the limit of {limit} bytes (max_body_bytes)")
        if reservation is not None:
            await reservation.grow_to(size)
        chunks.append(chunk)
    return b"".join(chunks)


def body_limit(bridge: Bridge, runtime: Runtime) -> int:
    """max_body_bytes, within the in-flight budget the server started with (limits need a restart; a
    reload may raise max_body_bytes past it, and such a body could never be admitted)."""
    return min(runtime.config.max_body_bytes, bridge.isolation.inflight.limit)


async def run_pipeline(
    bridge: Bridge, runtime: Runtime, received: Received, render_id: str | None = None
) -> intake.Outcome | bytes:
    """:func:`bridge.intake.prepare` on the loop for small built-in requests, else in a worker.

    For ``render`` (``render_id`` given) a worker answers events as the whole response body.
    Raises OverBudget, Overloaded or WorkerLost (from the worker pool).
    """
    isolation = bridge.isolation
    source = runtime.sources.get(received.source)
    if source is not None and not source.templated and len(received.body) <= isolation.limits.inline_bytes:
        return intake.prepare(runtime.intake, received)
    return await isolation.pool.prepare(runtime.config, received, render_id=render_id)


async def authenticate(bridge: Bridge, runtime: Runtime, received: Received) -> None:
    """Check the request's credentials; a large body's HMAC is computed off the loop (hashlib lets go of the GIL)."""
    if len(received.body) > bridge.isolation.limits.inline_bytes:
        await asyncio.to_thread(intake.authenticate, runtime.intake, received)
    else:
        intake.authenticate(runtime.intake, received)


def unavailable(request_id: str, message: str) -> Response:
    """503 for overload: every worker busy, or no room for the body. Senders retry."""
    response = envelope(503, request_id, code="ServiceUnavailable", message=message)
    response.headers["Retry-After"] = str(RETRY_AFTER)
    return response


def over_budget(request_id: str, exc: OverBudget) -> Response:
    """422 naming the budget: the request would need as much again on every retry, so none is invited."""
    return envelope(422, request_id, code="OverBudget", message=str(exc))


def request_headers(request: Request) -> dict[str, str]:
    """Header names in lower case, each with its first value (as Go's ``Header.Get`` reads them).

    Built from the raw ASGI list in one pass; ``Headers`` looks every name up again.
    """
    headers: dict[str, str] = {}
    for name, value in request.scope["headers"]:
        headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return headers


def request_query(request: Request) -> dict[str, str]:
    """Query parameters, each with its first value (as Go's ``Query().Get`` reads them)."""
    query: dict[str, str] = {}
    raw = request.scope["query_string"]
    if raw:
        for name, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
            query.setdefault(name, value)
    return query


def passthrough_of(config: Config, request: Request) -> str | None:
    """The key of ``?integration_key=``, when passthrough is on; raises Rejection for an empty or repeated one."""
    if not config.passthrough or not request.scope["query_string"]:
        return None
    given = request.query_params.getlist("integration_key")
    return contract.check_integration_keys(given).strip() if given else None


def count(
    metrics: Metrics, source: str, outcome: str, prepared: Prepared | None = None, stored: Sequence[bool] = ()
) -> None:
    """Turn one received request's outcome and notes into metrics: the only place the receive path counts."""
    metrics.child(metrics.requests, source, outcome).inc()
    if prepared is None:
        return
    alerts = prepared.alerts
    if outcome != "accepted":
        metrics.child(metrics.alerts, source, outcome).inc(alerts)
        return
    # Counted per series, not per alert: one increment by n is the same count as n increments.
    metrics.child(metrics.alerts, source, "accepted").inc(alerts)
    notes = prepared.notes
    for reason, n in notes.unrouted.items():
        metrics.child(metrics.unrouted, source, reason).inc(n)
    statuses: dict[str, int] = {}
    for event, kept in zip(prepared.events, stored, strict=True):
        if kept:
            statuses[event.event_status] = statuses.get(event.event_status, 0) + 1
    for status, n in statuses.items():
        metrics.child(metrics.events, source, status).inc(n)
    suppressed = len(stored) - sum(statuses.values())
    if suppressed:
        metrics.child(metrics.suppressed, source).inc(suppressed)
    for name, n in notes.truncations.items():
        metrics.child(metrics.truncations, name).inc(n)
    for reason, n in notes.labels_dropped.items():
        metrics.child(metrics.labels_dropped, reason).inc(n)
    for reason, n in notes.labels_renamed.items():
        metrics.child(metrics.labels_renamed, reason).inc(n)
    for name, n in notes.template_errors.items():
        metrics.child(metrics.template_errors, source, name).inc(n)
    if notes.template_errors:
        failed = ", ".join(f"{name} ×{n}" for name, n in notes.template_errors.items())
        log.warning(
            "source %s: templates failed (%s), fallbacks used; first: %s", source, failed, notes.first_template_error
        )


async def receive(request: Request, name: str) -> Response:
    """The receive path of every sender: authenticate, decode, parse, route, map, store, answer."""
    bridge: Bridge = request.app.state.bridge
    runtime = bridge.runtime  # this request finishes on the config it started with
    request_id = new_request_id()
    if name not in runtime.sources:
        return envelope(404, request_id, code="RouteNotFound", message=f"no source {name!r} in the config")
    reservation = bridge.isolation.inflight.reservation()
    try:
        return await _receive(request, bridge, runtime, name, request_id, reservation)
    finally:
        reservation.release()


async def _receive(
    request: Request, bridge: Bridge, runtime: Runtime, name: str, request_id: str, reservation: Reservation
) -> Response:
    metrics = bridge.metrics
    try:
        raw = await read_body(request, body_limit(bridge, runtime), reservation)
    except BodyTooLarge as exc:
        count(metrics, name, "too_large")
        return envelope(413, request_id, code="InvalidParameter", message=str(exc))
    except NoRoom as exc:
        count(metrics, name, "unavailable")
        log.warning("could not take %s request %s: %s", name, request_id, exc)
        return unavailable(request_id, str(exc))
    except ClientDisconnect:  # gone mid-body (or cut by limits.body_timeout): nobody to answer
        return Response(status_code=400)
    received = Received(name, raw, request_headers(request), request_query(request))
    try:
        await authenticate(bridge, runtime, received)
    except Unauthorized as exc:
        count(metrics, name, "unauthorized")
        metrics.auth_failures.labels(name, exc.reason).inc()
        log.warning("refused %s request %s: %s", name, request_id, exc.reason)
        return envelope(401, request_id, code="Unauthorized", message=exc.reason)
    try:
        key = passthrough_of(runtime.config, request)
    except Rejection as exc:
        count(metrics, name, "invalid")
        return envelope(exc.status, request_id, code=exc.code, message=exc.message)
    if key is not None:
        received = Received(name, raw, received.headers, received.query, passthrough_destination(key))

    try:
        outcome = await run_pipeline(bridge, runtime, received)
    except OverBudget as exc:
        count(metrics, name, "over_budget")
        log.warning("refused %s request %s: %s", name, request_id, exc)
        return over_budget(request_id, exc)
    except (Overloaded, WorkerLost) as exc:
        count(metrics, name, "unavailable")
        log.warning("could not take %s request %s: %s", name, request_id, exc)
        return unavailable(request_id, str(exc))
    assert not isinstance(outcome, bytes)
    if isinstance(outcome, Refused):
        count(metrics, name, "invalid")
        log.info("rejected %s request %s: %s", name, request_id, outcome.message)
        return envelope(outcome.status, request_id, code=outcome.code, message=outcome.message)
    if isinstance(outcome, NotForwarded):
        count(metrics, name, "not_forwarded")
        metrics.not_forwarded.labels(name, outcome.reason).inc()
        return envelope(200, request_id, data={"accepted": 0, "not_forwarded": outcome.reason})

    admitted = None
    if key is not None and outcome.events:
        try:
            admitted = await bridge.passthrough.admit(key)
        except PassthroughRefused as exc:
            count(metrics, name, "unavailable", outcome)
            log.warning("could not take %s request %s: %s", name, request_id, exc)
            response = envelope(503, request_id, code="ServiceUnavailable", message=str(exc))
            response.headers["Retry-After"] = str(exc.retry_after)
            return response
    try:
        stored = await bridge.outbox.put(outcome.events, request_id=request_id)
    except OutboxUnavailable as exc:
        count(metrics, name, "unavailable", outcome)
        log.warning("could not take %s request %s (%d alerts): %s", name, request_id, outcome.alerts, exc)
        return envelope(503, request_id, code="ServiceUnavailable", message=str(exc))
    finally:
        if admitted is not None:
            bridge.passthrough.release(admitted)
    bridge.dispatcher.wake()
    count(metrics, name, "accepted", outcome, stored)
    return fast_envelope(200, request_id, data=outcome.answer(stored))


async def receive_alertmanager(request: Request) -> Response:
    """``POST /alertmanager``: Alertmanager webhooks (version 4)."""
    return await receive(request, alertmanager.SOURCE)


async def receive_grafana(request: Request) -> Response:
    """``POST /grafana``: Grafana contact points (unified, version 1) and legacy Grafana alerting."""
    return await receive(request, grafana.SOURCE)


async def receive_standard(request: Request) -> Response:
    """``POST /event/push/alert/standard``: Flashduty's own standard API, buffered.

    Every method reaches this handler, so that one other than POST is answered as Flashduty
    answers it: 400 ``MethodNotAllowed``, before anything else is looked at.
    """
    try:
        contract.check_method(request.method)
    except Rejection as exc:
        bridge: Bridge = request.app.state.bridge
        count(bridge.metrics, standard_module.SOURCE, "invalid")
        return envelope(exc.status, new_request_id(), code=exc.code, message=exc.message)
    return await receive(request, standard_module.SOURCE)


async def receive_template(request: Request) -> Response:
    """``POST /webhook/{name}``: a template source from the config."""
    name = request.path_params["name"]
    if name in BUILTIN_SOURCES:
        return envelope(404, new_request_id(), code="RouteNotFound", message=f"use /{name} for {name}")
    return await receive(request, name)


async def render(request: Request) -> Response:
    """``POST /-/render/{source}``: the events a payload would become; nothing is stored, sent or counted."""
    bridge: Bridge = request.app.state.bridge
    runtime = bridge.runtime
    request_id = new_request_id()
    token = runtime.config.admin.token.get_secret_value()
    if token:  # the admin token guards it as it guards the admin API, wrong ones counted alike
        refused = admin.guard(request, bridge, token, "render", request_id, console_request_ok(request, token))
        if refused is not None:
            return refused
    name = request.path_params["source"]
    if name not in runtime.sources:
        return envelope(404, request_id, code="RouteNotFound", message=f"no source {name!r}")
    reservation = bridge.isolation.inflight.reservation()
    try:
        return await _render(request, bridge, runtime, name, request_id, reservation)
    finally:
        reservation.release()


async def _render(
    request: Request, bridge: Bridge, runtime: Runtime, name: str, request_id: str, reservation: Reservation
) -> Response:
    try:
        raw = await read_body(request, body_limit(bridge, runtime), reservation)
        key = passthrough_of(runtime.config, request)
    except BodyTooLarge as exc:
        return envelope(413, request_id, code="InvalidParameter", message=str(exc))
    except Rejection as exc:
        return envelope(exc.status, request_id, code=exc.code, message=exc.message)
    except NoRoom as exc:
        return unavailable(request_id, str(exc))
    except ClientDisconnect:
        return Response(status_code=400)
    destination = passthrough_destination(key) if key is not None else None
    received = Received(name, raw, request_headers(request), request_query(request), destination)
    try:
        outcome = await run_pipeline(bridge, runtime, received, render_id=request_id)
    except OverBudget as exc:
        return over_budget(request_id, exc)
    except (Overloaded, WorkerLost) as exc:
        return unavailable(request_id, str(exc))
    if isinstance(outcome, bytes):  # a worker's answer, written there
        return Response(outcome, 200, media_type="application/json")
    if isinstance(outcome, Refused):
        return envelope(outcome.status, request_id, code=outcome.code, message=outcome.message)
    if isinstance(outcome, NotForwarded):
        return envelope(200, request_id, data={"events": [], "not_forwarded": outcome.reason})
    return envelope(200, request_id, data=outcome.to_json())
