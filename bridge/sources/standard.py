"""Flashduty's standard alert API itself, at ``POST /event/push/alert/standard``.

A tool that already speaks the standard API changes only the host to gain the
bridge's durability, retries, rate limiting, routing and label hygiene. The body is
validated by the same code as ``emulate`` (lenient mode: what Flashduty truncates is
truncated, what it rejects is rejected with the same code and message), then it
flows like every other alert. ``alert_key`` is kept as given; when a firing event
has none, the bridge makes one, as Flashduty would, and returns it.
"""

from __future__ import annotations

import secrets
import string
from datetime import UTC, datetime
from typing import Any

from bridge.emulate import Rejection, parse_body, validate_event
from bridge.models import Alert

SOURCE = "standard"
PATH = "/event/push/alert/standard"
_ALPHABET = string.ascii_letters + string.digits


def new_alert_key() -> str:
    """A 22-character random key, like the ones Flashduty generates."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(22))


def parse(body: dict[str, Any]) -> Alert:
    """Validate one standard event; raises :data:`~bridge.emulate.Rejection` exactly as Flashduty would."""
    event, alert_key = validate_event(body, strict=False)
    status = event["event_status"]
    when = datetime.fromtimestamp(event["event_time"], UTC) if "event_time" in event else None
    key = alert_key or new_alert_key()
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


__all__ = ["PATH", "SOURCE", "Rejection", "new_alert_key", "parse", "parse_body"]
