"""Truncation by code points that never leaves half a character."""

from __future__ import annotations

import pytest

from bridge.limits import LABEL_KEY, clean_text, is_label_key, sanitise_label_key, truncate


def test_short_text_is_unchanged() -> None:
    """Text within the limit is returned as is and reported as not cut."""
    assert truncate("abc", 3) == ("abc", False)


def test_limit_counts_code_points_not_bytes() -> None:
    """Ten CJK characters (30 bytes) fit a limit of 10."""
    assert truncate("告" * 10, 10) == ("告" * 10, False)
    assert truncate("告" * 11, 10) == ("告" * 9 + "…", True)


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("ab👩‍💻cd", 5, "ab…"),  # 👩 ZWJ 💻 is one character: never keep its first half
        ("abe\u0301cd", 4, "ab…"),  # e + combining acute
        ("ab👍🏽cd", 4, "ab…"),  # thumbs up + skin tone
        ("a🇫🇷🇩🇪", 4, "a🇫🇷…"),  # two flags: keep whole pairs only
        ("a🇫🇷🇩🇪", 3, "a…"),
        ("❤️❤️❤️", 4, "❤️…"),  # heart + variation selector
    ],
)
def test_truncation_never_splits_a_user_visible_character(text: str, limit: int, expected: str) -> None:
    """Combining marks, ZWJ sequences, modifiers, flags and variation selectors stay whole."""
    out, cut = truncate(text, limit)
    assert cut
    assert out == expected
    assert len(out) <= limit


def test_lone_surrogate_is_replaced() -> None:
    """A lone surrogate becomes U+FFFD so the text encodes as UTF-8."""
    assert clean_text("a\ud800b") == "a\ufffdb"


def test_clean_text_keeps_every_other_code_point() -> None:
    """The ASCII shortcut and the regex agree: only surrogates change."""
    for code in range(0x110000):
        text = f"a{chr(code)}"
        expected = "a\ufffd" if 0xD800 <= code <= 0xDFFF else text
        assert clean_text(text) == expected


@pytest.mark.parametrize(
    "name", ["a", "_", "A_1", "alertname", "1a", "", "a.b", "a-b", "é", "a\n", "a\n\n", "\na", "a ", "ǅ"]
)
def test_is_label_key_is_the_label_key_regex(name: str) -> None:
    """Same answer as LABEL_KEY.fullmatch: a trailing newline is not part of a valid key."""
    assert is_label_key(name) == (LABEL_KEY.fullmatch(name) is not None)
    assert is_label_key(name) == (name in ("a", "_", "A_1", "alertname"))


def test_is_label_key_agrees_with_the_regex_on_every_code_point() -> None:
    for code in range(0x110000):
        for name in (chr(code), f"a{chr(code)}", f"{chr(code)}a"):
            assert is_label_key(name) == (LABEL_KEY.fullmatch(name) is not None), hex(code)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("service.name", "service_name"),
        ("k8s.pod/name", "k8s_pod_name"),
        ("1st", "_1st"),
        ("", "_"),
        ("ok_key", "ok_key"),
        ("team\n", "team_"),
        ("x" * 200, "x" * 128),
    ],
)
def test_label_keys_are_sanitised_to_prometheus_naming(key: str, expected: str) -> None:
    """Invalid characters become underscores, a leading digit gets one, and keys stop at 128."""
    assert sanitise_label_key(key) == expected
