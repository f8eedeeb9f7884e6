"""Bodies that once reached a 500: each is now a precise 4xx (or a 200 where the body is fine).

A 500 is what Alertmanager retries forever, so every case here is pinned by name: in-process
over ASGI for each endpoint, and through the real process once for each kind of input.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge import contract
from tests.conftest import Bridge
from tests.support.inprocess import make_config, running

MakeBridge = Callable[..., Bridge]
JSON = {"content-type": "application/json"}
HUGE_INT = "1" * 4301
#: A source whose templates fail on these bodies, so its fallback (the raw payload) is built too.
SOURCES: dict[str, Any] = {
    "hook": {"title": "{{ payload.title }}", "event_status": "{{ payload.nope.x + 1 }}"},
    "list": {"alerts": "payload.items", "title": "{{ alert.name }}", "event_status": "Critical"},
}
INTAKE_PATHS = ("/alertmanager", "/grafana", "/webhook/hook", "/webhook/list", contract.PUSH_PATH)


def nested(depth: int, inner: str = '"\\u00e9"') -> str:
    """``depth`` nested arrays around ``inner``: any ``\\u`` escape made the cleaner recurse."""
    return "[" * depth + inner + "]" * depth


def assert_4xx_envelope(response: httpx.Response) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    body: dict[str, Any] = response.json()
    assert set(body) == {"request_id", "error"} and set(body["error"]) == {"code", "message"}, body
    return body


@pytest.mark.parametrize("path", INTAKE_PATHS)
async def test_an_integer_of_more_than_4300_digits_is_a_400_naming_the_limit(tmp_path: Path, path: str) -> None:
    """Python refuses to convert such an integer (ValueError, not a JSON error): a 400, not a 500."""
    raw = ('{"version":"4","alerts":[],"title_rule":"t","event_status":"Info","n":' + HUGE_INT + "}").encode()
    async with running(make_config(tmp_path, sources=SOURCES)) as bridge:
        body = assert_4xx_envelope(await bridge.client.post(path, content=raw, headers=JSON))
    assert "4300 digits" in body["error"]["message"]
    assert "set_int_max_str_digits" not in body["error"]["message"]


async def test_a_rejected_standard_event_whose_message_quotes_a_lone_surrogate_is_a_400(tmp_path: Path) -> None:
    """The label key is quoted in the 400; it is decoded as Go does (U+FFFD), so the answer encodes."""
    raw = b'{"title_rule":"t","event_status":"Warning","labels":{"a\\ud800":"x"}}'
    async with running(make_config(tmp_path)) as bridge:
        body = assert_4xx_envelope(await bridge.client.post(contract.PUSH_PATH, content=raw, headers=JSON))
    assert body["error"] == {
        "code": "InvalidParameter",
        "message": 'labels: key "a\ufffd" does not match [a-zA-Z_][a-zA-Z0-9_]*',
    }


@pytest.mark.parametrize("path", INTAKE_PATHS)
@pytest.mark.parametrize("depth", [500, 700, 999])
async def test_nesting_500_to_999_deep_with_a_unicode_escape_is_answered_without_a_500(
    tmp_path: Path, path: str, depth: int
) -> None:
    """Deep bodies with a \\u escape: a 4xx (or 2xx where the sender's format allows it), never a 500."""
    bodies = [
        nested(depth),
        '{"version":"4","alerts":[],"title_rule":"t","event_status":"Info","x":' + nested(depth) + "}",
        '{"title":"t","items":[{"name":"n","deep":' + nested(depth) + "}]}",
    ]
    async with running(make_config(tmp_path, sources=SOURCES)) as bridge:
        for raw in bodies:
            response = await bridge.client.post(path, content=raw.encode(), headers=JSON)
            assert response.status_code < 500, (raw[:80], response.text[:300])
            assert "request_id" in response.json()


def test_hostile_bodies_are_4xx_through_the_real_process(make_bridge: MakeBridge) -> None:
    """One of each kind against the real server: a huge integer, a lone surrogate, deep nesting, a hostile groupKey."""
    bridge = make_bridge(None, sources=SOURCES)
    huge = bridge.post("/alertmanager", content=('{"version":"4","alerts":[],"n":' + HUGE_INT + "}").encode())
    assert huge.status_code == 400 and "4300 digits" in huge.json()["error"]["message"], huge.text
    surrogate = bridge.post(
        contract.PUSH_PATH,
        content=b'{"title_rule":"t","event_status":"Warning","labels":{"a\\ud800":"x"}}',
        headers=JSON,
    )
    assert surrogate.status_code == 400 and surrogate.json()["error"]["code"] == "InvalidParameter", surrogate.text
    for depth in (500, 999):
        deep = bridge.post("/webhook/hook", content=('{"title":"t","x":' + nested(depth) + "}").encode())
        assert deep.status_code in (200, 400), deep.text[:300]
        assert json.loads(deep.text)["request_id"]
    # Grafana's test-notification rule was a regex, quadratic here: 21 s at n=80k, past any CPU budget.
    n = 80_000
    alert = {"status": "firing", "labels": {"alertname": "x"}, "fingerprint": "-" * n}
    grafana = bridge.post("/grafana", {"version": "1", "groupKey": "-" * (2 * n), "alerts": [alert]})
    assert grafana.status_code == 200, grafana.text[:300]
    assert httpx.get(f"{bridge.url}/-/ready").status_code == 200
    assert "Traceback" not in bridge.log()


def test_an_envelope_quoting_a_lone_surrogate_is_written_with_a_replacement_character() -> None:
    """Defence in depth: whatever a message quotes, the answer encodes (U+FFFD for a lone surrogate)."""
    from bridge.responses import envelope

    response = envelope(400, "r", code="InvalidParameter", message="key 'a\ud800' is bad")
    assert json.loads(response.body)["error"]["message"] == "key 'a\ufffd' is bad"


def test_the_raw_payload_excerpt_of_a_failed_template_survives_any_nesting() -> None:
    """A body the decoder accepted may still be deeper than the stack left where the excerpt is made."""
    from bridge.sources.templated import _excerpt

    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    assert _excerpt(deep) == "(the payload is nested too deeply to show)"
    assert _excerpt({"a": 1}) == '{"a": 1}'
