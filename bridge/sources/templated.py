"""Senders mapped by user templates, and template overrides for the built-in senders.

A :class:`TemplateSource` turns any JSON webhook into alerts: templates render the
title, description, status, key and labels from ``payload`` (the body), ``headers``
and ``query``; with an ``alerts`` expression they run once per list item (``alert``).
Payload text is only ever data (see :mod:`bridge.templating`).

A template that fails at runtime never loses the alert: the field falls back (a
generic title, the raw payload excerpt as description, Warning as status, a key
from the labels), the event carries ``template_error=<fields>`` and the failure is
reported to ``on_error`` (the request's notes: counted and logged by the receive path,
shown by ``render``). Only a body that is not what the ``alerts`` expression needs is
rejected. Nothing here logs or counts by itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from jinja2.runtime import Undefined

from bridge import contract, templating
from bridge.config import SourceMapping, TemplateSourceConfig
from bridge.contract import EVENT_STATUSES
from bridge.models import Alert, EventStatus
from bridge.sources import InvalidPayload
from bridge.sources.alertmanager import fingerprint

#: How much of the raw payload a fallback description shows.
EXCERPT_CHARS = 1500

#: Called with (field, message) for every template that failed to render.
OnError = Callable[[str, str], None]

#: Output limits per event field. The text fields are cut at these many characters (Flashduty
#: keeps far fewer: the mapper folds whitespace, truncates to its limit and counts that), so a
#: large payload quoted in a description costs no more than this and is never an error.
#: ``alert_key`` and ``event_status`` must be whole: more than the template limits' ``max_output``
#: is a template error there (a long key is hashed by the mapper, a status is a short word).
CUT_AT = {
    "title": 8 * contract.TITLE_MAX,
    "description": 8 * contract.DESCRIPTION_MAX,
    "labels": 8 * contract.LABEL_VALUE_MAX,
}


def _excerpt(payload: Any) -> str:
    try:
        text = json.dumps(payload, ensure_ascii=False, sort_keys=True, default=str)
    except RecursionError:  # deeper than the stack allows here, though the decoder took it
        return "(the payload is nested too deeply to show)"
    except TypeError:  # keys of mixed types (an item the alerts expression built) do not sort
        text = json.dumps(payload, ensure_ascii=False, default=str)
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


class _Renderer:
    """Renders fields for one alert, remembering which failed."""

    def __init__(self, context: Mapping[str, Any], on_error: OnError) -> None:
        self.context, self.on_error = context, on_error
        self.failed: list[str] = []

    def __call__(self, field: str, template: templating.Template | None, fallback: str) -> str:
        if template is None:
            return fallback
        try:
            return templating.render_text(template, self.context, cut_at=CUT_AT.get(field.partition(".")[0]))
        except templating.TemplateError as exc:
            self.failed.append(field)
            self.on_error(field, str(exc))
            return fallback


class TemplateSource:
    """One ``sources.<name>`` entry; its templates were compiled when the config was validated."""

    def __init__(self, name: str, config: TemplateSourceConfig) -> None:
        self.name = name
        self.config = config
        self.alerts = config.alerts.template if config.alerts else None
        self.expression = config.alerts.text if config.alerts else ""
        self.title = config.title
        self.description = config.description
        self.event_status = config.event_status
        self.alert_key = config.alert_key
        self.labels = config.labels

    def _items(self, body: Any, headers: Mapping[str, str], query: Mapping[str, str]) -> list[Any]:
        if self.alerts is None:
            return [None]
        context = templating.template_context(body, headers=headers, query=query)
        try:
            items = self.alerts.evaluate(context)
        except templating.TemplateError as exc:
            raise InvalidPayload(f"alerts: the expression {self.expression!r} failed on this body: {exc}") from None
        if not isinstance(items, list | tuple):
            kind = "nothing" if isinstance(items, Undefined) or items is None else type(items).__name__
            hint = " (add | list)" if hasattr(items, "__next__") else ""
            raise InvalidPayload(f"alerts: the expression {self.expression!r} gave {kind}, not a list{hint}")
        # A missing item (``[payload.absent]``) is null, as it always was in JSON.
        return [None if isinstance(item, Undefined) else item for item in items]

    def _status(self, rendered: str) -> EventStatus | None:
        value = rendered.strip()
        mapped = self.config.status_map.get(value)
        if mapped is None:
            lowered = {key.lower(): status for key, status in self.config.status_map.items()}
            mapped = lowered.get(value.lower())
        status = mapped or value
        return status if status in EVENT_STATUSES else None  # type: ignore[return-value]

    def parse(self, body: Any, headers: Mapping[str, str], query: Mapping[str, str], on_error: OnError) -> list[Alert]:
        alerts = []
        for item in self._items(body, headers, query):
            context = (
                templating.template_context(body, headers=headers, query=query, alert=item)
                if (self.alerts is not None)
                else templating.template_context(body, headers=headers, query=query)
            )
            render = _Renderer(context, on_error)
            labels = {key: render(f"labels.{key}", template, "") for key, template in self.labels.items()}
            labels = {key: value for key, value in labels.items() if value}
            status_text = render("event_status", self.event_status, "")
            status = self._status(status_text)
            if status is None:
                if "event_status" not in render.failed:
                    render.failed.append("event_status")
                    on_error("event_status", f"rendered {status_text[:100]!r}, not a status or a status_map key")
                status = "Warning"
            key = render("alert_key", self.alert_key, "").strip()
            alert_key = f"{self.name}:{key or fingerprint(labels)}"
            title = render("title", self.title, "")
            description = render("description", self.description, "")
            if render.failed:
                description = f"{description}\n\nRaw payload: {_excerpt(item if item is not None else body)}".strip()
            alerts.append(
                Alert(
                    source=self.name,
                    status="resolved" if status == "Ok" else "firing",
                    labels=labels,
                    annotations={},
                    fingerprint=alert_key,
                    title=title.strip() or f"{self.name} alert",
                    description=description,
                    event_status=status,
                    alert_key=alert_key,
                    template_errors=tuple(render.failed),
                )
            )
        return alerts


def alert_view(alert: Alert) -> dict[str, Any]:
    """What a per-source override template sees as ``alert``: the sender's fields, as sent."""
    return {
        "status": alert.status,
        "labels": alert.labels,
        "annotations": alert.annotations,
        "startsAt": alert.starts_at.isoformat() if alert.starts_at else "",
        "endsAt": alert.ends_at.isoformat() if alert.ends_at else "",
        "generatorURL": alert.generator_url,
        "fingerprint": alert.fingerprint,
        "kind": alert.kind,
        "rulename": alert.rule_name,
        "links": alert.links,
        "values": alert.values,
        "valueString": alert.value_string,
    }


class Overrides:
    """``title`` / ``description`` templates that replace a built-in sender's own."""

    def __init__(self, source: str, config: SourceMapping) -> None:
        self.source = source
        self.title = config.title
        self.description = config.description

    def apply(
        self, alerts: list[Alert], body: Any, headers: Mapping[str, str], query: Mapping[str, str], on_error: OnError
    ) -> list[Alert]:
        if self.title is None and self.description is None:
            return alerts
        out = []
        for alert in alerts:
            context = templating.template_context(body, headers=headers, query=query, alert=alert_view(alert))
            render = _Renderer(context, on_error)
            title = render("title", self.title, "") if self.title else None
            description = render("description", self.description, "") if self.description else None
            out.append(
                replace(
                    alert,
                    title=title or None,  # a failed or empty override falls back to the built-in title
                    description=description if description is not None and "description" not in render.failed else None,
                    template_errors=tuple(render.failed),
                )
            )
        return out
