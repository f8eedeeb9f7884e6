"""Alertmanager label matchers: parsing, evaluation, canonical rendering, errors and the pydantic type."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import BaseModel, ValidationError

from bridge.matchers import Matcher, MatcherError, MatcherList, matches_all, parse_all, parse_matchers

M = Matcher

VALID: list[tuple[str, list[Matcher]]] = [
    ('team="db"', [M("team", "=", "db")]),
    ("team=db", [M("team", "=", "db")]),
    ('  team  !=  "db"  ', [M("team", "!=", "db")]),
    ('team=~"db|web"', [M("team", "=~", "db|web")]),
    ("team!~db", [M("team", "!~", "db")]),
    ("foo = bar baz ", [M("foo", "=", "bar baz")]),
    ('msg="  padded  "', [M("msg", "=", "  padded  ")]),
    ("foo=", [M("foo", "=", "")]),
    ('foo=""', [M("foo", "=", "")]),
    ("url=http://x/?a=b", [M("url", "=", "http://x/?a=b")]),
    ("team=数据库", [M("team", "=", "数据库")]),
    ("job:rate5m=x", [M("job:rate5m", "=", "x")]),
    ('msg="say \\"hi\\" \\\\ now\\nnext"', [M("msg", "=", 'say "hi" \\ now\nnext')]),
    ('path=~"\\d+\\.log"', [M("path", "=~", "\\d+\\.log")]),
    ('tail="x\\\\"', [M("tail", "=", "x\\")]),
    ('a=x\\"y', [M("a", "=", 'x"y')]),
    ('"service.name"="api"', [M("service.name", "=", "api")]),
    ('"チーム" != "db"', [M("チーム", "!=", "db")]),
    ('"a\\"b"=x', [M('a"b', "=", "x")]),
    ('{team="db", severity=~"critical|warning"}', [M("team", "=", "db"), M("severity", "=~", "critical|warning")]),
    ('{a="b",c="d"}', [M("a", "=", "b"), M("c", "=", "d")]),
    (' { a = "b" , } ', [M("a", "=", "b")]),
    ("a=b, c!=d", [M("a", "=", "b"), M("c", "!=", "d")]),
    ('{msg="a,b", c="}"}', [M("msg", "=", "a,b"), M("c", "=", "}")]),
    ('{"service.name"="api", env=prod}', [M("service.name", "=", "api"), M("env", "=", "prod")]),
    ("{}", []),
    ("  { }  ", []),
    ("", []),
]

ERRORS: list[tuple[str, str]] = [
    ('team=~"(db"', "'team=~\"(db\"': invalid regex: missing ): (db (RE2 syntax)"),
    ('team=db"', "'team=db\"': unterminated quote at position 7"),
    ('team="db', "'team=\"db': unterminated quote at position 5"),
    ("=x", "'=x': missing label name at position 0"),
    ('team~="x"', "'team~=\"x\"': unknown operator at position 4 (expected one of =, !=, =~, !~)"),
    ("team", "'team': missing operator after label name 'team' at position 4"),
    ('team="db"x', "'team=\"db\"x': unexpected text after closing quote at position 9"),
    ('team=a"b"', "'team=a\"b\"': unexpected quote in unquoted value at position 6 (quote the whole value)"),
    (
        'service.name="x"',
        "'service.name=\"x\"': invalid label name 'service.name' at position 0"
        ' (quote other names, e.g. "service.name"="x")',
    ),
    (
        '1team="x"',
        '\'1team="x"\': invalid label name \'1team\' at position 0 (quote other names, e.g. "service.name"="x")',
    ),
    ('""="x"', '\'""="x"\': empty label name at position 0'),
    ('{team="db"', "'{team=\"db\"': missing closing brace '}' at position 10"),
    ('team="db"}', "'team=\"db\"}': closing brace '}' without opening brace '{' at position 9"),
    ('{a="b",,c="d"}', "'{a=\"b\",,c=\"d\"}': empty matcher before ',' at position 7"),
    (
        '{team="db", sev~="x"}',
        '\'{team="db", sev~="x"}\': unknown operator at position 15 (expected one of =, !=, =~, !~)',
    ),
    ('a=~"\\q"', "'a=~\"\\\\q\"': invalid regex: invalid escape sequence: \\q (RE2 syntax)"),
]

RE2_ERRORS: list[tuple[str, str]] = [
    ('a=~"(x)\\1"', "invalid escape sequence: \\1: backreferences are not supported"),
    ('a=~"(?P<n>x)(?P=n)"', "invalid perl operator: (?P: backreferences are not supported"),
    ('a=~"foo(?!bar)"', "invalid perl operator: (?!: lookarounds are not supported"),
    ('a=~"(?<=x)y"', "invalid perl operator: (?<=: lookarounds are not supported"),
    ('a=~"(?>ab)"', "invalid perl operator: (?>: atomic groups are not supported"),
    ('a=~"x++"', "bad repetition operator: ++: possessive quantifiers are not supported"),
    ('a=~"x{2}+"', "bad repetition operator: {2}+: possessive quantifiers are not supported"),
    ('a=~"x\\Z"', "invalid escape sequence: \\Z"),
]

EVALUATION: list[tuple[str, dict[str, str], bool]] = [
    # An absent label is the empty string, for every operator.
    ('foo=""', {}, True),
    ('foo=""', {"foo": "x"}, False),
    ('foo!=""', {}, False),
    ('foo!=""', {"foo": "x"}, True),
    ('foo="bar"', {}, False),
    ('foo!="bar"', {}, True),
    ('foo=~".*"', {}, True),
    ('foo=~".+"', {}, False),
    ('foo!~".+"', {}, True),
    ('foo!~"bar"', {}, True),
    # Regexes are anchored at both ends.
    ('team=~"db"', {"team": "db"}, True),
    ('team=~"db"', {"team": "db-1"}, False),
    ('team=~"db"', {"team": "xdb"}, False),
    ('team=~"db"', {"team": "db\n"}, False),
    ('team!~"db"', {"team": "db-1"}, True),
    # Alternation is anchored as a whole, like ^(?:x|xy)$.
    ('sev=~"critical|warning"', {"sev": "warning"}, True),
    ('sev=~"critical|warning"', {"sev": "critical-ish"}, False),
    ('sev=~"critical|warning"', {"sev": "info"}, False),
    ('a=~"x|xy"', {"a": "xy"}, True),
    # Case sensitive unless the regex says (?i).
    ('sev="critical"', {"sev": "Critical"}, False),
    ('sev=~"critical"', {"sev": "CRITICAL"}, False),
    ('sev=~"(?i)critical"', {"sev": "CRITICAL"}, True),
    # \d is ASCII only, as in RE2.
    ('n=~"\\d+"', {"n": "123"}, True),
    ('n=~"\\d+"', {"n": "١٢٣"}, False),
    # What Go's regexp (RE2) has and Python's re lacks means what it means in Alertmanager.
    ('n=~"[[:digit:]]+"', {"n": "123"}, True),
    ('n=~"[[:alpha:]]+"', {"n": "abc1"}, False),
    ('n=~"\\pL+"', {"n": "héllo"}, True),
    ('n=~"(?U)a+"', {"n": "aaa"}, True),
    ('n=~"a.b"', {"n": "a\nb"}, False),
    # Matched as U+FFFD, as JSON decoders make a lone surrogate.
    ('n=~"a.b"', {"n": "a\ud800b"}, True),
    # Other labels do not matter.
    ('team="db"', {"team": "db", "env": "prod"}, True),
]


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_valid_forms_parse_to_matchers(text: str, expected: list[Matcher]) -> None:
    """Quoted, unquoted, escaped, spaced, braced and UTF-8-named forms parse as Alertmanager reads them."""
    assert parse_matchers(text) == expected


@pytest.mark.parametrize(("text", "labels", "expected"), EVALUATION)
def test_evaluation_follows_alertmanager_semantics(text: str, labels: dict[str, str], expected: bool) -> None:
    """Absent labels, anchoring, alternation and case behave as in Alertmanager."""
    [matcher] = parse_matchers(text)
    assert matcher.matches(labels) is expected


@pytest.mark.parametrize("text", [text for text, _ in VALID])
def test_canonical_string_parses_back_to_the_same_matcher(text: str) -> None:
    """``parse(str(m)) == m`` for every valid form."""
    for matcher in parse_matchers(text):
        assert parse_matchers(str(matcher)) == [matcher]


@pytest.mark.parametrize(
    ("matcher", "rendered"),
    [
        (M("team", "=", "db"), 'team="db"'),
        (M("sev", "=~", "a|b"), 'sev=~"a|b"'),
        (M("path", "!~", "\\d+"), 'path!~"\\\\d+"'),
        (M("msg", "!=", 'say "hi"\n'), 'msg!="say \\"hi\\"\\n"'),
        (M("service.name", "=", "api"), '"service.name"="api"'),
        (M("job:rate", "=", ""), 'job:rate=""'),
    ],
)
def test_str_renders_canonical_syntax(matcher: Matcher, rendered: str) -> None:
    """Values are always quoted and escaped; names are quoted only when not classic label names."""
    assert str(matcher) == rendered


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_bad_input_is_rejected_with_a_precise_message(text: str, message: str) -> None:
    """The error names the whole input, the problem and where it is."""
    with pytest.raises(MatcherError) as caught:
        parse_matchers(text)
    assert str(caught.value) == message


@pytest.mark.parametrize(("text", "problem"), RE2_ERRORS)
def test_regex_constructs_re2_lacks_are_rejected(text: str, problem: str) -> None:
    """Patterns Alertmanager's RE2 refuses are refused by RE2 itself, with a hint naming the construct."""
    with pytest.raises(MatcherError) as caught:
        parse_matchers(text)
    assert str(caught.value) == f"{text!r}: invalid regex: {problem} (RE2 syntax)"


