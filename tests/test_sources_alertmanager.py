"""Parsing Alertmanager v4 webhooks: fingerprints, timestamps, and precise rejections."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from bridge.models import Alert
from bridge.sources import InvalidPayload, decode_json
from bridge.sources.alertmanager import fingerprint, parse, parse_raw
from tests.conftest import payload

AM_FIXTURES = [
    "alertmanager-firing-grouped.json",
    "alertmanager-resolved.json",
    "alertmanager-0.25-firing.json",
    "alertmanager-0.25-resolved.json",
]


@pytest.mark.parametrize("name", AM_FIXTURES)
def test_fingerprint_matches_what_real_alertmanagers_sent(name: str) -> None:
    """Recomputing Alertmanager's FNV-1a fingerprint from the labels gives the captured value."""
    for alert in payload(name)["alerts"]:
        assert fingerprint(alert["labels"]) == alert["fingerprint"]


def test_fingerprint_of_known_values() -> None:
    """Reference values from prometheus/common and grafana/alerting tests."""
    assert fingerprint({}) == "cbf29ce484222325"
    assert fingerprint({"alertname": "alert1", "lbl1": "val1"}) == "fac0861a85de433a"


def test_missing_or_empty_fingerprint_is_computed() -> None:
    """Alertmanager < 0.19 sends no fingerprint; the parser fills in the one a newer version would send."""
    body = copy.deepcopy(payload("alertmanager-0.25-firing.json"))
    expected = [a["fingerprint"] for a in body["alerts"]]
    del body["alerts"][0]["fingerprint"]
    body["alerts"][1]["fingerprint"] = ""
    assert [a.fingerprint for a in parse(body)] == expected


def test_zero_ends_at_means_not_set_and_offsets_and_nanoseconds_parse() -> None:
    """Go's zero time becomes None; 9 fractional digits and +08:00 offsets keep the instant."""
    body = copy.deepcopy(payload("alertmanager-0.25-firing.json"))
    body["alerts"][0]["startsAt"] = "2021-03-30T20:17:50.814674209+08:00"
    (first, second) = parse(body)
    assert first.ends_at is None
    assert first.starts_at == datetime(2021, 3, 30, 20, 17, 50, 814674, tzinfo=timezone(timedelta(hours=8)))
    assert second.starts_at == datetime(2026, 11, 26, 11, 10, 20, 324000, tzinfo=UTC)


def test_resolved_alert_keeps_its_end_time() -> None:
    """A resolved alert's endsAt is the resolve time."""
    (alert,) = parse(payload("alertmanager-resolved.json"))
    assert alert.status == "resolved"
    assert alert.ends_at == datetime(2022, 7, 29, 11, 17, 27, 300000, tzinfo=UTC)
    assert alert.generator_url.startswith("/")  # relative URLs are kept as sent


def test_unknown_fields_from_newer_alertmanagers_are_ignored() -> None:
    """notification_reason, routeLabels and future fields do not break parsing."""
    body = copy.deepcopy(payload("alertmanager-0.25-firing.json"))
    body["notification_reason"] = "first notification"
    body["routeLabels"] = {"team": "x"}
    body["alerts"][0]["newField"] = 1
    assert len(parse(body)) == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "/api/v2/alerts"),
        ("text", "must be a JSON object, got str"),
        ({"alerts": []}, 'version: expected "4"'),
        ({"version": 4, "alerts": []}, 'version: expected "4" (Alertmanager webhook), got 4'),
        ({"version": "1", "alerts": []}, "Grafana"),
        ({"version": "4"}, "alerts: Field required"),
        ({"version": "4", "alerts": [{"status": "firing"}]}, "alerts[0].labels: Field required"),
        ({"version": "4", "alerts": [{"status": "firing", "labels": {"a": None}}]}, "alerts[0].labels.a"),
        ({"version": "4", "alerts": [{"status": "firing", "labels": {}, "annotations": []}]}, "alerts[0].annotations"),
        ({"version": "4", "alerts": [{"status": "firing", "labels": {}, "fingerprint": 7}]}, "alerts[0].fingerprint"),
    ],
)
def test_malformed_payloads_are_rejected_naming_the_field(body: object, message: str) -> None:
    """Every rejection names what is wrong, so the sender's operator can fix it."""
    with pytest.raises(InvalidPayload) as info:
        parse(body)
    assert message in str(info.value)


def test_many_errors_are_summarised() -> None:
    """A payload with dozens of bad alerts lists the first few and how many more."""
    body = {"version": "4", "alerts": [{"status": "nope", "labels": {}} for _ in range(20)]}
    with pytest.raises(InvalidPayload) as info:
        parse(body)
    assert "and 15 more" in str(info.value)


def json_loads_reference(raw: bytes) -> Any:
    """decode_json as it was written first: json.loads with a parse_constant that refuses NaN/Infinity."""
    text = raw.decode("utf-8")

    def reject_constant(name: str) -> Any:
        raise InvalidPayload(f"{name} is not valid JSON")

    try:
        return json.loads(text, parse_constant=reject_constant)
    except json.JSONDecodeError as exc:
        raise InvalidPayload(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"version":"4","alerts":[]}',
        b'\xef\xbb\xbf{"version":"4","alerts":[]}',  # a UTF-8 BOM: refused, as json.loads does
        b'{"a":NaN}',
        b'{"a":-Infinity}',
        b'{"a":1e400,"b":123456789012345678901234567890,"c":-0,"d":1.5,"e":"\xc3\xa9"}',
        b'{"a":1,"a":2}',
        b'{"a":[1,2,}',
        b'{"a":"\x01"}',
        b"{'a':1}",
        b'{"a":1} {"b":2}',
        b"\n\t [1, {}]\n",
    ],
)
def test_decode_json_decodes_and_refuses_exactly_as_json_loads(raw: bytes) -> None:
    """The decoder is built once now; what it returns and the message it refuses with are unchanged."""
    try:
        expected: Any = json_loads_reference(raw)
    except InvalidPayload as exc:
        with pytest.raises(InvalidPayload) as refused:
            decode_json(raw)
        assert str(refused.value) == str(exc)
    else:
        assert repr(decode_json(raw)) == repr(expected)


