"""Filters and globals that alert templates expect (Grafana OnCall's set, with the same names).

Every helper treats a missing value (Jinja ``Undefined``) or ``None`` as "nothing": it returns
it unchanged, so ``{{ payload.absent | parse_time | format_time }}`` renders empty text
instead of failing. Wrong input raises :class:`~bridge.templating.budget.TemplateError`.
No helper evaluates text as a template.

Regular expressions run on the ``regex`` module with a timeout taken from the render's
remaining CPU budget: the standard ``re`` cannot be interrupted, and a plain ``.*a.*b`` takes
seconds on a few KiB of hostile text. Patterns are compiled once (cached), and pattern,
input and replacement sizes are capped.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import re
import zoneinfo
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import regex
from jinja2.runtime import Undefined
from jinja2.utils import Namespace

from bridge.sources.alertmanager import fingerprint as labels_fingerprint
from bridge.templating import budget as _budget
from bridge.templating.budget import Limits, TemplateError, TemplateLimitError, check_size, weight

Helper = Callable[..., Any]

_NUMBER = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")
#: OnCall's datetimeformat default, kept so ported templates render the same.
_ONCALL_TIME_FORMAT = "%H:%M / %d-%m-%Y"


def _missing(value: Any) -> bool:
    return value is None or isinstance(value, Undefined)


def _json_default(value: Any) -> Any:
    if isinstance(value, Undefined):
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Namespace):
        return dict(object.__getattribute__(value, "_Namespace__attrs"))
    return str(value)


def _canonical(value: Any) -> bytes:
    """Bytes to hash: text as UTF-8, anything else as canonical JSON (sorted keys)."""
    if isinstance(value, str):
        return value.encode(errors="surrogatepass")
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=_json_default)
    return text.encode(errors="surrogatepass")


def _from_epoch(number: float) -> datetime:
    # The unit is guessed from the magnitude: 1e11 s is the year 5138, 1e11 ms is 1973.
    for threshold, scale in ((1e17, 1e9), (1e14, 1e6), (1e11, 1e3)):
        if abs(number) >= threshold:
            number /= scale
            break
    try:
        return datetime.fromtimestamp(number, UTC)
    except (OverflowError, OSError, ValueError):
        raise TemplateError(f"parse_time: {number} is out of range") from None


def parse_time(value: Any) -> Any:
    """A timezone-aware datetime from RFC 3339 / ISO 8601 text, or epoch s/ms/µs/ns (number or text).

    Times without an offset are taken as UTC.
    """
    if _missing(value) or value == "":
        return value
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _from_epoch(float(value))
    if not isinstance(value, str) or len(value) > 64:
        raise TemplateError("parse_time expects a time string, a number or a datetime")
    text = value.strip()
    if _NUMBER.fullmatch(text):
        return _from_epoch(float(text))
    try:
        parsed = datetime.fromisoformat(text.replace("t", "T").replace("z", "Z"))
    except ValueError:
        raise TemplateError(f"parse_time: {text[:40]!r} is not an RFC 3339 / ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_time(value: Any, fmt: str | None = None, tz: str = "UTC") -> Any:
    """``strftime(fmt)`` of ``parse_time(value)`` in zone ``tz``; ISO 8601 when ``fmt`` is None."""
    moment = parse_time(value)
    if _missing(moment) or moment == "":
        return moment
    try:
        zone = zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise TemplateError(f"format_time: unknown time zone {tz[:64]!r}") from None
    local = moment.astimezone(zone)
    return local.isoformat() if fmt is None else local.strftime(str(fmt))


def to_epoch(value: Any) -> Any:
    """Unix seconds (int) of ``parse_time(value)``: what Flashduty's ``event_time`` takes."""
    moment = parse_time(value)
    return moment if _missing(moment) or moment == "" else int(moment.timestamp())


def sha256(value: Any) -> Any:
    """Hex SHA-256 of text (UTF-8) or of any other value's canonical JSON."""
    return value if _missing(value) else hashlib.sha256(_canonical(value)).hexdigest()


def md5(value: Any) -> Any:
    """Hex MD5, for identifiers only (not for security)."""
    return value if _missing(value) else hashlib.md5(_canonical(value), usedforsecurity=False).hexdigest()


def fingerprint(labels: Any) -> Any:
    """Alertmanager's fingerprint of a label mapping (the key Alertmanager itself would use)."""
    if _missing(labels):
        return labels
    if not isinstance(labels, Mapping):
        raise TemplateError("fingerprint expects a mapping of labels")
    return labels_fingerprint({str(key): "" if _missing(val) else str(val) for key, val in labels.items()})


def b64encode(value: Any) -> Any:
    """Base64 of the text's UTF-8 bytes."""
    return value if _missing(value) else base64.b64encode(str(value).encode(errors="surrogatepass")).decode()


def b64decode(value: Any) -> Any:
    """Text of base64 data (UTF-8; undecodable bytes become U+FFFD)."""
    if _missing(value):
        return value
    try:
        return base64.b64decode(str(value).strip()).decode(errors="replace")
    except (binascii.Error, ValueError):
        raise TemplateError("b64decode: not valid base64") from None


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str, flags: int) -> regex.Pattern[str]:
    return regex.compile(pattern, flags)


