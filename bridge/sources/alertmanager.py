"""Parse an Alertmanager webhook (``"version": "4"``) into :class:`~bridge.models.Alert`.

The format and its quirks are in ``shared/research/payloads.md`` §1: the body is a
*snapshot* of a group (firing and resolved alerts together), ``endsAt`` is the zero
time for firing alerts, timestamps carry 0–9 fractional digits and any UTC offset,
and ``fingerprint`` is missing before Alertmanager 0.19.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.models import Alert
from bridge.sources import InvalidPayload, describe_validation_error

SOURCE = "alertmanager"

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = 0xFFFFFFFFFFFFFFFF
_SEPARATOR = b"\xff"


def fingerprint(labels: dict[str, str]) -> str:
    """Alertmanager's alert fingerprint: FNV-1a 64 over the sorted label pairs.

    Same algorithm as ``prometheus/common`` ``model.LabelSet.Fingerprint`` (each name
    and value followed by the byte 0xFF), printed as 16 lower-case hex digits, so a
    key computed here for an old Alertmanager equals the one a newer one sends.
    """
    value = _FNV_OFFSET
    for name in sorted(labels):  # code-point order == UTF-8 byte order
        for byte in name.encode() + _SEPARATOR + labels[name].encode() + _SEPARATOR:
            value = ((value ^ byte) * _FNV_PRIME) & _MASK
    return f"{value:016x}"


class _Model(BaseModel):
    # Unknown fields are tolerated: Alertmanager adds fields over time (truncatedAlerts,
    # notification_reason, routeLabels) and an old bridge must not reject a new sender.
    model_config = ConfigDict(extra="ignore", strict=False)


class _WebhookAlert(_Model):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime | None = None
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str | None = None


class _Webhook(_Model):
    version: str
    status: Literal["firing", "resolved"] | None = None
    alerts: list[_WebhookAlert]
    receiver: str = ""
    groupKey: str = ""
    externalURL: str = ""


def _real_time(value: datetime | None) -> datetime | None:
    """Go's zero time (year 1) means "not set"."""
    if value is None or value.year <= 1:
        return None
    return value


def parse(body: Any) -> list[Alert]:
    """Validate a decoded JSON body and return its alerts in payload order.

    Raises :class:`InvalidPayload` with a message naming the offending field.
    """
    if isinstance(body, list):
        raise InvalidPayload(
            "body is a JSON array, which is the format of Alertmanager's /api/v2/alerts, not its webhook: "
            "point Prometheus at Alertmanager and Alertmanager's webhook_configs at this path"
        )
    if not isinstance(body, dict):
        raise InvalidPayload(f"body must be a JSON object, got {type(body).__name__}")
    version = body.get("version")
    if version != "4":
        hint = ""
        if version == "1" or "orgId" in body or "evalMatches" in body:
            hint = " (this looks like a Grafana webhook)"
        raise InvalidPayload(f'version: expected "4" (Alertmanager webhook), got {version!r}{hint}')
    try:
        webhook = _Webhook.model_validate(body)
    except ValidationError as exc:
        raise InvalidPayload(describe_validation_error(exc)) from None
    alerts = []
    for item in webhook.alerts:
        given = item.fingerprint.strip() if item.fingerprint else ""
        alerts.append(
            Alert(
                source=SOURCE,
                status=item.status,
                labels=item.labels,
                annotations=item.annotations,
                fingerprint=given or fingerprint(item.labels),
                starts_at=_real_time(item.startsAt),
                ends_at=_real_time(item.endsAt),
                generator_url=item.generatorURL,
            )
        )
    return alerts
