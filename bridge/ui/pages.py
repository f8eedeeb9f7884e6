"""The console's pages: server-rendered HTML, one small script, no build step, nothing from a CDN.

Every page but the login needs a console session (see :mod:`bridge.ui.session`); every change
(replay, purge, logout) is a POST with the session's CSRF token. A request with the header
``X-Console-Fragment: 1`` gets only the page's ``<main>`` content: the script refreshes pages
that way, without a full reload. Pages are ``no-store`` and sent with a Content-Security-Policy
that allows only this bridge's own script and style, and no framing.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

import jinja2
import yaml
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from bridge import __version__, admin, trail
from bridge.admin import client_address, locked_for, wrong_token
from bridge.outbox import DeadLetterFilter
from bridge.outbox.trail import FILTER_OUTCOMES
from bridge.responses import new_request_id
from bridge.timeline import describe_step
from bridge.ui import masking, session

if TYPE_CHECKING:
    from bridge.app import Bridge

HERE = Path(__file__).resolve().parent
FRAGMENT_HEADER = "x-console-fragment"
#: Dead letters one page lists.
DEAD_LETTERS_SHOWN = 500
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


_templates.filters["when"] = _when
_templates.filters["age"] = _age
_templates.globals["describe_step"] = describe_step
_templates.globals["version"] = __version__


def _clock(request: Request) -> Callable[[], float]:
    clock: Callable[[], float] = getattr(request.app.state, "clock", time.time)
    return clock


def _page(request: Request, name: str, cookie: str, status: int = 200, **context: Any) -> Response:
    bridge: Bridge = request.app.state.bridge
    token = bridge.config.admin.token.get_secret_value()
    template = _templates.get_template(name)
    values = {
        "csrf": session.csrf_token(cookie, token),
        "path": request.url.path,
        "dry_run": bridge.config.dry_run,
        **context,
    }
    if request.headers.get(FRAGMENT_HEADER) == "1":
        html = "".join(template.blocks["content"](template.new_context(values)))
    else:
        html = template.render(values)
    return _secure(HTMLResponse(html, status_code=status))


def _secure(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _token(request: Request) -> str:
    bridge: Bridge = request.app.state.bridge
    return bridge.config.admin.token.get_secret_value()


def _disabled() -> Response:
    html = _templates.get_template("disabled.html").render()
    return _secure(HTMLResponse(html, status_code=403))


def _login_redirect(request: Request) -> Response:
    if request.headers.get(FRAGMENT_HEADER) == "1":
        return _secure(Response("session expired", status_code=401))
    target = urlencode({"next": request.url.path + (f"?{request.url.query}" if request.url.query else "")})
    return RedirectResponse(f"/ui/login?{target}", status_code=303)


def _session(request: Request) -> tuple[str | None, Response | None]:
    """The session cookie, or the response that replaces the page (disabled, or log in first)."""
    token = _token(request)
    if not token:
        return None, _disabled()
    cookie = session.session_of(request, token)
    if cookie is None:
        return None, _login_redirect(request)
    return cookie, None


#: A console form is a few ids and a token; anything larger is not one of ours.
MAX_FORM_BYTES = 64 * 1024


class Form:
    """An ``application/x-www-form-urlencoded`` body (the console's forms send nothing else)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def get(self, name: str) -> str | None:
        return next((value for key, value in self.pairs if key == name), None)

    def getlist(self, name: str) -> list[str]:
        return [value for key, value in self.pairs if key == name]


async def _form(request: Request) -> Form:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_FORM_BYTES:
            return Form([])
    try:
        return Form(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=2000))
    except (UnicodeDecodeError, ValueError):
        return Form([])


async def _change(request: Request) -> tuple[str | None, Form, Response | None]:
    """A POST from a console page: its session, its form, or the refusal (no session, bad CSRF token)."""
    cookie, refused = _session(request)
    if refused is not None or cookie is None:
        return None, Form([]), refused
    form = await _form(request)
    if not session.csrf_ok(request, cookie, _token(request), form.get(session.CSRF_FIELD)):
        html = _templates.get_template("refused.html").render(message="This form is stale or came from elsewhere.")
        return None, form, _secure(HTMLResponse(html, status_code=403))
    return cookie, form, None


# -- login ------------------------------------------------------------------------------------------------


def _safe_next(value: str | None) -> str:
    """Only a console path: never an open redirect."""
    if value and value.startswith("/ui") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui"


async def login_form(request: Request) -> Response:
    if not _token(request):
        return _disabled()
    html = _templates.get_template("login.html").render(next=_safe_next(request.query_params.get("next")), error=None)
    return _secure(HTMLResponse(html))


