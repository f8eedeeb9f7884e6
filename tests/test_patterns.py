"""RE2 patterns for config regexes applied to sender text (route matchers, label rules)."""

from __future__ import annotations

import pickle

import pytest
from pydantic import ValidationError

from bridge import patterns
from bridge.config import LabelRules
from bridge.patterns import Pattern, PatternError


def test_patterns_match_whole_strings_only() -> None:
    pattern = Pattern("tmp_.*|__.*")
    assert pattern.fullmatch("tmp_x") and pattern.fullmatch("__name__")
    assert not pattern.fullmatch("x_tmp_") and not pattern.fullmatch("tmp\n")


def test_memoised_answers_stay_bounded_whatever_a_sender_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(patterns, "MEMO_SIZE", 100)
    pattern = Pattern("a.*")
    for index in range(1000):
        assert pattern.fullmatch(f"a{index}")
        assert len(pattern._memo) <= 100


def test_an_invalid_pattern_is_refused_with_res2s_reason() -> None:
    with pytest.raises(PatternError, match=r"^missing \): \(x$"):
        Pattern("(x")


def test_label_rules_compile_their_regexes_as_re2_and_dump_them_as_text() -> None:
    rules = LabelRules(drop=["tmp_.*"], keep=["[[:alpha:]_]+"])
    assert rules.drop[0].fullmatch("tmp_1") and rules.keep[0].fullmatch("alert_name")
    assert rules.model_dump()["drop"] == ("tmp_.*",)
    assert pickle.loads(pickle.dumps(rules)) == rules
    with pytest.raises(
        ValidationError, match=r"invalid regex 'x\(\?=y\)'.*lookarounds are not supported \(RE2 syntax\)"
    ):
        LabelRules(drop=["x(?=y)"])


def test_a_drop_rule_runs_in_linear_time_on_hostile_label_names() -> None:
    """(a+)+$ is the textbook catastrophic pattern for backtracking engines; RE2 does not care."""
    import subprocess
    import sys

    script = (
        "from bridge.config import LabelRules\n"
        "from bridge.mapping import apply_rules\n"
        "rules = [LabelRules(drop=['(a+)+b'])]\n"
        "labels = {'a' * n + '!': 'v' for n in (30, 3000, 300_000)}\n"
        "assert apply_rules(labels, {}, rules)[0] == labels\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr
