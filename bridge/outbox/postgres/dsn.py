"""The PostgreSQL DSN: read once (inline or from a file), shown only without its secrets.

The DSN is the one secret of the PostgreSQL outbox. :func:`read_dsn` is the only place that
reads it; everything shown to people (logs, errors, ``Outbox.location``, ``check-config``)
uses :func:`display`, which keeps the user, host, port and database and drops the password
and every query parameter (``?password=``, ``sslpassword=`` and friends could carry one).
:func:`secrets` lists what the log filter must scrub, should a driver ever echo it.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from bridge.config import POSTGRESQL_SCHEMES, StorageConfig, urlsplit_scheme


class DsnError(Exception):
    """The DSN cannot be read or is not a postgresql:// URL; the message never contains it."""


def read_dsn(storage: StorageConfig) -> str:
    """The DSN ``storage`` gives, inline or read from ``dsn_file`` (raises :class:`DsnError`)."""
    if storage.dsn is not None:
        dsn = storage.dsn.get_secret_value().strip()
        where = "storage.dsn"
    elif storage.dsn_file is not None:
        where = f"storage.dsn_file {storage.dsn_file}"
        try:
            dsn = storage.dsn_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise DsnError(f"{where}: cannot read: {reason}") from None
    else:
        raise DsnError("no storage.dsn or storage.dsn_file")
    if not dsn:
        raise DsnError(f"{where}: is empty")
    if urlsplit_scheme(dsn) not in POSTGRESQL_SCHEMES:
        raise DsnError(f"{where}: not a postgresql:// URL")
    return dsn


def display(dsn: str) -> str:
    """``postgresql://user@host:port/db``: the DSN without password and query (safe to log)."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        user = f"{unquote(parts.username)}@" if parts.username else ""
    except ValueError:
        return "postgresql://(unparsable DSN)"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


def secrets(dsn: str) -> list[str]:
    """What must never appear in a log line: the whole DSN and its password (raw and decoded)."""
    found = [dsn]
    try:
        parts = urlsplit(dsn)
        password = parts.password
    except ValueError:
        return found
    if password:
        found += [password, unquote(password)]
    for item in parts.query.split("&"):
        name, _, value = item.partition("=")
        if "password" in name.lower() and value:
            found += [value, unquote(value)]
    return [secret for secret in dict.fromkeys(found) if len(secret) >= 4]
