"""How the browser holds the admin token: a signed session cookie, and a CSRF token for every change.

The operator types ``admin.token`` once, into the login form. The bridge answers with a
cookie that is *not* the token: ``<expires>.<HMAC-SHA256(token, "console:" + expires)>``,
``HttpOnly`` (no script can read it), ``SameSite=Strict`` (no other site's page or link
sends it), ``Secure`` when served over HTTPS, valid for :data:`SESSION_SECONDS`. Nothing is
stored server-side: changing ``admin.token`` (and reloading) ends every session.

Changes (replay, purge, logout, and the playground's render) are POSTs that must carry the
session's CSRF token, ``HMAC(token, "csrf:" + cookie)``, in a form field or the
``X-CSRF-Token`` header, and must not come from another origin (``Origin``, when the
browser sends it, names this host). SameSite alone would do in current browsers; the
token also covers older ones and proxies that strip SameSite.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "fdb_console"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 12 * 3600


def _mac(token: str, message: str) -> str:
    return hmac.new(token.encode(), message.encode(), hashlib.sha256).hexdigest()


def issue(token: str, now: float | None = None) -> str:
    """A new session cookie value for ``token``."""
    expires = str(int((time.time() if now is None else now) + SESSION_SECONDS))
    return f"{expires}.{_mac(token, 'console:' + expires)}"


def valid(cookie: str | None, token: str, now: float | None = None) -> bool:
    """``cookie`` was issued for ``token`` and has not expired (constant-time check)."""
    if not cookie or not token:
        return False
    expires, _, mac = cookie.partition(".")
    if not expires.isascii() or not expires.isdigit() or len(expires) > 12:
        return False
    if int(expires) < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(mac.encode(), _mac(token, "console:" + expires).encode())


def csrf_token(cookie: str, token: str) -> str:
    return _mac(token, "csrf:" + cookie)


def session_of(request: Request, token: str) -> str | None:
    """The request's valid session cookie, or None."""
    cookie = request.cookies.get(COOKIE)
    return cookie if valid(cookie, token) else None


def same_origin(request: Request) -> bool:
    """The browser says the request comes from a page of this host (or says nothing, as non-browsers do)."""
    origin = request.headers.get("origin")
    if origin is None or (origin == "null" and request.method == "GET"):
        return True
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc == host


def csrf_ok(request: Request, cookie: str, token: str, presented: str | None) -> bool:
    """A change is allowed: same origin, and the CSRF token of this session presented."""
    if not same_origin(request):
        return False
    expected = csrf_token(cookie, token)
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


def console_request_ok(request: Request, token: str) -> bool:
    """For endpoints outside /ui that the console calls (``/-/render``): a session plus its CSRF header."""
    cookie = session_of(request, token)
    return cookie is not None and csrf_ok(request, cookie, token, request.headers.get(CSRF_HEADER))


def set_cookie(response: Response, request: Request, value: str) -> None:
    response.set_cookie(
        COOKIE,
        value,
        max_age=SESSION_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
