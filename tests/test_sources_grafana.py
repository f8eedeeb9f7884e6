"""Parsing Grafana webhooks: unified alerting (every captured fixture), legacy alerting, rejections."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from bridge.sources import InvalidPayload, Skipped
from bridge.sources.alertmanager import fingerprint as labels_fingerprint
from bridge.sources.grafana import SKIP_REASONS, legacy_fingerprint, parse
from tests.conftest import payload

UNIFIED_FIXTURES = [
    "grafana-firing.json",
    "grafana-resolved.json",
    "grafana-mixed.json",
    "grafana-nodata.json",
    "grafana-test-notification.json",
]


def legacy(**changes: Any) -> dict[str, Any]:
    """A real legacy rule body (Zulip's no_data_alert_v7 fixture) with ``changes`` applied."""
    body: dict[str, Any] = {
        "dashboardId": 2,
        "evalMatches": [],
        "message": "The panel has no data.",
        "orgId": 1,
        "panelId": 6,
        "ruleId": 3,
        "ruleName": "No Data alert",
        "ruleUrl": "http://localhost:3000/d/GG2qhR3Wz/alerttest?fullscreen&edit&tab=alert&panelId=6&orgId=1",
        "state": "alerting",
        "tags": {},
        "title": "[Alerting] No Data alert",
    }
    body.update(changes)
    return body


@pytest.mark.parametrize("name", UNIFIED_FIXTURES)
def test_every_unified_fixture_gives_one_alert_per_alert_as_sent(name: str) -> None:
    """Each captured alert becomes one Alert with its own status, labels, annotations and fingerprint."""
    body = payload(name)
    alerts = parse(body)
    assert len(alerts) == len(body["alerts"])
    for alert, sent in zip(alerts, body["alerts"], strict=True):
        assert alert.source == "grafana"
        assert alert.status == sent["status"]
        assert alert.labels == sent["labels"]
        assert alert.annotations == sent["annotations"]
        assert alert.fingerprint == sent["fingerprint"]
        assert alert.generator_url == sent["generatorURL"]
        assert alert.value_string == sent["valueString"]
        assert alert.links == {
            role: sent[field]
            for role, field in (("silence", "silenceURL"), ("dashboard", "dashboardURL"), ("panel", "panelURL"))
            if sent[field]
        }


def test_mixed_group_takes_each_alerts_own_status_not_the_top_level_one() -> None:
    """A body whose top-level status is firing still yields its resolved alerts as resolved."""
    body = payload("grafana-mixed.json")
    assert body["status"] == "firing"
    statuses = [a.status for a in parse(body)]
    assert statuses == [a["status"] for a in body["alerts"]] == ["resolved", "resolved", "firing"]


def test_firing_alert_keeps_values_links_and_start_time() -> None:
    """values, the three Grafana links and startsAt survive; the zero endsAt means not set."""
    body = payload("grafana-firing.json")
    (alert,) = parse(body)
    sent = body["alerts"][0]
    assert alert.kind == "alerting"
    assert alert.rule_name == sent["labels"]["alertname"]
    assert alert.values == {ref: float(value) for ref, value in sent["values"].items()}
    assert set(alert.links) == {"silence", "dashboard", "panel"}
    assert alert.starts_at == datetime(2025, 9, 16, 17, 19, 40, tzinfo=UTC)
    assert alert.ends_at is None
    assert not alert.is_test


def test_resolved_alert_without_values_key_parses_with_its_end_time() -> None:
    """Grafana 9.0 omits values entirely; the alert still parses and keeps its real endsAt."""
    body = payload("grafana-resolved.json")
    assert "values" not in body["alerts"][0]
    (alert,) = parse(body)
    assert alert.status == "resolved"
    assert alert.values == {}
    assert alert.ends_at == datetime(2022, 6, 17, 0, 51, 24, 67337, tzinfo=UTC)


def test_nodata_alert_keeps_its_alertname_and_exposes_the_rule_name() -> None:
    """DatasourceNoData keeps alertname (Grafana's identity) and reports kind nodata and the real rule."""
    body = payload("grafana-nodata.json")
    (alert,) = parse(body)
    assert alert.labels["alertname"] == "DatasourceNoData"
    assert alert.kind == "nodata"
    assert alert.rule_name == body["alerts"][0]["labels"]["rulename"]
    assert alert.values == {}  # values: null


def test_datasource_error_alert_is_kind_error_with_the_rule_name() -> None:
    """DatasourceError alerts (query failures) are told apart from no-data ones."""
    body = copy.deepcopy(payload("grafana-nodata.json"))
    body["alerts"][0]["labels"]["alertname"] = "DatasourceError"
    body["alerts"][0]["annotations"]["Error"] = "failed to execute query A: timeout"
    (alert,) = parse(body)
    assert alert.kind == "error"
    assert alert.rule_name == "viable/strict is broken"


def test_nodata_alert_without_rulename_falls_back_to_its_alertname() -> None:
    """A rule_name is always set, even when Grafana left out the rulename label."""
    body = copy.deepcopy(payload("grafana-nodata.json"))
    del body["alerts"][0]["labels"]["rulename"]
    (alert,) = parse(body)
    assert alert.rule_name == "DatasourceNoData"


def test_test_notification_is_recognised_and_its_fingerprint_matches_the_labels() -> None:
    """The Test button's alert is kind test; it has no hidden labels, so its fingerprint verifies."""
    (alert,) = parse(payload("grafana-test-notification.json"))
    assert alert.is_test
    assert alert.kind == "test"
    assert labels_fingerprint(alert.labels) == alert.fingerprint


def test_custom_test_notification_is_recognised_by_its_group_key() -> None:
    """A test with custom labels is still a test: its groupKey is <name>-<fingerprint>-<unix>."""
    body = copy.deepcopy(payload("grafana-test-notification.json"))
    labels = {"alertname": "MyCustomTest", "severity": "critical"}
    fp = labels_fingerprint(labels)
    body["alerts"][0].update(labels=labels, fingerprint=fp)
    body["groupKey"] = f"webhook-{fp}-1758042679"
    (alert,) = parse(body)
    assert alert.kind == "test"
    body["groupKey"] = '{}/{}:{alertname="MyCustomTest"}'
    assert parse(body)[0].kind == "alerting"


def test_grafana_8_test_notification_with_free_form_group_key_is_recognised() -> None:
    """Grafana 8 used a free-form groupKey; the default test labels still identify the test."""
    body = copy.deepcopy(payload("grafana-test-notification.json"))
    body["groupKey"] = '{alertname="TestAlert", instance="Grafana"}2022-08-31 05:54:04.52289368 +0000 UTC'
    assert parse(body)[0].kind == "test"


@pytest.mark.parametrize("missing", [None, "", "  "])
def test_missing_fingerprint_falls_back_to_the_label_fingerprint(missing: str | None) -> None:
    """Without Grafana's fingerprint the key is Alertmanager's fingerprint of the visible labels."""
    body = copy.deepcopy(payload("grafana-firing.json"))
    if missing is None:
        del body["alerts"][0]["fingerprint"]
    else:
        body["alerts"][0]["fingerprint"] = missing
    (alert,) = parse(body)
    assert alert.fingerprint == labels_fingerprint(body["alerts"][0]["labels"])
    assert alert.fingerprint != "3201e9e1f14b433c"  # Grafana's own hashes hidden labels too


def test_version_drift_is_tolerated() -> None:
    """Optional and newer fields (imageURL, ruleUID, enrichments, appVersion, nulls) do not break parsing."""
    body = copy.deepcopy(payload("grafana-firing.json"))
    sent = body["alerts"][0]
    sent.update(
        imageURL="https://grafana.example.com/public/img/attachments/abc.png",
        ruleUID="fex6jh8jaew3kc",
        enrichments={"items": [{"type": "logs"}]},
        annotations=None,
        dashboardURL=None,
        values={"A": None, "B": 2.5},
    )
    del sent["orgId"]
    del sent["silenceURL"]
    body["appVersion"] = "12.3.0"
    del body["orgId"]
    (alert,) = parse(body)
    assert alert.images == ("https://grafana.example.com/public/img/attachments/abc.png",)
    assert alert.annotations == {}
    assert alert.links == {"panel": sent["panelURL"]}
    assert alert.values == {"B": 2.5}


def test_legacy_fixture_is_a_firing_test_notification_with_its_image_and_matches() -> None:
    """The legacy test body fires, names the rule, keeps imageUrl, ruleUrl and both evalMatches."""
    body = payload("grafana-legacy.json")
    (alert,) = parse(body)
    assert alert.status == "firing"
    assert alert.kind == "test"
    assert alert.labels == {"alertname": body["ruleName"]}
    assert alert.rule_name == body["ruleName"]
    assert alert.annotations == {"message": body["message"]}
    assert alert.images == (body["imageUrl"],)
    assert alert.generator_url == body["ruleUrl"]
    assert alert.values == {"High value": 100.0, "Higher Value": 200.0}
    assert alert.value_string == (
        "[ metric='High value' labels={} value=100 ], [ metric='Higher Value' labels={} value=200 ]"
    )
    assert alert.starts_at is None


@pytest.mark.parametrize(
    ("state", "status", "kind"),
    [("alerting", "firing", "alerting"), ("no_data", "firing", "nodata"), ("ok", "resolved", "alerting")],
)
def test_legacy_states_map_to_status_and_kind(state: str, status: str, kind: str) -> None:
    """alerting fires, no_data fires as kind nodata, ok resolves."""
    (alert,) = parse(legacy(state=state))
    assert (alert.status, alert.kind) == (status, kind)


def test_legacy_ok_shares_the_key_of_the_alerting_request() -> None:
    """Firing and ok of one rule get one fingerprint, so Flashduty closes the alert it opened."""
    (firing,) = parse(legacy(state="alerting", evalMatches=[{"value": 9, "metric": "cpu", "tags": None}]))
    (ok,) = parse(legacy(state="ok", evalMatches=[], title="[OK] No Data alert"))
    (nodata,) = parse(legacy(state="no_data"))
    assert firing.fingerprint == ok.fingerprint == nodata.fingerprint == legacy_fingerprint(1, 3, 2, 6)


@pytest.mark.parametrize("changed", [{"ruleId": 4}, {"orgId": 2}, {"panelId": 7}, {"dashboardId": 9}])
def test_legacy_rules_with_other_ids_get_other_keys(changed: dict[str, int]) -> None:
    """Another rule, organisation, panel or dashboard is another alert."""
    assert parse(legacy(**changed))[0].fingerprint != parse(legacy())[0].fingerprint


def test_legacy_rename_keeps_the_key() -> None:
    """Renaming a rule does not orphan its open alert: the name is not part of the identity."""
    assert parse(legacy(ruleName="Renamed"))[0].fingerprint == parse(legacy())[0].fingerprint


def test_legacy_without_rule_id_gets_a_stable_key_per_rule_name() -> None:
    """A body without ruleId still gets a key, the same every time and distinct per rule name."""
    body = legacy()
    del body["ruleId"]
    first, again, other = parse(body)[0], parse(dict(body)), parse({**body, "ruleName": "Other"})
    assert first.fingerprint == again[0].fingerprint
    assert first.fingerprint != other[0].fingerprint
    assert first.fingerprint.startswith("legacy-1-0-2-6-")


@pytest.mark.parametrize("state", SKIP_REASONS)
def test_legacy_paused_pending_unknown_are_skipped_with_the_state_as_reason(state: str) -> None:
    """States that are not alerts are not forwarded, and say why in a metric-safe reason."""
    with pytest.raises(Skipped) as info:
        parse(legacy(state=state))
    assert info.value.reason == state
    assert "No Data alert" in info.value.detail


def test_legacy_tags_become_labels_without_replacing_the_rule_name() -> None:
    """Rule tags are labels; a tag named alertname cannot hide which rule fired."""
    (alert,) = parse(legacy(tags={"team": "db", "severity": "critical", "alertname": "spoof"}))
    assert alert.labels == {"team": "db", "severity": "critical", "alertname": "No Data alert"}


def test_legacy_eval_match_tags_and_null_values_are_rendered_like_grafana_value_strings() -> None:
    """Series tags and a missing value appear in value_string; only real numbers go to values."""
    matches = [
        {"value": 1.5, "metric": "load", "tags": {"host": "a", "dc": "x"}},
        {"value": None, "metric": "gone", "tags": None},
        {"value": 7, "metric": "load", "tags": {"host": "b"}},
    ]
    (alert,) = parse(legacy(evalMatches=matches))
    assert alert.value_string == (
        "[ metric='load' labels={dc=x, host=a} value=1.5 ], "
        "[ metric='gone' labels={} value=null ], [ metric='load' labels={host=b} value=7 ]"
    )
    assert alert.values == {"load": 1.5}


def test_legacy_grafana_4_field_names_are_accepted() -> None:
    """Grafana 4 sent rule_url and image_url."""
    body = legacy(rule_url="http://g/r", image_url="http://g/i.png")
    del body["ruleUrl"]
    (alert,) = parse(body)
    assert (alert.generator_url, alert.images) == ("http://g/r", ("http://g/i.png",))


def test_legacy_real_rule_is_not_a_test() -> None:
    """Only Grafana's own test message marks a legacy body as a test."""
    assert parse(legacy())[0].kind == "alerting"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "body must be a JSON object, got list"),
        ("text", "body must be a JSON object, got str"),
        ({}, "body is not a Grafana webhook"),
        ({"alerts": []}, 'version: Field required (a Grafana unified alerting webhook has "version": "1")'),
        ({"version": "4", "alerts": []}, "looks like an Alertmanager webhook"),
        ({"version": 1, "alerts": []}, 'version: expected "1" (Grafana unified alerting webhook), got 1'),
        ({"version": "1"}, "alerts: Field required"),
        ({"version": "1", "alerts": {}}, "alerts: Input should be a valid list"),
        ({"version": "1", "alerts": [{"labels": {}}]}, "alerts[0].status: Field required"),
        ({"version": "1", "alerts": [{"status": "pending", "labels": {}}]}, "alerts[0].status: Input should be"),
        ({"version": "1", "alerts": [{"status": "firing"}]}, "alerts[0].labels: Field required"),
        ({"version": "1", "alerts": [{"status": "firing", "labels": {"a": 1}}]}, "alerts[0].labels.a"),
        ({"version": "1", "alerts": [{"status": "firing", "labels": {}, "annotations": []}]}, "alerts[0].annotations"),
        ({"version": "1", "alerts": [{"status": "firing", "labels": {}, "fingerprint": 7}]}, "alerts[0].fingerprint"),
        ({"version": "1", "alerts": [{"status": "firing", "labels": {}, "values": [1]}]}, "alerts[0].values"),
        ({"version": "1", "alerts": [{"status": "firing", "labels": {}, "values": {"A": "x"}}]}, "alerts[0].values.A"),
        ({"version": "1", "alerts": [{"status": "firing", "labels": {}, "startsAt": "soon"}]}, "alerts[0].startsAt"),
        ({"version": "1", "groupKey": 5, "alerts": []}, "groupKey: Input should be a valid string"),
        ({"ruleName": "x"}, "state: Field required"),
        ({"ruleName": "x", "state": "firing"}, "state: Input should be 'alerting', 'no_data'"),
        ({"ruleId": 1, "state": "ok"}, "ruleName: Field required"),
        ({"ruleName": "x", "state": "ok", "ruleId": "one"}, "ruleId: Input should be a valid integer"),
        ({"ruleName": "x", "state": "ok", "evalMatches": {}}, "evalMatches: Input should be a valid list"),
        ({"ruleName": "x", "state": "ok", "evalMatches": [{"value": "high"}]}, "evalMatches[0].value"),
        ({"ruleName": "x", "state": "ok", "tags": {"a": ["b"]}}, "tags.a: Input should be a valid string"),
    ],
)
def test_malformed_payloads_are_rejected_naming_the_field(body: object, message: str) -> None:
    """Every rejection names what is wrong, so the sender's operator can fix it."""
    with pytest.raises(InvalidPayload) as info:
        parse(body)
    assert message in str(info.value)


