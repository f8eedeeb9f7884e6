"""Flashduty's Standard Alert API contract: the one place the bridge and ``emulate`` learn it from.

Written from ``/work/shared/spec/flashduty-standard-alert-api.txt`` and the research notes
(``shared/research/flashduty.md``). Everything here is plain data and pure functions:

* the push path, the error codes and the HTTP status of each (``MethodNotAllowed`` and
  ``InvalidContentType`` are **400**, not 405/415), and the wrong-key answer (400
  ``InvalidParameter``, ``integration_key is not a valid one``);
* the limits, counted in characters (code points, as Flashduty's Go service counts runes);
* how a request is checked before its body is read (method, ``Content-Type`` and charset);
* how a body is decoded (one JSON object; lone surrogates from ``\\u`` escapes become U+FFFD,
  as Go's ``encoding/json`` decodes them) and an event validated, either *strictly* (``emulate``:
  reject what Flashduty would truncate, drop or ignore) or *leniently* (the documented service,
  which the bridge's own ``/event/push/alert/standard`` answers exactly like);
* how Flashduty makes an ``alert_key`` when a firing event has none.

A :class:`Rejection` carries the code and the message; its HTTP status is :data:`STATUS_BY_CODE`.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from typing import Any, Final

PUSH_PATH: Final = "/event/push/alert/standard"

#: Every documented error code and the HTTP status Flashduty answers it with.
STATUS_BY_CODE: Final = {
    "InvalidParameter": 400,
    "InvalidContentType": 400,
    "MethodNotAllowed": 400,
    "Unauthorized": 401,
    "AccessDenied": 403,
    "RequestTooFrequently": 429,
    "RouteNotFound": 404,
    "ResourceNotFound": 400,
    "NoLicense": 400,
    "InternalError": 500,
}

#: What Flashduty answers a push with an unknown or missing ``integration_key`` (spec, §II).
WRONG_KEY_CODE: Final = "InvalidParameter"
WRONG_KEY_MESSAGE: Final = "integration_key is not a valid one"

TITLE_MAX: Final = 512
DESCRIPTION_MAX: Final = 2048
ALERT_KEY_MAX: Final = 255
LABEL_KEY_MAX: Final = 128
LABEL_VALUE_MAX: Final = 2048
LABELS_MAX: Final = 50
IMAGE_SRC_MAX: Final = 256
IMAGE_ALT_MAX: Final = 128
IMAGE_HREF_MAX: Final = 256
#: Larger ``event_time`` values are almost certainly milliseconds.
EVENT_TIME_MAX: Final = 10_000_000_000

FIRING_STATUSES: Final = ("Critical", "Warning", "Info")
EVENT_STATUSES: Final = (*FIRING_STATUSES, "Ok")
FIELDS: Final = frozenset({"title_rule", "event_status", "alert_key", "description", "labels", "images", "event_time"})
IMAGE_FIELDS: Final = frozenset({"alt", "src", "href"})

#: Prometheus label naming; use ``fullmatch`` (``$`` would also accept a trailing newline).
#: Linear: one character class, then one repeated class, tried from the start only.
LABEL_KEY: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# JSON may carry a lone "\ud83d"; it cannot be encoded as UTF-8, so it becomes U+FFFD.
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")
_ALERT_KEY_ALPHABET = string.ascii_letters + string.digits


class Rejection(Exception):
    """A request the contract refuses: ``code`` (a key of :data:`STATUS_BY_CODE`) and ``message``."""

    def __init__(self, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.retry_after = code, message, retry_after

    @property
    def status(self) -> int:
        return STATUS_BY_CODE.get(self.code, 400)


def _bad(message: str) -> Rejection:
    return Rejection("InvalidParameter", message)


def wrong_key() -> Rejection:
    return Rejection(WRONG_KEY_CODE, WRONG_KEY_MESSAGE)


def is_wrong_key(code: str | None, message: str | None) -> bool:
    """Whether an answer is Flashduty's "this integration key does not exist" (a 400, not a 401)."""
    return code == WRONG_KEY_CODE and (message or "").strip() == WRONG_KEY_MESSAGE


def new_alert_key() -> str:
    """A 22-character random base62 key, like the ones Flashduty generates."""
    return "".join(secrets.choice(_ALERT_KEY_ALPHABET) for _ in range(22))


# -- text -----------------------------------------------------------------------------------------


def clean_text(value: str) -> str:
    """Replace lone surrogates (which would break UTF-8 encoding) with U+FFFD."""
    if value.isascii():  # most text; a surrogate is never ASCII
        return value
    return _LONE_SURROGATE.sub("\ufffd", value)


def without_lone_surrogates(value: Any) -> Any:
    """``value`` (decoded JSON) with every lone surrogate replaced by U+FFFD, in keys and strings alike.

    What Go's JSON decoder does with a ``\\udXXX`` escape that is not half of a pair.
    Iterative, so any nesting the JSON decoder accepted is cleaned without recursion.
    """
    if isinstance(value, str):
        return clean_text(value)
    if not isinstance(value, list | dict):
        return value
    root: list[Any] = [value]
    # Each entry: a container already copied, and where its copy goes (parent copy, index or key).
    stack: list[tuple[Any, Any, Any]] = [(value, root, 0)]
    while stack:
        original, parent, slot = stack.pop()
        if isinstance(original, list):
            copy: Any = [None] * len(original)
            items: Any = enumerate(original)
        else:
            copy = {}
            items = ((clean_text(key), item) for key, item in original.items())
        parent[slot] = copy
        for index, item in items:
            if isinstance(item, str):
                copy[index] = clean_text(item)
            elif isinstance(item, list | dict):
                copy[index] = None  # keeps the key order of the original
                stack.append((item, copy, index))
            else:
                copy[index] = item
    return root[0]


def is_label_key(name: str) -> bool:
    """``LABEL_KEY.fullmatch(name)``, without the regex for the usual plain names."""
    # An ASCII identifier is exactly [a-zA-Z_][a-zA-Z0-9_]*; anything else asks the regex.
    return (name.isascii() and name.isidentifier()) or LABEL_KEY.fullmatch(name) is not None


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


# -- the request, before its body ---------------------------------------------------------------------


def check_method(method: str) -> None:
    """Only POST pushes; anything else is 400 ``MethodNotAllowed`` (not 405)."""
    if method != "POST":
        raise Rejection("MethodNotAllowed", f"method {method} is not allowed on {PUSH_PATH}, use POST")


def check_content_type(content_type: str) -> None:
    """``application/json``, with no charset or a UTF-8 one; anything else is 400 ``InvalidContentType``."""
    media, *params = (part.strip().lower() for part in content_type.split(";"))
    if media != "application/json":
        raise Rejection("InvalidContentType", f'Content-Type "{content_type}" is not supported, use application/json')
    charset = next((p.split("=", 1)[1].strip().strip('"') for p in params if p.startswith("charset=")), "utf-8")
    if charset not in ("utf-8", "utf8"):
        raise Rejection("InvalidContentType", f'charset "{charset}" is not supported, JSON must be UTF-8')


def check_integration_keys(given: list[str]) -> str:
    """The one ``integration_key`` of a push URL; a missing, empty or repeated one is refused."""
    if len(given) > 1:
        raise _bad(f"integration_key: given {len(given)} times, expected once")
    if not given or not given[0].strip():
        raise wrong_key()
    return given[0]


# -- the body ---------------------------------------------------------------------------------------


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _unique_pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in items:
        if key in obj:
            raise ValueError(f'duplicate key "{key}"')
        obj[key] = value
    return obj


_LENIENT = json.JSONDecoder(parse_constant=_reject_constant)
_STRICT = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_unique_pairs)