def test_regex_constructs_shared_with_re2_are_accepted() -> None:
    """Escaped look-alikes, classes with brackets and ordinary quantifiers are not mistaken for RE2 gaps."""
    for pattern in [
        "\\(\\?=x\\)",
        "\\\\\\\\1",
        "[(?=]",
        "[]a]+",
        "a+b*c?",
        "x{2,3}",
        "\\++",
        "(?i)(?P<n>x)",
        "[[a]",
        "a{,2}",
    ]:
        [matcher] = parse_matchers(f'a=~"{pattern}"')
        assert matcher.op == "=~"


def test_constructor_validates_operator_name_and_regex() -> None:
    """A Matcher built directly is checked like a parsed one."""
    with pytest.raises(MatcherError, match="unknown operator"):
        Matcher("team", "==", "db")
    with pytest.raises(MatcherError, match="missing label name"):
        Matcher("", "=", "db")
    with pytest.raises(MatcherError, match=r"^'team=~\"\(db\"': invalid regex: missing \)"):
        Matcher("team", "=~", "(db")


def test_matchers_are_frozen_hashable_values() -> None:
    """Equal matchers hash alike (the compiled regex is not part of the value) and cannot be changed."""
    first, second = Matcher("sev", "=~", "a|b"), parse_matchers('sev=~"a|b"')[0]
    assert first == second
    assert hash(first) == hash(second)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.value = "c"  # type: ignore[misc]


