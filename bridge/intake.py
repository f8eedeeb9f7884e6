"""Intake: every sender's request takes one pipeline, authenticate → decode → parse → route → map → store.

The request handlers (:mod:`bridge.receive`) read the body and authenticate it on the event
loop, then hand plain data to :func:`prepare`, which runs **decode → parse → route → map**:

* it is a pure function of ``(Intake, Received)``: the config snapshot the request started on,
  and the source name, raw body, headers, query and passthrough destination. It reads no
  clock, touches no metric, logs nothing and keeps no state between calls;
* it never raises for anything a sender can send: the answer is data, one of
  :class:`Prepared` (events to store), :class:`Refused` (a 4xx that can never succeed) or
  :class:`NotForwarded` (a valid body deliberately not sent);
* what happened on the way is in :class:`Notes` (truncations, dropped and renamed labels,
  template errors, unrouted alerts), which the receive path alone turns into metrics and
  logs, in one place, and ``render`` shows.

Everything it takes and returns pickles, so it runs in a worker process under a CPU and
memory budget (:mod:`bridge.workers`) wherever its cost is not bounded by a small body;
:func:`build` makes the snapshot from a :class:`~bridge.config.Config` alone.
``render`` (HTTP, CLI, ``test-templates``) runs this very function and skips the store.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.auth import AuthConfig
from bridge.config import Config, SourceMapping
from bridge.contract import Rejection
from bridge.mapping import Mapper
from bridge.models import Alert
from bridge.notes import Notes
from bridge.outbox import NewEvent
from bridge.routing import Router, Skip
from bridge.sources import InvalidPayload, Skipped, alertmanager, decode_json, grafana, standard
from bridge.sources.templated import Overrides, TemplateSource

__all__ = [
    "Intake",
    "NotForwarded",
    "Notes",
    "Outcome",
    "Prepared",
    "Received",
    "Refused",
    "Source",
    "build",
    "prepare",
]


#: Parse a decoded body (with the request's headers and query) into alerts, noting template errors.
Parser = Callable[[Any, Mapping[str, str], Mapping[str, str], Notes], list[Alert]]
#: Raw body and headers -> decoded body; raises InvalidPayload (or Rejection for the standard API).
Decoder = Callable[[bytes, Mapping[str, str]], Any]


def _decode_json(raw: bytes, headers: Mapping[str, str]) -> Any:
    return decode_json(raw)


@dataclass(frozen=True)
class Source:
    """One sender: how to authenticate, decode, parse and map its requests."""

    name: str
    parse: Parser
    auth: AuthConfig
    mapper: Mapper
    decode: Decoder = _decode_json
    #: Runs user templates (a template source, or a built-in sender with title/description overrides):
    #: its cost is not bounded by the size of the body, so the receive path never runs it on the loop.
    templated: bool = False
    #: Raw body -> the alerts ``parse(decode(body))`` gives, faster, or None: then decode and parse run.
    fast: Callable[[bytes], list[Alert] | None] | None = None


@dataclass(frozen=True)
class Intake:
    """The part of a config the pipeline runs on: sources and routes. Built by :func:`build`."""

    config: Config
    router: Router
    sources: dict[str, Source]


@dataclass(frozen=True, slots=True)
class Received:
    """One request, as plain data: what :func:`prepare` needs and nothing of the connection.

    ``headers``: lower-case names, the first value of a repeated name. ``query``: the first
    value of each parameter. ``passthrough``: the destination of a ``?integration_key=`` (a
    hash of the key, see :func:`bridge.routing.passthrough_destination`), or None.
    """

    source: str
    body: bytes
    headers: dict[str, str]
    query: dict[str, str]
    passthrough: str | None = None


@dataclass(frozen=True, slots=True)
class Prepared:
    """The events a request becomes, in order, and what the answer will say."""

    source: str
    events: list[NewEvent]
    #: Alerts the body held (each becomes zero or more events).
    alerts: int
    #: Labels of the alerts sent nowhere, and why (for ``render``).
    unrouted: list[tuple[dict[str, str], str]]
    notes: Notes
    #: The standard API answers with the alert's key (given or generated), as Flashduty does.
    reply_key: str | None = None

    def alert_keys(self) -> list[str]:
        return list(dict.fromkeys(event.alert_key for event in self.events))

    def answer(self, stored: list[bool] | None = None) -> dict[str, Any]:
        """The ``data`` of the 200; ``stored`` says which events the outbox kept (False: suppressed)."""
        if self.reply_key is not None:
            return {"alert_key": self.reply_key}
        suppressed = 0 if stored is None else stored.count(False)
        return {
            "accepted": self.alerts,
            "events": len(self.events) - suppressed,
            "suppressed": suppressed,
            "unrouted": len(self.unrouted),
            "alert_keys": self.alert_keys(),
        }

    def to_json(self) -> dict[str, Any]:
        """For ``render``: each event with its destination, what went nowhere and why, and the notes."""
        return {
            "events": [{"destination": new.destination, "event": json.loads(new.body)} for new in self.events],
            "unrouted": [{"labels": labels, "reason": reason} for labels, reason in self.unrouted],
            "notes": self.notes.to_json(),
        }


@dataclass(frozen=True, slots=True)
class Refused:
    """A body that can never be accepted: answer ``status`` with ``code`` and ``message``."""

    status: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class NotForwarded:
    """A valid body the bridge deliberately does not forward; ``reason`` is a closed-set metric label."""

    reason: str
    detail: str = ""


Outcome = Prepared | Refused | NotForwarded


def prepare(snapshot: Intake, received: Received) -> Outcome:
    """Decode, parse, route and map one request. Pure: see the module docstring."""
    source = snapshot.sources.get(received.source)
    if source is None:
        return Refused(404, "RouteNotFound", f"no source {received.source!r} in the config")
    notes = Notes()
    fast = source.fast(received.body) if source.fast is not None else None
    try:
        if fast is not None:
            alerts = fast
        else:
            body = source.decode(received.body, received.headers)
            alerts = source.parse(body, received.headers, received.query, notes)
    except InvalidPayload as exc:
        return Refused(400, "InvalidParameter", str(exc))
    except Rejection as exc:
        return Refused(exc.status, exc.code, exc.message)
    except Skipped as skip:
        return NotForwarded(skip.reason, skip.detail)
    events: list[NewEvent] = []
    unrouted: list[tuple[dict[str, str], str]] = []
    for alert in alerts:
        try:
            targets = snapshot.router.route(alert, received.passthrough)
        except Skip as skip:
            notes.unrouted[skip.reason] += 1
            unrouted.append((alert.labels, skip.reason))
            continue
        for target in targets:
            event = source.mapper.event(alert, notes, target)
            events.append(
                NewEvent(
                    target.destination,
                    event.alert_key,
                    source.name,
                    event.event_status,
                    event.to_json(),
                    event.digest(),
                )
            )
    reply_key = alerts[0].alert_key if source.name == standard.SOURCE and alerts else None
    return Prepared(source.name, events, len(alerts), unrouted, notes, reply_key)


def authenticate(snapshot: Intake, received: Received) -> None:
    """Raise :class:`~bridge.auth.Unauthorized` unless the request carries the source's credentials.

    Runs on the event loop, before :func:`prepare`, on the raw body (HMAC signs it).
    """
    source = snapshot.sources.get(received.source)
    if source is not None:
        source.auth.verify(received.headers, received.body)


def build(config: Config) -> Intake:
    """The pipeline's snapshot of ``config``: every source, with its mapper, and the router."""
    return Intake(config, Router(config), sources(config))


