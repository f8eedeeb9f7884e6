"""Reusable field types: each value is checked and normalised once, by its type, wherever it is written.

Models use these instead of calling each other's validators, so a severity map on a route is
normalised exactly like one on a source, and a template is compiled once, when the config is
validated, not again when the runtime is built.

* :data:`AbsolutePath`: a path, relative ones against the working directory, made absolute once at
  load, so logs name the real folder and a reload compares like with like.
* :data:`Duration`: seconds, or text with a unit: ``500ms``, ``10s``, ``5m``, ``1h``, ``7d``, ``1w``
  (config, admin API ``older_than``, CLI ``--older-than``).
* :data:`FiringStatus` and :data:`SeverityMap` (keys stripped and lower-cased; two keys that
  normalise alike are an error, not a silent choice).
* :data:`HttpUrl`: an http(s) URL with a host, kept verbatim (its query may carry parameters
  Flashduty reads); the value is never echoed in errors, since a push URL carries a key.
* :data:`ByteSize`: a number of bytes, or text with a binary unit: ``512KiB``, ``16MiB``, ``1GiB``.
* :data:`CompiledTemplate`, :data:`TemplateMap` and :data:`Expression`: compiled templates that
  dump (and pickle) as their source text.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationInfo,
    WithJsonSchema,
)

from bridge import templating
from bridge.contract import FIRING_STATUSES

# -- paths ------------------------------------------------------------------------------------------


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


AbsolutePath = Annotated[Path, AfterValidator(_absolute)]

# -- durations --------------------------------------------------------------------------------------

#: Linear: one digit run, an optional fraction, optional blanks, an optional unit; fullmatch only.
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)[ \t]*(ms|s|m|h|d|w)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0, None: 1.0}
_DURATION_HELP = "use seconds or a number with ms, s, m, h, d or w"


def parse_duration(text: str) -> float:
    """Seconds in ``text`` (``"90"``, ``"500ms"``, ``"7d"``, ``"1w"``); raises ValueError naming the units."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise ValueError(f"invalid duration {shown!r}: {_DURATION_HELP}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _duration(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: {_DURATION_HELP}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return parse_duration(value)
    return value  # anything else: pydantic's own "valid number" error


#: A positive duration in seconds.
Duration = Annotated[float, BeforeValidator(_duration), Field(gt=0, allow_inf_nan=False)]
#: A duration that may be zero (a feature switched off).
NonNegativeDuration = Annotated[float, BeforeValidator(_duration), Field(ge=0, allow_inf_nan=False)]

# -- sizes ----------------------------------------------------------------------------------------

#: Linear: one digit run, optional blanks, an optional binary unit; fullmatch only.
_SIZE = re.compile(r"([0-9]+)[ \t]*(B|KiB|MiB|GiB)?")
_SIZE_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, None: 1}
_SIZE_HELP = "use a number of bytes or a number with B, KiB, MiB or GiB"


def _byte_size(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}: {_SIZE_HELP}")
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match is None:
            shown = value if len(value) <= 40 else value[:40] + "…"
            raise ValueError(f"invalid size {shown!r}: {_SIZE_HELP}")
        return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    return value  # anything else: pydantic's own "valid integer" error


#: A size in bytes (``65536``, ``"64KiB"``, ``"16MiB"``); zero allowed (a feature switched off).
ByteSize = Annotated[int, BeforeValidator(_byte_size), Field(ge=0, strict=True)]

# -- severities -----------------------------------------------------------------------------------


def _firing_status(value: str) -> str:
    if value not in FIRING_STATUSES:
        raise ValueError(f"must be one of {', '.join(FIRING_STATUSES)}, got {value!r}")
    return value


def _severity_map(value: dict[str, str]) -> dict[str, str]:
    normalised: dict[str, str] = {}
    written: dict[str, str] = {}
    for name, status in value.items():
        if status not in FIRING_STATUSES:
            raise ValueError(
                f"{name!r} maps to {status!r}; a firing alert can only be one of {', '.join(FIRING_STATUSES)}"
            )
        key = name.strip().lower()
        if key in written:
            raise ValueError(f"{written[key]!r} and {name!r} are the same key (keys are stripped and lower-cased)")
        written[key] = name
        normalised[key] = status
    return normalised


#: ``Critical``, ``Warning`` or ``Info``: what a firing alert can become.
FiringStatus = Annotated[str, AfterValidator(_firing_status)]
#: Label value → firing status; keys stripped and lower-cased, as label values are when looked up.
SeverityMap = Annotated[dict[str, str], AfterValidator(_severity_map)]

# -- URLs -------------------------------------------------------------------------------------------


def _http_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        host = None
    if not host or parts.scheme not in ("http", "https"):
        # The value is not echoed: a pasted push URL carries the integration key.
        raise ValueError("must be an http(s) URL with a host")
    return value


#: An http(s) URL with a host, kept exactly as written.
HttpUrl = Annotated[str, AfterValidator(_http_url)]

# -- templates --------------------------------------------------------------------------------------


def _compile(value: Any, name: str) -> templating.Template:
    if isinstance(value, templating.Template):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a template (text)")
    try:
        return templating.compile(value, name)
    except templating.TemplateError as exc:
        raise ValueError(str(exc)) from None


def _compile_field(value: Any, info: ValidationInfo) -> templating.Template:
    """Compile now, so a broken template fails check-config with its field and line."""
    return _compile(value, str(info.field_name))


def _compile_map(value: Any, info: ValidationInfo) -> dict[str, templating.Template]:
    if not isinstance(value, dict):
        raise ValueError("must be a mapping of names to templates")
    out: dict[str, templating.Template] = {}
    for key, text in value.items():
        if not isinstance(key, str):
            raise ValueError(f"{key!r}: names must be text")
        out[key] = _compile(text, f"{info.field_name}.{key}")
    return out


_AS_TEXT = WithJsonSchema({"type": "string"})

#: A template, compiled once when the config is validated; dumped as its source.
CompiledTemplate = Annotated[
    templating.Template,
    PlainValidator(_compile_field),
    PlainSerializer(lambda template: template.source, return_type=str),
    _AS_TEXT,
]
#: Name → template (e.g. ``labels``); each compiled once, named ``<field>.<name>`` in errors.
TemplateMap = Annotated[
    dict[str, templating.Template],
    PlainValidator(_compile_map),
    PlainSerializer(lambda templates: {key: t.source for key, t in templates.items()}, return_type=dict[str, str]),
    WithJsonSchema({"type": "object", "additionalProperties": {"type": "string"}}),
]


@dataclass(frozen=True, slots=True)
class CompiledExpression:
    """A Jinja expression (no braces) and its template, which evaluates to the value (not text)."""

    text: str
    template: templating.Template


def _compile_expression(value: Any, info: ValidationInfo) -> CompiledExpression:
    if isinstance(value, CompiledExpression):
        return value
    if not isinstance(value, str):
        raise ValueError("must be an expression (text)")
    try:
        template = templating.compile_expression(value, str(info.field_name))
    except templating.TemplateError as exc:
        raise ValueError(f"not a valid expression: {exc}") from None
    return CompiledExpression(value, template)


#: A Jinja expression such as ``payload.items``, compiled once; dumped as written.
Expression = Annotated[
    CompiledExpression,
    PlainValidator(_compile_expression),
    PlainSerializer(lambda expression: expression.text, return_type=str),
    _AS_TEXT,
]
