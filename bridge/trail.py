"""The events API: what happened to each event (the outbox's trail), behind the admin token.

* ``GET /api/v1/events?alert_key=&label=name=value&status=&outcome=&destination=&since=&before=&limit=``:
  events newest first (``label`` may repeat; ``status`` is the Flashduty status, Critical,
  Warning, Info or Ok; ``outcome`` is where the event stands: pending, delivered,
  suppressed, coalesced, dead, purged, or ``replayed`` for events replayed at least once;
  ``since`` a duration back from now, ``1h``, or an RFC 3339 time; ``before`` an event id,
  for the next page, which ``next_before`` gives). Without their bodies.
* ``GET /api/v1/events/{id}``: one event with its body and every step.

:func:`parse_query` turns a query string into a :class:`~bridge.outbox.TrailFilter`; the
console (:mod:`bridge.ui`) reads its filters with it too, so both accept the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge.admin import authorise
from bridge.config import Duration
from bridge.contract import EVENT_STATUSES
from bridge.outbox import TrailFilter
from bridge.outbox.trail import FILTER_OUTCOMES, MAX_LIMIT
from bridge.responses import envelope, new_request_id

DEFAULT_LIMIT = 100
_DURATION: TypeAdapter[float] = TypeAdapter(Duration)
#: The query parameters the events API takes.
PARAMETERS = ("alert_key", "label", "status", "outcome", "destination", "since", "before", "limit")


class BadQuery(ValueError):
    """A query parameter that cannot be used; the message names it."""


def parse_since(value: str, now: float) -> float:
    """``since`` as Unix seconds: a duration back from ``now`` (``90s``, ``1h``) or an RFC 3339 time."""
    try:
        return now - _DURATION.validate_python(value)
    except ValidationError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadQuery(f"since: {value!r} is neither a duration (15m, 24h) nor an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise BadQuery(f"since: {value!r} needs a time zone (Z or +hh:mm)")
    return moment.timestamp()


def parse_query(items: Sequence[tuple[str, str]], now: float, *, limit: int = DEFAULT_LIMIT) -> TrailFilter:
    """A :class:`TrailFilter` from query ``items`` (pairs, ``label`` repeated); raises :class:`BadQuery`."""
    single: dict[str, str] = {}
    labels: list[tuple[str, str]] = []
    for name, value in items:
        if name not in PARAMETERS:
            raise BadQuery(f"unknown parameter {name!r}; use {', '.join(PARAMETERS)}")
        if name == "label":
            if value == "":  # an empty form field
                continue
            label, sep, wanted = value.partition("=")
            if not sep or not label:
                raise BadQuery(f"label: {value!r} is not name=value")
            labels.append((label, wanted))
        elif value != "":  # an empty field of a form is no criterion
            single[name] = value
    status = single.get("status")
    if status is not None and status not in EVENT_STATUSES:
        raise BadQuery(f"status: {status!r} is not one of {', '.join(EVENT_STATUSES)}")
    outcome = single.get("outcome")
    if outcome is not None and outcome not in FILTER_OUTCOMES:
        raise BadQuery(f"outcome: {outcome!r} is not one of {', '.join(FILTER_OUTCOMES)}")
    try:
        limit = int(single.get("limit", limit))
        before = int(single["before"]) if "before" in single else None
    except ValueError:
        raise BadQuery("limit and before must be whole numbers") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadQuery(f"limit: between 1 and {MAX_LIMIT}")
    since = parse_since(single["since"], now) if "since" in single else None
    try:
        return TrailFilter(
            alert_key=single.get("alert_key"),
            destination=single.get("destination"),
            labels=tuple(labels),
            event_status=status,
            outcome=outcome,
            since=since,
            before_id=before,
            limit=limit,
        )
    except ValueError as exc:
        raise BadQuery(str(exc)) from None


def query_string(where: TrailFilter, now: float, **changes: Any) -> list[tuple[str, str]]:
    """The query items that give ``where`` again (for links to the next page), with ``changes`` applied."""
    items: list[tuple[str, str]] = []
    values: Mapping[str, Any] = {
        "alert_key": where.alert_key,
        "destination": where.destination,
        "status": where.event_status,
        "outcome": where.outcome,
        "since": None if where.since is None else f"{max(1.0, now - where.since):.0f}s",
        "before": where.before_id,
        "limit": where.limit if where.limit != DEFAULT_LIMIT else None,
        **changes,
    }
    for name, value in values.items():
        if value is not None:
            items.append((name, str(value)))
    items += [("label", f"{name}={value}") for name, value in where.labels]
    return items


async def list_events(request: Request) -> Response:
    bridge, denied = authorise(request)
    if denied is not None:
        return denied
    clock: Callable[[], float] = getattr(request.app.state, "clock", time.time)
    try:
        where = parse_query(request.query_params.multi_items(), clock())
    except BadQuery as exc:
        return envelope(400, new_request_id(), code="InvalidParameter", message=str(exc))
    events = await bridge.outbox.trail(where)
    next_before = events[-1].id if len(events) == where.limit else None
    data = {"events": [event.to_json(body=False) for event in events], "next_before": next_before}
    return envelope(200, new_request_id(), data=data)


async def show_event(request: Request) -> Response:
    bridge, denied = authorise(request)
    if denied is not None:
        return denied
    event_id = int(request.path_params["id"])
    event = await bridge.outbox.trail_event(event_id)
    if event is None:
        message = f"no event {event_id} (unknown, or past storage.history)"
        return envelope(404, new_request_id(), code="ResourceNotFound", message=message)
    return envelope(200, new_request_id(), data=event.to_json())


routes = [
    Route("/api/v1/events", list_events, methods=["GET"]),
    Route("/api/v1/events/{id:int}", show_event, methods=["GET"]),
]
