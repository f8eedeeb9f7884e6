"""The HTTP service: webhook intake, health, readiness and metrics.

What a 200 means: every alert of the request was mapped to a Flashduty event and
**committed to the outbox on disk**. Delivery happens afterwards, with retries.
A 400 means the body can never be accepted (Alertmanager does not retry 4xx). A 503
means the bridge cannot take it now (outbox full or unwritable), and Alertmanager
retries 5xx. The bridge never answers 429: Alertmanager would drop the notification.

Responses use Flashduty's envelope: ``{"request_id", "data"}`` or ``{"request_id", "error"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge import __version__, admin, logs
from bridge import runtime as runtime_module
from bridge.auth import Unauthorized
from bridge.config import DEFAULT_DESTINATION, Config, ConfigError
from bridge.config import load as load_config
from bridge.destinations.flashduty import DryRunDestination, Transports
from bridge.emulate import STATUS_BY_CODE
from bridge.metrics import Metrics
from bridge.outbox import Outbox, OutboxUnavailable, open_outbox
from bridge.outbox.dispatcher import Dispatcher
from bridge.responses import envelope, fast_envelope
from bridge.routing import passthrough_destination
from bridge.runtime import Runtime
from bridge.sources import InvalidPayload, Skipped, alertmanager, grafana
from bridge.sources import standard as standard_module
from bridge.sources.standard import Rejection

BUILTIN_SOURCES = ("alertmanager", "grafana", "standard")

log = logging.getLogger("bridge.app")

#: How long SIGTERM waits for in-flight delivery attempts.
SHUTDOWN_GRACE_SECONDS = 15.0


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused (BodyTooLarge) before it is read whole when it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body is {int(declared)} bytes, the limit is {limit} (max_body_bytes)")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise BodyTooLarge(f"body exceeds the limit of {limit} bytes (max_body_bytes)")
    return bytes(raw)


def request_headers(request: Request) -> dict[str, str]:
    """``dict(request.headers)``: names as sent (lower case), the first value of a repeated name.

    Built from the raw ASGI list in one pass; ``Headers`` looks every name up again.
    """
    headers: dict[str, str] = {}
    for name, value in request.scope["headers"]:
        if not name.islower():  # ASGI servers send lower-case names; anything else as Starlette does it
            return dict(request.headers)
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return headers


def request_query(request: Request) -> dict[str, str]:
    """``dict(request.query_params)``, without parsing an empty query string."""
    return dict(request.query_params) if request.scope["query_string"] else {}


@dataclass
class Bridge:
    """Everything a running bridge owns; built in the lifespan, torn down in order."""

    config_path: Path | None
    metrics: Metrics
    outbox: Outbox
    dispatcher: Dispatcher
    http: Transports
    runtime: Runtime
    dry_run_log: DryRunDestination | None

    @property
    def config(self) -> Config:
        return self.runtime.config

    async def passthrough(self, key: str) -> str:
        """The destination for a key given in the sender's URL, created (and remembered) on first use."""
        name = passthrough_destination(key)
        if name not in self.dispatcher.lanes:
            logs.add_secrets([key])
            # Stored before any event for it is committed, so a restart can still deliver them.
            await self.outbox.save_passthrough_key(name, key)
            destination = runtime_module.passthrough(self.config, name, key, self.http)
            self.dispatcher.add_destinations({name: destination}, {name: self.config.flashduty.rate_limit})
        return name

    def reload(self) -> tuple[bool, str]:
        """Load the config file again; keep the running config if the new one is invalid."""
        metrics = self.metrics
        if self.config_path is None:
            return False, "no config file to reload (started without --config)"
        try:
            new = load_config(self.config_path)
            runtime = runtime_module.build(new, metrics, self.http)
        except ConfigError as exc:
            metrics.reloads.labels("failure").inc()
            metrics.reload_success.set(0)
            message = f"reload refused, the running config stays in force: {exc}"
            log.error("%s", message)
            return False, message
        fixed = [name for name in ("listen", "storage", "delivery") if getattr(new, name) != getattr(self.config, name)]
        logs.add_secrets(runtime_module.secrets(runtime_module.integration_keys(new)))
        self.dispatcher.add_destinations(runtime.destinations, runtime.rate_limits)
        self.runtime = runtime
        metrics.reloads.labels("success").inc()
        metrics.reload_success.set(1)
        metrics.reload_time.set(time.time())
        note = f"; {', '.join(fixed)} changed and need a restart" if fixed else ""
        log.info(
            "config reloaded from %s (%d routes, %d destinations)%s",
            self.config_path,
            len(new.routes),
            len(runtime.destinations),
            note,
        )
        return True, "reloaded" + note


