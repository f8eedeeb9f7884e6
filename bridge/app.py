"""The HTTP service: webhook intake, health, readiness and metrics.

What a 200 means: every alert of the request was mapped to a Flashduty event and
**committed to the outbox on disk**. Delivery happens afterwards, with retries.
A 400 means the body can never be accepted (Alertmanager does not retry 4xx). A 503
means the bridge cannot take it now (outbox full or unwritable), and Alertmanager
retries 5xx. The bridge never answers 429: Alertmanager would drop the notification.

Responses use Flashduty's envelope: ``{"request_id", "data"}`` or ``{"request_id", "error"}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge import __version__
from bridge.config import Config
from bridge.destinations import Destination
from bridge.destinations.flashduty import DryRunDestination, FlashdutyDestination
from bridge.limits import clean_text
from bridge.mapping import Mapper
from bridge.metrics import Metrics
from bridge.outbox import NewEvent, OutboxUnavailable, SqliteOutbox
from bridge.outbox.dispatcher import Dispatcher
from bridge.sources import InvalidPayload, alertmanager

log = logging.getLogger("bridge.app")

#: The one destination until routing arrives; stored with every event.
DEFAULT_DESTINATION = "default"
#: How long SIGTERM waits for in-flight delivery attempts.
SHUTDOWN_GRACE_SECONDS = 15.0


def envelope(status: int, request_id: str, *, data: Any = None, code: str = "", message: str = "") -> JSONResponse:
    body: dict[str, Any] = {"request_id": request_id}
    if code:
        body["error"] = {"code": code, "message": message}
    else:
        body["data"] = data if data is not None else {}
    return JSONResponse(body, status_code=status)


class BodyTooLarge(Exception):
    pass


async def read_json(request: Request, limit: int) -> Any:
    """Read and decode a JSON body of at most ``limit`` bytes (raises InvalidPayload / BodyTooLarge)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body is {int(declared)} bytes, the limit is {limit} (max_body_bytes)")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise BodyTooLarge(f"body exceeds the limit of {limit} bytes (max_body_bytes)")
    if not raw.strip():
        raise InvalidPayload("body is empty; expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPayload(f"body is not valid UTF-8 (byte {exc.start})") from None

    def reject_constant(name: str) -> Any:
        raise InvalidPayload(f"{name} is not valid JSON")

    try:
        body = json.loads(text, parse_constant=reject_constant)
    except json.JSONDecodeError as exc:
        raise InvalidPayload(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if "\\u" in text:  # only escapes can smuggle in a lone surrogate
        body = _without_lone_surrogates(body)
    return body


def _without_lone_surrogates(value: Any) -> Any:
    """Replace lone surrogates with U+FFFD everywhere, as Go's JSON decoder does in Alertmanager."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [_without_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {clean_text(key): _without_lone_surrogates(item) for key, item in value.items()}
    return value


@dataclass
class Bridge:
    """Everything a running bridge owns; built in the lifespan, torn down in order."""

    config: Config
    metrics: Metrics
    outbox: SqliteOutbox
    dispatcher: Dispatcher
    mapper: Mapper
    destination: Destination
    http: httpx.AsyncClient


async def receive_alertmanager(request: Request) -> Response:
    """``POST /alertmanager``: one Flashduty event per alert, committed before the 200."""
    bridge: Bridge = request.app.state.bridge
    metrics = bridge.metrics
    request_id = uuid.uuid4().hex
    source = alertmanager.SOURCE
    try:
        body = await read_json(request, bridge.config.max_body_bytes)
        alerts = alertmanager.parse(body)
    except BodyTooLarge as exc:
        metrics.requests.labels(source, "too_large").inc()
        return envelope(413, request_id, code="InvalidParameter", message=str(exc))
    except InvalidPayload as exc:
        metrics.requests.labels(source, "invalid").inc()
        log.info("rejected %s request %s: %s", source, request_id, exc)
        return envelope(400, request_id, code="InvalidParameter", message=str(exc))

    events = [bridge.mapper.event(alert) for alert in alerts]
    try:
        await bridge.outbox.put(
            [
                NewEvent(DEFAULT_DESTINATION, event.alert_key, source, event.event_status, event.to_json())
                for event in events
            ]
        )
    except OutboxUnavailable as exc:
        metrics.requests.labels(source, "unavailable").inc()
        metrics.alerts.labels(source, "unavailable").inc(len(alerts))
        log.warning("could not take %s request %s (%d alerts): %s", source, request_id, len(alerts), exc)
        return envelope(503, request_id, code="ServiceUnavailable", message=str(exc))
    bridge.dispatcher.wake()

    metrics.requests.labels(source, "accepted").inc()
    metrics.alerts.labels(source, "accepted").inc(len(alerts))
    for event in events:
        metrics.events.labels(source, event.event_status).inc()
    return envelope(
        200,
        request_id,
        data={"accepted": len(events), "alert_keys": [event.alert_key for event in events]},
    )


async def healthy(request: Request) -> Response:
    return JSONResponse({"status": "healthy", "version": __version__})


async def ready(request: Request) -> Response:
    """Ready only when the outbox is open and the delivery workers run."""
    bridge: Bridge | None = getattr(request.app.state, "bridge", None)
    if bridge is None or not bridge.outbox.is_open or not bridge.dispatcher.running:
        return JSONResponse({"status": "not ready"}, status_code=503)
    return JSONResponse({"status": "ready", "dry_run": bridge.config.flashduty.dry_run})


async def metrics_endpoint(request: Request) -> Response:
    bridge: Bridge = request.app.state.bridge
    return Response(generate_latest(bridge.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def dry_run_events(request: Request) -> Response:
    """What the bridge would have sent, when it runs without an integration key."""
    bridge: Bridge = request.app.state.bridge
    sent = bridge.destination.sent if isinstance(bridge.destination, DryRunDestination) else []
    return JSONResponse({"dry_run": bridge.config.flashduty.dry_run, "events": sent})


async def dead_letters(request: Request) -> Response:
    bridge: Bridge = request.app.state.bridge
    limit = request.query_params.get("limit", "100")
    rows = await bridge.outbox.dead_letters(int(limit) if limit.isdigit() else 100)
    return JSONResponse({"dead_letters": rows})


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "RouteNotFound", 405: "MethodNotAllowed"}
    return envelope(
        exc.status_code,
        uuid.uuid4().hex,
        code=codes.get(exc.status_code, "InvalidParameter"),
        message=f"{request.method} {request.url.path}: {exc.detail}",
    )


def build_destination(config: Config, http: httpx.AsyncClient) -> Destination:
    flashduty = config.flashduty
    if flashduty.dry_run:
        return DryRunDestination(DEFAULT_DESTINATION)
    return FlashdutyDestination(
        DEFAULT_DESTINATION, flashduty.url, flashduty.integration_key.get_secret_value(), http, flashduty.timeout
    )


def create_app(
    config: Config,
    *,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """Build the Starlette app; the lifespan opens the outbox and starts delivery."""
    metrics = Metrics(registry or CollectorRegistry())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        outbox = SqliteOutbox(config.storage.path, max_pending=config.storage.max_pending, clock=clock)
        await outbox.open()
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(config.flashduty.timeout),
            limits=httpx.Limits(
                max_connections=config.delivery.workers, max_keepalive_connections=config.delivery.workers
            ),
            headers={"User-Agent": f"flashduty-bridge/{__version__}"},
            trust_env=True,
        )
        destination = build_destination(config, http)
        dispatcher = Dispatcher(outbox, {destination.name: destination}, metrics, config.delivery, clock=clock)
        metrics.dry_run.set(1 if config.flashduty.dry_run else 0)
        app.state.bridge = Bridge(
            config, metrics, outbox, dispatcher, Mapper(config.alertmanager, metrics), destination, http
        )
        dispatcher.start()
        if config.flashduty.dry_run:
            log.warning(
                "DRY RUN: no Flashduty integration key; events are logged and listed at GET /-/dry-run, not sent"
            )
        else:
            log.info("delivering to %s", getattr(destination, "display_url", destination.name))
        log.info("outbox %s open with %d pending events", outbox.path, (await outbox.stats()).pending)
        try:
            yield
        finally:
            await dispatcher.stop(timeout=min(SHUTDOWN_GRACE_SECONDS, config.flashduty.timeout + 1))
            await http.aclose()
            await outbox.close()
            log.info("stopped; undelivered events stay queued in %s", outbox.path)

    return Starlette(
        routes=[
            Route("/alertmanager", receive_alertmanager, methods=["POST"]),
            Route("/-/healthy", healthy, methods=["GET", "HEAD"]),
            Route("/-/ready", ready, methods=["GET", "HEAD"]),
            Route("/-/dry-run", dry_run_events, methods=["GET"]),
            Route("/-/dead-letters", dead_letters, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
