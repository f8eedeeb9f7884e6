"""Map an :class:`~bridge.models.Alert` to a contract-clean Flashduty :class:`~bridge.models.Event`.

Every Flashduty limit is enforced here, before anything is stored, and every
truncation, rewritten label key and dropped label is recorded in the request's
:class:`~bridge.notes.Notes` (mapping touches no metric; the receive path counts notes):

* ``event_status``: resolved → ``Ok``; firing → the first of the severity labels,
  looked up case-insensitively in the severity table, else the default (Warning).
  A firing alert never becomes ``Ok``.
* ``alert_key``: ``<prefix>:<fingerprint>``, identical for firing and resolved.
* ``title_rule``: a literal title (alertname and summary), one line, ≤ 512 chars,
  never starting with ``[TPL]`` unless configured.
* ``description``: description / message / summary plus runbook and source links,
  ≤ 2048 chars; the links are kept when the text is shortened.
* ``labels``: the alert's labels, then its annotations; keys made to match
  Prometheus naming without silent clashes; at most 50, identity labels first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from bridge import contract, limits
from bridge.config import LabelRules, SourceMapping
from bridge.models import Alert, Event, EventStatus
from bridge.notes import Notes
from bridge.patterns import Pattern

if TYPE_CHECKING:
    from bridge.routing import Target

#: Annotations worth keeping first when the 50-label cap bites, in this order.
_PREFERRED_ANNOTATIONS = ("summary", "description", "message", "runbook_url")
_DESCRIPTION_ANNOTATIONS = ("description", "message", "summary")
_TPL = "[TPL]"
#: Links are short; cap their share of the description so the text always has room.
_LINKS_MAX = 1024
#: Sender kinds whose status comes from the source config rather than the severity table.
_KIND_STATUS = {"nodata": "nodata_status", "error": "error_status", "test": "test_status"}
#: Label-name sets whose order and validity a Mapper remembers; beyond it the memory is cleared
#: (a sender inventing new names per alert costs what it cost before the cache, never memory).
_PLANS_MAX = 2048

#: The order of a label-name set whose names are all valid Flashduty keys and distinct: each entry
#: is (from the labels, not the annotations; the name), at most LABELS_MAX of them; and how many
#: names the cap drops.
_Plan = tuple[tuple[tuple[bool, str], ...], int]


def _one_line(text: str) -> str:
    """Runs of whitespace become one space, none at the ends (str.split's whitespace is regex \\s)."""
    return " ".join(text.split())


def _suffixed(key: str, original: str, attempt: int) -> str:
    digest = hashlib.sha256(f"{original}\x00{attempt}".encode(errors="surrogatepass")).hexdigest()[:8]
    return f"{key[: contract.LABEL_KEY_MAX - 9]}_{digest}"


def _matches_any(patterns: Sequence[Pattern], name: str) -> bool:
    return any(pattern.fullmatch(name) for pattern in patterns)


def _changes_names(rules: Sequence[LabelRules]) -> bool:
    """Whether any rule renames, enriches, adds, drops or keeps (else apply_rules changes nothing)."""
    return any(rule.rename or rule.enrich or rule.add or rule.drop or rule.keep for rule in rules)


def apply_rules(
    labels: Mapping[str, str], annotations: Mapping[str, str], rules: Sequence[LabelRules]
) -> tuple[dict[str, str], dict[str, str], int]:
    """Apply label hygiene (rename, enrich, add, drop, keep) to labels and annotations alike.

    Returns the labels, the annotations and how many names drop/keep removed.
    """
    own, notes = dict(labels), dict(annotations)
    removed = 0
    for rule in rules:
        for old, new in rule.rename.items():
            for names in (own, notes):
                if old in names:
                    names[new] = names.pop(old)
        for target, candidates in rule.enrich.items():
            if target not in own:
                found = next((own.get(c) or notes.get(c) for c in candidates if own.get(c) or notes.get(c)), None)
                if found:
                    own[target] = found
        own.update(rule.add)
        for names in (own, notes):
            for name in list(names):
                if (rule.drop and _matches_any(rule.drop, name)) or (rule.keep and not _matches_any(rule.keep, name)):
                    del names[name]
                    removed += 1
    return own, notes, removed


class Mapper:
    """Turns alerts of one source into events; one instance per source config."""

    def __init__(self, config: SourceMapping) -> None:
        self.config = config
        # Most alerts of a sender share their label names: their order and validity are computed
        # once per (priority, label names, annotation names) and reused while every value is set.
        self._plans: dict[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]], _Plan | None] = {}
        # id(rules) -> (those rules, whether they change names, their priority names); the rules are
        # kept so an id reused by another tuple is told apart.
        self._rules: dict[int, tuple[Sequence[LabelRules], bool, tuple[str, ...]]] = {}

    def event(self, alert: Alert, notes: Notes, target: Target | None = None) -> Event:
        """The event for ``alert``, with the label rules and severity table of the route that chose it."""
        when = alert.ends_at if alert.status == "resolved" else alert.starts_at
        return Event(
            alert_key=self.alert_key(alert, notes),
            event_status=self.status(alert, target.severity_map if target else None),
            title_rule=self.title(alert, notes),
            description=self.description(alert, notes),
            labels=self.labels(alert, notes, target.labels if target else ()),
            event_time=int(when.timestamp()) if when else None,
            images=self.images(alert, notes),
        )

    def status(self, alert: Alert, severity_map: dict[str, str] | None = None) -> EventStatus:
        if alert.event_status is not None:
            return alert.event_status
        if alert.status == "resolved":
            return "Ok"
        kind_status = _KIND_STATUS.get(alert.kind)
        if kind_status is not None and hasattr(self.config, kind_status):
            return getattr(self.config, kind_status)  # type: ignore[no-any-return]  # validated in config
        # A route's table overrides entries of the source's table; the rest still applies.
        table = self.config.severity_map if severity_map is None else {**self.config.severity_map, **severity_map}
        for name in self.config.severity_labels:
            if name in alert.labels:
                found = table.get(alert.labels[name].strip().lower())
                if found in ("Critical", "Warning", "Info"):
                    return found  # type: ignore[return-value]  # validated in config
                break  # the first severity label decides, as in Flashduty's integration
        return self.config.default_severity  # type: ignore[return-value]  # validated in config

    def alert_key(self, alert: Alert, notes: Notes) -> str:
        if alert.alert_key is not None:
            key = limits.clean_text(alert.alert_key)
            if len(key) <= contract.ALERT_KEY_MAX:
                return key
            notes.truncations["alert_key"] += 1
            return "sha256:" + hashlib.sha256(key.encode(errors="surrogatepass")).hexdigest()
        key = f"{self.config.key_prefix}:{limits.clean_text(alert.fingerprint)}"
        if len(key) > contract.ALERT_KEY_MAX:
            # Hash rather than cut, so two long fingerprints never share a key.
            notes.truncations["alert_key"] += 1
            digest = hashlib.sha256(alert.fingerprint.encode(errors="surrogatepass")).hexdigest()
            key = f"{self.config.key_prefix}:sha256:{digest}"
        return key

    @staticmethod
    def _limit(field: str, text: str, limit: int, notes: Notes) -> str:
        out, cut = limits.truncate(text, limit)
        if cut:
            notes.truncations[field] += 1
        return out

    def title(self, alert: Alert, notes: Notes) -> str:
        labels, annotations = alert.labels, alert.annotations
        name = _one_line(labels.get("alertname", ""))
        summary = _one_line(annotations.get("summary", ""))
        target = labels.get("instance") or labels.get("job") or ""
        rule = _one_line(alert.rule_name or labels.get("rulename", "")) or name
        if alert.title is not None:
            title = _one_line(alert.title) or f"Alert {alert.fingerprint}"
        elif alert.kind == "nodata":
            title = f"{rule}: no data" + (f" ({summary})" if summary else "")
        elif alert.kind == "error":
            title = f"{rule}: evaluation failed" + (f" ({summary})" if summary else "")
        elif name and summary:
            title = f"{name}: {summary}"
        elif summary:
            title = summary
        elif name:
            title = f"{name} on {_one_line(target)}" if target else name
        else:
            title = f"Alert {alert.fingerprint}"
        if alert.is_test:
            title = f"Test notification: {title}"
        title = limits.clean_text(title)
        if not self.config.allow_tpl_titles and title.upper().startswith(_TPL):
            # "[TPL]" turns on Flashduty-side templating of the title; alert text must stay literal.
            title = "(TPL)" + title[len(_TPL) :]
        return self._limit("title_rule", title, contract.TITLE_MAX, notes)

    def description(self, alert: Alert, notes: Notes) -> str:
        text = ""
        for name in _DESCRIPTION_ANNOTATIONS:  # the first that is not blank
            value = alert.annotations.get(name)
            if value and (value := value.strip()):
                text = value
                break
        if alert.description is not None:
            text = alert.description.strip()
        elif alert.kind == "error" and alert.annotations.get("Error"):
            text = f"{text}\n\nError: {alert.annotations['Error']}".strip()
        if alert.value_string and alert.description is None:
            text = f"{text}\n\nValues: {alert.value_string}".strip()
        links = []
        if alert.annotations.get("runbook_url", "").strip():
            links.append(f"Runbook: {alert.annotations['runbook_url'].strip()}")
        for role, url in alert.links.items():
            links.append(f"{role.capitalize()}: {url}")
        if alert.generator_url:
            links.append(f"Source: {alert.generator_url}")
        link_block, links_cut = limits.truncate(limits.clean_text("\n".join(links)), _LINKS_MAX)
        text = limits.clean_text(text)
        separator = "\n\n" if text and link_block else ""
        room = contract.DESCRIPTION_MAX - len(link_block) - len(separator)
        text, text_cut = limits.truncate(text, room)
        if links_cut or text_cut:
            notes.truncations["description"] += 1
        return f"{text}{separator}{link_block}"

    def images(self, alert: Alert, notes: Notes) -> tuple[dict[str, str], ...]:
        """Screenshots as Flashduty images: a src over 256 characters would be dropped by Flashduty, so it is here."""
        images = []
        for index, url in enumerate(alert.images):
            if len(url) > contract.IMAGE_SRC_MAX:
                notes.truncations["images"] += 1
                continue
            alt, _ = limits.truncate(
                f"{alert.rule_name or alert.labels.get('alertname', 'alert')} #{index + 1}", contract.IMAGE_ALT_MAX
            )
            images.append({"alt": alt, "src": url, "href": url})
        return tuple(images)

    def labels(self, alert: Alert, notes: Notes, rules: Sequence[LabelRules] = ()) -> dict[str, str]:
        own: Mapping[str, str] = alert.labels
        if alert.links or alert.is_test or alert.template_errors:
            extra = {f"{role}_url": url for role, url in alert.links.items()}
            if alert.is_test:
                extra["test_notification"] = "true"
            extra.update({"template_error": ",".join(alert.template_errors)} if alert.template_errors else {})
            own = {**own, **extra}
        annotations: Mapping[str, str] = alert.annotations
        # A route's rules are one tuple for all its alerts: what they change is worked out once.
        known = self._rules.get(id(rules))
        if known is None or known[0] is not rules:
            if len(self._rules) >= _PLANS_MAX:
                self._rules.clear()
            known = self._rules[id(rules)] = (
                rules,
                _changes_names(rules),
                tuple(name for rule in rules for name in rule.priority),
            )
        _, changes_names, priority = known
        if changes_names:
            own, annotations, removed = apply_rules(own, annotations, rules)
            if removed:
                notes.labels_dropped["rule"] += removed
        # From here on own and annotations are only read (they may be the alert's own dicts).
        if "" not in own.values() and "" not in annotations.values():  # a blank value is left out: no plan
            plan_key = (priority, tuple(own), tuple(annotations))
            if plan_key in self._plans:
                plan = self._plans[plan_key]
            else:
                if len(self._plans) >= _PLANS_MAX:
                    self._plans.clear()
                plan = self._plans[plan_key] = self._plan(own, annotations, priority)
            if plan is not None:
                return self._labels_by_plan(plan, own, annotations, notes)
        return self._labels(own, annotations, priority, notes)

    def _labels_by_plan(
        self, plan: _Plan, own: Mapping[str, str], annotations: Mapping[str, str], notes: Notes
    ) -> dict[str, str]:
        """What :meth:`_labels` gives for a name set it found all valid and distinct, every value set."""
        out: dict[str, str] = {}
        slots, dropped = plan
        for from_own, name in slots:
            value = own[name] if from_own else annotations[name]
            if not value.isascii():  # clean_text's own test, without a call per value
                value = limits.clean_text(value)
            out[name] = (
                self._limit("label_value", value, contract.LABEL_VALUE_MAX, notes)
                if len(value) > contract.LABEL_VALUE_MAX
                else value
            )
        if dropped:
            notes.labels_dropped["limit"] += dropped
        return out

    def _order(
        self, own: Mapping[str, str], annotations: Mapping[str, str], priority: tuple[str, ...]
    ) -> tuple[list[str], list[str], list[str], list[str]]:
        """Label names (identity first, then the rest sorted) and annotation names (preferred first)."""
        order = (*priority, *self.config.identity_labels) if priority else self.config.identity_labels
        first = list(dict.fromkeys([name for name in order if name in own]))
        rest = sorted(set(own).difference(first))
        preferred = [name for name in priority if name in annotations and name not in own]
        preferred += [name for name in _PREFERRED_ANNOTATIONS if name in annotations and name not in preferred]
        others = sorted(set(annotations) - set(preferred))
        return first, rest, preferred, others

    def _plan(self, own: Mapping[str, str], annotations: Mapping[str, str], priority: tuple[str, ...]) -> _Plan | None:
        """The plan of a name set whose values are all set, or None when some name needs rewriting."""
        first, rest, preferred, others = self._order(own, annotations, priority)
        slots = [(True, name) for name in first + rest] + [(False, name) for name in preferred + others]
        names = [name for _, name in slots]
        if len(set(names)) < len(names):  # a name in both: the slow path decides
            return None
        if not all(len(name) <= contract.LABEL_KEY_MAX and limits.is_label_key(name) for name in names):
            return None
        kept = tuple(slots[: contract.LABELS_MAX])
        return kept, len(slots) - len(kept)

    def _labels(
        self, own: Mapping[str, str], annotations: Mapping[str, str], priority: tuple[str, ...], notes: Notes
    ) -> dict[str, str]:
        first, rest, preferred, others = self._order(own, annotations, priority)
        candidates = [(name, value) for name in first + rest if (value := own[name]) != ""]
        candidates += [(name, value) for name in preferred + others if (value := annotations[name]) != ""]
        identity = first

        # Keys that are already valid claim their names before any rewritten key does,
        # so a real "service_name" label always keeps its name over "service.name".
        keys: list[str | None] = []
        taken: set[str] = set()
        for name, _value in candidates:
            if len(name) <= contract.LABEL_KEY_MAX and name not in taken and limits.is_label_key(name):
                keys.append(name)
                taken.add(name)
            else:
                keys.append(None)
        # Rewrite the rest (none left when every name was valid and distinct, the usual case).
        if len(taken) < len(candidates):
            for index, (name, value) in enumerate(candidates):
                if keys[index] is not None:
                    continue
                if name in own and name in annotations and own[name] == value and index >= len(identity) + len(rest):
                    continue  # an annotation repeating a label with the same value adds nothing
                key = limits.sanitise_label_key(name)
                reason = "sanitised" if key != name else "collision"
                if len(name) > contract.LABEL_KEY_MAX and limits.LABEL_KEY.fullmatch(name):
                    notes.truncations["label_key"] += 1
                attempt = 0
                while key in taken:
                    reason = "collision"
                    key = _suffixed(limits.sanitise_label_key(name), name, attempt)
                    attempt += 1
                notes.labels_renamed[reason] += 1
                keys[index] = key
                taken.add(key)

        out: dict[str, str] = {}
        dropped = 0
        for slot, (_, value) in zip(keys, candidates, strict=True):
            if slot is None:
                continue
            if len(out) >= contract.LABELS_MAX:
                dropped += 1
                continue
            value = limits.clean_text(value)
            out[slot] = (
                self._limit("label_value", value, contract.LABEL_VALUE_MAX, notes)
                if len(value) > contract.LABEL_VALUE_MAX
                else value
            )
        if dropped:
            notes.labels_dropped["limit"] += dropped
        return out