async def receive(request: Request, name: str) -> Response:
    """The receive path of every sender: authenticate, parse, route, map, commit, answer."""
    bridge: Bridge = request.app.state.bridge
    runtime = bridge.runtime  # this request finishes on the config it started with
    metrics = bridge.metrics
    request_id = uuid.uuid4().hex
    source = runtime.sources.get(name)
    if source is None:
        return envelope(404, request_id, code="RouteNotFound", message=f"no source {name!r} in the config")
    headers, query = request_headers(request), request_query(request)
    try:
        raw = await read_body(request, runtime.config.max_body_bytes)
        source.auth.verify(headers, raw)
        body = source.decode(raw)
        alerts = source.parse(body, headers, query)
    except BodyTooLarge as exc:
        metrics.requests.labels(name, "too_large").inc()
        return envelope(413, request_id, code="InvalidParameter", message=str(exc))
    except Unauthorized as exc:
        metrics.requests.labels(name, "unauthorized").inc()
        metrics.auth_failures.labels(name, exc.reason).inc()
        log.warning("refused %s request %s: %s", name, request_id, exc.reason)
        return envelope(401, request_id, code="Unauthorized", message=exc.reason)
    except (InvalidPayload, Rejection) as exc:
        metrics.requests.labels(name, "invalid").inc()
        log.info("rejected %s request %s: %s", name, request_id, exc)
        code = exc.code if isinstance(exc, Rejection) else "InvalidParameter"
        return envelope(STATUS_BY_CODE.get(code, 400), request_id, code=code, message=str(exc))
    except Skipped as skip:
        metrics.requests.labels(name, "not_forwarded").inc()
        metrics.not_forwarded.labels(name, skip.reason).inc()
        return envelope(200, request_id, data={"accepted": 0, "not_forwarded": skip.reason})

    passthrough = None
    key = query.get("integration_key")
    if key is not None and runtime.config.passthrough:
        if not key.strip():
            metrics.requests.labels(name, "invalid").inc()
            return envelope(400, request_id, code="InvalidParameter", message="integration_key is not a valid one")
        passthrough = await bridge.passthrough(key.strip())
    prepared = runtime.prepare(source, alerts, passthrough)
    try:
        stored = await bridge.outbox.put([new for new, _ in prepared.events])
    except OutboxUnavailable as exc:
        metrics.requests.labels(name, "unavailable").inc()
        metrics.alerts.labels(name, "unavailable").inc(len(alerts))
        log.warning("could not take %s request %s (%d alerts): %s", name, request_id, len(alerts), exc)
        return envelope(503, request_id, code="ServiceUnavailable", message=str(exc))
    bridge.dispatcher.wake()

    # Counted per series, not per alert: one increment by n is the same count as n increments.
    metrics.child(metrics.requests, name, "accepted").inc()
    metrics.child(metrics.alerts, name, "accepted").inc(len(alerts))
    for reason, count in Counter(reason for _, reason in prepared.skipped).items():
        metrics.child(metrics.unrouted, name, reason).inc(count)
    statuses = Counter(event.event_status for (_, event), kept in zip(prepared.events, stored, strict=True) if kept)
    for status, count in statuses.items():
        metrics.child(metrics.events, name, status).inc(count)
    suppressed = len(stored) - statuses.total()
    if suppressed:
        metrics.child(metrics.suppressed, name).inc(suppressed)
    keys = list(dict.fromkeys(event.alert_key for _, event in prepared.events))
    if name == standard_module.SOURCE:  # answer exactly as Flashduty does
        return fast_envelope(200, request_id, data={"alert_key": alerts[0].alert_key})
    return fast_envelope(
        200,
        request_id,
        data={
            "accepted": len(alerts),
            "events": len(stored) - suppressed,
            "suppressed": suppressed,
            "unrouted": len(prepared.skipped),
            "alert_keys": keys,
        },
    )


