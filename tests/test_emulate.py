"""The strict Flashduty emulator enforces the Standard Alert API contract and scripts failures.

Most tests drive the ASGI app in-process; one starts ``python -m bridge.emulate`` for real.
"""

from __future__ import annotations

import logging
import re
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.emulate import EmulatorSettings, create_app, main
from tests.support.procs import LOOPBACK, Proc, free_port, python_module

PUSH = "/event/push/alert/standard"
KEY = "secret-integration-key-0123456789"
HEX32 = re.compile(r"^[0-9a-f]{32}$")
ALERT_KEY_ID = re.compile(r"^[0-9A-Za-z]{22}$")
VALID: dict[str, Any] = {"title_rule": "disk full on db-1", "event_status": "Critical", "alert_key": "db-1:disk"}
ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client(settings: EmulatorSettings | None = None, clock: FakeClock | None = None) -> httpx.AsyncClient:
    app = create_app(settings or EmulatorSettings(), clock=clock or FakeClock())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emulator")


async def push(c: httpx.AsyncClient, body: Any, key: str | None = KEY) -> httpx.Response:
    params = {"integration_key": key} if key is not None else {}
    return await c.post(PUSH, params=params, json=body)


def event(**changes: Any) -> dict[str, Any]:
    body = dict(VALID)
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def assert_error(response: httpx.Response, status: int, code: str, message: str | None = None) -> str:
    """Check the status and error envelope; return the message (compared exactly when given)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"request_id", "error"}, body
    assert HEX32.match(body["request_id"])
    assert body["error"]["code"] == code, body
    if message is not None:
        assert body["error"]["message"] == message
    return str(body["error"]["message"])


async def assert_invalid(c: httpx.AsyncClient, body: Any, message: str) -> None:
    assert_error(await push(c, body), 400, "InvalidParameter", message)


async def stored_events(c: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await c.get("/-/events", params=params)
    assert response.status_code == 200
    events: list[dict[str, Any]] = response.json()["events"]
    return events


# --- success path and storage ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_valid_event_is_accepted_with_request_id_and_echoed_alert_key() -> None:
    async with client() as c:
        response = await push(c, VALID)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"request_id", "data"}
    assert HEX32.match(body["request_id"])
    assert body["data"] == {"alert_key": "db-1:disk"}


@pytest.mark.asyncio
async def test_missing_alert_key_is_generated_as_22_char_base62_id_and_stored() -> None:
    async with client() as c:
        first = (await push(c, event(alert_key=...))).json()["data"]["alert_key"]
        second = (await push(c, event(alert_key=...))).json()["data"]["alert_key"]
        events = await stored_events(c)
    assert ALERT_KEY_ID.match(first) and ALERT_KEY_ID.match(second)
    assert first != second
    assert [e["alert_key"] for e in events] == [first, second]
    assert "alert_key" not in events[0]["body"]


@pytest.mark.asyncio
async def test_accepted_events_are_stored_in_order_with_body_exactly_as_received() -> None:
    bodies = [
        event(alert_key="a", labels={"service": "api"}, description="d", event_time=1_700_000_000),
        event(alert_key="b", event_status="Ok", images=[{"src": "https://x/y.png", "alt": "graph"}]),
    ]
    before = time.time()
    async with client() as c:
        for body in bodies:
            assert (await push(c, body)).status_code == 200
        events = await stored_events(c)
    assert [e["seq"] for e in events] == [1, 2]
    assert [e["body"] for e in events] == bodies
    assert [e["alert_key"] for e in events] == ["a", "b"]
    assert all(e["integration_key"] == KEY for e in events)
    assert all(before <= e["received_at"] <= time.time() for e in events)


@pytest.mark.asyncio
async def test_events_can_be_filtered_by_integration_key_and_since_seq() -> None:
    async with client() as c:
        for key, alert_key in [("k1", "a"), ("k2", "b"), ("k1", "c")]:
            assert (await push(c, event(alert_key=alert_key), key=key)).status_code == 200
        assert [e["alert_key"] for e in await stored_events(c, integration_key="k1")] == ["a", "c"]
        assert [e["alert_key"] for e in await stored_events(c, since=1)] == ["b", "c"]
        assert [e["seq"] for e in await stored_events(c, since=2, integration_key="k1")] == [3]
        assert_error(await c.get("/-/events", params={"since": "x"}), 400, "InvalidParameter")


@pytest.mark.asyncio
async def test_all_four_case_sensitive_event_statuses_are_accepted() -> None:
    async with client() as c:
        for status in ("Critical", "Warning", "Info", "Ok"):
            assert (await push(c, event(event_status=status))).status_code == 200


# --- method, path, content type, integration key ---------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_method_get_on_push_path_is_400_method_not_allowed(method: str) -> None:
    async with client() as c:
        response = await c.request(method, PUSH, params={"integration_key": KEY}, json=VALID)
        assert await stored_events(c) == []
    message = assert_error(response, 400, "MethodNotAllowed")
    assert method in message


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/event/push/alert/standard/"),
        ("POST", "/event/push/alert/prometheus"),
        ("GET", "/"),
        ("POST", "/-/events"),
        ("GET", "/-/nothing"),
    ],
)
async def test_unknown_path_is_404_route_not_found_envelope(method: str, path: str) -> None:
    async with client() as c:
        response = await c.request(method, path, params={"integration_key": KEY}, json=VALID)
        assert await stored_events(c) == []
    assert_error(response, 404, "RouteNotFound", f"no route for {method} {path}")


@pytest.mark.asyncio
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx"])
async def test_wrong_or_missing_content_type_is_400_invalid_content_type(content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    async with client() as c:
        response = await c.post(PUSH, params={"integration_key": KEY}, content=b'{"title_rule":"t"}', headers=headers)
    message = assert_error(response, 400, "InvalidContentType")
    assert "application/json" in message


@pytest.mark.asyncio
@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON;charset=UTF-8"])
async def test_json_content_type_with_utf8_charset_parameter_is_accepted(content_type: str) -> None:
    async with client() as c:
        response = await c.post(
            PUSH,
            params={"integration_key": KEY},
            headers={"content-type": content_type},
            content='{"title_rule": "磁盘满", "event_status": "Info"}'.encode(),
        )
    assert response.status_code == 200, response.text


@pytest.mark.asyncio
async def test_non_utf8_charset_is_400_invalid_content_type() -> None:
    async with client() as c:
        response = await c.post(
            PUSH,
            params={"integration_key": KEY},
            headers={"content-type": "application/json; charset=latin-1"},
            content=b'{"title_rule": "t", "event_status": "Info"}',
        )
    assert_error(response, 400, "InvalidContentType", 'charset "latin-1" is not supported, JSON must be UTF-8')


@pytest.mark.asyncio
@pytest.mark.parametrize("key", [None, ""])
async def test_missing_or_empty_integration_key_is_invalid_parameter_with_spec_message(key: str | None) -> None:
    async with client() as c:
        assert_error(await push(c, VALID, key=key), 400, "InvalidParameter", "integration_key is not a valid one")
        assert await stored_events(c) == []


@pytest.mark.asyncio
async def test_key_outside_valid_keys_is_rejected_and_listed_key_accepted() -> None:
    async with client(EmulatorSettings(valid_keys=frozenset({"good"}))) as c:
        assert_error(await push(c, VALID, key="bad"), 400, "InvalidParameter", "integration_key is not a valid one")
        assert (await push(c, VALID, key="good")).status_code == 200


@pytest.mark.asyncio
async def test_repeated_integration_key_query_parameter_is_rejected() -> None:
    async with client() as c:
        response = await c.post(PUSH + f"?integration_key={KEY}&integration_key=other", json=VALID)
    assert_error(response, 400, "InvalidParameter", "integration_key: given 2 times, expected once")


# --- body shape ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[]", "body: must be a JSON object, got array"),
        (b'"text"', "body: must be a JSON object, got string"),
        (b"", "body: empty, expected a JSON object"),
        (b'{"title_rule": ', "body: invalid JSON: Expecting value: line 1 column 16 (char 15)"),
        (b'{"title_rule": "t", "event_status": "Info", "x": NaN}', "body: invalid JSON: NaN is not valid JSON"),
        (b'{"title_rule": "\xff"}', "body: not valid UTF-8 (invalid start byte at byte 16)"),
        (
            b'{"title_rule": "a", "title_rule": "b", "event_status": "Info"}',
            'body: invalid JSON: duplicate key "title_rule"',
        ),
    ],
)
async def test_body_that_is_not_a_single_json_object_is_invalid_parameter(raw: bytes, message: str) -> None:
    async with client() as c:
        response = await c.post(
            PUSH, params={"integration_key": KEY}, content=raw, headers={"content-type": "application/json"}
        )
    assert_error(response, 400, "InvalidParameter", message)


# --- field rules -------------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("title", "message"),
    [
        (..., "title_rule: required"),
        ("", "title_rule: must not be empty"),
        ("  ", "title_rule: must not be empty"),
        (5, "title_rule: must be a string, got integer"),
        (None, "title_rule: must be a string, got null"),
    ],
)
async def test_title_rule_is_required_non_empty_string(title: Any, message: str) -> None:
    async with client() as c:
        await assert_invalid(c, event(title_rule=title), message)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("status", "message"),
    [(..., "event_status: required"), (2, "event_status: must be a string, got integer")]
    + [
        (s, f'event_status: "{s}" is not one of Critical, Warning, Info, Ok (case-sensitive)')
        for s in ("critical", "CRITICAL", "Resolved", "ok", "")
    ],
)
async def test_event_status_must_be_exactly_one_of_the_case_sensitive_values(status: Any, message: str) -> None:
    async with client() as c:
        await assert_invalid(c, event(event_status=status), message)


@pytest.mark.asyncio
@pytest.mark.parametrize("alert_key", [..., ""])
async def test_ok_without_alert_key_is_rejected(alert_key: Any) -> None:
    async with client() as c:
        await assert_invalid(
            c, event(event_status="Ok", alert_key=alert_key), "alert_key: required when event_status is Ok"
        )
        assert await stored_events(c) == []


@pytest.mark.asyncio
async def test_ok_with_alert_key_is_accepted_and_echoed_unchanged() -> None:
    async with client() as c:
        response = await push(c, event(event_status="Ok", alert_key="ns:v1:ÄÖ 1"))
    assert response.json()["data"]["alert_key"] == "ns:v1:ÄÖ 1"


@pytest.mark.asyncio
async def test_alert_key_over_255_characters_is_rejected_and_255_accepted() -> None:
    async with client() as c:
        assert (await push(c, event(alert_key="é" * 255))).status_code == 200
        await assert_invalid(c, event(alert_key="é" * 256), "alert_key: 256 characters, limit is 255")
        await assert_invalid(c, event(alert_key=7), "alert_key: must be a string, got integer")


@pytest.mark.asyncio
async def test_empty_alert_key_is_rejected_in_strict_mode_and_replaced_in_lenient_mode() -> None:
    async with client() as c:
        await assert_invalid(c, event(alert_key=""), "alert_key: must not be empty (omit it to get a generated one)")
    async with client(EmulatorSettings(strict=False)) as c:
        assert ALERT_KEY_ID.match((await push(c, event(alert_key=""))).json()["data"]["alert_key"])


@pytest.mark.asyncio
async def test_description_must_be_a_string() -> None:
    async with client() as c:
        await assert_invalid(c, event(description=["x"]), "description: must be a string, got array")
        await assert_invalid(c, event(description=None), "description: must be a string, got null")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["a"], "labels: must be an object, got array"),
        ("a=b", "labels: must be an object, got string"),
        ({"severity": 1}, "labels.severity: value must be a string, got integer"),
        ({"ok": "x", "up": True}, "labels.up: value must be a string, got boolean"),
        ({"n": None}, "labels.n: value must be a string, got null"),
    ],
)
async def test_labels_must_be_an_object_of_strings(labels: Any, message: str) -> None:
    async with client() as c:
        await assert_invalid(c, event(labels=labels), message)


@pytest.mark.asyncio
@pytest.mark.parametrize("key", ["service.name", "1abc", "", "a-b", "kéy", "a b", "ok\n"])
async def test_label_key_breaking_prometheus_naming_is_rejected(key: str) -> None:
    async with client() as c:
        await assert_invalid(c, event(labels={key: "v"}), f'labels: key "{key}" does not match [a-zA-Z_][a-zA-Z0-9_]*')


@pytest.mark.asyncio
async def test_label_key_over_128_characters_is_rejected_and_128_accepted() -> None:
    async with client() as c:
        assert (await push(c, event(labels={"_" + "k" * 127: "v"}))).status_code == 200
        message = assert_error(await push(c, event(labels={"k" * 129: "v"})), 400, "InvalidParameter")
    assert message == f'labels: key "{"k" * 20}…" is 129 characters, limit is 128'


@pytest.mark.asyncio
async def test_more_than_50_labels_are_rejected_and_50_accepted() -> None:
    async with client() as c:
        assert (await push(c, event(labels={f"l{i}": "v" for i in range(50)}))).status_code == 200
        await assert_invalid(c, event(labels={f"l{i}": "v" for i in range(51)}), "labels: 51 labels, limit is 50")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("images", "message"),
    [
        ({"src": "x"}, "images: must be an array, got object"),
        (["https://x/y.png"], "images[0]: must be an object, got string"),
        ([{"src": "a"}, {"alt": "graph"}], "images[1].src: required"),
        ([{"src": 1}], "images[0].src: must be a string, got integer"),
        ([{"src": "a", "alt": 3}], "images[0].alt: must be a string, got integer"),
        ([{"src": "a", "title": "t"}], 'images[0]: unknown field "title" (allowed: alt, href, src)'),
        ([{"src": "s" * 257}], "images[0].src: 257 characters, limit is 256 (Flashduty drops the image)"),
        ([{"src": "a", "alt": "a" * 129}], "images[0].alt: 129 characters, limit is 128"),
        ([{"src": "a", "href": "h" * 257}], "images[0].href: 257 characters, limit is 256"),
    ],
)
async def test_images_must_be_array_of_objects_with_string_src(images: Any, message: str) -> None:
    async with client() as c:
        await assert_invalid(c, event(images=images), message)


@pytest.mark.asyncio
async def test_valid_images_are_accepted() -> None:
    images = [{"src": "https://g/p.png"}, {"alt": "a" * 128, "src": "s" * 256, "href": "h" * 256}]
    async with client() as c:
        assert (await push(c, event(images=images))).status_code == 200


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1_700_000_000.5, "event_time: must be an integer of Unix seconds, got number"),
        (1.0, "event_time: must be an integer of Unix seconds, got number"),
        ("1700000000", "event_time: must be an integer of Unix seconds, got string"),
        (True, "event_time: must be an integer of Unix seconds, got boolean"),
        (-1, "event_time: -1 is negative"),
        (1_700_000_000_000, "event_time: 1700000000000 looks like milliseconds, send Unix seconds"),
    ],
)
async def test_event_time_must_be_non_negative_integer_unix_seconds(value: Any, message: str) -> None:
    async with client() as c:
        await assert_invalid(c, event(event_time=value), message)


@pytest.mark.asyncio
async def test_event_time_in_integer_seconds_is_accepted() -> None:
    async with client() as c:
        assert (await push(c, event(event_time=1_700_000_000))).status_code == 200
        assert (await push(c, event(event_time=10_000_000_000))).status_code == 200


@pytest.mark.asyncio
async def test_unknown_top_level_field_is_rejected_in_strict_mode_and_ignored_in_lenient_mode() -> None:
    body = event(title="literal title", severity="high")
    async with client() as c:
        message = assert_error(await push(c, body), 400, "InvalidParameter")
        assert message.startswith('unknown field "severity" (strict mode; allowed: alert_key, description,')
    async with client(EmulatorSettings(strict=False)) as c:
        assert (await push(c, body)).status_code == 200
        stored = (await stored_events(c))[0]
    assert stored["body"] == body
    assert "title" not in stored["effective"] and "severity" not in stored["effective"]


# --- length limits: strict rejects, lenient truncates, counted in code points ------------------------


@pytest.mark.asyncio
async def test_title_over_512_chars_rejected_in_strict_mode_counted_in_code_points() -> None:
    cjk = "磁" * 512  # 1536 UTF-8 bytes, 512 characters
    async with client() as c:
        assert (await push(c, event(title_rule=cjk))).status_code == 200
        await assert_invalid(c, event(title_rule=cjk + "盘"), "title_rule: 513 characters, limit is 512")
        await assert_invalid(c, event(title_rule="🔥" * 600), "title_rule: 600 characters, limit is 512")


@pytest.mark.asyncio
async def test_description_over_2048_chars_rejected_in_strict_mode_counted_in_code_points() -> None:
    async with client() as c:
        assert (await push(c, event(description="😀" * 2048))).status_code == 200
        await assert_invalid(c, event(description="😀" * 2049), "description: 2049 characters, limit is 2048")


@pytest.mark.asyncio
async def test_label_value_over_2048_chars_rejected_in_strict_mode_counted_in_code_points() -> None:
    async with client() as c:
        assert (await push(c, event(labels={"check": "ü" * 2048}))).status_code == 200
        await assert_invalid(c, event(labels={"check": "ü" * 2049}), "labels.check: 2049 characters, limit is 2048")


@pytest.mark.asyncio
async def test_lenient_mode_truncates_long_texts_in_code_points_like_flashduty() -> None:
    body = event(
        title_rule="磁" * 600,
        description="😀" * 3000,
        labels={"check": "ü" * 2100},
        images=[{"src": "s" * 300}, {"src": "ok", "alt": "a" * 200, "href": "h" * 300}],
    )
    async with client(EmulatorSettings(strict=False)) as c:
        assert (await push(c, body)).status_code == 200
        stored = (await stored_events(c))[0]
    assert stored["body"] == body
    kept = stored["effective"]
    assert kept["title_rule"] == "磁" * 512
    assert kept["description"] == "😀" * 2048
    assert kept["labels"] == {"check": "ü" * 2048}
    assert kept["images"] == [{"src": "ok", "alt": "a" * 128, "href": "h" * 256}]


@pytest.mark.asyncio
async def test_lenient_mode_treats_null_optional_fields_as_absent_but_keeps_other_rules() -> None:
    async with client(EmulatorSettings(strict=False)) as c:
        assert (await push(c, event(description=None, labels=None, alert_key=None))).status_code == 200
        await assert_invalid(c, event(event_status="Ok", alert_key=None), "alert_key: required when event_status is Ok")
        await assert_invalid(c, event(labels={"a.b": "v"}), 'labels: key "a.b" does not match [a-zA-Z_][a-zA-Z0-9_]*')
        await assert_invalid(c, event(event_time=1.5), "event_time: must be an integer of Unix seconds, got number")


# --- rate limits -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_rate_limit_per_second_answers_429_with_retry_after() -> None:
    clock = FakeClock()
    async with client(EmulatorSettings(per_second=3), clock) as c:
        for _ in range(3):
            assert (await push(c, VALID)).status_code == 200
        clock.now += 0.5
        limited = await push(c, VALID)
        assert_error(limited, 429, "RequestTooFrequently")
        assert limited.headers["Retry-After"] == "1"
        clock.now += 0.5
        assert (await push(c, VALID)).status_code == 200
        assert len(await stored_events(c)) == 4


@pytest.mark.asyncio
async def test_rate_limit_per_minute_answers_429_with_retry_after_until_window_frees() -> None:
    clock = FakeClock()
    async with client(EmulatorSettings(per_second=100, per_minute=5), clock) as c:
        for _ in range(5):
            assert (await push(c, VALID)).status_code == 200
            clock.now += 2
        clock.now += 0.5
        limited = await push(c, VALID)  # 10.5 s after the first admitted request: 49.5 s to wait, rounded up
        assert_error(limited, 429, "RequestTooFrequently")
        assert limited.headers["Retry-After"] == "50"
        clock.now += 49
        assert (await push(c, VALID)).status_code == 429
        clock.now += 0.5
        assert (await push(c, VALID)).status_code == 200


@pytest.mark.asyncio
async def test_rate_limit_is_counted_per_integration_key() -> None:
    async with client(EmulatorSettings(per_second=1)) as c:
        assert (await push(c, VALID, key="k1")).status_code == 200
        assert (await push(c, VALID, key="k1")).status_code == 429
        assert (await push(c, VALID, key="k2")).status_code == 200


@pytest.mark.asyncio
async def test_rate_limited_requests_are_not_stored_as_events_but_are_listed_as_requests() -> None:
    async with client(EmulatorSettings(per_second=1)) as c:
        await push(c, event(alert_key="first"))
        await push(c, event(alert_key="second"))
        events = await stored_events(c)
        requests = (await c.get("/-/requests")).json()["requests"]
    assert [e["alert_key"] for e in events] == ["first"]
    assert [(r["seq"], r["status"], r["code"], r["alert_key"]) for r in requests] == [
        (1, 200, None, "first"),
        (2, 429, "RequestTooFrequently", None),
    ]


@pytest.mark.asyncio
async def test_stats_count_stored_events_and_every_push() -> None:
    async with client(EmulatorSettings(per_second=1)) as c:
        assert (await c.get("/-/stats")).json() == {"events": 0, "requests": 0}
        await push(c, event(alert_key="first"))
        await push(c, event(alert_key="second"))  # 429: a request, not an event
        stats = (await c.get("/-/stats")).json()
    assert stats == {"events": 1, "requests": 2}


# --- request log and reset -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_requests_log_lists_every_push_including_rejections_with_code_and_message() -> None:
    async with client() as c:
        await push(c, event(event_status="Ok", alert_key=...))
        await c.get(PUSH, params={"integration_key": KEY})
        await push(c, VALID)
        await c.get("/-/events")  # control endpoints are not recorded
        requests = (await c.get("/-/requests")).json()["requests"]
    assert [(r["seq"], r["status"], r["code"]) for r in requests] == [
        (1, 400, "InvalidParameter"),
        (2, 400, "MethodNotAllowed"),
        (3, 200, None),
    ]
    assert requests[0]["message"] == "alert_key: required when event_status is Ok"
    assert requests[2]["alert_key"] == "db-1:disk" and requests[2]["message"] is None


@pytest.mark.asyncio
async def test_delete_events_clears_events_requests_rate_limit_windows_and_faults() -> None:
    async with client(EmulatorSettings(per_second=1)) as c:
        await push(c, VALID)
        assert (await push(c, VALID)).status_code == 429
        await c.put("/-/faults", json={"script": [{"status": 503, "code": "InternalError"}]})
        assert (await c.delete("/-/events")).status_code == 200
        assert await stored_events(c) == []
        assert (await c.get("/-/requests")).json() == {"requests": []}
        assert (await c.get("/-/faults")).json() == {"script": [], "outage_seconds": 0.0}
        assert (await push(c, VALID)).status_code == 200
        assert [e["seq"] for e in await stored_events(c)] == [1]


# --- fault injection ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_fault_script_answers_each_push_in_order_then_normal_behaviour_resumes() -> None:
    script = [
        {"status": 503, "code": "InternalError", "message": "down", "retry_after": 2},
        {"status": 429, "code": "RequestTooFrequently", "message": "slow down"},
    ]
    async with client() as c:
        assert (await c.put("/-/faults", json={"script": script})).status_code == 200
        first = await push(c, VALID)
        assert_error(first, 503, "InternalError", "down")
        assert first.headers["Retry-After"] == "2"
        second = await push(c, VALID)
        assert_error(second, 429, "RequestTooFrequently", "slow down")
        assert "Retry-After" not in second.headers
        assert (await push(c, VALID)).status_code == 200
        assert [e["seq"] for e in await stored_events(c)] == [1]
        requests = (await c.get("/-/requests")).json()["requests"]
    assert [(r["status"], r["code"], r["fault"]) for r in requests] == [
        (503, "InternalError", True),
        (429, "RequestTooFrequently", True),
        (200, None, False),
    ]


@pytest.mark.asyncio
async def test_fault_script_200_with_error_object() -> None:
    async with client() as c:
        await c.put("/-/faults", json={"script": [{"status": 200, "code": "NoLicense", "message": "no licence"}]})
        assert_error(await push(c, VALID), 200, "NoLicense", "no licence")
        assert await stored_events(c) == []


@pytest.mark.asyncio
async def test_fault_without_status_answers_the_spec_status_for_its_code() -> None:
    table = {
        "InvalidParameter": 400, "InvalidContentType": 400, "MethodNotAllowed": 400, "Unauthorized": 401,
        "AccessDenied": 403, "RequestTooFrequently": 429, "RouteNotFound": 404, "ResourceNotFound": 400,
        "NoLicense": 400, "InternalError": 500,
    }  # fmt: skip
    async with client() as c:
        await c.put("/-/faults", json={"script": [{"code": code} for code in table]})
        for code, status in table.items():
            assert_error(await push(c, VALID), status, code, "injected fault")


@pytest.mark.asyncio
async def test_fault_with_raw_body_is_sent_instead_of_the_envelope() -> None:
    html = "<html><body><h1>502 Bad Gateway</h1></body></html>"
    async with client() as c:
        await c.put("/-/faults", json={"script": [{"status": 502, "body": html}]})
        response = await push(c, VALID)
    assert response.status_code == 502
    assert response.text == html
    assert response.headers["content-type"].startswith("text/html")


@pytest.mark.asyncio
async def test_fault_is_consumed_before_any_validation() -> None:
    async with client() as c:
        await c.put("/-/faults", json={"script": [{"status": 500, "code": "InternalError"}]})
        response = await c.get(PUSH)  # wrong method, no key, no body
        assert_error(response, 500, "InternalError", "injected fault")
        assert (await c.get("/-/faults")).json() == {"script": [], "outage_seconds": 0.0}


@pytest.mark.asyncio
async def test_fault_delay_ms_delays_the_answer() -> None:
    async with client() as c:
        await c.put("/-/faults", json={"script": [{"status": 504, "code": "InternalError", "delay_ms": 200}]})
        started = time.monotonic()
        response = await push(c, VALID)
        elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert elapsed >= 0.2


@pytest.mark.asyncio
async def test_get_faults_shows_remaining_script_and_delete_clears_it() -> None:
    script = [{"status": 503, "code": "InternalError"}, {"status": 500, "code": "InternalError"}]
    async with client() as c:
        await c.put("/-/faults", json={"script": script})
        await push(c, VALID)
        remaining = (await c.get("/-/faults")).json()["script"]
        assert [(item["status"], item["code"]) for item in remaining] == [(500, "InternalError")]
        assert (await c.delete("/-/faults")).json() == {"script": [], "outage_seconds": 0.0}
        assert (await push(c, VALID)).status_code == 200


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (
            b'{"script": [{"status": "503", "code": "InternalError"}]}',
            "script.0.status: Input should be a valid integer",
        ),
        (b'{"script": [{"code": "Custom"}]}', "status is required unless code is one of InvalidParameter,"),
        (b'{"script": [{"body": "<html/>"}]}', "status is required unless code is one of InvalidParameter,"),
        (b'{"script": [{"status": 503, "code": "X", "retry": 1}]}', "script.0.retry: Extra inputs are not permitted"),
        (b'{"script": [{"status": 503}]}', "give code (for an error envelope) or body (sent raw), or drop"),
        (b'{"script": [{"status": 99, "code": "X"}]}', "script.0.status: Input should be greater than or equal to 200"),
        (b'{"script": {}}', "script: Input should be a valid array"),
        (b"not json", "fault script: body: Invalid JSON"),
    ],
)
async def test_malformed_fault_script_is_400_with_a_clear_message(payload: bytes, fragment: str) -> None:
    async with client() as c:
        response = await c.put("/-/faults", content=payload, headers={"content-type": "application/json"})
        assert (await c.get("/-/faults")).json() == {"script": [], "outage_seconds": 0.0}
    message = assert_error(response, 400, "InvalidParameter")
    assert fragment in message


@pytest.mark.asyncio
async def test_healthy_endpoint_answers_200() -> None:
    async with client() as c:
        response = await c.get("/-/healthy")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


# --- logging, CLI and the real process -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_log_has_one_line_per_push_and_never_the_integration_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bridge.emulate")
    async with client() as c:
        await push(c, VALID)
        await push(c, event(event_status="Ok", alert_key=...))
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.emulate"]
    assert len(lines) == 2
    assert lines[0].startswith("push 200 ") and lines[1].startswith("push 400 InvalidParameter ")
    assert not any(KEY in line or KEY[:12] in line for line in lines)


@pytest.mark.parametrize(
    "argv", [["--listen", "nohostport"], ["--listen", "127.0.0.1:http"], ["--per-second", "0"], ["--keys", " , "]]
)
def test_main_rejects_bad_arguments_with_exit_code_2(argv: list[str]) -> None:
    assert main(argv) == 2


def test_real_process_accepts_events_and_never_logs_the_integration_key(tmp_path: Path) -> None:
    port = free_port()
    argv = python_module(
        "bridge.emulate", "--listen", f"{LOOPBACK}:{port}", "--keys", f"{KEY},other", "--per-second", "5"
    )
    proc = Proc(argv, tmp_path / "emulate.log", env={"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
    try:
        base = f"http://{LOOPBACK}:{port}"
        proc.wait_http(f"{base}/-/healthy")
        accepted = httpx.post(f"{base}{PUSH}", params={"integration_key": KEY}, json=VALID, timeout=5)
        assert accepted.json()["data"] == {"alert_key": "db-1:disk"}
        rejected = httpx.post(f"{base}{PUSH}", params={"integration_key": "nope"}, json=VALID, timeout=5)
        assert_error(rejected, 400, "InvalidParameter", "integration_key is not a valid one")
        events = httpx.get(f"{base}/-/events", timeout=5).json()["events"]
        assert [(e["seq"], e["integration_key"], e["body"]) for e in events] == [(1, KEY, VALID)]
    finally:
        code = proc.stop()
    output = proc.output()
    assert code in (0, -signal.SIGTERM), output
    assert "Finished server process" in output
    assert "push 200" in output and "push 400 InvalidParameter" in output
    assert KEY not in output and "nope" not in output


@pytest.mark.asyncio
async def test_outage_window_answers_every_push_until_it_ends() -> None:
    """An outage answers each push with its scripted answer until the (fake) clock passes its end."""
    clock = FakeClock()
    async with client(clock=clock) as c:
        outage = {"seconds": 5, "answer": {"status": 503, "code": "InternalError"}}
        assert (await c.put("/-/faults", json={"outage": outage})).json()["outage_seconds"] == 5
        assert [(await push(c, VALID)).status_code for _ in range(3)] == [503, 503, 503]
        clock.now += 5.1
        assert (await push(c, VALID)).status_code == 200
        assert [r["status"] for r in (await c.get("/-/requests")).json()["requests"]] == [503, 503, 503, 200]


@pytest.mark.asyncio
async def test_drop_fault_cuts_the_connection_mid_response() -> None:
    """A drop item promises a body it never finishes, so a real client sees a transport error, not a status."""
    port = free_port()
    proc = Proc(python_module("bridge.emulate", "--listen", f"127.0.0.1:{port}"), Path(tempfile.mkdtemp()) / "emu.log")
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/-/healthy")
        httpx.put(f"http://127.0.0.1:{port}/-/faults", json={"script": [{"drop": True}]}).raise_for_status()
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):  # cut mid-body or reset
            httpx.post(f"http://127.0.0.1:{port}/event/push/alert/standard?integration_key=k", json=VALID)
        assert (
            httpx.post(f"http://127.0.0.1:{port}/event/push/alert/standard?integration_key=k", json=VALID).status_code
            == 200
        )
    finally:
        proc.stop()