# -- the fast path: parse_raw must give what decode_json + parse give, or step aside ---------------

#: Mostly text the fast path takes (no lone surrogates), sometimes any code point.
_texts = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=12),
    st.text(st.characters(codec="utf-8"), max_size=12),
    st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None), max_size=12),
)
_maps = st.dictionaries(st.one_of(st.sampled_from(["alertname", "severity", "a.b", ""]), _texts), _texts, max_size=4)
_times = st.sampled_from(
    [
        "2026-11-26T10:00:00Z",
        "2026-11-26T10:00:00.123456789+05:30",
        "2026-11-26T10:00:00.9999999Z",
        "0001-01-01T00:00:00Z",
        "2026-11-26",
        "1700000000",
        "nope",
    ]
)
_alert = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["firing", "resolved"] * 4 + ["other"]),
        "labels": _maps,
        "startsAt": st.one_of(_times, _times, _times, st.none(), st.integers()),
        "endsAt": st.one_of(_times, _times, st.none()),
    },
    optional={
        "annotations": st.one_of(_maps, _maps, st.none()),
        "generatorURL": st.one_of(_texts, _texts, st.none()),
        "fingerprint": st.one_of(_texts, st.none(), st.just("  ")),
    },
)
_webhook = st.fixed_dictionaries(
    {"version": st.sampled_from(["4"] * 8 + ["1", 4]), "alerts": st.lists(_alert, max_size=3)},
    optional={
        "status": st.sampled_from(["firing", "resolved", "x", None]),
        "receiver": st.one_of(_texts, st.none()),
        "truncatedAlerts": st.one_of(st.integers(min_value=0, max_value=9), st.integers(), st.floats(allow_nan=False)),
        "commonLabels": _maps,
        "groupLabels": st.one_of(_maps, _maps, st.integers()),
    },
)
_bodies = st.one_of(
    _webhook,
    st.tuples(_webhook, st.sampled_from(["extra", "labels"]), _texts).map(lambda t: {**t[0], t[1]: t[2]}),
)


def _usual_way(raw: bytes) -> list[Alert] | str:
    try:
        return parse(decode_json(raw))
    except InvalidPayload as exc:
        return f"refused: {exc}"


@settings(max_examples=400, deadline=None)
@given(_bodies, st.booleans())
@example(
    {
        "version": "4",
        "alerts": [
            {"status": "firing", "labels": {"a": "é"}, "startsAt": "0001-01-01T00:00:00Z", "fingerprint": " x "},
            {"status": "resolved", "labels": {}, "endsAt": "2026-11-26T10:00:00.999999999+05:30"},
        ],
    },
    False,
)
def test_the_fast_path_gives_the_usual_alerts_or_steps_aside(body: dict[str, Any], ascii_only: bool) -> None:
    """parse_raw never accepts a body the usual way refuses, and what it accepts gives equal alerts."""
    raw = json.dumps(body, ensure_ascii=ascii_only).encode(errors="surrogatepass")
    fast = parse_raw(raw)
    event(f"fast path took it: {fast is not None}")
    if fast is not None:
        assert fast == _usual_way(raw)
        assert [(a.starts_at and a.starts_at.utcoffset(), a.ends_at and a.ends_at.utcoffset()) for a in fast] == [
            (a.starts_at and a.starts_at.utcoffset(), a.ends_at and a.ends_at.utcoffset())
            for a in _usual_way(raw)  # type: ignore[union-attr]
        ]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"  ",
        b"\xef\xbb\xbf" + json.dumps(payload("alertmanager-resolved.json")).encode(),
        b'{"version":"4","alerts":[{"status":"firing","labels":{"a":"\\ud800"}}]}',
        b'{"version":"4","alerts":[{"status":"firing","labels":{"a":"\xff"}}]}',
        b'{"version":"4","alerts":[{"status":"firing","labels":{"a":"1\n"}}]}',
        b'{"version":"4","alerts":[],"truncatedAlerts":01}',
        b'{"version":"4","alerts":[],"truncatedAlerts":' + b"7" * 5000 + b"}",
        b'{"version":"4","alerts":[],"x":' + b"[" * 3000 + b"]" * 3000 + b"}",
        b'{"version":"4","alerts":[]} x',
        b'{"version":"4","alerts":[{"status":"firing","labels":{},"annotations":null}]}',
        b'{"version":"4","alerts":[{"status":"firing","labels":{},"startsAt":"nope"}]}',
    ],
)
def test_the_fast_path_steps_aside_for_what_it_does_not_take_plainly(raw: bytes) -> None:
    """Bodies the usual way refuses, cleans or reads specially go that way, for its answer."""
    assert parse_raw(raw) is None


@pytest.mark.parametrize("name", AM_FIXTURES)
def test_the_fast_path_takes_real_alertmanager_bodies(name: str) -> None:
    raw = json.dumps(payload(name)).encode()
    fast = parse_raw(raw)
    assert fast is not None
    assert fast == parse(decode_json(raw))