def parse_body(raw: bytes, strict: bool) -> dict[str, Any]:
    """Decode a push body as the contract requires (one JSON object), raising :class:`Rejection`."""
    if not raw.strip():
        raise _bad("body: empty, expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(f"body: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        if text.startswith("\ufeff"):  # what json.loads checks before it decodes
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        body = (_STRICT if strict else _LENIENT).decode(text)
    except json.JSONDecodeError as exc:
        raise _bad(f"body: invalid JSON: {exc}") from None
    except RecursionError:
        raise _bad("body: invalid JSON: nested too deeply") from None
    except ValueError as exc:  # a duplicate key, NaN, or an integer past Python's 4300 digits
        message = str(exc) if not str(exc).startswith("Exceeds the limit") else "a number has more than 4300 digits"
        raise _bad(f"body: invalid JSON: {message}") from None
    if not isinstance(body, dict):
        raise _bad(f"body: must be a JSON object, got {json_type(body)}")
    if "\\u" in text:  # only escapes can smuggle in a lone surrogate
        cleaned: dict[str, Any] = without_lone_surrogates(body)
        return cleaned
    return body


def _string(fields: dict[str, Any], name: str, *, required: bool = False, where: str = "") -> str | None:
    if name not in fields:
        if required:
            raise _bad(f"{where}{name}: required")
        return None
    value = fields[name]
    if not isinstance(value, str):
        raise _bad(f"{where}{name}: must be a string, got {json_type(value)}")
    return value


def _limit(name: str, value: str, limit: int, strict: bool) -> str:
    """Enforce a length limit in code points: reject when strict, truncate like Flashduty otherwise."""
    if len(value) <= limit:
        return value
    if strict:
        raise _bad(f"{name}: {len(value)} characters, limit is {limit}")
    return value[:limit]


def _validate_images(value: object, strict: bool) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise _bad(f"images: must be an array, got {json_type(value)}")
    images: list[dict[str, str]] = []
    for i, item in enumerate(value):
        where = f"images[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"{where}: must be an object, got {json_type(item)}")
        if strict and (unknown := sorted(set(item) - IMAGE_FIELDS)):
            raise _bad(f'{where}: unknown field "{unknown[0]}" (allowed: alt, href, src)')
        item = {k: v for k, v in item.items() if k in IMAGE_FIELDS and (strict or v is not None)}
        src = _string(item, "src", required=True, where=f"{where}.")
        assert src is not None
        if len(src) > IMAGE_SRC_MAX:
            if strict:
                raise _bad(f"{where}.src: {len(src)} characters, limit is {IMAGE_SRC_MAX} (Flashduty drops the image)")
            continue
        image = {"src": src}
        for name, limit in (("alt", IMAGE_ALT_MAX), ("href", IMAGE_HREF_MAX)):
            text = _string(item, name, where=f"{where}.")
            if text is not None:
                image[name] = _limit(f"{where}.{name}", text, limit, strict)
        images.append(image)
    return images


def _validate_labels(value: object, strict: bool) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _bad(f"labels: must be an object, got {json_type(value)}")
    if len(value) > LABELS_MAX:
        raise _bad(f"labels: {len(value)} labels, limit is {LABELS_MAX}")
    labels: dict[str, str] = {}
    for key, text in value.items():
        if not LABEL_KEY.fullmatch(key):
            shown = key if len(key) <= 64 else key[:64] + "…"
            raise _bad(f'labels: key "{shown}" does not match [a-zA-Z_][a-zA-Z0-9_]*')
        if len(key) > LABEL_KEY_MAX:
            raise _bad(f'labels: key "{key[:20]}…" is {len(key)} characters, limit is {LABEL_KEY_MAX}')
        if not isinstance(text, str):
            raise _bad(f"labels.{key}: value must be a string, got {json_type(text)}")
        labels[key] = _limit(f"labels.{key}", text, LABEL_VALUE_MAX, strict)
    return labels


def validate_event(body: dict[str, Any], strict: bool) -> tuple[dict[str, Any], str | None]:
    """Check one event against the contract; return the event as kept and the alert_key if given."""
    if strict and (unknown := sorted(set(body) - FIELDS)):
        raise _bad(f'unknown field "{unknown[0]}" (strict mode; allowed: {", ".join(sorted(FIELDS))})')
    fields = {k: v for k, v in body.items() if k in FIELDS and (strict or v is not None)}
    title = _string(fields, "title_rule", required=True)
    assert title is not None
    if not title.strip():
        raise _bad("title_rule: must not be empty")
    status = _string(fields, "event_status", required=True)
    if status not in EVENT_STATUSES:
        raise _bad(f'event_status: "{status}" is not one of {", ".join(EVENT_STATUSES)} (case-sensitive)')
    event: dict[str, Any] = {"title_rule": _limit("title_rule", title, TITLE_MAX, strict), "event_status": status}
    alert_key = _string(fields, "alert_key")
    if alert_key is not None and len(alert_key) > ALERT_KEY_MAX:
        raise _bad(f"alert_key: {len(alert_key)} characters, limit is {ALERT_KEY_MAX}")
    if not alert_key:
        if status == "Ok":
            raise _bad("alert_key: required when event_status is Ok")
        if strict and alert_key == "":
            raise _bad("alert_key: must not be empty (omit it to get a generated one)")
        alert_key = None
    description = _string(fields, "description")
    if description is not None:
        event["description"] = _limit("description", description, DESCRIPTION_MAX, strict)
    if "labels" in fields:
        event["labels"] = _validate_labels(fields["labels"], strict)
    if "images" in fields:
        event["images"] = _validate_images(fields["images"], strict)
    if "event_time" in fields:
        ts = fields["event_time"]
        if isinstance(ts, bool) or not isinstance(ts, int):
            raise _bad(f"event_time: must be an integer of Unix seconds, got {json_type(ts)}")
        if ts < 0:
            raise _bad(f"event_time: {ts} is negative")
        if ts > EVENT_TIME_MAX:
            raise _bad(f"event_time: {ts} looks like milliseconds, send Unix seconds")
        event["event_time"] = ts
    return event, alert_key
