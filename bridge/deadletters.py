"""``flashduty-bridge deadletter list|show|replay|purge``.

Talks to a running bridge's admin API (``--url``, with ``--token`` or
``BRIDGE_ADMIN_TOKEN``), or, with ``--config`` while the bridge is stopped, opens its
outbox directly. Both paths run the same outbox code, so they behave the same.
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
        where.add_argument("--config", help="the bridge's config file, to open its outbox while it is stopped")
        action.add_argument("--token", help=f"admin token (default: ${TOKEN_ENV_VAR})")
        if name == "show":
            action.add_argument("id", type=int)
            continue
        action.add_argument("--id", dest="ids", type=int, action="append", default=[], help="repeatable")
        action.add_argument("--destination")
        action.add_argument("--code", help="Flashduty error code, e.g. Unauthorized, NoLicense, expired")
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


def _over_http(args: argparse.Namespace, selection: Selection) -> tuple[int, dict[str, Any]]:
    token = args.token or os.environ.get(TOKEN_ENV_VAR, "")
    headers = {"Authorization": f"Bearer {token}"}
    base = args.url.rstrip("/") + "/api/v1/dead-letters"
    body = selection.model_dump(mode="json", exclude_defaults=True)
    with httpx.Client(headers=headers, timeout=30, trust_env=False) as client:
        if args.action == "list":
            params = {k: ",".join(map(str, v)) if k == "ids" else v for k, v in body.items()}
            response = client.get(base, params=params)
        elif args.action == "show":
            response = client.get(f"{base}/{args.id}")
        else:
            response = client.post(f"{base}/{args.action}", json=body)
    answer: dict[str, Any] = response.json()
    if "error" in answer:
        return 1, {"error": answer["error"], "status": response.status_code}
    return 0, answer["data"]


async def _offline(args: argparse.Namespace, selection: Selection) -> tuple[int, dict[str, Any]]:
    try:
        cfg = config_module.load(Path(args.config))
    except config_module.ConfigError as exc:
        return 2, {"error": {"code": "InvalidConfig", "message": "; ".join(exc.problems)}}
    try:
        outbox = await open_outbox(cfg.storage, cfg.delivery)
    except OutboxUnavailable as exc:
        hint = "; while it runs, use --url" if isinstance(exc, OutboxInUse) else ""
        return 1, {"error": {"code": "Unavailable", "message": f"{exc}{hint}"}}
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
        code, data = _over_http(args, selection) if args.url else asyncio.run(_offline(args, selection))
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2, ensure_ascii=False), file=sys.stderr if code else sys.stdout)
    return code
