"""What happened to a request's alerts on their way to events: data, not metrics.

Mapping and templates record here; the receive path turns a request's notes into metrics
and one log line, in one place (:mod:`bridge.receive`); ``render`` shows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class Counts(dict[str, int]):
    """Counts by name, 0 for a name not counted yet (``counts[name] += 1`` just works).

    What :class:`collections.Counter` does for this use, at a dict's cost to make: every request
    makes five, and Counter's Python ``__init__`` was about half a microsecond each.
    """

    __slots__ = ()

    def __missing__(self, key: str) -> int:
        return 0


@dataclass(slots=True)
class Notes:
    """What happened to a request's alerts on their way to events; counts by a closed set of names."""

    #: Field (``title_rule``, ``description``, ``alert_key``, ``label_key``, ``label_value``, ``images``).
    truncations: Counts = field(default_factory=Counts)
    #: Reason (``limit``: over the 50-label cap; ``rule``: a drop/keep rule).
    labels_dropped: Counts = field(default_factory=Counts)
    #: Reason (``sanitised``, ``collision``).
    labels_renamed: Counts = field(default_factory=Counts)
    #: Template field → failures (the event went out with a fallback).
    template_errors: Counts = field(default_factory=Counts)
    #: Routing reason (``dropped_by_route``, ``no_route``) → alerts sent nowhere.
    unrouted: Counts = field(default_factory=Counts)
    #: The first template failure's message, for the one log line the receive path writes.
    first_template_error: str = ""

    def template_error(self, field_name: str, message: str) -> None:
        self.template_errors[field_name] += 1
        if not self.first_template_error:
            self.first_template_error = f"{field_name}: {message}"

    def to_json(self) -> dict[str, Any]:
        """Only what happened (empty counts are left out), for ``render``."""
        parts = {
            "truncations": self.truncations,
            "labels_dropped": self.labels_dropped,
            "labels_renamed": self.labels_renamed,
            "template_errors": self.template_errors,
            "unrouted": self.unrouted,
        }
        return {name: dict(counts) for name, counts in parts.items() if counts}
