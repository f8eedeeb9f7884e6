"""What a configuration reload swaps: destinations, routes, mapping.

:func:`build` turns a validated :class:`~bridge.config.Config` into a
:class:`Runtime`. It reads key files, so a missing or empty Secret is a
:class:`~bridge.config.ConfigError` at ``check-config``, at start and at reload,
never a surprise at delivery time. A request handler takes the current runtime
once, at its start, and finishes on it even if a reload happens meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.auth import AuthConfig
from bridge.config import DEFAULT_DESTINATION, Config, ConfigError, RateLimitConfig, SourceMapping
from bridge.destinations import Destination
from bridge.destinations.flashduty import DryRunDestination, FlashdutyDestination, Transports
from bridge.mapping import Mapper
from bridge.metrics import Metrics
from bridge.models import Alert, Event
from bridge.outbox import NewEvent
from bridge.routing import Router, Skip
from bridge.sources import alertmanager, decode_json, grafana, standard
from bridge.sources.templated import Overrides, TemplateSource

#: Parse a decoded body (with the request's headers and query) into alerts.
Parser = Callable[[Any, Mapping[str, str], Mapping[str, str]], list[Alert]]


@dataclass(frozen=True)
class Source:
    """One sender: how to authenticate, parse and map its requests."""

    name: str
    parse: Parser
    auth: AuthConfig
    mapper: Mapper
    #: Raw body and headers -> decoded body; raises InvalidPayload (or Rejection for the standard API).
    decode: Callable[[bytes, Mapping[str, str]], Any] = lambda raw, headers: decode_json(raw)


@dataclass(frozen=True)
class Prepared:
    """What one request becomes: events per destination, and alerts sent nowhere (with why)."""

    events: list[tuple[NewEvent, Event]] = field(default_factory=list)
    skipped: list[tuple[Alert, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """For render: each event with its destination, and what went nowhere and why."""
        return {
            "events": [{"destination": new.destination, "event": event.to_body()} for new, event in self.events],
            "unrouted": [{"labels": alert.labels, "reason": reason} for alert, reason in self.skipped],
        }


@dataclass(frozen=True)
class Runtime:
    config: Config
    router: Router
    sources: dict[str, Source]
    destinations: dict[str, Destination]
    rate_limits: dict[str, RateLimitConfig]

    def prepare(self, source: Source, alerts: list[Alert], passthrough: str | None = None) -> Prepared:
        """Route and map ``alerts``: nothing is stored or sent (``render`` uses this as it is)."""
        prepared = Prepared()
        for alert in alerts:
            try:
                targets = self.router.route(alert, passthrough)
            except Skip as skip:
                prepared.skipped.append((alert, skip.reason))
                continue
            for target in targets:
                event = source.mapper.event(alert, target)
                stored = NewEvent(
                    target.destination,
                    event.alert_key,
                    source.name,
                    event.event_status,
                    event.to_json(),
                    event.digest(),
                )
                prepared.events.append((stored, event))
        return prepared


def integration_keys(config: Config) -> dict[str, str]:
    """Every configured destination's key, reading key files now; raises ConfigError listing all problems."""
    keys: dict[str, str] = {}
    problems: list[str] = []
    files = {name: d.integration_key_file for name, d in config.destinations.items() if d.integration_key_file}
    if config.flashduty.integration_key_file is not None:
        files[DEFAULT_DESTINATION] = config.flashduty.integration_key_file
    elif not config.flashduty.dry_run:
        keys[DEFAULT_DESTINATION] = config.flashduty.integration_key.get_secret_value()
    for name, path in files.items():
        where = "flashduty" if name == DEFAULT_DESTINATION else f"destinations.{name}"
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            problems.append(f"{where}.integration_key_file: cannot read {path}: {reason}")
            continue
        if not key:
            problems.append(f"{where}.integration_key_file: {path} is empty")
            continue
        keys[name] = key
    for name, destination in config.destinations.items():
        if destination.integration_key_file is None:
            keys[name] = destination.integration_key.get_secret_value()
    if problems:
        if config.unset_variables:
            unset = ", ".join(config.unset_variables)
            problems.append(f"environment variables not set (each expanded to an empty string): {unset}")
        raise ConfigError("destinations", problems)
    return keys


def build(config: Config, metrics: Metrics, http: Transports) -> Runtime:
    """Destinations, router and mapper for ``config`` (raises ConfigError for unreadable keys)."""
    keys = integration_keys(config)
    destinations: dict[str, Destination] = {}
    rate_limits: dict[str, RateLimitConfig] = {}
    if config.dry_run:
        destinations[DEFAULT_DESTINATION] = DryRunDestination(DEFAULT_DESTINATION)
    for name, key in keys.items():
        settings = config.destinations.get(name)
        url = (settings.url if settings else None) or config.flashduty.url
        destinations[name] = FlashdutyDestination(name, url, key, http, config.flashduty.timeout)
        rate_limits[name] = (settings.rate_limit if settings else None) or config.flashduty.rate_limit
    return Runtime(config, Router(config), sources(config, metrics), destinations, rate_limits)


def sources(config: Config, metrics: Metrics) -> dict[str, Source]:
    """Every sender this config accepts, by name (the path segment and metric label)."""

    def count_error(source: str, field: str) -> None:
        metrics.template_errors.labels(source, field).inc()

    def builtin(name: str, mapping: SourceMapping, parse: Callable[[Any], list[Alert]]) -> Source:
        overrides = Overrides(name, mapping, count_error)

        def parse_and_override(body: Any, headers: Mapping[str, str], query: Mapping[str, str]) -> list[Alert]:
            return overrides.apply(parse(body), body, headers, query)

        return Source(name, parse_and_override, mapping.auth, Mapper(mapping, metrics))

    found = {
        alertmanager.SOURCE: builtin(alertmanager.SOURCE, config.alertmanager, alertmanager.parse),
        grafana.SOURCE: builtin(grafana.SOURCE, config.grafana, grafana.parse),
        standard.SOURCE: Source(
            standard.SOURCE,
            lambda body, headers, query: [standard.parse(body)],
            config.standard_auth,
            Mapper(SourceMapping(key_prefix=standard.SOURCE, allow_tpl_titles=True), metrics),
            # Decoded as Flashduty decodes it, so the bridge answers with Flashduty's own errors.
            standard.decode,
        ),
    }
    for name, settings in config.sources.items():
        template = TemplateSource(name, settings, count_error)
        mapping = SourceMapping(key_prefix=name, allow_tpl_titles=settings.allow_tpl_titles)
        found[name] = Source(name, template.parse, settings.auth, Mapper(mapping, metrics))
    return found


def passthrough(config: Config, name: str, key: str, http: Transports) -> FlashdutyDestination:
    """A destination for a key that arrived in a sender's URL."""
    return FlashdutyDestination(name, config.flashduty.url, key, http, config.flashduty.timeout)


def secrets(keys: dict[str, str]) -> list[str]:
    """Values the log filter must scrub."""
    return [key for key in keys.values() if key]
