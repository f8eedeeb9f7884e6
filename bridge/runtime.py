"""What a configuration reload swaps: destinations, and the intake pipeline's sources and routes.

:func:`build` turns a validated :class:`~bridge.config.Config` into a
:class:`Runtime`. It reads key files, so a missing or empty Secret is a
:class:`~bridge.config.ConfigError` at ``check-config``, at start and at reload,
never a surprise at delivery time. A request handler takes the current runtime
once, at its start, and finishes on it even if a reload happens meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge import intake
from bridge.config import DEFAULT_DESTINATION, Config, ConfigError, RateLimitConfig
from bridge.destinations import Destination
from bridge.destinations.flashduty import DryRunDestination, FlashdutyDestination, Transports
from bridge.intake import Intake, Source
from bridge.routing import Router


@dataclass(frozen=True)
class Runtime:
    """A config in force: the intake pipeline's snapshot, destinations and their rate limits."""

    config: Config
    intake: Intake
    destinations: dict[str, Destination]
    rate_limits: dict[str, RateLimitConfig]

    @property
    def sources(self) -> dict[str, Source]:
        return self.intake.sources

    @property
    def router(self) -> Router:
        return self.intake.router


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


def build(config: Config, http: Transports) -> Runtime:
    """Destinations, router and sources for ``config`` (raises ConfigError for unreadable keys)."""
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
    return Runtime(config, intake.build(config), destinations, rate_limits)


def passthrough(config: Config, name: str, key: str, http: Transports) -> FlashdutyDestination:
    """A destination for a key that arrived in a sender's URL."""
    return FlashdutyDestination(name, config.flashduty.url, key, http, config.flashduty.timeout)


def secrets(keys: dict[str, str]) -> list[str]:
    """Values the log filter must scrub."""
    return [key for key in keys.values() if key]
