"""Which metrics and labels a PromQL expression uses, and which ones the bridge exports.

``exported_metrics()`` builds the catalogue from the real code: it instantiates
``bridge.metrics.Metrics`` on a fresh registry and expands each family into the
series names Prometheus sees (counters ``_total``/``_created``, histograms
``_bucket``/``_sum``/``_count``/``_created``, info ``_info``), with the label names of
each. Nothing is listed by hand.

``selectors()`` is a small lexer, not a full parser: enough for the expressions we
ship. Anything it cannot classify is reported as a metric name, so an unexpected
construct fails the check instead of slipping through. Syntax itself is checked by
promtool.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

#: Labels Prometheus attaches at scrape time (plain scrape configs and the
#: Prometheus Operator's ServiceMonitor), valid on every bridge series.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "container", "endpoint"})

#: Series Prometheus itself creates for every target; the only non-bridge names allowed.
PROMETHEUS_SERIES = {"up": frozenset()}

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "gauge": ("",),
}

_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
    | {"inf", "nan", "Inf", "NaN"}
)


def exported_metrics() -> dict[str, frozenset[str]]:
    """Every series name the bridge exports, with the label names it carries."""
    from bridge.metrics import Metrics

    metrics = Metrics(CollectorRegistry())
    metrics.init_destination("flashduty")
    names: dict[str, frozenset[str]] = {}
    for collector in vars(metrics).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        labels = frozenset(getattr(collector, "_labelnames", ()))
        for family in collector.collect():
            if family.type == "info":
                # the family is "<name>" and the info's keys become labels of <name>_info
                labels = labels | {key for sample in family.samples for key in sample.labels}
            for suffix in _SUFFIXES[family.type]:
                name = family.name + suffix
                names[name] = labels | ({"le"} if suffix == "_bucket" else frozenset())
    return names


@dataclass(frozen=True)
class Selector:
    metric: str | None
    labels: frozenset[str]


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-zA-Z_$]+")
_VARIABLE = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")
_IDENT = re.compile(r"(?<![A-Za-z0-9_:.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_NUMBER_EXPONENT = re.compile(r"\b\d+(?:\.\d*)?[eE][+-]?\d+\b")


def selectors(expr: str) -> tuple[list[Selector], set[str]]:
    """The metric selectors in ``expr`` and the label names used in by/without/on/ignoring."""
    text = _STRING.sub('""', expr)
    found: list[Selector] = []

    def matcher_block(match: re.Match[str]) -> str:
        labels = frozenset(_MATCHER_LABEL.findall(match.group(2)))
        found.append(Selector(match.group(1), labels))
        return " __SEL__ "

    text = _MATCHERS.sub(matcher_block, text)
    grouping: set[str] = set()

    def group_block(match: re.Match[str]) -> str:
        grouping.update(label.strip() for label in match.group(2).split(",") if label.strip())
        return " "

    text = _GROUPING.sub(group_block, text)
    text = _RANGE.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    text = _NUMBER_EXPONENT.sub(" ", text)
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name in _KEYWORDS or name == "__SEL__":
            continue  # a function or aggregation, an operator keyword
        found.append(Selector(name, frozenset()))
    return found, grouping


def problems(expr: str, exported: dict[str, frozenset[str]]) -> list[str]:
    """Why ``expr`` references something the bridge does not export (empty when it does not)."""
    known = {**exported, **PROMETHEUS_SERIES}
    every_label = set(TARGET_LABELS).union(*known.values())
    found, grouping = selectors(expr)
    result = []
    for selector in found:
        if selector.metric is None:
            result.append(f"selector without a metric name: {{{', '.join(sorted(selector.labels))}}}")
            continue
        if selector.metric not in known:
            result.append(f"{selector.metric} is not exported by the bridge")
            continue
        unknown = selector.labels - known[selector.metric] - TARGET_LABELS
        if unknown:
            result.append(f"{selector.metric} has no label {', '.join(sorted(unknown))}")
    unknown_grouping = grouping - every_label
    if unknown_grouping:
        result.append(f"grouping by labels no metric has: {', '.join(sorted(unknown_grouping))}")
    return result