class Helpers:
    """The helpers bound to one engine's limits and clock (``now``)."""

    def __init__(self, limits: Limits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self.clock = clock

    def filters(self) -> dict[str, Helper]:
        """Filters by name (OnCall's names are aliases of the same functions)."""
        return {
            "tojson": self.tojson,
            "json_dumps": self.tojson,
            "tojson_pretty": functools.partial(self.tojson, indent=2),
            "json_loads": self.json_loads,
            "from_json": self.json_loads,
            "parse_json": self.json_loads,
            "regex_replace": self.regex_replace,
            "regex_match": self.regex_match,
            "regex_search": self.regex_search,
            "parse_time": parse_time,
            "iso8601_to_time": parse_time,
            "timestamp_to_datetime": parse_time,
            "format_time": format_time,
            "datetimeformat": _datetimeformat,
            "to_epoch": to_epoch,
            "sha256": sha256,
            "md5": md5,
            "fingerprint": fingerprint,
            "b64encode": b64encode,
            "b64decode": b64decode,
        }

    def globals(self) -> dict[str, Helper]:
        """Globals: ``now()`` and every filter, callable as a function too."""
        return {**self.filters(), "now": self.now}

    def now(self) -> datetime:
        """The current time (timezone-aware, UTC)."""
        return datetime.fromtimestamp(self.clock(), UTC)

    def tojson(self, value: Any, indent: int | None = None, sort_keys: bool = False) -> str:
        """JSON text (not HTML-escaped, non-ASCII kept); missing values are ``null``."""
        check_size(weight(value, self.limits.max_value), self.limits, "input of tojson")
        if indent is not None and not (isinstance(indent, int) and 0 <= indent <= 8):
            raise TemplateError("tojson: indent must be 0 to 8")
        return json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=bool(sort_keys), default=_json_default)

    def json_loads(self, value: Any) -> Any:
        """Parse JSON text into values."""
        if _missing(value):
            return value
        if not isinstance(value, str | bytes):
            raise TemplateError("json_loads expects text")
        check_size(len(value), self.limits, "input of json_loads")
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise TemplateError(f"json_loads: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None

    def regex_replace(
        self, value: Any, pattern: Any, replacement: Any, count: int = 0, ignorecase: bool = False
    ) -> Any:
        """Replace matches of ``pattern`` (``\\1`` / ``\\g<name>`` refer to groups)."""
        if _missing(value):
            return value
        if not isinstance(replacement, str) or len(replacement) > self.limits.max_regex_pattern:
            limit = self.limits.max_regex_pattern
            raise TemplateError(f"regex_replace: replacement must be text of at most {limit} characters")
        compiled, text = self._pattern(pattern, ignorecase), self._subject(value)
        built = [len(text)]

        def expand(match: regex.Match[str]) -> str:
            # Counted as it goes, so a replacement that multiplies the text stops early.
            piece = match.expand(replacement)
            built[0] += len(piece)
            check_size(built[0], self.limits, "result of regex_replace")
            return piece

        try:
            return compiled.sub(expand, text, count=max(0, int(count)), timeout=self._timeout())
        except TimeoutError:
            raise TemplateLimitError("regex_replace ran out of time") from None
        except regex.error as exc:
            raise TemplateError(f"regex_replace: {exc}") from None

    def regex_match(self, value: Any, pattern: Any, ignorecase: bool = False) -> bool:
        """Whether ``pattern`` matches at the start of the text."""
        return self._find("regex_match", value, pattern, ignorecase, anchored=True)

    def regex_search(self, value: Any, pattern: Any, ignorecase: bool = False) -> bool:
        """Whether ``pattern`` matches anywhere in the text."""
        return self._find("regex_search", value, pattern, ignorecase, anchored=False)

    def _find(self, name: str, value: Any, pattern: Any, ignorecase: bool, anchored: bool) -> bool:
        compiled, text = self._pattern(pattern, ignorecase), self._subject(value)
        run = compiled.match if anchored else compiled.search
        try:
            return run(text, timeout=self._timeout()) is not None
        except TimeoutError:
            raise TemplateLimitError(f"{name} ran out of time") from None

    def _pattern(self, pattern: Any, ignorecase: bool) -> regex.Pattern[str]:
        if not isinstance(pattern, str) or len(pattern) > self.limits.max_regex_pattern:
            raise TemplateError(f"regex pattern must be text of at most {self.limits.max_regex_pattern} characters")
        try:
            return _compiled(pattern, regex.IGNORECASE if ignorecase else 0)
        except regex.error as exc:
            raise TemplateError(f"invalid regex {pattern[:60]!r}: {exc}") from None

    def _subject(self, value: Any) -> str:
        text = "" if _missing(value) else str(value)
        if len(text) > self.limits.max_regex_input:
            raise TemplateLimitError(f"regex input of {len(text)} characters exceeds {self.limits.max_regex_input}")
        return text

    def _timeout(self) -> float:
        budget = _budget.current()
        left = self.limits.max_cpu_seconds if budget is None else budget.remaining()
        if left <= 0:
            raise TemplateLimitError(f"render used more than {self.limits.max_cpu_seconds * 1000:g} ms of CPU time")
        return left


def _datetimeformat(value: Any, format: str = _ONCALL_TIME_FORMAT) -> Any:
    """OnCall's ``datetimeformat``: ``format_time`` with OnCall's default format."""
    return format_time(value, format)