def test_matches_all_requires_every_matcher() -> None:
    """All matchers must match; no matchers match everything."""
    matchers = parse_matchers('{team="db", sev=~"critical|warning"}')
    assert matches_all(matchers, {"team": "db", "sev": "warning"})
    assert not matches_all(matchers, {"team": "db", "sev": "info"})
    assert matches_all([], {})


def test_parse_all_flattens_items_and_brace_lists() -> None:
    """Each list item may hold one matcher or a brace list; the result is one flat list in order."""
    assert parse_all(['team="db"', '{a="1", b!="2"}']) == [M("team", "=", "db"), M("a", "=", "1"), M("b", "!=", "2")]


def test_parse_all_rejects_a_bare_string() -> None:
    """A single string is not silently split into characters."""
    with pytest.raises(TypeError, match="parse_matchers"):
        parse_all('team="db"')


class _Route(BaseModel):
    matchers: MatcherList = ()


def test_matcher_list_parses_strings_in_a_pydantic_model() -> None:
    """The pydantic type turns a list of strings (brace lists included) into a tuple of matchers."""
    route = _Route.model_validate({"matchers": ['team="db"', '{sev=~"critical|warning", env!=dev}']})
    assert route.matchers == (M("team", "=", "db"), M("sev", "=~", "critical|warning"), M("env", "!=", "dev"))
    assert _Route().matchers == ()