async def login(request: Request) -> Response:
    token = _token(request)
    if not token:
        return _disabled()
    form = await _form(request)
    target = _safe_next(form.get("next"))
    presented = form.get("token") or ""
    bridge: Bridge = request.app.state.bridge
    address = client_address(request)
    if (seconds := locked_for(bridge, address, "console")) is not None:
        error = f"Too many wrong tokens from {address}: try again in {seconds} s."
        html = _templates.get_template("login.html").render(next=target, error=error)
        return _secure(HTMLResponse(html, status_code=429, headers={"Retry-After": str(seconds)}))
    if not session.same_origin(request):  # refused unchecked: another site's page cannot lock the operator out
        bridge.metrics.auth_failures.labels("console", "foreign origin").inc()
        html = _templates.get_template("login.html").render(next=target, error="That is not the admin token.")
        return _secure(HTMLResponse(html, status_code=401))
    if not hmac.compare_digest(presented.encode(), token.encode()):
        wrong_token(bridge, address, "console", presented=bool(presented))
        html = _templates.get_template("login.html").render(next=target, error="That is not the admin token.")
        return _secure(HTMLResponse(html, status_code=401))
    response = RedirectResponse(target, status_code=303)
    session.set_cookie(response, request, session.issue(token))
    return response


async def logout(request: Request) -> Response:
    _, _, refused = await _change(request)
    if refused is not None:
        return refused
    response = RedirectResponse("/ui/login", status_code=303)
    session.clear_cookie(response)
    return response


# -- overview -----------------------------------------------------------------------------------------------


async def overview(request: Request) -> Response:
    cookie, refused = _session(request)
    if refused is not None or cookie is None:
        return refused or _disabled()
    bridge: Bridge = request.app.state.bridge
    now = _clock(request)()
    stats = await bridge.outbox.stats()
    by_destination = await bridge.outbox.stats_by_destination()
    rows = []
    for name in sorted(set(bridge.dispatcher.lanes) | set(by_destination)):
        lane = bridge.dispatcher.lanes.get(name)
        counts = by_destination.get(name)
        oldest = counts.oldest_pending_created_at if counts else None
        headroom = lane.limiter.headroom(now) if lane else {}
        if lane is not None:
            lane.circuit.allowance(now)  # let an expired cool-down show as half-open
        rows.append(
            {
                "name": name,
                "pending": counts.pending if counts else 0,
                "dead": counts.dead if counts else 0,
                "oldest_age": None if oldest is None else now - oldest,
                "headroom": headroom,
                "circuit": lane.circuit.state.value if lane else "no lane (not in the config)",
                "last_error": lane.last_error if lane else None,
            }
        )
    from bridge.app import not_ready_reason

    return _page(
        request,
        "overview.html",
        cookie,
        stats=stats,
        oldest_age=None if stats.oldest_pending_created_at is None else now - stats.oldest_pending_created_at,
        destinations=rows,
        not_ready=not_ready_reason(bridge),
        location=bridge.outbox.location,
        now=now,
    )


# -- events -------------------------------------------------------------------------------------------------


async def events(request: Request) -> Response:
    cookie, refused = _session(request)
    if refused is not None or cookie is None:
        return refused or _disabled()
    bridge: Bridge = request.app.state.bridge
    now = _clock(request)()
    items = request.query_params.multi_items()
    problem = None
    try:
        where = trail.parse_query(items, now, limit=50)
    except trail.BadQuery as exc:
        problem, where = str(exc), trail.parse_query([], now, limit=50)
    found = await bridge.outbox.trail(where) if problem is None else []
    older = None
    if len(found) == where.limit:
        older = "/ui/events?" + urlencode(trail.query_string(where, now, before=found[-1].id))
    form = {name: value for name, value in items if name != "label"}
    return _page(
        request,
        "events.html",
        cookie,
        events=found,
        problem=problem,
        form=form,
        labels=[value for name, value in items if name == "label"],
        outcomes=FILTER_OUTCOMES,
        statuses=("Critical", "Warning", "Info", "Ok"),
        older=older,
        filtered=bool(form or where.labels),
    )