def sources(config: Config) -> dict[str, Source]:
    """Every sender this config accepts, by name (the path segment and metric label)."""

    def builtin(
        name: str,
        mapping: SourceMapping,
        parse: Callable[[Any], list[Alert]],
        fast: Callable[[bytes], list[Alert] | None] | None = None,
    ) -> Source:
        overrides = Overrides(name, mapping)

        def parse_and_override(
            body: Any, headers: Mapping[str, str], query: Mapping[str, str], notes: Notes
        ) -> list[Alert]:
            return overrides.apply(parse(body), body, headers, query, notes.template_error)

        templated = mapping.title is not None or mapping.description is not None
        # Templates see the decoded body: a templated source always decodes it.
        return Source(
            name,
            parse_and_override,
            mapping.auth,
            Mapper(mapping),
            templated=templated,
            fast=None if templated else fast,
        )

    def parse_standard(body: Any, headers: Mapping[str, str], query: Mapping[str, str], notes: Notes) -> list[Alert]:
        return [standard.parse(body)]

    found = {
        alertmanager.SOURCE: builtin(
            alertmanager.SOURCE, config.alertmanager, alertmanager.parse, alertmanager.parse_raw
        ),
        grafana.SOURCE: builtin(grafana.SOURCE, config.grafana, grafana.parse),
        # Decoded as Flashduty decodes it, so the bridge answers with Flashduty's own errors.
        standard.SOURCE: Source(
            standard.SOURCE,
            parse_standard,
            config.standard_auth,
            Mapper(SourceMapping(key_prefix=standard.SOURCE, allow_tpl_titles=True)),
            standard.decode,
        ),
    }
    for name, settings in config.sources.items():
        template = TemplateSource(name, settings)

        def parse_template(
            body: Any,
            headers: Mapping[str, str],
            query: Mapping[str, str],
            notes: Notes,
            template: TemplateSource = template,
        ) -> list[Alert]:
            return template.parse(body, headers, query, notes.template_error)

        mapping = SourceMapping(key_prefix=name, allow_tpl_titles=settings.allow_tpl_titles)
        found[name] = Source(name, parse_template, settings.auth, Mapper(mapping), templated=True)
    return found
