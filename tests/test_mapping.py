"""Alert → Flashduty event: status, key, title, description, labels and their limits."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from bridge import contract, limits, mapping
from bridge.config import AlertmanagerConfig
from bridge.mapping import Mapper
from bridge.models import Alert
from bridge.notes import Notes
from bridge.sources import alertmanager
from tests.conftest import payload


def make(config: AlertmanagerConfig | None = None) -> tuple[Mapper, Notes]:
    return Mapper(config or AlertmanagerConfig()), Notes()


def firing(labels: dict[str, str], annotations: dict[str, str] | None = None, **kw: object) -> Alert:
    return Alert(
        source="alertmanager",
        status=kw.pop("status", "firing"),  # type: ignore[arg-type]
        labels=labels,
        annotations=annotations or {},
        fingerprint=alertmanager.fingerprint(labels),
        starts_at=datetime(2026, 11, 26, 10, 0, tzinfo=UTC),
        ends_at=kw.pop("ends_at", None),  # type: ignore[arg-type]
        generator_url=str(kw.pop("generator_url", "")),
    )


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"severity": "critical"}, "Critical"),
        ({"severity": "CRITICAL "}, "Critical"),
        ({"severity": "warn"}, "Warning"),
        ({"severity": "Info"}, "Info"),
        ({"severity": "acknowledged"}, "Info"),
        ({"severity": "unk"}, "Info"),
        ({"priority": "critical"}, "Critical"),
        ({"level": "info"}, "Info"),
        ({"severity": "warning", "priority": "critical"}, "Warning"),  # the first label decides
        ({"severity": "P1", "priority": "critical"}, "Warning"),  # first present label, unrecognised
        ({}, "Warning"),
        ({"severity": "ok"}, "Warning"),  # a firing alert never becomes Ok
        ({"severity": "resolved"}, "Warning"),
    ],
)
def test_firing_status_follows_flashdutys_severity_table(labels: dict[str, str], expected: str) -> None:
    """Firing alerts map by the first of severity/priority/level, case-insensitively, else Warning."""
    mapper, _ = make()
    assert mapper.status(firing({"alertname": "A", **labels})) == expected


def test_resolved_is_ok_whatever_its_severity() -> None:
    """A resolved alert is Ok even when its severity label says critical."""
    mapper, _ = make()
    assert mapper.status(firing({"severity": "critical"}, status="resolved")) == "Ok"


def test_severity_table_and_default_are_configurable() -> None:
    """A custom table maps P1 to Critical and unknown values to the configured default."""
    mapper, _ = make(AlertmanagerConfig(severity_map={"P1": "Critical"}, default_severity="Info"))
    assert mapper.status(firing({"severity": "p1"})) == "Critical"
    assert mapper.status(firing({"severity": "critical"})) == "Info"  # the table replaces the default table


def test_alert_key_is_the_fingerprint_namespaced_and_equal_for_firing_and_resolved() -> None:
    """Firing and resolved alerts with the same labels share one key, prefixed by the source."""
    mapper, notes = make()
    labels = {"alertname": "X", "instance": "a"}
    key = mapper.alert_key(firing(labels), notes)
    assert key == f"alertmanager:{alertmanager.fingerprint(labels)}"
    assert mapper.alert_key(firing(labels, status="resolved"), notes) == key


def test_overlong_fingerprint_is_hashed_not_cut_so_keys_stay_distinct() -> None:
    """Two 300-character fingerprints that differ at the end give two different keys ≤ 255."""
    mapper, notes = make()
    base = firing({"alertname": "X"})
    one = Alert(**{**{f: getattr(base, f) for f in base.__slots__}, "fingerprint": "f" * 299 + "1"})  # type: ignore[arg-type]
    two = Alert(**{**{f: getattr(base, f) for f in base.__slots__}, "fingerprint": "f" * 299 + "2"})  # type: ignore[arg-type]
    key_one, key_two = mapper.alert_key(one, notes), mapper.alert_key(two, notes)
    assert key_one != key_two
    assert len(key_one) <= contract.ALERT_KEY_MAX and len(key_two) <= contract.ALERT_KEY_MAX
    assert notes.truncations["alert_key"] == 2


@pytest.mark.parametrize(
    ("labels", "annotations", "title"),
    [
        ({"alertname": "HighCPU"}, {"summary": "CPU > 90%"}, "HighCPU: CPU > 90%"),
        ({}, {"summary": "only a summary"}, "only a summary"),
        ({"alertname": "Down", "instance": "web-1"}, {}, "Down on web-1"),
        ({"alertname": "Down", "job": "api"}, {}, "Down on api"),
        ({"alertname": "Down"}, {}, "Down"),
        ({"alertname": "Multi"}, {"summary": "line one\n  line\ttwo  "}, "Multi: line one line two"),
    ],
)
def test_title_is_a_literal_one_line_title(labels: dict[str, str], annotations: dict[str, str], title: str) -> None:
    """Titles come from alertname and summary, fall back to the target, and are one line."""
    mapper, notes = make()
    assert mapper.title(firing(labels, annotations), notes) == title


def test_title_without_any_name_uses_the_fingerprint() -> None:
    """An alert with no alertname and no summary still gets a non-empty, identifying title."""
    mapper, notes = make()
    alert = firing({"foo": "bar"})
    assert mapper.title(alert, notes) == f"Alert {alert.fingerprint}"


@pytest.mark.parametrize("summary", ["[TPL]${secret}", "[tpl] {{.Labels.x}}"])
def test_tpl_prefix_is_neutralised_unless_allowed(summary: str) -> None:
    """A title that would start with [TPL] is made literal; allow_tpl_titles passes it through."""
    mapper, notes = make()
    title = mapper.title(firing({}, {"summary": summary}), notes)
    assert not title.upper().startswith("[TPL]")
    assert title.startswith("(TPL)")
    allowed, _ = make(AlertmanagerConfig(allow_tpl_titles=True))
    assert allowed.title(firing({}, {"summary": summary}), Notes()) == summary


def test_title_is_cut_to_512_code_points_and_counted() -> None:
    """A 600-character CJK summary is cut to 512 characters (not bytes) with an ellipsis."""
    mapper, notes = make()
    title = mapper.title(firing({}, {"summary": "告" * 600}), notes)
    assert len(title) == contract.TITLE_MAX
    assert title.endswith("…")
    assert len(title.encode()) > contract.TITLE_MAX  # bytes would have cut far earlier
    assert notes.truncations["title_rule"] == 1


def test_description_prefers_description_then_message_then_summary() -> None:
    """The description annotation wins; message and summary are fallbacks."""
    mapper, notes = make()
    assert mapper.description(firing({}, {"summary": "s", "message": "m", "description": "d"}), notes) == "d"
    assert mapper.description(firing({}, {"summary": "s", "message": "m"}), notes) == "m"
    assert mapper.description(firing({}, {"summary": "s"}), notes) == "s"
    assert mapper.description(firing({}), notes) == ""


def test_description_keeps_runbook_and_source_links_when_the_text_is_cut() -> None:
    """A 5,000-character description is cut so the runbook and source links still fit in 2,048."""
    mapper, notes = make()
    alert = firing({}, {"description": "🔥" * 5000, "runbook_url": "https://rb/1"}, generator_url="http://prom/g")
    text = mapper.description(alert, notes)
    assert len(text) == contract.DESCRIPTION_MAX
    assert text.endswith("…\n\nRunbook: https://rb/1\nSource: http://prom/g")
    assert notes.truncations["description"] == 1


def test_labels_include_annotations_after_the_alert_labels() -> None:
    """Labels are the alert's labels, identity first, then annotations (summary first)."""
    mapper, notes = make()
    out = mapper.labels(firing({"zone": "a", "job": "node", "alertname": "X"}, {"zzz": "1", "summary": "s"}), notes)
    assert list(out) == ["alertname", "job", "zone", "summary", "zzz"]


