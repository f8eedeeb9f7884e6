"""The event trail: what happened to each event, kept for a bounded time, as plain data and plain rules.

Every event the outbox is given gets a row, suppressed repeats included, with an id in
commit order. A row records when and from which source and inbound request it arrived,
its destination, ``alert_key``, status and body (title and labels are read from it), and
its **steps**: every delivery attempt, and what else happened to it (coalesced, expired,
parked, replayed, purged). Its :data:`OUTCOMES` value says where it stands now.

Pending and dead events are the outbox itself and are never pruned here. Finished events
(delivered, suppressed, coalesced, purged) are kept under a :class:`Retention`: at most
``max_events`` ids back from the newest, and at most ``max_age`` seconds after they
finished; :func:`prunable` decides, a backend deletes at most :data:`PRUNE_BATCH` per
call, and the delivery loop calls it every second, so disk and memory stay flat.

What a backend needs and nothing more lives here, so a second backend cannot disagree
with the first: the step records (:func:`step`, :func:`attempt_step`, and the cap of
:data:`MAX_STEPS` per event, see :func:`append_step`), the filter, the pruning rule, and
:func:`event_from_row`, which turns a stored row into the :class:`TrailEvent` callers see.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

#: Where an event stands. ``pending`` and ``dead`` are the outbox; the others are finished.
PENDING, DELIVERED, SUPPRESSED, COALESCED, DEAD, PURGED = (
    "pending",
    "delivered",
    "suppressed",
    "coalesced",
    "dead",
    "purged",
)
OUTCOMES = (PENDING, DELIVERED, SUPPRESSED, COALESCED, DEAD, PURGED)
FINISHED = (DELIVERED, SUPPRESSED, COALESCED, PURGED)
#: A filter value beside the outcomes: events that were replayed from the dead letters at least once.
REPLAYED = "replayed"
FILTER_OUTCOMES = (*OUTCOMES, REPLAYED)

#: Steps kept per event: the first ``MAX_STEPS - 1`` and the latest (an event retried for a day
#: would otherwise carry a thousand). ``attempts`` still counts every attempt.
MAX_STEPS = 50
#: Finished events a backend deletes per ``prune_trail`` call (one short transaction).
PRUNE_BATCH = 2000
#: Most events one ``trail`` call returns.
MAX_LIMIT = 1000

DEFAULT_MAX_AGE = 24 * 3600.0
DEFAULT_MAX_EVENTS = 100_000

#: Label names as the bridge sends them (sanitised to Prometheus naming): safe in a JSON path.
LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


@dataclass(frozen=True, slots=True)
class Retention:
    """How long finished events stay in the trail: both bounds apply. ``max_events`` 0 keeps none."""

    max_age: float = DEFAULT_MAX_AGE
    max_events: int = DEFAULT_MAX_EVENTS


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt, as the dispatcher saw it; stored as a step with the outcome it led to."""

    at: float  # when it started, Unix seconds
    outcome: str  # ok | retry | give_up
    reason: str  # bridge.destinations.Reason value
    code: str  # Flashduty's error code, or the bridge's (network, timeout, ...); "none" when delivered
    latency: float  # seconds the attempt took
    status: int | None = None  # HTTP status, when an answer came
    request_id: str | None = None  # Flashduty's request_id, when it gave one
    message: str = ""


def step(kind: str, at: float, **fields: Any) -> str:
    """One step as the JSON object a backend appends to the event's steps."""
    return orjson.dumps({"kind": kind, "at": at, **fields}).decode()


def attempt_step(attempt: Attempt) -> str:
    return step(
        "attempt",
        attempt.at,
        outcome=attempt.outcome,
        reason=attempt.reason,
        code=attempt.code,
        status=attempt.status,
        request_id=attempt.request_id,
        latency_ms=round(attempt.latency * 1000, 1),
        message=attempt.message,
    )


def append_step(steps: list[Any], new: Any) -> list[Any]:
    """The rule for a step list: append while under :data:`MAX_STEPS`, else replace the last (keep the latest)."""
    return [*steps, new] if len(steps) < MAX_STEPS else [*steps[:-1], new]


