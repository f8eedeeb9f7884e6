"""Event serialisation: the body sent to Flashduty and the digest stored in the outbox never change.

Both used to be built with ``json.dumps``; they are built faster now, and must stay the
exact same text: a different body is a different request to Flashduty, and a different
digest would break the suppression of unchanged repeats across an upgrade.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import pytest

from bridge.models import Event


def reference_json(event: Event) -> str:
    return json.dumps(event.to_body(), ensure_ascii=False, separators=(",", ":"))


def reference_digest(event: Event) -> str:
    said = [event.event_status, event.title_rule, event.description, sorted(event.labels.items())]
    return hashlib.sha256(json.dumps(said, ensure_ascii=False).encode(errors="surrogatepass")).hexdigest()[:32]


def every_code_point(start: int, stop: int) -> str:
    return "".join(chr(code) for code in range(start, stop) if not 0xD800 <= code <= 0xDFFF)


#: Each chunk of the Unicode range once, in a title, a description, a label key and value.
CHUNKS = [every_code_point(start, min(start + 0x8000, 0x110000)) for start in range(0, 0x110000, 0x8000)]


@pytest.mark.parametrize("text", CHUNKS, ids=[f"U+{i * 0x8000:06X}" for i in range(len(CHUNKS))])
def test_body_and_digest_equal_json_dumps_for_every_code_point(text: str) -> None:
    event = Event(
        alert_key=f"alertmanager:{text[:50]}",
        event_status="Critical",
        title_rule=text[:512],
        description=text,
        labels={"k": text, text[:20]: "v", "a": '"\\\n\r\t\b\f\x00\x1f\x7f\u2028\u2029'},
        event_time=1795687200,
        images=({"alt": text[:10], "src": "http://x/", "href": "http://x/"},),
    )
    assert event.to_json() == reference_json(event)
    assert event.digest() == reference_digest(event)


def random_text(rng: random.Random) -> str:
    pool = ["a", " ", "\n", '"', "\\", "\x00", "é", "e\u0301", "👩\u200d💻", "🇫🇷", "中", "\ufeff", "\u2028"]
    pool += ["<", "\ud83d"]
    return "".join(rng.choice(pool) for _ in range(rng.randint(0, 12)))


def test_body_and_digest_equal_json_dumps_for_random_events() -> None:
    rng = random.Random(4)
    for _ in range(2000):
        fields: dict[str, Any] = {
            "alert_key": random_text(rng),
            "event_status": rng.choice(["Critical", "Warning", "Info", "Ok"]),
            "title_rule": random_text(rng),
            "description": random_text(rng),
            "labels": {random_text(rng): random_text(rng) for _ in range(rng.randint(0, 6))},
            "event_time": rng.choice([None, 0, 1795687200, 2**70]),
        }
        event = Event(**fields)
        assert event.to_json() == reference_json(event)
        assert event.digest() == reference_digest(event)


def test_lone_surrogates_and_huge_numbers_still_serialise_as_before() -> None:
    """orjson refuses them; the body falls back to json.dumps, so the text is what it always was."""
    event = Event("k\ud83d", "Info", "t\udc00", "d", {"x": "\ud800"}, event_time=2**80)
    assert event.to_json() == reference_json(event)
    assert event.digest() == reference_digest(event)


def test_empty_event() -> None:
    event = Event("k", "Ok", "")
    assert event.to_json() == reference_json(event) == '{"title_rule":"","event_status":"Ok","alert_key":"k"}'
    assert event.digest() == reference_digest(event)