async def receive_alertmanager(request: Request) -> Response:
    """``POST /alertmanager``: Alertmanager webhooks (version 4)."""
    return await receive(request, alertmanager.SOURCE)


async def receive_grafana(request: Request) -> Response:
    """``POST /grafana``: Grafana contact points (unified, version 1) and legacy Grafana alerting."""
    return await receive(request, grafana.SOURCE)


async def receive_standard(request: Request) -> Response:
    """``POST /event/push/alert/standard``: Flashduty's own standard API, buffered."""
    return await receive(request, standard_module.SOURCE)


async def receive_template(request: Request) -> Response:
    """``POST /webhook/{name}``: a template source from the config."""
    name = request.path_params["name"]
    if name in BUILTIN_SOURCES:
        return envelope(404, uuid.uuid4().hex, code="RouteNotFound", message=f"use /{name} for {name}")
    return await receive(request, name)


async def render(request: Request) -> Response:
    """``POST /-/render/{source}``: the events a payload would become; nothing is queued or sent."""
    bridge: Bridge = request.app.state.bridge
    runtime = bridge.runtime
    request_id = uuid.uuid4().hex
    token = runtime.config.admin.token.get_secret_value()
    if token and not admin.bearer_matches(request, token):
        return envelope(401, request_id, code="Unauthorized", message="missing or wrong bearer token")
    source = runtime.sources.get(request.path_params["source"])
    if source is None:
        return envelope(404, request_id, code="RouteNotFound", message=f"no source {request.path_params['source']!r}")
    headers, query = dict(request.headers), dict(request.query_params)
    try:
        raw = await read_body(request, runtime.config.max_body_bytes)
        body = source.decode(raw)
        alerts = source.parse(body, headers, query)
    except (BodyTooLarge, InvalidPayload, Rejection) as exc:
        return envelope(400, request_id, code="InvalidParameter", message=str(exc))
    except Skipped as skip:
        return envelope(200, request_id, data={"events": [], "not_forwarded": skip.reason})
    prepared = runtime.prepare(source, alerts)
    return envelope(200, request_id, data=prepared.to_json())


async def reload_config(request: Request) -> Response:
    """``POST /-/reload``, as in Prometheus and Alertmanager."""
    bridge: Bridge = request.app.state.bridge
    ok, message = bridge.reload()
    if ok:
        return envelope(200, uuid.uuid4().hex, data={"message": message})
    return envelope(500 if bridge.config_path else 400, uuid.uuid4().hex, code="InvalidParameter", message=message)


async def healthy(request: Request) -> Response:
    return JSONResponse({"status": "healthy", "version": __version__})


def not_ready_reason(bridge: Bridge | None) -> str | None:
    """Why the bridge cannot take alerts now, or None when it can."""
    if bridge is None:
        return "starting"
    if not bridge.outbox.is_open:
        return "outbox is not open"
    if bridge.outbox.health.problem is not None:
        return f"storage: {bridge.outbox.health.problem}"
    if not bridge.dispatcher.running:
        return "delivery workers are not running"
    return None


async def ready(request: Request) -> Response:
    """Ready only when the outbox is open and works, and the delivery workers run; 503 says why not."""
    bridge: Bridge | None = getattr(request.app.state, "bridge", None)
    reason = not_ready_reason(bridge)
    if reason is not None or bridge is None:
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)
    # An open circuit is reported but does not make the bridge unready: it still accepts and
    # stores alerts, which is exactly what a sender needs while Flashduty is down.
    return JSONResponse({"status": "ready", "dry_run": bridge.config.dry_run, "circuits": bridge.dispatcher.circuits()})


