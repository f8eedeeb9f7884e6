"""The admin HTTP API: dead letters (list, show, replay, purge).

Every call needs ``Authorization: Bearer <admin.token>``; without a configured token
the API is disabled (403). Dead letters hold alert content, and replay and purge
change what reaches Flashduty, so none of this is open like ``/metrics``.
"""

from __future__ import annotations

import hmac
import math
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge.config import Duration
from bridge.outbox import DeadLetterFilter, ReplayResult
from bridge.responses import envelope, new_request_id
from bridge.sources import describe_validation_error

if TYPE_CHECKING:
    from bridge.app import Bridge


class Selection(BaseModel):
    """Which dead letters a replay or purge applies to (JSON body or query string)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ids: tuple[int, ...] = ()
    destination: str | None = None
    code: str | None = None
    older_than: Duration | None = None
    limit: int = Field(1000, ge=1, le=100_000)
    #: Replay even when a newer event of the same key was delivered since.
    force: bool = False
    #: Purge needs at least one criterion, or this, so an empty body never deletes everything.
    all: bool = False

    def to_filter(self) -> DeadLetterFilter:
        return DeadLetterFilter(self.ids, self.destination, self.code, self.older_than, self.limit)

    @property
    def narrowed(self) -> bool:
        return bool(self.ids or self.destination or self.code or self.older_than is not None)


def bearer_matches(request: Request, token: str) -> bool:
    """Constant-time check of ``Authorization: Bearer <token>``."""
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), token.encode())


def client_address(request: Request) -> str:
    """The peer's address (a proxy's, behind one): what :class:`~bridge.lockout.Lockout` counts by."""
    return request.client.host if request.client else "unknown"


def locked_for(bridge: Bridge, address: str, source: str) -> int | None:
    """Whole seconds ``address`` must wait, counted as refused, while it has too many recent wrong tokens
    (see :mod:`bridge.lockout`); None when its token may be checked."""
    wait = bridge.lockout.wait(address)
    if wait <= 0:
        return None
    bridge.metrics.auth_failures.labels(source, "too many attempts").inc()
    return max(1, math.ceil(wait))


def wrong_token(bridge: Bridge, address: str, source: str, presented: bool) -> None:
    """Count a refused token; only a presented one is a guess that moves ``address`` towards the lockout."""
    if presented:
        bridge.lockout.failed(address)
    bridge.metrics.auth_failures.labels(source, "bad credentials" if presented else "missing credentials").inc()


def guard(
    request: Request, bridge: Bridge, token: str, source: str, request_id: str, accepted: bool | None = None
) -> Response | None:
    """None when the request may go on; else 429 ``TooManyAttempts`` (locked out, the token unchecked) or 401,
    counted.

    ``accepted`` is another way in the caller takes (the console's session); by default the
    bearer token alone is checked.
    """
    address = client_address(request)
    if (seconds := locked_for(bridge, address, source)) is not None:
        message = f"too many wrong admin tokens from {address}: try again in {seconds} s"
        response = envelope(429, request_id, code="TooManyAttempts", message=message)
        response.headers["Retry-After"] = str(seconds)
        return response
    if accepted or bearer_matches(request, token):
        return None
    wrong_token(bridge, address, source, presented=bool(request.headers.get("authorization", "").strip()))
    return envelope(401, request_id, code="Unauthorized", message="missing or wrong bearer token")


def authorise(request: Request) -> tuple[Bridge, Response | None]:
    bridge: Bridge = request.app.state.bridge
    token = bridge.config.admin.token.get_secret_value()
    request_id = new_request_id()
    if not token:
        return bridge, envelope(403, request_id, code="AccessDenied", message="admin API disabled: set admin.token")
    return bridge, guard(request, bridge, token, "admin", request_id)


async def _selection(request: Request) -> Selection:
    if request.method == "GET":
        query: dict[str, Any] = dict(request.query_params)
        if "ids" in query:
            query["ids"] = tuple(part for part in str(query["ids"]).split(",") if part)
        return Selection.model_validate(query)
    raw = await request.body()
    return Selection.model_validate_json(raw or b"{}")


async def _with_selection(request: Request) -> tuple[Bridge, Selection | None, Response | None]:
    bridge, denied = authorise(request)
    if denied is not None:
        return bridge, None, denied
    try:
        return bridge, await _selection(request), None
    except ValidationError as exc:
        message = describe_validation_error(exc)
        return bridge, None, envelope(400, new_request_id(), code="InvalidParameter", message=message)


async def list_dead_letters(request: Request) -> Response:
    """``GET /api/v1/dead-letters?destination=&code=&older_than=&ids=&limit=``"""
    bridge, selection, problem = await _with_selection(request)
    if problem is not None or selection is None:
        return problem or envelope(500, new_request_id(), code="InternalError")
    rows = await bridge.outbox.dead_letters(selection.to_filter())
    return envelope(200, new_request_id(), data={"dead_letters": rows})


async def show_dead_letter(request: Request) -> Response:
    """``GET /api/v1/dead-letters/{id}``"""
    bridge, denied = authorise(request)
    if denied is not None:
        return denied
    event_id = int(request.path_params["id"])
    rows = await bridge.outbox.dead_letters(DeadLetterFilter(ids=(event_id,), limit=1))
    if not rows:
        return envelope(404, new_request_id(), code="ResourceNotFound", message=f"no dead letter {event_id}")
    return envelope(200, new_request_id(), data=rows[0])


async def replay(bridge: Bridge, where: DeadLetterFilter, *, force: bool = False) -> ReplayResult:
    """What every way of replaying does (API, console): replay under the outbox's rules, count, wake delivery."""
    result = await bridge.outbox.replay(where, force=force)
    bridge.metrics.replayed.inc(len(result.replayed))
    bridge.dispatcher.wake()
    return result


async def replay_dead_letters(request: Request) -> Response:
    """``POST /api/v1/dead-letters/replay`` with a :class:`Selection` body."""
    bridge, selection, problem = await _with_selection(request)
    if problem is not None or selection is None:
        return problem or envelope(500, new_request_id(), code="InternalError")
    result = await replay(bridge, selection.to_filter(), force=selection.force)
    return envelope(
        200,
        new_request_id(),
        data={"replayed": result.replayed, "superseded": result.superseded, "in_flight": result.in_flight},
    )


async def purge_dead_letters(request: Request) -> Response:
    """``POST /api/v1/dead-letters/purge`` with a :class:`Selection` body (``all: true`` for everything)."""
    bridge, selection, problem = await _with_selection(request)
    if problem is not None or selection is None:
        return problem or envelope(500, new_request_id(), code="InternalError")
    if not selection.narrowed and not selection.all:
        message = "give ids, destination, code or older_than, or all: true to purge every dead letter"
        return envelope(400, new_request_id(), code="InvalidParameter", message=message)
    purged = await bridge.outbox.purge(selection.to_filter())
    return envelope(200, new_request_id(), data={"purged": purged})


routes = [
    Route("/api/v1/dead-letters", list_dead_letters, methods=["GET"]),
    Route("/api/v1/dead-letters/{id:int}", show_dead_letter, methods=["GET"]),
    Route("/api/v1/dead-letters/replay", replay_dead_letters, methods=["POST"]),
    Route("/api/v1/dead-letters/purge", purge_dead_letters, methods=["POST"]),
]
