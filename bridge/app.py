"""The HTTP service: webhook intake (:mod:`bridge.receive`), health, readiness and metrics.

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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge import __version__, admin, contract, logs, receive, trail, ui
from bridge import runtime as runtime_module
from bridge.admission import Isolation
from bridge.config import DEFAULT_DESTINATION, Config, ConfigError
from bridge.config import load as load_config
from bridge.destinations.flashduty import DryRunDestination, Transports
from bridge.lockout import Lockout
from bridge.metrics import Metrics
from bridge.outbox import Outbox, OutboxUnavailable, open_outbox
from bridge.outbox.dispatcher import Dispatcher, lease_for
from bridge.passthrough import PassthroughKeys
from bridge.responses import envelope, new_request_id
from bridge.runtime import Runtime

log = logging.getLogger("bridge.app")

#: Config sections a reload cannot apply to a running process (the socket, the outbox, the workers).
RESTART_ONLY = ("listen", "storage", "delivery", "limits")

#: How long SIGTERM waits for in-flight delivery attempts.
SHUTDOWN_GRACE_SECONDS = 15.0


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
    #: Destinations of keys given in senders' URLs (capped, retired when idle).
    passthrough: PassthroughKeys
    #: The in-flight body budget and the worker pool (``limits``, read at start).
    isolation: Isolation
    #: Wrong admin tokens per client address (the admin API and the console's login).
    lockout: Lockout = field(default_factory=Lockout)
    #: The config the process started with: what RESTART_ONLY sections run with until a restart.
    started: Config = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.runtime.config

    @property
    def config(self) -> Config:
        return self.runtime.config

    def reload(self) -> tuple[bool, str]:
        """Load the config file again; keep the running config if the new one is invalid.

        Sections that only a restart applies (:data:`RESTART_ONLY`) stay as the process
        started with them, so :attr:`config` always says what runs; the answer notes which of
        them the file now sets differently, compared with what runs, not with the last reload.
        """
        metrics = self.metrics
        if self.config_path is None:
            return False, "no config file to reload (started without --config)"
        try:
            new = load_config(self.config_path)
            applied = new.model_copy(update={name: getattr(self.started, name) for name in RESTART_ONLY})
            runtime = runtime_module.build(applied, self.http)
        except ConfigError as exc:
            metrics.reloads.labels("failure").inc()
            metrics.reload_success.set(0)
            # Named by the file: problems found past parsing (a key file) come labelled by section.
            problems = "; ".join(exc.problems)
            message = f"reload refused, the running config stays in force: {self.config_path}: {problems}"
            log.error("%s", message)
            return False, message
        pending = [name for name in RESTART_ONLY if getattr(new, name) != getattr(self.started, name)]
        logs.add_secrets(runtime_module.secrets(runtime_module.integration_keys(applied)))
        self.dispatcher.add_destinations(runtime.destinations, runtime.rate_limits)
        self.runtime = runtime
        # The new runtime has a new dry-run destination: /-/dry-run must read the one that now
        # sends, and keep listing what the old one was given.
        dry_run = runtime.destinations.get(DEFAULT_DESTINATION)
        if isinstance(dry_run, DryRunDestination):
            if self.dry_run_log is not None:
                dry_run.sent = self.dry_run_log.sent
            self.dry_run_log = dry_run
        metrics.dry_run.set(1 if applied.dry_run else 0)
        metrics.reloads.labels("success").inc()
        metrics.reload_success.set(1)
        metrics.reload_time.set(time.time())
        note = f"; not applied until a restart: {', '.join(pending)}" if pending else ""
        log.info(
            "config reloaded from %s (%d routes, %d destinations)%s",
            self.config_path,
            len(new.routes),
            len(runtime.destinations),
            note,
        )
        return True, "reloaded" + note


async def reload_config(request: Request) -> Response:
    """``POST /-/reload``, as in Prometheus and Alertmanager: 200, or 409 ``ReloadRefused`` (the old config stays)."""
    bridge: Bridge = request.app.state.bridge
    ok, message = bridge.reload()
    if ok:
        return envelope(200, new_request_id(), data={"message": message})
    # The request is fine and nothing failed: the file (or its absence) cannot be applied now, and
    # the same request will work once it is fixed. That is a conflict with the server's state (409),
    # not a bad parameter, nor a 5xx (retrying cannot help).
    return envelope(409, new_request_id(), code="ReloadRefused", message=message)


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
        new_request_id(),
        code=codes.get(exc.status_code, "InvalidParameter"),
        message=f"{request.method} {request.url.path}: {exc.detail}",
    )


async def storage_unavailable(request: Request, exc: Exception) -> Response:
    """Storage failed under a handler (admin API, console): 503, as the intake answers, never a 500."""
    return envelope(503, new_request_id(), code="ServiceUnavailable", message=str(exc))


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
        runtime = runtime_module.build(config, http)
        dispatcher = Dispatcher(
            outbox,
            runtime.destinations,
            metrics,
            config.delivery,
            runtime.rate_limits,
            clock=clock,
            lease_seconds=lease_for(config.flashduty.timeout),
        )
        passthrough = PassthroughKeys(
            outbox,
            dispatcher,
            metrics,
            lambda: bridge.config,
            lambda name, key: runtime_module.passthrough(bridge.config, name, key, http),
        )
        dry_run = runtime.destinations.get(DEFAULT_DESTINATION)
        isolation = Isolation.create(config.limits)
        isolation.pool.on_restart = lambda reason: metrics.worker_restarts.labels(reason).inc()
        bridge = Bridge(
            config_path,
            metrics,
            outbox,
            dispatcher,
            http,
            runtime,
            dry_run if isinstance(dry_run, DryRunDestination) else None,
            passthrough,
            isolation,
        )
        passthrough.restore(await outbox.passthrough_keys())
        dispatcher.adopt = passthrough.adopt  # keys another replica remembered since (shared outbox)
        await isolation.pool.start()
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
            await isolation.pool.close()
            await dispatcher.stop(timeout=min(SHUTDOWN_GRACE_SECONDS, config.flashduty.timeout + 1))
            await http.aclose()
            await outbox.close()
            log.info("stopped; undelivered events stay queued in %s", outbox.location)

    app = Starlette(
        routes=[
            Route("/alertmanager", receive.receive_alertmanager, methods=["POST"]),
            Route("/grafana", receive.receive_grafana, methods=["POST", "PUT"]),
            Route("/webhook/{name}", receive.receive_template, methods=["POST", "PUT"]),
            Route(contract.PUSH_PATH, receive.receive_standard, methods=list(receive.STANDARD_METHODS)),
            Route("/-/render/{source}", receive.render, methods=["POST"]),
            Route("/-/healthy", healthy, methods=["GET", "HEAD"]),
            Route("/-/ready", ready, methods=["GET", "HEAD"]),
            Route("/-/reload", reload_config, methods=["POST"]),
            Route("/-/dry-run", dry_run_events, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            *admin.routes,
            *trail.routes,
            *ui.routes,
        ],
        exception_handlers={HTTPException: http_error, OutboxUnavailable: storage_unavailable},
        lifespan=lifespan,
    )
    app.state.clock = clock
    return app
