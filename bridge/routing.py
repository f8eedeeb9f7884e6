"""Routing: which destinations an alert goes to, and with which per-route overrides.

Routes are tried in order on the alert's labels (Alertmanager matcher syntax) and
source. The first match decides, unless it says ``continue``, in which case the
following routes are tried too (fan-out). A ``drop`` route stops the alert. No
match: the default destination when there is one, else the alert is dropped.
Every outcome that sends nothing is a :class:`Skip` with a reason from a closed
set, so the handler counts it.

A sender may name the integration key in its URL (``?integration_key=K``), as with
Flashduty's own push URLs; then routes are bypassed and the alert goes to K.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from bridge.config import DEFAULT_DESTINATION, Config, LabelRules, RouteConfig
from bridge.matchers import matches_all
from bridge.models import Alert

#: Closed set of reasons an alert is sent nowhere (a metric label).
SKIP_REASONS = ("dropped_by_route", "no_route")
PASSTHROUGH_PREFIX = "key-"


class Skip(Exception):
    """The alert goes nowhere; ``reason`` is one of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Target:
    """One destination for an alert, with the overrides of the route that chose it."""

    destination: str
    labels: tuple[LabelRules, ...] = ()
    severity_map: dict[str, str] | None = None
    route: int | None = None  # index in config.routes; None for default / passthrough


def passthrough_destination(integration_key: str) -> str:
    """The destination name for a key given in the URL: a hash, so the key never shows up."""
    return PASSTHROUGH_PREFIX + hashlib.sha256(integration_key.encode()).hexdigest()[:16]


class Router:
    """Compiled routes of one config (replaced as a whole on reload)."""

    def __init__(self, config: Config) -> None:
        self.routes: tuple[RouteConfig, ...] = config.routes
        self.global_labels = config.labels
        has_default = not config.flashduty.dry_run or config.dry_run
        self.default = DEFAULT_DESTINATION if has_default else None
        # Targets are immutable and the same for every alert a route (or the default) takes:
        # built once per config, not once per alert.
        self._route_targets = tuple(
            self._target(route.destination, route, index) if route.destination is not None else None
            for index, route in enumerate(self.routes)
        )
        self._default_targets = [self._target(self.default)] if self.default is not None else None

    def _target(self, destination: str, route: RouteConfig | None = None, index: int | None = None) -> Target:
        rules = (self.global_labels, route.labels) if route is not None else (self.global_labels,)
        return Target(destination, rules, route.severity_map if route else None, index)

    def route(self, alert: Alert, passthrough: str | None = None) -> list[Target]:
        """Destinations for ``alert``, in route order, each once; raises :class:`Skip` for none."""
        if passthrough is not None:
            return [self._target(passthrough)]
        targets: list[Target] = []
        for index, route in enumerate(self.routes):
            if route.sources and alert.source not in route.sources:
                continue
            if not matches_all(route.matchers, alert.labels):
                continue
            if route.drop:
                if targets:
                    break  # earlier routes with continue already chose destinations
                raise Skip("dropped_by_route", f"dropped by routes[{index}]")
            target = self._route_targets[index]
            assert target is not None  # validated: a route has a destination or drops
            if all(chosen.destination != target.destination for chosen in targets):
                targets.append(target)
            if not route.continue_:
                break
        if targets:
            return targets
        if self._default_targets is None:
            raise Skip("no_route", "no route matched and there is no default destination")
        return list(self._default_targets)
