"""Regular expressions from the config that are applied to sender text: RE2, linear in the input.

Route matchers (``team=~"db|web"``) and label rules (``drop: ["tmp_.*"]``) are written by the
operator but run on whatever a sender sends. Python's ``re`` backtracks, so a careless pattern
(``(a|aa)*b``, ``.*x.*y.*z``) can take seconds on one long label. RE2 (``google-re2``) never
backtracks: matching is linear in the text, whatever the pattern. It is also the syntax the
config promises: Alertmanager matchers and Prometheus relabelling are Go ``regexp``, which is
RE2, so ``[[:alpha:]]``, ``\\pL`` and ``(?U)`` mean what they mean there, and backreferences and
lookarounds are refused at ``check-config`` with RE2's own message.

A :class:`Pattern` is fully anchored (Alertmanager's ``^(?:...)$``) and only answers whether a
whole string matches. Answers are memoised per pattern (label names and values repeat from one
alert to the next), in a table of bounded size. Patterns pickle as their text.
"""

from __future__ import annotations

from typing import Annotated, Any

import re2
from pydantic import GetCoreSchemaHandler, PlainSerializer, PlainValidator, WithJsonSchema
from pydantic_core import core_schema

from bridge.contract import clean_text

#: Answers remembered per pattern; the table is emptied when full (a sender cannot grow it).
MEMO_SIZE = 4096
_BOTH = re2._re2.RE2.Anchor.ANCHOR_BOTH
_NO_MATCH = (-1, -1)


class PatternError(ValueError):
    """The text is not an RE2 pattern; the message is RE2's."""


#: What an RE2 parse error means for someone used to Python or PCRE regexes.
_HINTS = (
    ("invalid perl operator: (?=", "lookarounds are not supported"),
    ("invalid perl operator: (?!", "lookarounds are not supported"),
    ("invalid perl operator: (?<", "lookarounds are not supported"),
    ("invalid perl operator: (?P", "backreferences are not supported"),  # (?P<name>...) itself is fine
    ("invalid perl operator: (?>", "atomic groups are not supported"),
    ("invalid perl operator: (?(", "conditionals are not supported"),
)


def _explain(message: str) -> str:
    for prefix, hint in _HINTS:
        if message.startswith(prefix):
            return f"{message}: {hint}"
    if message.startswith("invalid escape sequence: \\") and message[-1:].isdigit():
        return f"{message}: backreferences are not supported"
    if message.startswith("bad repetition operator: ") and message.endswith("+"):
        return f"{message}: possessive quantifiers are not supported"
    return message


def _options() -> re2.Options:
    options = re2.Options()
    options.never_capture = True  # only "does it match" is ever asked
    options.log_errors = False  # RE2 would print parse errors to stderr; they are raised instead
    return options


class Pattern:
    """One RE2 pattern, matched against whole strings."""

    __slots__ = ("_memo", "_regexp", "text")

    def __init__(self, text: str) -> None:
        try:
            compiled = re2.compile(text, _options())
        except re2.error as exc:
            reason = exc.args[0] if exc.args else "invalid"
            text_reason = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
            raise PatternError(_explain(text_reason)) from None
        self.text = text
        # The binding's own RE2 object: the module-level wrapper re-decodes match offsets to
        # str positions on every call (about 7 µs), which a yes/no answer does not need.
        self._regexp = compiled._regexp
        self._memo: dict[str, bool] = {}

    def fullmatch(self, value: str) -> bool:
        """Whether all of ``value`` matches (linear in ``len(value)``)."""
        found = self._memo.get(value)
        if found is None:
            try:
                raw = value.encode()
            except UnicodeEncodeError:  # a lone surrogate: as U+FFFD, which the JSON decoders make of it
                raw = clean_text(value).encode()
            found = self._regexp.Match(_BOTH, raw, 0, len(raw))[0] != _NO_MATCH
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[value] = found
        return found

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pattern) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"Pattern({self.text!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return Pattern, (self.text,)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        """Inside a model that holds compiled patterns (a Matcher), an instance is taken as it is."""
        return core_schema.is_instance_schema(cls)


def _validate(value: Any) -> Pattern:
    if isinstance(value, Pattern):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a regex (text)")
    try:
        return Pattern(value)
    except PatternError as exc:
        raise ValueError(f"invalid regex {value!r}: {exc} (RE2 syntax)") from None


#: A config field holding an RE2 pattern: text in, :class:`Pattern` out, dumped as text.
RegexPattern = Annotated[
    Pattern,
    PlainValidator(_validate),
    PlainSerializer(lambda pattern: pattern.text, return_type=str),
    WithJsonSchema({"type": "string"}),
]
