"""The console in a real browser: Debian's Chromium driven by Playwright, against the real bridge and emulate.

One journey, as an operator makes it: log in with the keyboard; see an alert delivered with Flashduty's
request id (the one the emulator logged); watch a new event appear without a reload; break the key (reload),
see the event become a dead letter; fix the key (reload), replay it from the page and see it delivered; render
a payload in the playground, and see a broken payload's failing field selected; read the masked config. Pages
are checked at 1280×800 and at a phone width.

Screenshots are written to ``tmp_path``, or to ``$BRIDGE_SCREENSHOTS`` when set: the README's images are
refreshed with ``BRIDGE_SCREENSHOTS=docs/console ./scripts/test tests/test_console_browser.py`` and committed
by hand, so CI never rewrites tracked files.

Without ``chromium`` (or the ``playwright`` package) the test skips, saying why; ``BRIDGE_REQUIRE_BROWSER=1``
(set by ``.ci/run``) makes that a failure. The browser is never downloaded (no ``playwright install``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ADMIN_TOKEN, TEST_KEY, Bridge, Emulator, start_emulator
from tests.test_app import alert, webhook

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
WRONG_KEY = "wrong-key-SECRET-0000"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
#: Playwright's own waits (each bounded); the page refreshes every 3-10 s.
WAIT_MS = 20_000


def chromium() -> str:
    path = shutil.which("chromium")
    missing = None
    if path is None:
        missing = "chromium is not installed (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "the playwright package is not installed (pip install -e .[test])"
    if missing is not None:
        if os.environ.get("BRIDGE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"BRIDGE_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    assert path is not None
    return path


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Any]:
    executable = chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=DESKTOP)
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            yield page
        finally:
            browser.close()


@pytest.fixture
def shots(tmp_path: Path) -> Callable[[Any, str], None]:
    target = Path(os.environ.get("BRIDGE_SCREENSHOTS") or tmp_path / "screenshots")
    target.mkdir(parents=True, exist_ok=True)

    def shoot(page: Any, name: str) -> None:
        page.screenshot(path=str(target / f"{name}.png"), full_page=False)

    return shoot


def set_key(bridge: Bridge, key: str) -> None:
    """Rewrite the bridge's config with another integration key and reload it."""
    config = yaml.safe_load(bridge.config_path.read_text())
    config["flashduty"]["integration_key"] = key
    bridge.config_path.write_text(yaml.safe_dump(config))
    response = httpx.post(f"{bridge.url}/-/reload", timeout=30)
    assert response.status_code == 200, response.text


def the_alert(name: str, **labels: str) -> dict[str, Any]:
    return webhook(alert({"alertname": name, "severity": "critical", "team": "db", **labels}))


@pytest.fixture
def strict_emulator(tmp_path: Path) -> Iterator[Emulator]:
    """The emulator accepting only TEST_KEY: any other key is 400 InvalidParameter, as Flashduty answers."""
    emu = start_emulator(tmp_path, "--keys", TEST_KEY)
    try:
        yield emu
    finally:
        emu.proc.stop()