def test_many_errors_are_summarised() -> None:
    """A payload with dozens of bad alerts lists the first few and how many more."""
    body = {"version": "1", "alerts": [{"status": "nope", "labels": {}} for _ in range(20)]}
    with pytest.raises(InvalidPayload) as info:
        parse(body)
    assert "and 15 more" in str(info.value)


def test_alertmanager_fixture_is_not_mistaken_for_grafana() -> None:
    """A v4 body posted to the Grafana endpoint is refused with a pointer to the right one."""
    with pytest.raises(InvalidPayload, match="Alertmanager"):
        parse(payload("alertmanager-0.25-firing.json"))


# -- the test-notification group key, in linear time ---------------------------------------------


def _old_group_key_rule(fingerprint: str, group_key: str) -> bool:
    """The regex this replaced (quadratic on hostile input); kept here as the reference meaning."""
    import re

    return re.fullmatch(rf".*-{re.escape(fingerprint)}-\d+", group_key) is not None


def test_test_group_key_rule_means_what_the_regex_meant_on_every_small_input() -> None:
    """Exhaustively over a small alphabet, the string logic agrees with the old regex (ASCII digits)."""
    import itertools

    from bridge.sources.grafana import is_test_group_key

    alphabet = ["-", "a", "1", "\n"]
    fingerprints = ["a", "-", "a-", "1", "\n"]
    checked = 0
    for length in range(8):
        for letters in itertools.product(alphabet, repeat=length):
            group_key = "".join(letters)
            for fingerprint in fingerprints:
                assert is_test_group_key(fingerprint, group_key) == _old_group_key_rule(fingerprint, group_key), (
                    fingerprint,
                    group_key,
                )
                checked += 1
    assert checked > 100_000
    assert not is_test_group_key("a", "x-a-١٢")  # Grafana writes ASCII seconds; \d also took Arabic digits


def test_hostile_group_key_and_fingerprint_are_parsed_in_linear_time() -> None:
    """The reproduction (fingerprint '-'*n, groupKey '-'*2n) took 6 s at n=40k and 21 s at n=80k.

    Parsed ten times at n=80k in a child process bounded by a generous timeout: the quadratic
    rule would need minutes, the string logic takes milliseconds, and no timing is asserted.
    """
    import subprocess
    import sys

    script = (
        "from bridge.sources.grafana import parse\n"
        "for n in (40_000, 80_000):\n"
        "    alert = {'status': 'firing', 'labels': {'alertname': 'x'}, 'fingerprint': '-' * n}\n"
        "    body = {'version': '1', 'groupKey': '-' * (2 * n), 'alerts': [alert]}\n"
        "    for _ in range(10):\n"
        "        assert parse(body)[0].kind == 'alerting'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr
