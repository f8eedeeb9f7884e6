"""Prometheus Alertmanager label matchers, as written in ``matchers:`` of an ``alertmanager.yml`` route.

One string holds one matcher (``team="db"``) or a comma-separated list, optionally in braces
(``{team="db", severity=~"critical|warning"}``); a trailing comma is allowed, ``{}`` is no matcher.
A matcher is ``name op value``, whitespace allowed around each token. ``op``: ``=``, ``!=``, ``=~``,
``!~``. ``name``: ``[a-zA-Z_:][a-zA-Z0-9_:]*`` (the classic parser's regex, so ``:`` is accepted) or a
non-empty double-quoted UTF-8 string such as ``"service.name"`` (as the 0.27+ UTF-8 parser allows).
``value``: double-quoted, or unquoted up to the end or the separating comma, trimmed. ``\\"``, ``\\\\``
and ``\\n`` are escapes in both; any other backslash is literal, so ``=~"\\d+"`` works. A missing label
matches as ``""``: ``foo=""`` and ``foo=~".*"`` match an absent foo, ``foo!=""`` requires it.

Where the classic parser (``pkg/labels/parse.go``) and the UTF-8 one (``matcher/parse``) differ, this
follows the classic: unquoted values may hold spaces and any character but ``"``, only the three escapes
above exist (``strconv.Unquote`` in the UTF-8 parser rejects ``"\\d"``), and unquoted names such as
``service.name`` are rejected (quote them). Stricter than both: ``{`` and ``}`` must pair (classic trims
each alone) and an empty matcher between commas is an error.

Regexes are RE2, the syntax Alertmanager's Go ``regexp`` speaks, run by ``google-re2``
(:mod:`bridge.patterns`): fully anchored like Alertmanager's ``^(?:...)$``, compiled once, and
matched in time linear in the label value, whatever the pattern. What RE2 rejects (backreferences,
lookarounds, atomic groups, possessive quantifiers) is rejected with RE2's own message; what it
accepts means what it means in Alertmanager (``[[:alpha:]]``, ``\\pL``, ``(?U)``, ASCII ``\\d``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

from bridge.patterns import Pattern, PatternError

__all__ = ["OPERATORS", "Matcher", "MatcherError", "MatcherList", "matches_all", "parse_all", "parse_matchers"]

#: Longest first, so ``=~`` is not read as ``=`` followed by a value starting with ``~``.
OPERATORS = ("=~", "!~", "!=", "=")
_WS = " \t\n\f\r"  # Go RE2's \s, which the classic parser trims
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_NAME_TOKEN = re.compile(r"[^\s=!~]+")
_ESCAPE = re.compile(r"\\([\s\S])")
_UNESCAPES = {"n": "\n", '"': '"', "\\": "\\"}


class MatcherError(ValueError):
    """An invalid matcher; the message names the input, the problem and, if known, the position in it."""

    def __init__(self, text: str, problem: str, position: int | None = None, hint: str = "") -> None:
        where = "" if position is None else f" at position {position}"
        super().__init__(f"{text!r}: {problem}{where}" + (f" ({hint})" if hint else ""))
        self.text, self.problem, self.position = text, problem, position


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _unescape(text: str) -> str:
    return _ESCAPE.sub(lambda m: _UNESCAPES.get(m[1], m[0]), text)


@dataclass(frozen=True)
class Matcher:
    """One label matcher; regex values are validated and compiled on construction."""

    name: str
    op: str
    value: str
    _regex: Pattern | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise MatcherError(str(self), "missing label name")
        if self.op not in OPERATORS:
            raise MatcherError(str(self), "unknown operator", hint="expected one of =, !=, =~, !~")
        if self.op in ("=~", "!~"):
            try:
                regex = Pattern(self.value)
            except PatternError as exc:
                raise MatcherError(str(self), f"invalid regex: {exc} (RE2 syntax)") from None
            object.__setattr__(self, "_regex", regex)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfy this matcher; an absent label counts as the empty string."""
        actual = labels.get(self.name, "")
        if self._regex is not None:
            return self._regex.fullmatch(actual) == (self.op == "=~")
        return (actual == self.value) == (self.op == "=")

    def __str__(self) -> str:
        name = self.name if _NAME.fullmatch(self.name) else _quote(self.name)
        return f"{name}{self.op}{_quote(self.value)}"


def _find_quote(text: str, i: int, end: int) -> int | None:
    """Index of the first unescaped ``"`` in ``text[i:end]``."""
    while i < end:
        if text[i] == '"':
            return i
        i += 2 if text[i] == "\\" else 1
    return None


def _parse_one(text: str, i: int, end: int) -> Matcher:
    """Parse the matcher in ``text[i:end]`` (not blank); errors name all of ``text``."""
    i = end - len(text[i:end].lstrip(_WS))
    end = max(i, len(text[:end].rstrip(_WS)))
    if text.startswith('"', i, end):
        if (close := _find_quote(text, i + 1, end)) is None:
            raise MatcherError(text, "unterminated quote", i)
        name, start, i = _unescape(text[i + 1 : close]), i, close + 1
        if not name:
            raise MatcherError(text, "empty label name", start)
    elif (token := _NAME_TOKEN.match(text, i, end)) is None:
        raise MatcherError(text, "missing label name", i)
    elif not _NAME.fullmatch(name := token.group()):
        hint = 'quote other names, e.g. "service.name"="x"'
        raise MatcherError(text, f"invalid label name {name!r}", i, hint)
    else:
        i = token.end()
    i = end - len(text[i:end].lstrip(_WS))
    if (op := next((o for o in OPERATORS if text.startswith(o, i, end)), None)) is None:
        if i == end:
            raise MatcherError(text, f"missing operator after label name {name!r}", i)
        raise MatcherError(text, "unknown operator", i, "expected one of =, !=, =~, !~")
    i = end - len(text[i + len(op) : end].lstrip(_WS))
    if text.startswith('"', i, end):
        if (close := _find_quote(text, i + 1, end)) is None:
            raise MatcherError(text, "unterminated quote", i)
        if close != end - 1:
            raise MatcherError(text, "unexpected text after closing quote", close + 1)
        raw = text[i + 1 : close]
    elif (quote := _find_quote(text, i, end)) is not None:
        if _find_quote(text, quote + 1, end) is None:
            raise MatcherError(text, "unterminated quote", quote)
        raise MatcherError(text, "unexpected quote in unquoted value", quote, "quote the whole value")
    else:
        raw = text[i:end]
    try:
        return Matcher(name, op, _unescape(raw))
    except MatcherError as exc:
        raise MatcherError(text, exc.problem) from None


def parse_matchers(text: str) -> list[Matcher]:
    """Parse one ``matchers:`` entry: a single matcher or a comma-separated list, optionally in braces."""
    start, end = len(text) - len(text.lstrip(_WS)), len(text.rstrip(_WS))
    opened, closed = text.startswith("{", start, end), end > start and text[end - 1] == "}"
    if opened and not closed:
        raise MatcherError(text, "missing closing brace '}'", end)
    if closed and not opened:
        raise MatcherError(text, "closing brace '}' without opening brace '{'", end - 1)
    if opened:
        start, end = start + 1, end - 1
    matchers: list[Matcher] = []
    segment, in_quote, escaped = start, False, False
    for i in range(start, end + 1):
        char = text[i] if i < end else ","
        if i == end or (char == "," and not in_quote):
            if text[segment:i].strip(_WS):
                matchers.append(_parse_one(text, segment, i))
            elif i < end:
                raise MatcherError(text, "empty matcher before ','", i)
            segment = i + 1
        elif char == '"' and not escaped:
            in_quote = not in_quote
        escaped = char == "\\" and not escaped
    return matchers


def parse_all(items: Sequence[str]) -> list[Matcher]:
    """Parse a ``matchers:`` list; each item may hold several matchers."""
    if isinstance(items, str):
        raise TypeError("parse_all() takes a list of matcher strings; use parse_matchers() for one string")
    return [matcher for item in items for matcher in parse_matchers(item)]


def matches_all(matchers: Sequence[Matcher], labels: Mapping[str, str]) -> bool:
    """Whether every matcher matches ``labels`` (true for no matchers, as in Alertmanager)."""
    return all(matcher.matches(labels) for matcher in matchers)


def _validate_list(value: object) -> object:
    if not isinstance(value, list | tuple):
        raise ValueError("expected a list of matcher strings, e.g. ['team=\"db\"']")
    out: list[Matcher] = []
    for item in value:
        if isinstance(item, Matcher):
            out.append(item)
        elif isinstance(item, str):
            out.extend(parse_matchers(item))
        else:
            raise ValueError(f"expected a matcher string, got {type(item).__name__}")
    return tuple(out)


#: A pydantic field type: a list of matcher strings in, a tuple of :class:`Matcher` out (dumped as strings).
MatcherList = Annotated[
    tuple[Matcher, ...],
    BeforeValidator(_validate_list),
    PlainSerializer(lambda matchers: [str(matcher) for matcher in matchers]),
    WithJsonSchema({"type": "array", "items": {"type": "string"}}),
]
