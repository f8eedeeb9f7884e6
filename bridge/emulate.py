"""A strict, local Flashduty Standard Alert API receiver for tests and offline trials.

The contract itself (codes, limits, request checks, body decoding, event validation, key
generation) is :mod:`bridge.contract`, which the bridge uses too; this module adds the receiver
around it: the per-integration rate limit (100/s and 1000/min), stored events, scripted faults.
It listens on loopback only by default and never makes outbound connections.

Its purpose is to *catch* a client that breaks the contract, so it is stricter than the real service:

* over-long ``title_rule`` (512), ``description`` (2048), label values (2048), image ``alt`` (128) and
  ``href`` (256) are rejected with ``InvalidParameter``; the real service truncates them. An image
  ``src`` over 256 characters is rejected; the real service drops the image;
* unknown top-level or image fields, ``null`` for optional fields and duplicate JSON keys are rejected;
* an empty ``alert_key`` is rejected (omit it to get a generated one);
* label keys that break Prometheus naming or exceed 128 characters, and a 51st label, are rejected
  (the real behaviour is undocumented);
* ``event_time`` must be a non-negative integer of Unix seconds (not a float, string or milliseconds);
* the ``charset`` of ``application/json`` must be UTF-8 and a repeated ``integration_key`` is refused.

``--lenient`` (``strict=False``) behaves like the documented service: it truncates the long texts,
drops images with a long ``src``, treats ``null`` optional fields as absent and ignores unknown fields.

Control endpoints under ``/-/`` (not Flashduty): ``GET|DELETE /-/events``, ``GET /-/requests``,
``GET /-/stats`` (counts only), ``GET|PUT|DELETE /-/faults`` (scripted failures) and ``GET /-/healthy``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge import contract
from bridge.contract import Rejection

logger = logging.getLogger("bridge.emulate")

PUSH_PATH = contract.PUSH_PATH
STATUS_BY_CODE = contract.STATUS_BY_CODE


@dataclass(frozen=True)
class EmulatorSettings:
    per_second: int = 100  # requests/s allowed per integration_key, else 429 RequestTooFrequently
    per_minute: int = 1000  # requests/min allowed per integration_key, else 429
    valid_keys: frozenset[str] | None = None  # None: any non-empty key is valid; else only these
    strict: bool = True  # reject what the real service would truncate, drop or ignore


class FaultItem(BaseModel):
    """One scripted answer, consumed by the next push request before any validation."""

    model_config = ConfigDict(extra="forbid", strict=True)
    status: int | None = Field(default=None, ge=200, le=599)  # default: the spec's status for ``code``
    code: str | None = None
    message: str = "injected fault"
    retry_after: int | None = Field(default=None, ge=0)
    delay_ms: int = Field(default=0, ge=0, le=120_000)
    body: str | None = None
    content_type: str | None = None
    #: Cut the connection mid-response (the client sees a transport error, not a status).
    drop: bool = False

    @model_validator(mode="after")
    def _code_or_body(self) -> Self:
        if self.drop:
            self.status = self.status or 200
            return self
        if self.code is None and self.body is None:
            raise ValueError("give code (for an error envelope) or body (sent raw), or drop")
        if self.status is None:
            if self.code not in STATUS_BY_CODE:
                raise ValueError(f"status is required unless code is one of {', '.join(STATUS_BY_CODE)}")
            self.status = STATUS_BY_CODE[self.code]
        return self


class Outage(BaseModel):
    """For ``seconds`` from now, every push is answered with ``answer`` (after the script runs out)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    seconds: float = Field(gt=0, le=3600)
    answer: FaultItem