def test_an_operator_follows_an_alert_replays_a_dead_letter_and_renders_a_template(
    browser_page: Any,
    strict_emulator: Emulator,
    make_bridge: Callable[..., Bridge],
    shots: Callable[[Any, str], None],
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    bridge = make_bridge(
        strict_emulator,
        sources={
            "updown": {
                "alerts": "payload.events",
                "title": "{{ alert.check.alias }} is {{ alert.event }}",
                "event_status": "{{ alert.event }}",
                "status_map": {"down": "Critical", "up": "Ok"},
                "alert_key": "{{ alert.check.token }}",
                "labels": {"check": "{{ alert.check.url }}"},
            }
        },
    )

    # -- log in with the keyboard ----------------------------------------------------------------------
    page.goto(f"{bridge.url}/ui/events")
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{bridge.url}/ui/events")
    cookies = page.context.cookies()
    assert [c["httpOnly"] for c in cookies] == [True] and ADMIN_TOKEN not in cookies[0]["value"]

    # -- an alert is delivered; its page shows Flashduty's request id ------------------------------------
    response = bridge.post("/alertmanager", the_alert("DiskFull", instance="db-1"))
    assert response.status_code == 200, response.text
    (key,) = response.json()["data"]["alert_keys"]
    page.get_by_label("alert_key").fill(key)
    page.get_by_role("button", name="Filter").click()
    row = page.locator("tr[data-event]").first
    expect(row.locator(".badge").first).to_have_text("delivered", timeout=WAIT_MS)
    row.get_by_role("link", name=re.compile(r"^\d+$")).click()
    expect(page.get_by_test_id("outcome")).to_have_text("delivered")
    request_id = page.get_by_test_id("request-id").first.inner_text()
    assert re.fullmatch(r"[0-9a-f-]{16,}", request_id), request_id
    assert f"request_id={request_id}" in strict_emulator.proc.log_path.read_text()  # the id Flashduty gave
    expect(page.locator(".timeline")).to_contain_text("accepted from alertmanager")
    shots(page, "event")

    # -- the events list refreshes without a reload ---------------------------------------------------
    page.goto(f"{bridge.url}/ui/events")
    page.evaluate("window.__stillHere = true")
    bridge.post("/alertmanager", the_alert("HighLatency", instance="web-1"))
    expect(page.locator("tr[data-event]", has_text="HighLatency")).to_have_count(1, timeout=WAIT_MS)
    assert page.evaluate("window.__stillHere") is True  # the same document: refreshed in place
    shots(page, "events")

    # -- a wrong key makes a dead letter ----------------------------------------------------------------
    set_key(bridge, WRONG_KEY)
    response = bridge.post("/alertmanager", the_alert("ReplicaLag", instance="db-2"))
    (dead_key,) = response.json()["data"]["alert_keys"]
    page.goto(f"{bridge.url}/ui/dead-letters")
    letter = page.locator("tr[data-letter]", has_text=dead_key)
    expect(letter).to_have_count(1, timeout=WAIT_MS)
    expect(letter).to_contain_text("integration_key is not a valid one")
    shots(page, "dead-letters")
    page.goto(f"{bridge.url}/ui/events")
    page.get_by_label("Label").fill("instance=db-2")
    page.get_by_label("Outcome").select_option("dead")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tr[data-event]")).to_have_count(1)
    expect(page.locator("tr[data-event]")).to_contain_text(dead_key)
    page.get_by_label("Outcome").select_option("delivered")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tr[data-event]")).to_have_count(0)
    page.goto(f"{bridge.url}/ui")
    expect(page.locator("table")).to_contain_text("InvalidIntegrationKey")
    shots(page, "overview")

    # -- fix the key, replay from the page (keyboard), see it delivered ---------------------------------
    set_key(bridge, TEST_KEY)
    page.goto(f"{bridge.url}/ui/dead-letters")
    replay = page.locator("tr[data-letter]", has_text=dead_key).get_by_role("button", name=re.compile("^Replay dead"))
    replay.focus()
    page.keyboard.press("Enter")
    expect(page.locator(".notice")).to_contain_text("Replayed")
    page.locator(".notice a").first.click()
    expect(page.get_by_test_id("outcome")).to_have_text("delivered", timeout=WAIT_MS)
    expect(page.locator("h1")).to_contain_text("replayed")
    expect(page.locator(".timeline")).to_contain_text("replayed from the dead letters")
    assert any(e["body"]["alert_key"] == dead_key for e in strict_emulator.events(TEST_KEY))

    # -- the playground renders through /-/render, and points at a failing field --------------------------
    page.goto(f"{bridge.url}/ui/playground")
    page.get_by_label("Source").select_option("updown")
    payload = {"events": [{"event": "down", "check": {"alias": "Shop", "token": "abc", "url": "https://shop"}}]}
    page.get_by_label("Payload (JSON)").fill(json.dumps(payload, indent=2))
    page.get_by_role("button", name="Render").click()
    expect(page.locator("#pg-result figure")).to_have_count(1)
    expect(page.locator("#pg-result")).to_contain_text("Shop is down")
    shots(page, "playground")
    broken = '{\n  "events": [\n    {"event": "down",, "check": {}}\n  ]\n}'
    page.get_by_label("Payload (JSON)").fill(broken)
    page.get_by_role("button", name="Render").click()
    expect(page.locator("#pg-error")).to_contain_text("line 3")
    selected = page.evaluate(
        "(() => { const t = document.getElementById('pg-payload');"
        " return [t.selectionStart, document.activeElement === t]; })()"
    )
    assert selected == [broken.index(",,") + 1, True]
    # A field the source refuses: the message names its path, and the page selects that field.
    page.get_by_label("Source").select_option("alertmanager")
    wrong = '{\n  "version": "4",\n  "alerts": [{"status": "firing", "labels": {"alertname": 5}}]\n}'
    page.get_by_label("Payload (JSON)").fill(wrong)
    page.get_by_role("button", name="Render").click()
    expect(page.locator("#pg-error")).to_contain_text("alerts[0].labels.alertname")
    selected = page.evaluate(
        "(() => { const t = document.getElementById('pg-payload');"
        " return t.value.slice(t.selectionStart, t.selectionEnd); })()"
    )
    assert selected == '"alertname": 5', selected

    # -- the config page masks the key ---------------------------------------------------------------------
    page.goto(f"{bridge.url}/ui/config")
    expect(page.locator("pre.config")).to_contain_text("integration_key")
    assert TEST_KEY not in page.content() and ADMIN_TOKEN not in page.content()

    # -- readable at a phone width: nothing wider than the screen but the tables' own scroll areas --------
    page.set_viewport_size(PHONE)
    for path in ("/ui", "/ui/events", "/ui/dead-letters", "/ui/playground"):
        page.goto(f"{bridge.url}{path}")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow}px wider than a phone"
    page.goto(f"{bridge.url}/ui/events")
    shots(page, "events-phone")
