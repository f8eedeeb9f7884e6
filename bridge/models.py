"""Sender-neutral types that flow through the bridge.

``Alert`` is what every source parses into; ``Event`` is the Flashduty standard alert
event that ``mapping`` makes of it and the outbox stores and delivers.

Both are values: nothing changes one after it is built (``dataclasses.replace`` makes a new one).
They are not ``frozen`` dataclasses only because a frozen one's ``__init__`` sets each field
through ``object.__setattr__``, which cost about 2 µs of the ~20 µs intake spends per alert.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from json.encoder import encode_basestring
from typing import Any, Literal

import orjson

AlertStatus = Literal["firing", "resolved"]
#: What kind of condition an alert reports, for senders that tell them apart (Grafana):
#: ``nodata``/``error`` mean the rule could not be evaluated (the data is missing or the
#: query failed), not that its condition is met; ``test`` is a "Test" button notification.
AlertKind = Literal["alerting", "nodata", "error", "test"]
EventStatus = Literal["Critical", "Warning", "Info", "Ok"]


@dataclass(slots=True)
class Alert:
    """One alert as a sender reported it, before any Flashduty limit is applied."""

    source: str
    status: AlertStatus
    labels: dict[str, str]
    annotations: dict[str, str]
    fingerprint: str
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    generator_url: str = ""
    #: ``alerting`` for every sender that does not distinguish (Alertmanager).
    kind: AlertKind = "alerting"
    #: The rule's own name when the sender reports it apart from ``alertname`` (Grafana's
    #: ``DatasourceNoData`` alerts carry the real rule in ``rulename``); empty when unknown.
    rule_name: str = ""
    #: Extra links by role (``silence``, ``dashboard``, ``panel``), absolute URLs as sent;
    #: the source link stays in ``generator_url``.
    links: dict[str, str] = field(default_factory=dict)
    #: Screenshot URLs, as sent (candidates for Flashduty ``images``, whose ``src`` is limited).
    images: tuple[str, ...] = ()
    #: Query values that caused the alert by reference (Grafana ``values``: refID → number).
    values: dict[str, float] = field(default_factory=dict)
    #: The sender's own one-line rendering of the values (Grafana ``valueString``).
    value_string: str = ""
    #: Set by template sources, the standard API, or per-source template overrides: they
    #: replace what mapping would derive (limits still apply). ``alert_key`` is final.
    title: str | None = None
    description: str | None = None
    event_status: EventStatus | None = None
    alert_key: str | None = None
    #: Template fields that failed to render (the event goes out with a fallback).
    template_errors: tuple[str, ...] = ()

    @property
    def is_test(self) -> bool:
        """A sender's test notification: worth delivering, not worth paging anyone for."""
        return self.kind == "test"

    def __repr__(self) -> str:
        name = self.labels.get("alertname", "?")
        return f"Alert({self.source}, {self.status}, {name}, fingerprint={self.fingerprint})"


@dataclass(slots=True)
class Event:
    """A contract-clean Flashduty standard alert event (all limits already applied)."""

    alert_key: str
    event_status: EventStatus
    title_rule: str
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    event_time: int | None = None
    #: Flashduty ``images``: ``{"alt", "src", "href"}``, within their limits.
    images: tuple[dict[str, str], ...] = ()

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "title_rule": self.title_rule,
            "event_status": self.event_status,
            "alert_key": self.alert_key,
        }
        if self.description:
            body["description"] = self.description
        if self.labels:
            body["labels"] = self.labels
        if self.event_time is not None:
            body["event_time"] = self.event_time
        if self.images:
            body["images"] = list(self.images)
        return body

    def digest(self) -> str:
        """What the event says (not when): equal digests mean a repeat with nothing new.

        The SHA-256 of ``json.dumps([status, title, description, sorted(labels.items())],
        ensure_ascii=False)``. Digests are stored in the outbox and compared across restarts
        and upgrades, so that text must never change; it is built here from the very string
        encoder json.dumps uses, which is what json.dumps would build, without its per-call
        encoder setup (tests compare the two).
        """
        pairs = ", ".join([f"[{encode_basestring(k)}, {encode_basestring(v)}]" for k, v in sorted(self.labels.items())])
        said = (
            f"[{encode_basestring(self.event_status)}, {encode_basestring(self.title_rule)},"
            f" {encode_basestring(self.description)}, [{pairs}]]"
        )
        return hashlib.sha256(said.encode(errors="surrogatepass")).hexdigest()[:32]

    def to_json(self) -> str:
        """The body sent to Flashduty: compact JSON, UTF-8 text unescaped, keys in :meth:`to_body` order."""
        body = self.to_body()
        try:
            # Byte for byte what json.dumps(ensure_ascii=False, separators=(",", ":")) gives, faster.
            return orjson.dumps(body).decode()
        except orjson.JSONEncodeError:
            # What orjson refuses (a lone surrogate, an integer beyond 64 bits) json.dumps still writes.
            return json.dumps(body, ensure_ascii=False, separators=(",", ":"))

    def __repr__(self) -> str:
        return f"Event({self.event_status}, key={self.alert_key}, title={self.title_rule[:60]!r})"
