"""The running configuration as the console shows it: every secret masked.

Masked, wherever they appear in the config: every ``SecretStr`` (integration keys, the admin
token, auth passwords, bearer tokens and HMAC secrets, DSNs), any field whose name says it
holds a secret (:data:`SECRET_NAME`), and inside every URL its password and any query
parameter whose name says so (a push URL carries ``integration_key``). A masked value says
whether it was set; nothing of it is shown. Paths to key files are shown (they are not secret).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr

from bridge.config import Config

#: Field and query-parameter names that hold secrets.
SECRET_NAME = re.compile(r"(?i)(key|token|secret|password|passwd|pwd|dsn|credential|auth|signature|cookie)")
#: Names that match :data:`SECRET_NAME` but hold no secret (a path to a file, a header's name, a prefix).
NOT_SECRET = re.compile(r"(?i)(_file|_header|header|key_prefix|alert_key|scheme|identity_labels|_labels)$")
MASK = "•••••• (set, hidden)"


def masked(config: Config) -> dict[str, Any]:
    """``config`` as plain data, every secret replaced by :data:`MASK` (or left empty when it is unset)."""
    result = _value(config, "")
    assert isinstance(result, dict)
    result.pop("unset_variables", None)
    return result


def _value(value: Any, name: str) -> Any:
    if isinstance(value, SecretStr):
        return MASK if value.get_secret_value() else ""
    if isinstance(value, BaseModel):
        fields = type(value).model_fields
        return {
            (field.alias if field.alias and not field.alias.startswith("_") else key): _value(getattr(value, key), key)
            for key, field in fields.items()
        }
    if isinstance(value, dict):
        return {str(key): _value(item, str(key)) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_value(item, name) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):
        if value and SECRET_NAME.search(name) and not NOT_SECRET.search(name):
            return MASK
        return mask_url(value) if "://" in value else value
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)


def mask_url(url: str) -> str:
    """``url`` without its password and without the values of secret-looking query parameters."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{MASK}@{host}"
    query = urlencode(
        [
            (key, MASK if SECRET_NAME.search(key) else item)
            for key, item in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="•(), ",
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))