def test_matcher_list_reports_the_parse_error_at_the_field() -> None:
    """A bad matcher becomes a pydantic error at the field's location carrying the precise message."""
    with pytest.raises(ValidationError) as caught:
        _Route.model_validate({"matchers": ['team="db"', 'sev~="x"']})
    [error] = caught.value.errors()
    assert error["loc"] == ("matchers",)
    assert error["msg"] == "Value error, 'sev~=\"x\"': unknown operator at position 3 (expected one of =, !=, =~, !~)"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('team="db"', "expected a list of matcher strings, e.g. ['team=\"db\"']"),
        ({"team": "db"}, "expected a list of matcher strings, e.g. ['team=\"db\"']"),
        ([1], "expected a matcher string, got int"),
    ],
)
def test_matcher_list_rejects_anything_but_a_list_of_strings(value: object, message: str) -> None:
    """A bare string, a mapping or a non-string item is a validation error, not a guess."""
    with pytest.raises(ValidationError) as caught:
        _Route.model_validate({"matchers": value})
    assert [error["msg"] for error in caught.value.errors()] == [f"Value error, {message}"]


def test_matcher_list_dumps_canonical_strings_that_validate_back() -> None:
    """Dumping gives canonical matcher strings, which validate to the same matchers; the schema says strings."""
    route = _Route.model_validate({"matchers": ["team = db", 'path=~"\\d+"']})
    dumped = route.model_dump()
    assert dumped == {"matchers": ['team="db"', 'path=~"\\\\d+"']}
    assert _Route.model_validate(dumped) == route
    assert _Route(matchers=route.matchers) == route  # Matcher instances pass through
    assert _Route.model_json_schema()["properties"]["matchers"]["items"] == {"type": "string"}


def test_a_pathological_pattern_matches_a_long_hostile_value_in_linear_time() -> None:
    """(a|aa)*b on 'a'*n backtracks exponentially in Python's re; RE2 answers at once.

    Run in a child bounded by a generous timeout: Python's re would need longer than the age
    of the universe for n=100, RE2 takes microseconds even for n=1,000,000. No timing asserted.
    """
    import subprocess
    import sys

    script = (
        "from bridge.matchers import parse_matchers\n"
        "[m] = parse_matchers('x=~\"(a|aa)*b\"')\n"
        "for n in (100, 10_000, 1_000_000):\n"
        "    assert not m.matches({'x': 'a' * n})\n"
        "[m] = parse_matchers('x=~\".*a.*b.*c.*d\"')\n"
        "assert not m.matches({'x': 'abc' * 300_000})\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


def test_a_matcher_pickles_with_its_compiled_pattern() -> None:
    import pickle

    [matcher] = parse_matchers('team=~"db|web"')
    again = pickle.loads(pickle.dumps(matcher))
    assert again == matcher and again.matches({"team": "web"}) and not again.matches({"team": "ops"})
