"""Parse Grafana webhooks into :class:`~bridge.models.Alert`: unified alerting and legacy.

Two formats arrive on one endpoint and are told apart by shape (``shared/research/payloads.md``
§3, §4, §6):

* **Unified alerting** (Grafana ≥ 8 contact points): ``"version": "1"`` and an Alertmanager-like
  ``alerts`` list. Grafana runs an Alertmanager inside itself, so a body is a snapshot of a
  group and may mix firing and resolved alerts; each alert becomes one :class:`Alert`.
  No-data and query-error conditions arrive as separate alerts named ``DatasourceNoData`` /
  ``DatasourceError`` whose real rule name is in the ``rulename`` label; they keep their
  ``alertname`` (so their identity and silences match Grafana's) and get ``kind`` ``nodata`` /
  ``error`` and ``rule_name``. The ``fingerprint`` is opaque (Grafana hashes hidden labels
  too), so it is used as sent, and computed from the visible labels only when missing.
* **Legacy alerting** (Grafana ≤ 10 dashboard alerts): no ``version``; one rule state change
  per request (``ruleId``, ``ruleName``, ``state``, ``evalMatches``). ``alerting`` → firing,
  ``no_data`` → firing with ``kind`` ``nodata``, ``ok`` → resolved; ``paused``, ``pending`` and
  ``unknown`` raise :class:`~bridge.sources.Skipped`. Legacy bodies have no fingerprint, so the
  identity is built from the rule's ids (see :func:`legacy_fingerprint`), the same for the
  firing and the ok request.

"Test" notifications of both formats get ``kind`` ``test``.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from bridge.models import Alert, AlertKind
from bridge.sources import InvalidPayload, Skipped, describe_validation_error
from bridge.sources.alertmanager import fingerprint as labels_fingerprint

SOURCE = "grafana"

#: Reasons :func:`parse` gives in :class:`Skipped` (legacy states that are not forwarded).
SKIP_REASONS = ("paused", "pending", "unknown")

#: Link roles kept in ``Alert.links``, by the unified alerting field that carries them.
_LINK_FIELDS = {"silence": "silenceURL", "dashboard": "dashboardURL", "panel": "panelURL"}
_LEGACY_KEYS = ("ruleName", "ruleId", "evalMatches")
_LEGACY_TEST_MESSAGE = "someone is testing the alert notification within grafana"


class _Model(BaseModel):
    # Unknown fields are tolerated: Grafana adds fields over time (ruleUID, enrichments,
    # appVersion) and an old bridge must not reject a newer Grafana.
    model_config = ConfigDict(extra="ignore", strict=False)


class _UnifiedAlert(_Model):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] | None = None
    startsAt: datetime | None = None
    endsAt: datetime | None = None
    generatorURL: str | None = None
    fingerprint: str | None = None
    silenceURL: str | None = None
    dashboardURL: str | None = None
    panelURL: str | None = None
    imageURL: str | None = None
    # Missing in Grafana 9.0-era bodies, null for test and no-data alerts; a null value
    # for one refID is tolerated too (NaN cannot be sent as JSON).
    values: dict[str, float | None] | None = None
    valueString: str | None = None
    orgId: int | None = None
    ruleUID: str | None = None


class _Unified(_Model):
    version: Literal["1"]
    alerts: list[_UnifiedAlert]
    status: Literal["firing", "resolved"] | None = None
    groupKey: str = ""
    orgId: int | None = None


class _EvalMatch(_Model):
    value: float | None = None
    metric: str = ""
    tags: dict[str, str] | None = None


class _Legacy(_Model):
    ruleName: str
    state: Literal["alerting", "no_data", "ok", "paused", "pending", "unknown"]
    ruleId: int | None = None
    orgId: int | None = None
    dashboardId: int | None = None
    panelId: int | None = None
    title: str = ""
    message: str = ""
    # Grafana 4.x sent rule_url / image_url.
    ruleUrl: str = Field(default="", validation_alias=AliasChoices("ruleUrl", "rule_url"))
    imageUrl: str = Field(default="", validation_alias=AliasChoices("imageUrl", "image_url"))
    evalMatches: list[_EvalMatch] | None = None
    tags: dict[str, str] | None = None


def parse(body: Any) -> list[Alert]:
    """Validate a decoded Grafana webhook body and return its alerts in payload order.

    Raises :class:`~bridge.sources.InvalidPayload` naming the offending field, and
    :class:`~bridge.sources.Skipped` (reason in :data:`SKIP_REASONS`) for a legacy state
    that is not forwarded.
    """
    if not isinstance(body, dict):
        raise InvalidPayload(f"body must be a JSON object, got {type(body).__name__}")
    if "version" in body:
        version = body["version"]
        if version == "1":
            return _parse_unified(body)
        hint = " (this looks like an Alertmanager webhook)" if version == "4" else ""
        raise InvalidPayload(f'version: expected "1" (Grafana unified alerting webhook), got {version!r}{hint}')
    if any(key in body for key in _LEGACY_KEYS):
        return [_parse_legacy(body)]
    if "alerts" in body:
        raise InvalidPayload('version: Field required (a Grafana unified alerting webhook has "version": "1")')
    raise InvalidPayload(
        'body is not a Grafana webhook: expected "version": "1" and alerts (unified alerting), '
        "or ruleName and state (legacy alerting)"
    )


def _validate(model: type[_Model], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise InvalidPayload(describe_validation_error(exc)) from None


def _real_time(value: datetime | None) -> datetime | None:
    """Go's zero time (year 1) means "not set"."""
    if value is None or value.year <= 1:
        return None
    return value


def is_test_group_key(fingerprint: str, group_key: str) -> bool:
    """Whether ``group_key`` is ``<anything without a newline>-<fingerprint>-<ASCII digits>``.

    Grafana's "Test" button sends groupKey "<integration>-<labels fingerprint>-<unix seconds>"
    (grafana/alerting notify/test_receivers.go). This is string logic, linear in the input:
    the regex it replaces (``.*-<fingerprint>-\\d+``) backtracked quadratically on a hostile
    fingerprint of dashes.
    """
    head, dash, seconds = group_key.rpartition("-")
    if not dash or not seconds or not (seconds.isascii() and seconds.isdigit()):
        return False
    marker = "-" + fingerprint
    # The seconds hold no "-", so the last dash ends the fingerprint: head is "<prefix>-<fingerprint>".
    return head.endswith(marker) and "\n" not in head[: len(head) - len(marker)]


def _is_unified_test(item: _UnifiedAlert, fingerprint: str, group_key: str) -> bool:
    # Real group keys end in "}". Grafana 8 used a free-form key, so the default test labels
    # are recognised as well.
    if is_test_group_key(fingerprint, group_key):
        return True
    return item.labels.get("alertname") == "TestAlert" and item.labels.get("instance") == "Grafana"


def _unified_kind(item: _UnifiedAlert, fingerprint: str, group_key: str) -> AlertKind:
    if _is_unified_test(item, fingerprint, group_key):
        return "test"
    name = item.labels.get("alertname", "")
    if name == "DatasourceNoData":
        return "nodata"
    if name == "DatasourceError":
        return "error"
    return "alerting"


def _parse_unified(body: dict[str, Any]) -> list[Alert]:
    webhook: _Unified = _validate(_Unified, body)
    alerts = []
    for item in webhook.alerts:
        given = item.fingerprint.strip() if item.fingerprint else ""
        fingerprint = given or labels_fingerprint(item.labels)
        kind = _unified_kind(item, fingerprint, webhook.groupKey)
        rule_name = item.labels.get("alertname", "")
        if kind in ("nodata", "error"):
            rule_name = item.labels.get("rulename") or rule_name
        links = {role: url for role, name in _LINK_FIELDS.items() if (url := (getattr(item, name) or "").strip())}
        values = {ref: value for ref, value in (item.values or {}).items() if value is not None}
        image = (item.imageURL or "").strip()
        alerts.append(
            Alert(
                source=SOURCE,
                status=item.status,
                labels=item.labels,
                annotations=item.annotations or {},
                fingerprint=fingerprint,
                starts_at=_real_time(item.startsAt),
                ends_at=_real_time(item.endsAt),
                generator_url=item.generatorURL or "",
                kind=kind,
                rule_name=rule_name,
                links=links,
                images=(image,) if image else (),
                values=values,
                value_string=item.valueString or "",
            )
        )
    return alerts


def legacy_fingerprint(org_id: int | None, rule_id: int | None, dashboard_id: int | None, panel_id: int | None) -> str:
    """The identity of a legacy Grafana alert rule: ``legacy-<org>-<rule>-<dashboard>-<panel>``.

    A legacy rule lives on one dashboard panel and keeps its id while it does, so the
    firing, no-data and ok requests of a rule share this key. The ids are all Grafana
    sends that identify the rule (the name can be edited); the dashboard and panel ids
    keep keys apart when ``ruleId`` is 0, as in test notifications. Missing ids count as 0.
    """
    parts = (org_id, rule_id, dashboard_id, panel_id)
    return "legacy-" + "-".join(str(part or 0) for part in parts)


def _format_match(match: _EvalMatch) -> str:
    # Same shape as unified alerting's valueString, so one description rule fits both.
    tags = ", ".join(f"{key}={value}" for key, value in sorted((match.tags or {}).items()))
    value = "null" if match.value is None else f"{match.value:g}"
    return f"[ metric='{match.metric}' labels={{{tags}}} value={value} ]"


def _parse_legacy(body: dict[str, Any]) -> Alert:
    rule: _Legacy = _validate(_Legacy, body)
    if rule.state in SKIP_REASONS:
        raise Skipped(rule.state, f"legacy Grafana rule {rule.ruleName!r} is {rule.state}; not forwarded")
    kind: AlertKind = "nodata" if rule.state == "no_data" else "alerting"
    if rule.message.strip().lower().startswith(_LEGACY_TEST_MESSAGE):
        kind = "test"
    fingerprint = legacy_fingerprint(rule.orgId, rule.ruleId, rule.dashboardId, rule.panelId)
    if rule.ruleId is None:
        # Bodies without a rule id (none seen so far) still need a stable, distinct key.
        fingerprint += "-" + hashlib.sha256(rule.ruleName.encode(errors="surrogatepass")).hexdigest()[:16]
    matches = rule.evalMatches or []
    values: dict[str, float] = {}
    for match in matches:
        if match.value is not None:
            values.setdefault(match.metric, match.value)  # the first series of a metric name wins
    # The rule's tags are its labels; "alertname" names the rule, as in unified alerting.
    labels = {**(rule.tags or {}), "alertname": rule.ruleName}
    annotations = {"message": rule.message} if rule.message else {}
    image = rule.imageUrl.strip()
    return Alert(
        source=SOURCE,
        status="resolved" if rule.state == "ok" else "firing",
        labels=labels,
        annotations=annotations,
        fingerprint=fingerprint,
        generator_url=rule.ruleUrl,
        kind=kind,
        rule_name=rule.ruleName,
        images=(image,) if image else (),
        values=values,
        value_string=", ".join(_format_match(match) for match in matches),
    )
