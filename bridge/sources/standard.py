"""Flashduty's standard alert API itself, at ``POST /event/push/alert/standard``.

A tool that already speaks the standard API changes only the host to gain the
bridge's durability, retries, rate limiting, routing and label hygiene. The request
and the body are checked by :mod:`bridge.contract`, the code ``emulate`` runs too, in
lenient mode: what Flashduty truncates is truncated, what it rejects is rejected with
the same status, code and message (a non-JSON ``Content-Type`` is 400
``InvalidContentType``, a method other than POST 400 ``MethodNotAllowed``). Then the
event flows like every other alert. ``alert_key`` is kept as given; when a firing
event has none, the bridge makes one, as Flashduty would, and returns it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from bridge import contract
from bridge.contract import Rejection
from bridge.models import Alert

SOURCE = "standard"
PATH = contract.PUSH_PATH


def decode(raw: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
    """The body of a push, checked as Flashduty checks it: JSON content type first, then one JSON object."""
    contract.check_content_type(headers.get("content-type", ""))
    return contract.parse_body(raw, strict=False)


def parse(body: dict[str, Any]) -> Alert:
    """Validate one standard event; raises :class:`~bridge.contract.Rejection` exactly as Flashduty would."""
    event, alert_key = contract.validate_event(body, strict=False)
    status = event["event_status"]
    when = datetime.fromtimestamp(event["event_time"], UTC) if "event_time" in event else None
    key = alert_key or contract.new_alert_key()
    return Alert(
        source=SOURCE,
        status="resolved" if status == "Ok" else "firing",
        labels=dict(event.get("labels", {})),
        annotations={},
        fingerprint=key,
        starts_at=when if status != "Ok" else None,
        ends_at=when if status == "Ok" else None,
        title=event["title_rule"],
        description=event.get("description", ""),
        event_status=status,
        alert_key=key,
        images=tuple(image["src"] for image in event.get("images", [])),
    )


__all__ = ["PATH", "SOURCE", "Rejection", "decode", "parse"]
