"""``flashduty-bridge deadletter list|show|replay|purge``.

Talks to a running bridge's admin API (``--url``, with ``--token`` or
``BRIDGE_ADMIN_TOKEN``). With ``--config``: if that bridge runs (its outbox is in use),
through its admin API at the config's ``listen`` with its ``admin.token``; if it is
stopped, by opening its outbox directly. Every path runs the same outbox code, so they
behave the same.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from bridge import config as config_module
from bridge.admin import Selection
from bridge.outbox import DeadLetterFilter, OutboxInUse, OutboxUnavailable, open_outbox
from bridge.sources import describe_validation_error

TOKEN_ENV_VAR = "BRIDGE_ADMIN_TOKEN"


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("deadletter", help="list, show, replay or purge dead letters")
    actions = parser.add_subparsers(dest="action", required=True)
    for name, text in (
        ("list", "list dead letters"),
        ("show", "show one dead letter"),
        ("replay", "queue dead letters again, in their original per-key order"),
        ("purge", "delete dead letters for good"),
    ):
        action = actions.add_parser(name, help=text)
        where = action.add_mutually_exclusive_group(required=True)
        where.add_argument("--url", help="a running bridge, e.g. http://127.0.0.1:9095 (admin API)")
        where.add_argument(
            "--config",
            help="the bridge's config file: its admin API (listen, admin.token) while it runs, else its outbox",
        )
        action.add_argument("--token", help=f"admin token (default: the config's admin.token, else ${TOKEN_ENV_VAR})")
        if name == "show":
            action.add_argument("id", type=int)
            continue
        action.add_argument("--id", dest="ids", type=int, action="append", default=[], help="repeatable")
        action.add_argument("--destination")
        action.add_argument(
            "--code", help="the dead letter's code, e.g. InvalidIntegrationKey, Unauthorized, NoLicense, expired"
        )
        action.add_argument("--older-than", help="dead for at least this long, e.g. 1h")
        action.add_argument("--limit", type=int, default=1000)
        if name == "replay":
            action.add_argument("--force", action="store_true", help="even when a newer event of the key was sent")
        if name == "purge":
            action.add_argument("--all", action="store_true", help="purge every dead letter")
    parser.set_defaults(func=run)


def _selection(args: argparse.Namespace) -> Selection:
    if args.action == "show":
        return Selection(ids=(args.id,), limit=1)
    fields: dict[str, Any] = {
        "ids": tuple(args.ids),
        "destination": args.destination,
        "code": args.code,
        "older_than": args.older_than,
        "limit": args.limit,
        "force": getattr(args, "force", False),
        "all": getattr(args, "all", False),
    }
    return Selection.model_validate({k: v for k, v in fields.items() if v is not None})


class CommandError(Exception):
    """A problem to print as one line, with the exit code it deserves."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def call_admin(url: str, token: str, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """One request to the admin API under ``url`` (``path`` after ``/api/v1``): its HTTP status and envelope.

    Raises CommandError when there is no token, the bridge cannot be reached or the answer is not JSON.
    """
    if not token:
        raise CommandError(f"no admin token: give --token or set {TOKEN_ENV_VAR} to the bridge's admin.token", 2)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        response = httpx.request(
            method, url.rstrip("/") + "/api/v1" + path, headers=headers, timeout=30, trust_env=False, **kwargs
        )
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach {url}: {exc}") from None
    try:
        answer: dict[str, Any] = response.json()
    except ValueError:
        raise CommandError(f"{url} is not a bridge's admin API (HTTP {response.status_code}, not JSON)") from None
    return response.status_code, answer


def _over_http(args: argparse.Namespace, selection: Selection, url: str, token: str) -> tuple[int, dict[str, Any]]:
    body = selection.model_dump(mode="json", exclude_defaults=True)
    if args.action == "list":
        params = {k: ",".join(map(str, v)) if k == "ids" else v for k, v in body.items()}
        status, answer = call_admin(url, token, "GET", "/dead-letters", params=params)
    elif args.action == "show":
        status, answer = call_admin(url, token, "GET", f"/dead-letters/{args.id}")
    else:
        status, answer = call_admin(url, token, "POST", f"/dead-letters/{args.action}", json=body)
    if "error" in answer:
        return 1, {"error": answer["error"], "status": status}
    return 0, answer["data"]


def admin_url(listen: str) -> str:
    """Where a bridge listening on ``listen`` is reached from this host (a wildcard address means loopback)."""
    host, port = config_module.split_listen(listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _with_config(args: argparse.Namespace, selection: Selection) -> tuple[int, dict[str, Any]]:
    """The bridge of ``--config``: its outbox if it is stopped, else its admin API."""
    try:
        cfg = config_module.load(Path(args.config))
    except config_module.ConfigError as exc:
        return 2, {"error": {"code": "InvalidConfig", "message": "; ".join(exc.problems)}}
    try:
        outbox = await open_outbox(cfg.storage, cfg.delivery)
    except OutboxInUse:
        # The bridge runs: ask it, where its config says it listens, with the token it checks.
        url = admin_url(cfg.listen)
        token = args.token or cfg.admin.token.get_secret_value() or os.environ.get(TOKEN_ENV_VAR, "")
        try:
            return await asyncio.to_thread(_over_http, args, selection, url, token)
        except CommandError as error:
            raise CommandError(
                f"the outbox of {args.config} is in use by a running bridge, but its admin API at the"
                f" config's listen failed: {error}. If it was started with --listen, use --url.",
                error.exit_code,
            ) from None
    except OutboxUnavailable as exc:
        return 1, {"error": {"code": "Unavailable", "message": str(exc)}}
    try:
        where: DeadLetterFilter = selection.to_filter()
        if args.action in ("list", "show"):
            rows = await outbox.dead_letters(where)
            if args.action == "show":
                return (0, rows[0]) if rows else (1, {"error": {"code": "ResourceNotFound", "message": "no such id"}})
            return 0, {"dead_letters": rows}
        if args.action == "replay":
            result = await outbox.replay(where, force=selection.force)
            return 0, {"replayed": result.replayed, "superseded": result.superseded, "in_flight": result.in_flight}
        if not selection.narrowed and not selection.all:
            return 2, {"error": {"code": "InvalidParameter", "message": "give a filter, or --all"}}
        return 0, {"purged": await outbox.purge(where)}
    finally:
        await outbox.close()


def run(args: argparse.Namespace) -> int:
    try:
        selection = _selection(args)
    except ValidationError as exc:
        print(f"error: {describe_validation_error(exc)}", file=sys.stderr)
        return 2
    try:
        if args.url:
            code, data = _over_http(args, selection, args.url, args.token or os.environ.get(TOKEN_ENV_VAR, ""))
        else:
            code, data = asyncio.run(_with_config(args, selection))
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(data, indent=2, ensure_ascii=False), file=sys.stderr if code else sys.stdout)
    return code