def test_fifty_label_cap_keeps_identity_labels_and_counts_the_dropped() -> None:
    """With 70 labels the identity labels survive and 20 + annotations are dropped and counted."""
    mapper, notes = make()
    labels = {f"a{i:02d}": "v" for i in range(66)} | {"alertname": "X", "severity": "info", "instance": "i", "job": "j"}
    out = mapper.labels(firing(labels, {"summary": "s"}), notes)
    assert len(out) == contract.LABELS_MAX
    assert {"alertname", "severity", "instance", "job"} <= set(out)
    assert "summary" not in out  # annotations rank below every alert label
    assert notes.labels_dropped["limit"] == 71 - 50


def test_invalid_label_names_are_sanitised_and_collisions_get_a_stable_suffix() -> None:
    """service.name → service_name unless a real service_name exists; then a hashed suffix, never an overwrite."""
    mapper, notes = make()
    out = mapper.labels(
        firing({"service.name": "new", "service_name": "old", "1st": "x", "名前": "a", "名称": "b"}), notes
    )
    assert out["service_name"] == "old"
    assert out["_1st"] == "x"
    assert sorted(out.values()) == sorted(["new", "old", "x", "a", "b"])
    assert all(limits.LABEL_KEY.fullmatch(key) and len(key) <= contract.LABEL_KEY_MAX for key in out)
    again = make()[0].labels(
        firing({"service.name": "new", "service_name": "old", "1st": "x", "名前": "a", "名称": "b"}), Notes()
    )
    assert again == out  # deterministic
    assert notes.labels_renamed["collision"] == 2
    assert notes.labels_renamed["sanitised"] == 2


def test_a_label_name_with_a_trailing_newline_is_sanitised_not_passed_through() -> None:
    """A name like "team\\n" is not a Prometheus label name (a regex ending in "$" let it through)."""
    mapper, notes = make()
    out = mapper.labels(firing({"alertname": "X", "team\n": "db"}), notes)
    assert out == {"alertname": "X", "team_": "db"}
    assert notes.labels_renamed["sanitised"] == 1