async def event_page(request: Request) -> Response:
    cookie, refused = _session(request)
    if refused is not None or cookie is None:
        return refused or _disabled()
    bridge: Bridge = request.app.state.bridge
    event_id = int(request.path_params["id"])
    event = await bridge.outbox.trail_event(event_id)
    if event is None:
        return _page(request, "missing.html", cookie, status=404, event_id=event_id)
    try:
        body = json.dumps(json.loads(event.body), indent=2, ensure_ascii=False)
    except ValueError:
        body = event.body
    attempts = [step for step in event.steps if step.get("kind") == "attempt"]
    key_link = "/ui/events?" + urlencode({"alert_key": event.alert_key})
    return _page(
        request,
        "event.html",
        cookie,
        event=event,
        body=body,
        attempts_not_kept=max(0, event.attempts - len(attempts)),
        key_link=key_link,
    )


# -- dead letters ---------------------------------------------------------------------------------------------


async def dead_letters(request: Request) -> Response:
    cookie, refused = _session(request)
    if refused is not None or cookie is None:
        return refused or _disabled()
    return await _dead_letters_page(request, cookie, None)


async def _dead_letters_page(request: Request, cookie: str, notice: dict[str, Any] | None) -> Response:
    bridge: Bridge = request.app.state.bridge
    letters = await bridge.outbox.dead_letters(DeadLetterFilter(limit=DEAD_LETTERS_SHOWN))
    return _page(request, "dead_letters.html", cookie, letters=letters, notice=notice, shown=DEAD_LETTERS_SHOWN)


def _ids(form: Form) -> tuple[int, ...]:
    """The dead letters a form names: the row's button (``only``) alone, else the ticked boxes."""
    only = form.get("only")
    values = [only] if only else form.getlist("id")
    return tuple(dict.fromkeys(int(value) for value in values if value.isascii() and value.isdigit()))[:1000]


async def _selected(request: Request) -> tuple[Bridge, str, tuple[int, ...], Response | None]:
    """A dead-letter change's session, after its CSRF check, and the ids it names; or the page to answer."""
    bridge: Bridge = request.app.state.bridge
    cookie, form, refused = await _change(request)
    if refused is not None or cookie is None:
        return bridge, "", (), refused or _disabled()
    ids = _ids(form)
    if not ids:
        return (
            bridge,
            cookie,
            ids,
            await _dead_letters_page(request, cookie, {"error": "Select at least one dead letter."}),
        )
    return bridge, cookie, ids, None


async def replay(request: Request) -> Response:
    """Replay selected dead letters under the CLI's rules: a superseded one is not replayed (no force here)."""
    bridge, cookie, ids, answered = await _selected(request)
    if answered is not None:
        return answered
    result = await admin.replay(bridge, DeadLetterFilter(ids=ids, limit=len(ids)))
    notice = {"replayed": result.replayed, "superseded": result.superseded, "in_flight": result.in_flight}
    return await _dead_letters_page(request, cookie, notice)


async def purge(request: Request) -> Response:
    bridge, cookie, ids, answered = await _selected(request)
    if answered is not None:
        return answered
    purged = await bridge.outbox.purge(DeadLetterFilter(ids=ids, limit=len(ids)))
    return await _dead_letters_page(request, cookie, {"purged": purged, "ids": list(ids)})


# -- playground and config ----------------------------------------------------------------------------------


async def playground(request: Request) -> Response:
    cookie, refused = _session(request)
    if refused is not None or cookie is None:
        return refused or _disabled()
    bridge: Bridge = request.app.state.bridge
    sources = sorted(bridge.runtime.sources)
    return _page(request, "playground.html", cookie, sources=sources, request_id=new_request_id())


async def config_page(request: Request) -> Response:
    cookie, refused = _session(request)
    if refused is not None or cookie is None:
        return refused or _disabled()
    bridge: Bridge = request.app.state.bridge
    text = yaml.safe_dump(masking.masked(bridge.config), sort_keys=False, allow_unicode=True, width=120)
    return _page(request, "config.html", cookie, text=text, path=str(bridge.config_path or "(no file: defaults)"))


routes = [
    Route("/ui", overview, methods=["GET"]),
    Route("/ui/", overview, methods=["GET"]),
    Route("/ui/login", login_form, methods=["GET"]),
    Route("/ui/login", login, methods=["POST"]),
    Route("/ui/logout", logout, methods=["POST"]),
    Route("/ui/events", events, methods=["GET"]),
    Route("/ui/events/{id:int}", event_page, methods=["GET"]),
    Route("/ui/dead-letters", dead_letters, methods=["GET"]),
    Route("/ui/dead-letters/replay", replay, methods=["POST"]),
    Route("/ui/dead-letters/purge", purge, methods=["POST"]),
    Route("/ui/playground", playground, methods=["GET"]),
    Route("/ui/config", config_page, methods=["GET"]),
    Mount("/ui/static", StaticFiles(directory=HERE / "static"), name="console-static"),
]
