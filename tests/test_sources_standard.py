"""``POST /event/push/alert/standard`` on the bridge answers exactly as Flashduty (and ``emulate``) do."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import httpx
import pytest

from bridge import contract
from bridge.emulate import EmulatorSettings
from bridge.emulate import create_app as create_emulator
from tests.support.inprocess import make_config, running

PUSH = contract.PUSH_PATH
KEY = "standard-test-key"
EVENT = {"title_rule": "disk full on db-1", "event_status": "Critical", "alert_key": "db-1:disk"}
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
MEDIA_TYPES = (
    None,
    "application/json",
    "APPLICATION/JSON",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/jsonx",
    "text/json",
)
CHARSETS = (None, "utf-8", "UTF8", '"utf-8"', "latin-1", "utf-16", "")


def content_type(media: str | None, charset: str | None) -> str | None:
    if media is None:
        return None
    return media if charset is None else f"{media}; charset={charset}"


def answer(response: httpx.Response) -> tuple[int, str | None]:
    """Status and error code (None on success; HEAD answers carry no body to read a code from)."""
    if not response.content:
        return response.status_code, None
    body = response.json()
    return response.status_code, body["error"]["code"] if "error" in body else None


async def test_bridge_and_emulate_answer_every_method_content_type_and_charset_alike(tmp_path: Path) -> None:
    """The same request gets the same status and code from the bridge and from lenient emulate."""
    raw = json.dumps(EVENT).encode()
    emulator = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_emulator(EmulatorSettings(strict=False, per_second=10**6))),
        base_url="http://emulator",
    )
    differences = []
    async with emulator, running(make_config(tmp_path)) as bridge:
        for method, media, charset in itertools.product(METHODS, MEDIA_TYPES, CHARSETS):
            if media is None and charset is not None:
                continue
            header = content_type(media, charset)
            headers = {"content-type": header} if header is not None else {}
            theirs = answer(
                await emulator.request(method, PUSH, params={"integration_key": KEY}, content=raw, headers=headers)
            )
            ours = answer(await bridge.client.request(method, PUSH, content=raw, headers=headers))
            if ours != theirs:
                differences.append((method, header, ours, theirs))
    assert differences == []


@pytest.mark.parametrize(
    ("method", "headers", "code"),
    [
        ("POST", {"content-type": "text/plain"}, "InvalidContentType"),
        ("POST", {"content-type": "application/x-www-form-urlencoded"}, "InvalidContentType"),
        ("POST", {}, "InvalidContentType"),
        ("POST", {"content-type": "application/json; charset=iso-8859-1"}, "InvalidContentType"),
        ("GET", {}, "MethodNotAllowed"),
        ("PUT", {"content-type": "application/json"}, "MethodNotAllowed"),
    ],
)
async def test_plain_curl_d_and_other_methods_are_400_with_flashdutys_code(
    tmp_path: Path, method: str, headers: dict[str, str], code: str
) -> None:
    """`curl -d` (form-encoded) is 400 InvalidContentType, a GET 400 MethodNotAllowed; nothing is stored."""
    async with running(make_config(tmp_path)) as bridge:
        response = await bridge.client.request(method, PUSH, content=json.dumps(EVENT).encode(), headers=headers)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == code
        assert (await bridge.bridge.outbox.stats()).pending == 0
        assert bridge.metric("flashduty_bridge_requests_total", source="standard", outcome="invalid") == 1
