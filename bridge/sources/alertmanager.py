"""Parse an Alertmanager webhook (``"version": "4"``) into :class:`~bridge.models.Alert`.

The format and its quirks are in ``shared/research/payloads.md`` §1: the body is a
*snapshot* of a group (firing and resolved alerts together), ``endsAt`` is the zero
time for firing alerts, timestamps carry 0–9 fractional digits and any UTC offset,
and ``fingerprint`` is missing before Alertmanager 0.19.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

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
    return [_alert(item, _real_time(item.startsAt), _real_time(item.endsAt)) for item in webhook.alerts]


def _alert(item: _WebhookAlert | _FastAlert, starts_at: datetime | None, ends_at: datetime | None) -> Alert:
    """The :class:`Alert` of one webhook alert, however it was decoded (its times already read)."""
    given = item.fingerprint.strip() if item.fingerprint else ""
    return Alert(
        source=SOURCE,
        status=item.status,
        labels=item.labels,
        annotations=item.annotations,
        fingerprint=given or fingerprint(item.labels),
        starts_at=starts_at,
        ends_at=ends_at,
        generator_url=item.generatorURL,
    )


# -- the fast path ----------------------------------------------------------------------------------
#
# Decoding a body with json and validating it with pydantic costs about 5.7 µs per alert; msgspec
# decodes the raw bytes straight into typed structs in a fraction of that. It only ever *accepts*
# (it never writes an error message): a body it cannot take returns None and goes the usual way,
# which gives the same 400s as before. So it must accept nothing that way refuses and yield the
# very alerts that way yields (tests/test_sources_alertmanager.py checks it on generated bodies):
#
# * every field of Alertmanager's webhook is declared and unknown ones send the body the usual way,
#   so no content is skipped unchecked (a 5000-digit number or a 2000-deep array in an unknown
#   field is refused by json there);
# * msgspec refuses what json.loads refuses: invalid UTF-8, raw control characters, a BOM, trailing
#   data, NaN, leading zeros; and it refuses lone surrogates, which the usual way cleans;
# * timestamps are decoded as text and parsed by pydantic's own datetime validator (once per
#   distinct text in a body: a group's alerts share most of them).


class _FastAlert(msgspec.Struct, forbid_unknown_fields=True):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = {}
    startsAt: str | None = None
    endsAt: str | None = None
    generatorURL: str = ""
    fingerprint: str | None = None


class _FastWebhook(msgspec.Struct, forbid_unknown_fields=True):
    version: str
    alerts: list[_FastAlert]
    status: Literal["firing", "resolved"] | None = None
    receiver: str = ""
    groupKey: str = ""
    externalURL: str = ""
    truncatedAlerts: Annotated[int, msgspec.Meta(ge=0, le=2**53)] = 0
    groupLabels: dict[str, str] = {}
    commonLabels: dict[str, str] = {}
    commonAnnotations: dict[str, str] = {}


_FAST_DECODER = msgspec.json.Decoder(_FastWebhook)
_TIME = TypeAdapter(datetime)


def parse_raw(raw: bytes) -> list[Alert] | None:
    """The alerts of a raw webhook body, exactly as :func:`parse` of its decoded JSON gives them; or None.

    None: the body is not a plain, valid webhook (or uses a field this path does not know); give it
    to :func:`bridge.sources.decode_json` and :func:`parse`, which accept it or say what is wrong.
    """
    try:
        webhook = _FAST_DECODER.decode(raw)
    except msgspec.DecodeError:
        return None
    if webhook.version != "4":
        return None
    times: dict[str, datetime | None] = {}

    def time_of(text: str | None) -> datetime | None:
        """Each distinct timestamp of the body validated once (a group's alerts mostly share them)."""
        if text is None:
            return None
        if text not in times:
            times[text] = _real_time(_TIME.validate_python(text))
        return times[text]

    try:
        alerts = [_alert(item, time_of(item.startsAt), time_of(item.endsAt)) for item in webhook.alerts]
    except ValidationError:
        return None
    return alerts