@dataclass(frozen=True, slots=True)
class TrailFilter:
    """Which events ``trail`` returns, newest first; every given criterion must match."""

    alert_key: str | None = None
    destination: str | None = None
    #: (name, value) pairs, each an exact match on the event's labels.
    labels: tuple[tuple[str, str], ...] = ()
    event_status: str | None = None  # Critical | Warning | Info | Ok
    outcome: str | None = None  # one of FILTER_OUTCOMES
    since: float | None = None  # arrived at or after, Unix seconds
    before_id: int | None = None  # ids below this only (the next page)
    limit: int = 100

    def __post_init__(self) -> None:
        if self.outcome is not None and self.outcome not in FILTER_OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(FILTER_OUTCOMES)}")
        for name, _ in self.labels:
            if not LABEL_NAME.fullmatch(name):
                raise ValueError(f"label name {name!r}: letters, digits and _, not starting with a digit")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")


def label_path(name: str) -> str:
    """The JSON path of label ``name`` in an event body (``name`` passed :data:`LABEL_NAME`)."""
    return f'$.labels."{name}"'


@dataclass(frozen=True, slots=True)
class TrailEvent:
    """One event of the trail, as every backend returns it."""

    id: int
    created_at: float  # when the bridge accepted it (answered the sender)
    source: str
    inbound_request_id: str | None  # the request_id of the bridge's answer to the sender
    destination: str
    alert_key: str
    event_status: str
    outcome: str  # one of OUTCOMES
    attempts: int
    finished_at: float | None  # delivered, suppressed, coalesced or purged at
    dead_at: float | None
    last_code: str | None
    last_error: str | None
    request_id: str | None  # Flashduty's, of the delivering (or dead-lettering) attempt
    body: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    title: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def replayed(self) -> bool:
        return any(s.get("kind") == REPLAYED for s in self.steps)

    def to_json(self, *, body: bool = True) -> dict[str, Any]:
        data = {
            "id": self.id,
            "alert_key": self.alert_key,
            "destination": self.destination,
            "event_status": self.event_status,
            "title": self.title,
            "labels": self.labels,
            "outcome": self.outcome,
            "replayed": self.replayed,
            "received_at": self.created_at,
            "source": self.source,
            "inbound_request_id": self.inbound_request_id,
            "finished_at": self.finished_at,
            "dead_at": self.dead_at,
            "attempts": self.attempts,
            "last_code": self.last_code,
            "last_error": self.last_error,
            "request_id": self.request_id,
            "steps": self.steps,
        }
        if body:
            data["body"] = self.body
        return data


#: The stored columns :func:`event_from_row` reads, in this order.
ROW_FIELDS = (
    "id",
    "created_at",
    "source",
    "inbound_request",
    "destination",
    "alert_key",
    "event_status",
    "state",
    "attempts",
    "finished_at",
    "dead_at",
    "last_code",
    "last_error",
    "request_id",
    "body",
    "steps",
)


def event_from_row(row: Sequence[Any]) -> TrailEvent:
    """A stored row (:data:`ROW_FIELDS`, ``steps`` as JSON text or a list) as a :class:`TrailEvent`."""
    values = dict(zip(ROW_FIELDS, row, strict=True))
    steps = values["steps"]
    if isinstance(steps, str | bytes):
        steps = orjson.loads(steps or "[]")
    title, labels = _title_and_labels(values["body"])
    return TrailEvent(
        id=int(values["id"]),
        created_at=float(values["created_at"]),
        source=values["source"],
        inbound_request_id=values["inbound_request"],
        destination=values["destination"],
        alert_key=values["alert_key"],
        event_status=values["event_status"],
        outcome=values["state"],
        attempts=int(values["attempts"]),
        finished_at=values["finished_at"],
        dead_at=values["dead_at"],
        last_code=values["last_code"],
        last_error=values["last_error"],
        request_id=values["request_id"],
        body=values["body"],
        steps=list(steps),
        title=title,
        labels=labels,
    )


def _title_and_labels(body: str) -> tuple[str, dict[str, str]]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "", {}
    if not isinstance(data, Mapping):
        return "", {}
    labels = data.get("labels")
    title = data.get("title_rule")
    return (
        title if isinstance(title, str) else "",
        {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {},
    )


def prunable(oldest: Sequence[tuple[int, float]], *, newest_id: int, now: float, retention: Retention) -> list[int]:
    """Of the oldest finished events ``(id, finished_at)`` in id order, the leading ones past the retention.

    An event is past it when more than ``max_events`` ids are newer than it, or when it
    finished more than ``max_age`` ago. The first one still kept stops the walk, so a call
    costs what it deletes; a late-finished event can hold older ones back by ``max_age`` at most.
    """
    keep_from = newest_id - retention.max_events + 1  # ids at or above this are among the newest max_events
    cutoff = now - retention.max_age
    ids: list[int] = []
    for event_id, finished_at in oldest:
        if event_id >= keep_from and finished_at >= cutoff:
            break
        ids.append(event_id)
    return ids
