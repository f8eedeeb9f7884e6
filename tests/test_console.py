"""The console (/ui), the events API and the admin API's storage failures, in process (pure request logic).

The app runs with its real lifespan (outbox on disk, delivery loop) behind httpx's ASGI transport. What a
browser does with the pages (scripts, refresh, keyboard) is tested in ``test_console_browser.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from bridge.app import Bridge, create_app
from bridge.config import Config
from bridge.lockout import Lockout
from bridge.outbox import Attempt, DeadLetterFilter, NewEvent, TrailFilter
from bridge.outbox.sqlite import SqliteOutbox
from bridge.ui import masking, session
from tests.support.clock import FakeClock

TOKEN = "console-token-SECRET-9d1e"
BASE = "http://bridge.test"

Client = httpx.AsyncClient
Console = Callable[..., Any]


@asynccontextmanager
async def running(config: dict[str, Any]) -> AsyncIterator[tuple[Bridge, Client]]:
    app = create_app(Config.model_validate(config))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            yield app.state.bridge, client


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    return {"storage": {"path": str(tmp_path / "outbox")}, "admin": {"token": TOKEN}}


@pytest.fixture
async def app(config: dict[str, Any]) -> AsyncIterator[tuple[Bridge, Client]]:
    async with running(config) as pair:
        yield pair


async def log_in(client: Client) -> str:
    """Log in through the form; return the CSRF token of the session (from a page's meta tag)."""
    response = await client.post("/ui/login", data={"token": TOKEN, "next": "/ui"})
    assert response.status_code == 303, response.text
    page = await client.get("/ui")
    match = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', page.text)
    assert match, page.text
    return match.group(1)


async def until(condition: Callable[[], Awaitable[Any]], what: str) -> Any:
    import asyncio

    for _ in range(400):
        value = await condition()
        if value:
            return value
        await asyncio.sleep(0.025)
    raise TimeoutError(what)


# -- the session: how the browser holds the token -----------------------------------------------------


async def test_every_page_needs_a_session_and_the_login_redirects_back(app: tuple[Bridge, Client]) -> None:
    """Without a session each page redirects to the login (which returns to it); a refresh gets 401."""
    _, client = app
    for path in ("/ui", "/ui/events?alert_key=k", "/ui/dead-letters", "/ui/playground", "/ui/config", "/ui/events/1"):
        response = await client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/ui/login?next=%2Fui")
    assert (await client.get("/ui", headers={"X-Console-Fragment": "1"})).status_code == 401

    login = await client.post("/ui/login", data={"token": TOKEN, "next": "/ui/events?alert_key=k"})
    assert (login.status_code, login.headers["location"]) == (303, "/ui/events?alert_key=k")
    assert (await client.get("/ui/events?alert_key=k")).status_code == 200


async def test_the_cookie_is_signed_httponly_strict_and_not_the_token(app: tuple[Bridge, Client]) -> None:
    """The browser holds a signed session, not the admin token; wrong tokens and foreign origins get no session."""
    _, client = app
    wrong = await client.post("/ui/login", data={"token": "guess", "next": "/ui"})
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    foreign = await client.post("/ui/login", data={"token": TOKEN}, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 401 and "set-cookie" not in foreign.headers

    response = await client.post("/ui/login", data={"token": TOKEN, "next": "//evil.example/x"})
    assert response.headers["location"] == "/ui"  # never an open redirect
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert TOKEN not in cookie
    value = client.cookies[session.COOKIE]
    assert session.valid(value, TOKEN)
    assert not session.valid(value, "another-token")  # a new admin.token ends every session
    assert not session.valid(value, TOKEN, now=2**40)  # sessions expire


async def test_ten_wrong_tokens_from_an_address_lock_the_login_and_the_admin_api_for_the_rest_of_the_minute(
    app: tuple[Bridge, Client],
) -> None:
    """Past ten wrong tokens in a minute, even the right one gets 429 with Retry-After (a guesser learns nothing
    by ignoring it); missing tokens and other sites' pages do not count; the minute over, the token works."""
    bridge, client = app
    clock = FakeClock()
    bridge.lockout = Lockout(clock)
    for _ in range(3):
        assert (await client.get("/api/v1/dead-letters")).status_code == 401  # no token: not a guess
        foreign = await client.post("/ui/login", data={"token": "x"}, headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 401
    for n in range(10):
        if n % 2:
            wrong = await client.post("/ui/login", data={"token": f"guess-{n}", "next": "/ui"})
        else:
            wrong = await client.get("/api/v1/dead-letters", headers={"Authorization": f"Bearer guess-{n}"})
        assert wrong.status_code == 401, n
        clock.advance(1)
    right = await client.post("/ui/login", data={"token": TOKEN, "next": "/ui"})
    assert right.status_code == 429 and "set-cookie" not in right.headers
    assert right.headers["retry-after"] == "50" and "try again in 50 s" in right.text
    api = await client.get("/api/v1/dead-letters", headers={"Authorization": f"Bearer {TOKEN}"})
    assert api.status_code == 429 and api.json()["error"]["code"] == "TooManyAttempts", api.text
    assert api.headers["retry-after"] == "50"  # the first guess, 10 s ago, leaves the minute in 50 s
    failures = bridge.metrics.auth_failures
    assert failures.labels("admin", "bad credentials")._value.get() == 5
    assert failures.labels("console", "bad credentials")._value.get() == 5
    assert failures.labels("console", "too many attempts")._value.get() == 1
    assert failures.labels("console", "foreign origin")._value.get() == 3
    clock.advance(51)
    assert (await client.get("/api/v1/dead-letters", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 200
    assert (await client.post("/ui/login", data={"token": TOKEN, "next": "/ui"})).status_code == 303


async def test_without_an_admin_token_the_console_is_disabled(config: dict[str, Any]) -> None:
    """No admin.token: every console page and the login say so with 403; nothing can log in."""
    async with running({**config, "admin": {"token": ""}}) as (_, client):
        for path in ("/ui", "/ui/login", "/ui/events"):
            response = await client.get(path)
            assert response.status_code == 403 and "admin.token" in response.text
        assert (await client.post("/ui/login", data={"token": ""})).status_code == 403


async def test_pages_forbid_framing_caching_and_foreign_scripts(app: tuple[Bridge, Client]) -> None:
    """Every page carries a CSP allowing only the bridge's own script and style, no framing, no-store."""
    _, client = app
    await log_in(client)
    response = await client.get("/ui/events")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-frame-options"] == "DENY"
    assert "<script" not in response.text.replace('<script src="/ui/static/console.js" defer></script>', "")


async def test_a_fragment_request_gets_only_the_main_content(app: tuple[Bridge, Client]) -> None:
    """The refresh script fetches X-Console-Fragment: 1 and gets what goes inside <main>, no page around it."""
    _, client = app
    await log_in(client)
    fragment = await client.get("/ui", headers={"X-Console-Fragment": "1"})
    assert fragment.status_code == 200
    assert "<h1>Overview</h1>" in fragment.text
    assert "<html" not in fragment.text and "<nav" not in fragment.text


async def test_the_overview_shows_each_destinations_backlog_headroom_circuit_and_last_error(
    config: dict[str, Any], tmp_path: Path
) -> None:
    """A destination that refuses connections, with three events queued before the start: its row says 3
    pending and how old, 99 of 100 requests left this minute, the circuit open, and the network error."""
    path = Path(config["storage"]["path"])
    box = SqliteOutbox(path, max_pending=100)
    await box.open()
    try:
        await box.put([NewEvent("team-a", f"k{i}", "alertmanager", "Critical", '{"title_rule":"x"}') for i in range(3)])
    finally:
        await box.close()
    limit = {"per_second": 7, "per_minute": 100}
    config["destinations"] = {"team-a": {"integration_key": "k", "url": "http://127.0.0.1:1/", "rate_limit": limit}}
    config["delivery"] = {"workers": 1, "circuit": {"failures": 1, "cooldown": "10m"}}
    async with running(config) as (bridge, client):
        await until(lambda: _async(bridge.dispatcher.lanes["team-a"].last_error), "a failed attempt")
        await log_in(client)
        page = (await client.get("/ui")).text
    row = re.search(r'<th scope="row">team-a</th>(.*?)</tr>', page, re.S)
    assert row, page
    cells = [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td>(.*?)</td>", row.group(1), re.S)]
    pending, oldest, dead, headroom, circuit, last_error = cells
    assert pending == "3" and re.fullmatch(r"\d+s", oldest) and dead == "0", cells
    second, minute = map(int, re.fullmatch(r"(\d+)/s, (\d+)/min", headroom).groups())  # type: ignore[union-attr]
    assert minute == 99 and second in (6, 7), headroom
    assert circuit == "open", cells
    assert "network" in last_error.lower() or "connect" in last_error.lower(), last_error


async def _async(value: Any) -> Any:
    return value


# -- changes need the CSRF token ------------------------------------------------------------------------


async def seed_dead_letters(path: Path) -> dict[str, int]:
    """Before the bridge starts: k-old is a dead letter superseded by a delivered newer event of its key; k-new
    a dead letter nothing superseded; k-purge one more."""
    box = SqliteOutbox(path, max_pending=100)
    await box.open()
    try:
        ids: dict[str, int] = {}
        for key, body in (("k-old", "old"), ("k-old", "newer"), ("k-new", "x"), ("k-purge", "y")):
            await box.put([NewEvent("default", key, "alertmanager", "Critical", json.dumps({"title_rule": body}))])
        for claimed in (await box.claim("default", 10, 30, coalesce=False)).events:
            await box.dead(claimed.id, "InvalidIntegrationKey", "integration_key is not a valid one", "fd-1")
            ids[claimed.alert_key] = claimed.id
        (newer,) = (await box.claim("default", 10, 30)).events
        await box.delivered(newer.id, Attempt(0.0, "ok", "delivered", "none", 0.01, 200, "fd-2"))
        return ids
    finally:
        await box.close()


async def test_replay_and_purge_need_the_sessions_csrf_token(config: dict[str, Any], tmp_path: Path) -> None:
    """Without the CSRF token, or from another origin, nothing changes; with it, replay follows the CLI's rules
    (the superseded dead letter stays) and purge removes one dead letter."""
    ids = await seed_dead_letters(tmp_path / "outbox")
    async with running(config) as (bridge, client):
        csrf = await log_in(client)
        everything = [("id", str(i)) for i in ids.values()]

        missing = await client.post("/ui/dead-letters/replay", data=dict(everything))
        forged = await client.post("/ui/dead-letters/replay", data={"id": str(ids["k-new"]), "csrf": "0" * 64})
        foreign = await client.post(
            "/ui/dead-letters/replay",
            data={"id": str(ids["k-new"]), "csrf": csrf},
            headers={"Origin": "https://evil.example"},
        )
        assert [r.status_code for r in (missing, forged, foreign)] == [403, 403, 403]
        assert len(await bridge.outbox.dead_letters(DeadLetterFilter())) == 3

        replayed = await client.post(
            "/ui/dead-letters/replay", content=_form([*everything, ("csrf", csrf)]), headers=FORM
        )
        assert replayed.status_code == 200
        assert f"#{ids['k-new']}" in replayed.text and "superseded" in replayed.text
        remaining = {letter["alert_key"] for letter in await bridge.outbox.dead_letters(DeadLetterFilter())}
        assert remaining == {"k-old"}  # k-new and k-purge went back to the queue (and were delivered: dry run)

        purged = await client.post("/ui/dead-letters/purge", data={"only": str(ids["k-old"]), "csrf": csrf})
        assert purged.status_code == 200 and "Purged 1 dead letter" in purged.text
        assert await bridge.outbox.dead_letters(DeadLetterFilter()) == []
        event = await bridge.outbox.trail_event(ids["k-old"])
        assert event is not None and event.outcome == "purged"


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _form(pairs: list[tuple[str, str]]) -> bytes:
    from urllib.parse import urlencode

    return urlencode(pairs).encode()


async def test_render_accepts_a_console_session_only_with_its_csrf_header(app: tuple[Bridge, Client]) -> None:
    """The playground posts to /-/render with the session cookie and X-CSRF-Token; the cookie alone is refused."""
    _, client = app
    csrf = await log_in(client)
    body = json.dumps({"title_rule": "disk full", "event_status": "Warning", "alert_key": "k"})
    json_type = {"Content-Type": "application/json"}
    without = await client.post("/-/render/standard", content=body, headers=json_type)
    with_header = await client.post("/-/render/standard", content=body, headers={**json_type, "X-CSRF-Token": csrf})
    assert without.status_code == 401
    assert with_header.status_code == 200, with_header.text
    (rendered,) = with_header.json()["data"]["events"]
    assert rendered["event"]["title_rule"] == "disk full"


# -- the running config: every secret masked ------------------------------------------------------------


def secret_config(tmp_path: Path) -> dict[str, Any]:
    """A config with every kind of secret the bridge takes, each a recognisable marker."""
    return {
        "storage": {"path": str(tmp_path / "outbox")},
        "admin": {"token": "MARK-admin-token"},
        "flashduty": {
            "integration_key": "MARK-default-key",
            "url": "https://user:MARK-url-password@flashduty.example/push?integration_key=MARK-url-key&x=1",
        },
        "destinations": {
            "db": {"integration_key": "MARK-db-key", "url": "https://flashduty.example/p?token=MARK-query-token"},
        },
        "alertmanager": {"auth": {"method": "basic", "username": "am", "password": "MARK-basic-password"}},
        "grafana": {"auth": {"method": "hmac", "secret": "MARK-hmac-secret"}},
        "standard_auth": {"method": "bearer", "token": "MARK-bearer-token"},
        "sources": {
            "updown": {
                "title": "{{ payload.event }}",
                "event_status": "Critical",
                "auth": {"method": "bearer", "token": "MARK-source-token"},
            }
        },
    }


def secret_values(value: Any) -> list[str]:
    """Every SecretStr value in a loaded config: whatever secret fields the config grows, this finds them."""
    from pydantic import BaseModel

    if isinstance(value, SecretStr):
        return [value.get_secret_value()] if value.get_secret_value() else []
    if isinstance(value, BaseModel):
        return [s for name in type(value).model_fields for s in secret_values(getattr(value, name))]
    if isinstance(value, dict):
        return [s for item in value.values() for s in secret_values(item)]
    if isinstance(value, list | tuple):
        return [s for item in value for s in secret_values(item)]
    return []


def test_masking_hides_every_secret_of_the_config(tmp_path: Path) -> None:
    """Keys, tokens, passwords, HMAC secrets, and secrets inside URLs are masked; the rest is shown."""
    loaded = Config.model_validate(secret_config(tmp_path))
    text = json.dumps(masking.masked(loaded))
    assert len(secret_values(loaded)) == 7  # the test covers every SecretStr it sets
    assert "MARK-" not in text
    shown = masking.masked(loaded)
    assert shown["alertmanager"]["auth"]["username"] == "am"
    assert shown["flashduty"]["url"].startswith("https://user:")
    assert "x=1" in shown["flashduty"]["url"] and "flashduty.example/push" in shown["flashduty"]["url"]
    assert shown["admin"]["token"] == masking.MASK
    assert shown["delivery"]["workers"] == 8


async def test_the_config_page_shows_no_secret(tmp_path: Path) -> None:
    """The console's config page, as served, contains none of the secrets (nor their URL-encoded forms)."""
    async with running(secret_config(tmp_path)) as (_, client):
        response = await client.post("/ui/login", data={"token": "MARK-admin-token"})
        assert response.status_code == 303
        page = await client.get("/ui/config")
        assert page.status_code == 200
        assert "integration_key" in page.text and "workers" in page.text
        assert "MARK" not in page.text


# -- the events API -------------------------------------------------------------------------------------


async def test_the_events_api_lists_and_shows_events_behind_the_admin_token(app: tuple[Bridge, Client]) -> None:
    """An accepted alert is listed with its inbound request id, and shown with its body and attempt."""
    _, client = app
    alert = {
        "status": "firing",
        "labels": {"alertname": "DiskFull", "team": "db"},
        "annotations": {},
        "startsAt": "2026-01-01T00:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": "f00d",
    }
    answer = await client.post("/alertmanager", json={"version": "4", "status": "firing", "alerts": [alert]})
    request_id = answer.json()["request_id"]
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def delivered() -> list[dict[str, Any]]:
        response = await client.get("/api/v1/events", params={"alert_key": "alertmanager:f00d"}, headers=auth)
        events: list[dict[str, Any]] = response.json()["data"]["events"]
        return events if events and events[0]["outcome"] == "delivered" else []

    (listed,) = await until(delivered, "the event to be delivered (dry run)")
    assert listed["inbound_request_id"] == request_id
    assert listed["labels"]["team"] == "db" and "body" not in listed
    by_label = await client.get("/api/v1/events", params=[("label", "team=db"), ("status", "Warning")], headers=auth)
    assert [e["id"] for e in by_label.json()["data"]["events"]] == [listed["id"]]

    shown = (await client.get(f"/api/v1/events/{listed['id']}", headers=auth)).json()["data"]
    assert json.loads(shown["body"])["alert_key"] == "alertmanager:f00d"
    assert [step["outcome"] for step in shown["steps"]] == ["ok"]

    assert (await client.get("/api/v1/events")).status_code == 401
    assert (await client.get("/api/v1/events/999999", headers=auth)).status_code == 404


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ({"status": "Fine"}, "status"),
        ({"outcome": "lost"}, "outcome"),
        ({"label": "team"}, "name=value"),
        ({"label": 'te"am=x'}, "label name"),
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "whole numbers"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-01T00:00:00"}, "time zone"),
        ({"colour": "red"}, "unknown parameter"),
    ],
)
async def test_the_events_api_refuses_a_bad_query_with_400_naming_it(
    app: tuple[Bridge, Client], query: dict[str, str], problem: str
) -> None:
    _, client = app
    response = await client.get("/api/v1/events", params=query, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 400
    assert problem in response.json()["error"]["message"]


async def test_since_takes_a_duration_or_an_rfc3339_time(app: tuple[Bridge, Client]) -> None:
    bridge, client = app
    await bridge.outbox.put([NewEvent("gone", "k", "alertmanager", "Critical", "{}")])
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for since, count in (("1h", 1), ("2026-01-01T00:00:00Z", 1), ("2999-01-01T00:00:00+02:00", 0)):
        response = await client.get("/api/v1/events", params={"since": since}, headers=auth)
        assert len(response.json()["data"]["events"]) == count, since


# -- storage failures answer 503 -------------------------------------------------------------------------


async def test_the_admin_api_answers_503_when_storage_fails(app: tuple[Bridge, Client]) -> None:
    """An outbox that cannot answer (here: closed) makes the admin and events APIs answer 503, never 500."""
    bridge, client = app
    auth = {"Authorization": f"Bearer {TOKEN}"}
    await bridge.outbox.close()
    for method, path in (
        ("GET", "/api/v1/dead-letters"),
        ("POST", "/api/v1/dead-letters/replay"),
        ("GET", "/api/v1/events"),
        ("GET", "/api/v1/events/1"),
    ):
        response = await client.request(method, path, headers=auth, json={} if method == "POST" else None)
        assert response.status_code == 503, (path, response.text)
        assert response.json()["error"]["code"] == "ServiceUnavailable"


def test_the_trail_filter_of_the_console_and_the_api_is_one_parser() -> None:
    """Query items become the same TrailFilter for the API and the console; empty form fields are no criterion."""
    from bridge import trail

    items = [("alert_key", "k"), ("outcome", ""), ("label", "a=b"), ("label", "c="), ("label", "")]
    where = trail.parse_query(items, 1000.0)
    assert where == TrailFilter(alert_key="k", labels=(("a", "b"), ("c", "")), limit=trail.DEFAULT_LIMIT)
    again = trail.parse_query(trail.query_string(where, 1000.0), 1000.0)
    assert again == where
