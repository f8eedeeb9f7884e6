"""Fuzzing every intake endpoint and ``/-/render``: whatever arrives, the answer is a 2xx or 4xx envelope.

Hypothesis generates bodies (raw bytes, arbitrary JSON with lone surrogates, huge integers and
deep nesting, near-valid payloads of each sender), content types, methods and query strings,
and sends them in-process (ASGI) to one real app, lifespan, outbox and worker process included
(template sources, and built-in bodies over 256 bytes, run in the worker; smaller ones inline).
The HTTP layer in front of the app (request heads, header limits) is fuzzed through the real
process in ``tests/test_isolation.py``. Derandomized
(a fixed seed, no example database) so CI runs the same few thousand cases every time. A 5xx,
an exception out of the app, or a body that is not ``{"request_id", "data" | "error"}`` fails.
The named regressions these cases once found are in ``tests/test_intake_regressions.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import contract
from tests.support.inprocess import InProcess, make_config, running

SOURCES: dict[str, Any] = {
    "hook": {
        "alerts": "payload.items",
        "title": "{{ alert.name }} {{ payload.title | default('') }}",
        "description": "{{ alert | tojson }} {{ headers['x-env'] }} {{ query.team }}",
        "event_status": "{{ alert.state }}",
        "status_map": {"down": "Critical", "up": "Ok"},
        "alert_key": "{{ alert.id }}",
        "labels": {"n": "{{ alert.n + 1 }}", "s": "{{ alert.s | regex_replace('a+', 'b') }}"},
    },
    "flat": {"title": "{{ payload.title }}", "event_status": "{{ payload.status }}"},
}
CONFIG: dict[str, Any] = {
    "sources": SOURCES,
    "alertmanager": {"description": "{{ alert.annotations.summary }} {{ payload.commonLabels | tojson }}"},
    "routes": [
        {"matchers": ['team=~"db|storage"'], "destination": "default", "severity_map": {"P1": "Critical"}},
        {"matchers": ['env="dev"'], "drop": True},
    ],
    "labels": {"drop": ["tmp_.*"], "rename": {"host": "instance"}},
    # Passthrough keys deliver to a closed loopback port: nothing leaves the machine.
    "flashduty": {"url": "http://127.0.0.1:9/event/push/alert/standard", "timeout": "1s"},
    "passthrough_max_keys": 1000,  # the cap's 503 is tested in tests/test_passthrough.py
    "max_body_bytes": 1024 * 1024,
    # Built-in senders' bodies over 256 bytes go to the worker process too: both paths are fuzzed.
    "limits": {"inline_bytes": "256B"},
}
INTAKE = ["/alertmanager", "/grafana", "/webhook/hook", "/webhook/flat", "/webhook/none", contract.PUSH_PATH]
RENDER = ["/-/render/alertmanager", "/-/render/grafana", "/-/render/standard", "/-/render/hook", "/-/render/x"]

# -- bodies -------------------------------------------------------------------------------------------

#: Every code point, lone surrogates included (json.dumps writes them as \\udXXX escapes).
any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None), max_size=40)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    any_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(any_text, inner, max_size=5)),
    max_leaves=25,
)
label_maps = st.dictionaries(
    st.one_of(st.sampled_from(["alertname", "severity", "team", "env", "tmp_x", "host", "a.b", ""]), any_text),
    st.one_of(any_text, st.sampled_from(["critical", "P1", "db", "dev", "x" * 3000]), json_values),
    max_size=8,
)


@st.composite
def alertmanager_body(draw: st.DrawFn) -> Any:
    alert = {
        "status": draw(st.sampled_from(["firing", "resolved", "other", None])),
        "labels": draw(label_maps),
        "annotations": draw(st.one_of(label_maps, json_values)),
        "startsAt": draw(st.sampled_from(["2026-11-26T10:00:00Z", "0001-01-01T00:00:00Z", "nope", None, 5])),
        "fingerprint": draw(st.one_of(any_text, st.none(), st.just("-" * 500))),
    }
    body = {"version": draw(st.sampled_from(["4", "1", 4, None])), "alerts": draw(st.lists(st.just(alert), max_size=3))}
    body["groupKey"] = draw(st.one_of(any_text, st.just("-" * 1000 + "-1")))
    body["commonLabels"] = draw(json_values)
    return body


@st.composite
def grafana_body(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):
        return {
            "ruleName": draw(any_text),
            "state": draw(st.sampled_from(["alerting", "ok", "paused", "no_data", "weird"])),
            "ruleId": draw(st.one_of(st.integers(), st.none(), any_text)),
            "evalMatches": draw(st.one_of(st.lists(st.fixed_dictionaries({"value": scalars, "metric": any_text})))),
            "message": draw(any_text),
        }
    alert = {"status": "firing", "labels": draw(label_maps), "values": draw(st.one_of(json_values, st.none()))}
    return {"version": "1", "alerts": [alert], "groupKey": draw(any_text)}


@st.composite
def standard_body(draw: st.DrawFn) -> Any:
    body = {
        "title_rule": draw(st.one_of(any_text, st.just("t" * 600), scalars)),
        "event_status": draw(st.sampled_from(["Critical", "Warning", "Info", "Ok", "critical", None])),
        "alert_key": draw(st.one_of(st.none(), any_text, st.just("k" * 300))),
        "labels": draw(label_maps),
        "images": draw(st.one_of(st.none(), json_values, st.just([{"src": "x" * 300}]))),
        "event_time": draw(st.one_of(st.none(), st.integers(), st.floats(allow_nan=False))),
    }
    return {key: value for key, value in body.items() if value is not None or draw(st.booleans())}


@st.composite
def template_body(draw: st.DrawFn) -> Any:
    item = {
        "id": draw(st.one_of(any_text, st.integers())),
        "name": draw(any_text),
        "state": draw(st.sampled_from(["down", "up", "Critical", "?", None])),
        "n": draw(scalars),
        "s": draw(st.one_of(any_text, st.just("a" * 70_000))),
    }
    items = draw(st.one_of(st.lists(st.just(item), max_size=4), json_values))
    return {"items": items, "title": draw(any_text), "status": draw(st.sampled_from(["Ok", "Info", "x"]))}


def encoded(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=True).encode()


raw_fragments = st.one_of(
    st.binary(max_size=200),
    st.integers(min_value=1, max_value=1200).map(lambda depth: ("[" * depth + '"\\u00e9"' + "]" * depth).encode()),
    st.integers(min_value=4290, max_value=4400).map(
        lambda digits: ('{"version":"4","n":' + "7" * digits + "}").encode()
    ),
    st.sampled_from([b"", b" ", b"null", b"[]", b"NaN", b'{"a":Infinity}', b"\xef\xbb\xbf{}", b'{"a":"\\ud800"}']),
)
bodies = st.one_of(
    raw_fragments,
    json_values.map(encoded),
    alertmanager_body().map(encoded),
    grafana_body().map(encoded),
    standard_body().map(encoded),
    template_body().map(encoded),
)
content_types = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=latin-1",
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/json;;;charset=",
        ]
    ),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
)
queries = st.one_of(
    st.just(""),
    st.sampled_from(["integration_key=", "integration_key=k1", "integration_key=a&integration_key=b", "team=db"]),
    st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=30),
    st.integers(min_value=0, max_value=20).map(lambda n: f"integration_key=fuzz-key-{n}"),
)

# -- the app under test ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[asyncio.AbstractEventLoop, InProcess]]:
    """One real app for every example of the module, on a loop of its own (hypothesis tests are sync)."""
    tmp_path: Path = tmp_path_factory.mktemp("fuzz")
    loop = asyncio.new_event_loop()
    context = running(make_config(tmp_path, **CONFIG))
    started = loop.run_until_complete(context.__aenter__())
    try:
        yield loop, started
    finally:
        loop.run_until_complete(context.__aexit__(None, None, None))
        loop.close()


def send(app: tuple[asyncio.AbstractEventLoop, InProcess], method: str, path: str, **kwargs: Any) -> None:
    loop, bridge = app
    response = loop.run_until_complete(bridge.client.request(method, path, **kwargs))
    assert 200 <= response.status_code < 500, (method, path, response.status_code, response.text[:500])
    if method == "HEAD":
        return
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("request_id"), str), body
    if 200 <= response.status_code < 300:
        assert set(body) == {"request_id", "data"}, body
    else:
        assert set(body) == {"request_id", "error"}, body
        assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str), body


FUZZ = settings(
    max_examples=1500,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(path=st.sampled_from(INTAKE), body=bodies, content_type=content_types, query=queries)
def test_every_intake_endpoint_answers_2xx_or_4xx_with_an_envelope(
    app: tuple[asyncio.AbstractEventLoop, InProcess], path: str, body: bytes, content_type: str | None, query: str
) -> None:
    headers = {"x-env": "fuzz"} | ({"content-type": content_type} if content_type is not None else {})
    send(app, "POST", f"{path}?{query}" if query else path, content=body, headers=headers)


@settings(FUZZ, max_examples=700)
@given(
    path=st.sampled_from(RENDER),
    body=bodies,
    content_type=content_types,
    query=queries,
    method=st.sampled_from(["POST", "POST", "GET"]),
)
def test_render_answers_2xx_or_4xx_with_an_envelope(
    app: tuple[asyncio.AbstractEventLoop, InProcess],
    path: str,
    body: bytes,
    content_type: str | None,
    query: str,
    method: str,
) -> None:
    headers = {"content-type": content_type} if content_type is not None else {}
    send(app, method, f"{path}?{query}" if query else path, content=body, headers=headers)


@settings(FUZZ, max_examples=300)
@given(method=st.sampled_from(["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"]), body=bodies, query=queries)
def test_the_standard_api_answers_every_method_with_a_4xx(
    app: tuple[asyncio.AbstractEventLoop, InProcess], method: str, body: bytes, query: str
) -> None:
    send(app, method, f"{contract.PUSH_PATH}?{query}" if query else contract.PUSH_PATH, content=body)


def test_the_fuzzed_requests_reached_the_worker_process_and_the_event_loop_both(
    app: tuple[asyncio.AbstractEventLoop, InProcess],
) -> None:
    """The examples above took both paths: hundreds of jobs ran in the worker (runs after them, same app)."""
    _, bridge = app
    assert bridge.bridge.isolation.pool.jobs > 500
    accepted = bridge.metric("flashduty_bridge_requests_total", source="alertmanager", outcome="accepted")
    assert accepted > 0