def test_overlong_label_key_is_cut_to_128_and_value_to_2048() -> None:
    """A 200-character key and a 3,000-character value fit their limits and are counted."""
    mapper, notes = make()
    out = mapper.labels(firing({"k" * 200: "v" * 3000}), notes)
    ((key, value),) = out.items()
    assert len(key) == contract.LABEL_KEY_MAX
    assert len(value) == contract.LABEL_VALUE_MAX
    assert notes.truncations["label_key"] == 1
    assert notes.truncations["label_value"] == 1


def test_annotation_repeating_a_label_is_not_duplicated_but_a_different_one_is_kept() -> None:
    """An annotation equal to a same-named label adds nothing; a different value is kept under another key."""
    mapper, notes = make()
    assert mapper.labels(firing({"team": "db"}, {"team": "db"}), notes) == {"team": "db"}
    out = mapper.labels(firing({"team": "db"}, {"team": "storage"}), notes)
    assert out["team"] == "db"
    assert "storage" in out.values() and len(out) == 2


def test_empty_values_are_left_out() -> None:
    """An empty annotation carries no information and does not take one of the 50 slots."""
    mapper, notes = make()
    assert mapper.labels(firing({"a": "1"}, {"summary": ""}), notes) == {"a": "1"}


def test_event_time_is_starts_at_for_firing_and_ends_at_for_resolved() -> None:
    """event_time is Unix seconds of startsAt (firing) or endsAt (resolved), omitted when unknown."""
    mapper, notes = make()
    start = int(datetime(2026, 11, 26, 10, 0, tzinfo=UTC).timestamp())
    assert mapper.event(firing({"a": "1"}), notes).event_time == start
    end = datetime(2026, 11, 26, 10, 5, tzinfo=UTC)
    assert mapper.event(firing({"a": "1"}, status="resolved", ends_at=end), notes).event_time == int(end.timestamp())
    assert mapper.event(firing({"a": "1"}, status="resolved"), notes).event_time is None


def test_lone_surrogates_become_replacement_characters() -> None:
    """JSON may carry a lone \\ud83d; it must not reach the UTF-8 encoder."""
    mapper, notes = make()
    alert = Alert("alertmanager", "firing", {"alertname": "X\ud83d"}, {"summary": "bad \udc00 text"}, "abc")
    event = mapper.event(alert, notes)
    event.to_json().encode("utf-8")  # would raise on a surrogate
    assert "\ufffd" in event.title_rule


def test_fixture_events_are_complete() -> None:
    """Every alert of the real grouped payload maps to an event with all required fields."""
    mapper, notes = make()
    for alert in alertmanager.parse(payload("alertmanager-firing-grouped.json")):
        body = mapper.event(alert, notes).to_body()
        assert body["event_status"] == "Critical"
        assert body["title_rule"].startswith("NodeDiskUsageHigh: 节点磁盘使用率过高")
        assert body["alert_key"] == f"alertmanager:{alert.fingerprint}"
        assert body["labels"]["alertgroup"] == "HostDiskAlerts"


def test_one_line_is_whitespace_collapsing_for_every_code_point() -> None:
    """Titles collapse whitespace runs exactly as the regex \\s+ → " " plus strip() did."""
    whitespace = re.compile(r"\s+")
    for code in range(0x110000):
        text = f" a{chr(code)}{chr(code)}b {chr(code)}"
        assert mapping._one_line(text) == whitespace.sub(" ", text).strip(), hex(code)


# -- the per-name-set plan cache -----------------------------------------------------------


def test_a_remembered_name_set_maps_like_a_fresh_mapper_whatever_the_values() -> None:
    """Alerts sharing label names, with blank, long, non-ASCII and over-cap values, map as a fresh Mapper maps them."""
    names = {"alertname": "A", "instance": "i", **{f"extra_{n:02d}": str(n) for n in range(55)}}
    variants = [
        names,
        {**names, "instance": ""},
        {**names, "instance": "x" * (contract.LABEL_VALUE_MAX + 5)},
        {**names, "instance": "caf\u00e9 \u2713"},
    ]
    warm, warm_notes = make()
    for labels in variants * 2:
        alert = firing(labels, {"summary": "s", "bad name": "b"})
        cold, cold_notes = make()
        before = warm_notes.to_json()
        assert warm.labels(alert, warm_notes) == cold.labels(alert, cold_notes)
        after = warm_notes.to_json()
        for kind in ("labels_dropped", "labels_renamed", "truncations"):
            for reason, n in cold_notes.to_json().get(kind, {}).items():
                assert after.get(kind, {}).get(reason, 0) - before.get(kind, {}).get(reason, 0) == n


def test_the_plan_cache_stays_bounded_when_every_alert_invents_label_names() -> None:
    """A sender with new label names in every alert cannot grow a Mapper's memory."""
    mapper, notes = make()
    for n in range(mapping._PLANS_MAX * 2 + 10):
        mapper.labels(firing({"alertname": "A", f"label_{n}": "v"}), notes)
        assert len(mapper._plans) <= mapping._PLANS_MAX