class FaultScript(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    script: list[FaultItem] = Field(default_factory=list)
    outage: Outage | None = None


def _mask(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:8] if key else "-"


@dataclass
class _State:
    settings: EmulatorSettings
    events: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    windows: dict[str, deque[float]] = field(default_factory=dict)
    faults: deque[FaultItem] = field(default_factory=deque)
    outage: FaultItem | None = None
    outage_until: float = 0.0

    def admit(self, key: str, now: float) -> int | None:
        """Sliding windows of 1 s and 60 s; return None if admitted, else seconds until a slot frees."""
        window = self.windows.setdefault(key, deque())
        while window and window[0] <= now - 60:
            window.popleft()
        waits = []
        if len(window) >= self.settings.per_minute:
            waits.append(window[-self.settings.per_minute] + 60 - now)
        if len(window) >= self.settings.per_second and window[-self.settings.per_second] > now - 1:
            waits.append(window[-self.settings.per_second] + 1 - now)
        if waits:
            return max(1, math.ceil(max(waits)))
        window.append(now)
        return None

    def record(
        self, key: str, status: int, code: str | None, message: str | None, alert_key: str | None
    ) -> dict[str, Any]:
        entry = dict(
            status=status, code=code, message=message, alert_key=alert_key, integration_key=key, received_at=time.time()
        )
        self.requests.append({"seq": len(self.requests) + 1, **entry, "fault": False})
        return self.requests[-1]


class _DroppedResponse(Response):
    """Promise a body, send part of it, and end: the server closes the connection mid-response."""

    def __init__(self) -> None:
        super().__init__(b"")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
        await send({"type": "http.response.body", "body": b'{"request_id": "dro', "more_body": False})


def _envelope(request_id: str, status: int, code: str, message: str, retry_after: int | None = None) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    body = {"request_id": request_id, "error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(
    settings: EmulatorSettings = EmulatorSettings(), *, clock: Callable[[], float] = time.monotonic
) -> Starlette:
    """Build the ASGI app; ``clock`` (monotonic seconds) drives the rate-limit windows."""
    state = _State(settings)

    async def fault(request_id: str, key: str, item: FaultItem) -> Response:
        status = item.status if item.status is not None else 500  # always set by FaultItem's validator
        state.record(key, status, item.code, item.message if item.body is None else None, None)["fault"] = True
        logger.info("push fault %s %s key=%s request_id=%s", status, item.code, _mask(key), request_id)
        if item.delay_ms:
            await asyncio.sleep(item.delay_ms / 1000)
        if item.drop:
            return _DroppedResponse()
        if item.body is None:
            assert item.code is not None
            return _envelope(request_id, status, item.code, item.message, item.retry_after)
        headers = {"Retry-After": str(item.retry_after)} if item.retry_after is not None else None
        html = item.body.lstrip().startswith("<")
        media = item.content_type or ("text/html; charset=utf-8" if html else "text/plain; charset=utf-8")
        return Response(item.body, status_code=status, headers=headers, media_type=media)

    async def push(request: Request) -> Response:
        request_id = uuid.uuid4().hex
        keys = request.query_params.getlist("integration_key")
        key = keys[0] if keys else ""
        if state.faults:
            return await fault(request_id, key, state.faults.popleft())
        if state.outage is not None and clock() < state.outage_until:
            return await fault(request_id, key, state.outage)
        try:
            contract.check_method(request.method)
            contract.check_integration_keys(keys)
            if settings.valid_keys is not None and key not in settings.valid_keys:
                raise contract.wrong_key()
            if (wait := state.admit(key, clock())) is not None:
                raise Rejection(
                    "RequestTooFrequently",
                    f"rate limit of {settings.per_second}/s and {settings.per_minute}/min per integration exceeded",
                    retry_after=wait,
                )
            contract.check_content_type(request.headers.get("content-type", ""))
            body = contract.parse_body(await request.body(), settings.strict)
            event, alert_key = contract.validate_event(body, settings.strict)
        except Rejection as exc:
            status = exc.status
            state.record(key, status, exc.code, exc.message, None)
            logger.info("push %s %s key=%s request_id=%s: %s", status, exc.code, _mask(key), request_id, exc.message)
            return _envelope(request_id, status, exc.code, exc.message, exc.retry_after)
        alert_key = alert_key if alert_key is not None else contract.new_alert_key()
        entry = dict(integration_key=key, alert_key=alert_key, body=body, effective=event, received_at=time.time())
        state.events.append({"seq": len(state.events) + 1, **entry})
        state.record(key, 200, None, None, alert_key)
        logger.info("push 200 key=%s alert_key=%s request_id=%s", _mask(key), alert_key, request_id)
        return JSONResponse({"request_id": request_id, "data": {"alert_key": alert_key}})

    async def events(request: Request) -> Response:
        if request.method == "DELETE":
            state.events.clear()
            state.requests.clear()
            state.windows.clear()
            state.faults.clear()
            state.outage = None
            return JSONResponse({"events": []})
        since_text = request.query_params.get("since", "0")
        if not (since_text.isascii() and since_text.isdigit()):
            return _envelope(uuid.uuid4().hex, 400, "InvalidParameter", f'since: "{since_text}" is not a seq number')
        since, key = int(since_text), request.query_params.get("integration_key")
        found = [e for e in state.events if e["seq"] > since and key in (None, e["integration_key"])]
        return JSONResponse({"events": found})

    async def requests(_: Request) -> Response:
        return JSONResponse({"requests": state.requests})

    async def stats(_: Request) -> Response:
        """Counts only: cheap enough to poll while thousands of events arrive per second."""
        return JSONResponse({"events": len(state.events), "requests": len(state.requests)})

    async def faults(request: Request) -> Response:
        if request.method == "PUT":
            try:
                script = FaultScript.model_validate_json(await request.body())
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
                )
                return _envelope(uuid.uuid4().hex, 400, "InvalidParameter", f"fault script: {problems}")
            state.faults = deque(script.script)
            if script.outage is not None:
                state.outage, state.outage_until = script.outage.answer, clock() + script.outage.seconds
        elif request.method == "DELETE":
            state.faults.clear()
            state.outage = None
        outage_left = max(0.0, state.outage_until - clock()) if state.outage is not None else 0.0
        return JSONResponse({"script": [item.model_dump() for item in state.faults], "outage_seconds": outage_left})

    async def healthy(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def not_found(request: Request) -> Response:
        return _envelope(uuid.uuid4().hex, 404, "RouteNotFound", f"no route for {request.method} {request.url.path}")

    all_methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]
    app = Starlette(
        routes=[
            Route(PUSH_PATH, push, methods=all_methods),
            Route("/-/events", events, methods=["GET", "DELETE"]),
            Route("/-/requests", requests, methods=["GET"]),
            Route("/-/stats", stats, methods=["GET"]),
            Route("/-/faults", faults, methods=["GET", "PUT", "DELETE"]),
            Route("/-/healthy", healthy, methods=["GET"]),
            Route("/{path:path}", not_found, methods=all_methods),
        ]
    )
    return app


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    """``flashduty-bridge emulate``: run the emulator with uvicorn until SIGINT/SIGTERM."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="flashduty-bridge emulate", description="Strict local Flashduty receiver.")
    parser.add_argument("--listen", type=_listen, default=("127.0.0.1", 9096), metavar="HOST:PORT")
    parser.add_argument("--per-second", type=_positive, default=EmulatorSettings.per_second)
    parser.add_argument("--per-minute", type=_positive, default=EmulatorSettings.per_minute)
    parser.add_argument("--keys", default=None, metavar="K1,K2", help="accepted integration keys (default: any)")
    parser.add_argument("--lenient", action="store_true", help="truncate and ignore like the real service")
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="info logs every request (the default); warning keeps a benchmark's receiver quiet",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    keys = None if args.keys is None else frozenset(k.strip() for k in args.keys.split(",") if k.strip())
    if keys is not None and not keys:
        parser.print_usage()
        print("error: --keys needs at least one non-empty key")
        return 2
    host, port = args.listen
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        if not ipaddress.ip_address(host).is_loopback:
            logger.warning("listening on %s, not loopback: /-/events shows integration keys to anyone", host)
    except ValueError:
        if host != "localhost":
            logger.warning("listening on %s, not loopback: /-/events shows integration keys to anyone", host)
    settings = EmulatorSettings(args.per_second, args.per_minute, keys, strict=not args.lenient)
    logger.info("emulator on http://%s:%d%s (strict=%s)", host, port, PUSH_PATH, settings.strict)
    try:  # access_log=False: uvicorn's access log would print the integration_key from the query string
        uvicorn.run(create_app(settings), host=host, port=port, access_log=False, log_level=args.log_level)
    except SystemExit as exc:  # uvicorn exits when it cannot bind
        return exc.code if isinstance(exc.code, int) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