async def metrics_endpoint(request: Request) -> Response:
    bridge: Bridge = request.app.state.bridge
    return Response(generate_latest(bridge.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def dry_run_events(request: Request) -> Response:
    """What the bridge would have sent, when it runs without an integration key."""
    bridge: Bridge = request.app.state.bridge
    sent = bridge.dry_run_log.sent if bridge.dry_run_log is not None else []
    return JSONResponse({"dry_run": bridge.config.dry_run, "events": sent})


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "RouteNotFound", 405: "MethodNotAllowed"}
    return envelope(
        exc.status_code,
        uuid.uuid4().hex,
        code=codes.get(exc.status_code, "InvalidParameter"),
        message=f"{request.method} {request.url.path}: {exc.detail}",
    )


def create_app(
    config: Config,
    *,
    config_path: Path | None = None,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], float] = time.time,
    outbox: Outbox | None = None,
) -> Starlette:
    """Build the Starlette app; the lifespan opens the outbox (unless given one, opened) and starts delivery.

    The app owns the outbox either way and closes it at shutdown. ``serve`` opens it before the
    server starts, so a refused outbox is one line and an exit code, not a failed startup.
    """
    metrics = Metrics(registry or CollectorRegistry())
    given = [outbox] if outbox is not None else []  # used by the first lifespan only

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        outbox = given.pop() if given else await open_outbox(config.storage, config.delivery, clock=clock)
        outbox.health.listener = lambda operation: metrics.storage_errors.labels(operation).inc()
        http = Transports(config.delivery.workers)
        runtime = runtime_module.build(config, metrics, http)
        dispatcher = Dispatcher(
            outbox, runtime.destinations, metrics, config.delivery, runtime.rate_limits, clock=clock
        )
        remembered = await outbox.passthrough_keys()
        logs.add_secrets(remembered.values())
        dispatcher.add_destinations(
            {name: runtime_module.passthrough(config, name, key, http) for name, key in remembered.items()},
            {name: config.flashduty.rate_limit for name in remembered},
        )
        dry_run = runtime.destinations.get(DEFAULT_DESTINATION)
        bridge = Bridge(
            config_path,
            metrics,
            outbox,
            dispatcher,
            http,
            runtime,
            dry_run if isinstance(dry_run, DryRunDestination) else None,
        )
        app.state.bridge = bridge
        metrics.dry_run.set(1 if config.dry_run else 0)
        metrics.reload_success.set(1)
        metrics.reload_time.set(time.time())
        dispatcher.start()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals off the main thread
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, bridge.reload)
        if config.dry_run:
            log.warning(
                "DRY RUN: no Flashduty integration key; events are logged and listed at GET /-/dry-run, not sent"
            )
        for name, destination in runtime.destinations.items():
            log.info("destination %s: %s", name, getattr(destination, "display_url", "dry run"))
        log.info("outbox %s open with %d pending events", outbox.location, (await outbox.stats()).pending)
        try:
            yield
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            await dispatcher.stop(timeout=min(SHUTDOWN_GRACE_SECONDS, config.flashduty.timeout + 1))
            await http.aclose()
            await outbox.close()
            log.info("stopped; undelivered events stay queued in %s", outbox.location)

    return Starlette(
        routes=[
            Route("/alertmanager", receive_alertmanager, methods=["POST"]),
            Route("/grafana", receive_grafana, methods=["POST", "PUT"]),
            Route("/webhook/{name}", receive_template, methods=["POST", "PUT"]),
            Route(standard_module.PATH, receive_standard, methods=["POST"]),
            Route("/-/render/{source}", render, methods=["POST"]),
            Route("/-/healthy", healthy, methods=["GET", "HEAD"]),
            Route("/-/ready", ready, methods=["GET", "HEAD"]),
            Route("/-/reload", reload_config, methods=["POST"]),
            Route("/-/dry-run", dry_run_events, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            *admin.routes,
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
