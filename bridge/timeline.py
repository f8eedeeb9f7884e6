"""``flashduty-bridge trail ALERT_KEY``: what happened to an alert, as a timeline.

Talks to a running bridge's events API (``--url``, with ``--token`` or ``BRIDGE_ADMIN_TOKEN``).
With ``--config``: if that bridge runs (its outbox is in use), through its API at the config's
``listen`` with its ``admin.token``; if it is stopped, by reading its outbox directly. Each
event is one line (id, status, outcome, when, where from and to, title), then one line per
step: accepted from which request, each attempt with its HTTP status, Flashduty request_id,
code and latency, and replays, coalescing, expiry, purges.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bridge import config as config_module
from bridge.deadletters import TOKEN_ENV_VAR, CommandError, admin_url, call_admin
from bridge.outbox import OutboxInUse, OutboxUnavailable, TrailFilter, open_outbox
from bridge.outbox.trail import MAX_LIMIT

OUTCOME_WORDS = {
    "pending": "pending",
    "delivered": "delivered",
    "suppressed": "suppressed (repeat)",
    "coalesced": "coalesced",
    "dead": "DEAD LETTER",
    "purged": "purged",
}


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("trail", help="what happened to an alert_key: every event, attempt and ending")
    parser.add_argument("alert_key")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running bridge, e.g. http://127.0.0.1:9095 (admin API)")
    where.add_argument(
        "--config", help="the bridge's config file: its admin API (listen, admin.token) while it runs, else its outbox"
    )
    parser.add_argument("--token", help=f"admin token (default: the config's admin.token, else ${TOKEN_ENV_VAR})")
    parser.add_argument("--limit", type=int, default=50, help="newest events shown (default 50)")
    parser.add_argument("--json", action="store_true", help="print the events API's JSON instead")
    parser.set_defaults(func=run)


def fetch(url: str, token: str, alert_key: str, limit: int) -> list[dict[str, Any]]:
    status, answer = call_admin(url, token, "GET", "/events", params={"alert_key": alert_key, "limit": limit})
    if "error" in answer:
        error = answer["error"]
        raise CommandError(f"{url}: HTTP {status} {error.get('code')}: {error.get('message')}")
    events: list[dict[str, Any]] = answer["data"]["events"]
    return events


async def from_config(args: argparse.Namespace) -> list[dict[str, Any]]:
    try:
        cfg = config_module.load(Path(args.config))
    except config_module.ConfigError as exc:
        raise CommandError(f"invalid configuration {exc.source}: {'; '.join(exc.problems)}", 2) from None
    try:
        outbox = await open_outbox(cfg.storage, cfg.delivery)
    except OutboxInUse:
        token = args.token or cfg.admin.token.get_secret_value() or os.environ.get(TOKEN_ENV_VAR, "")
        return await asyncio.to_thread(fetch, admin_url(cfg.listen), token, args.alert_key, args.limit)
    except OutboxUnavailable as exc:
        raise CommandError(str(exc)) from None
    try:
        events = await outbox.trail(TrailFilter(alert_key=args.alert_key, limit=args.limit))
        return [event.to_json(body=False) for event in events]
    finally:
        await outbox.close()


def _when(at: float | None, *, day: bool = True) -> str:
    if at is None:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S" if day else "%H:%M:%S", time.gmtime(at))
    return f"{stamp}.{int(at * 1000) % 1000:03d}" + (" UTC" if day else "")


def describe_step(step: dict[str, Any], number: int, request_id: bool = True) -> str:
    """One step as a line of the timeline (``request_id``: with Flashduty's request id of an attempt)."""
    kind = step.get("kind")
    if kind == "attempt":
        status = step.get("status") or "-"
        code = "" if step.get("code") in (None, "none") else f" {step['code']}"
        request = f"  request_id {step['request_id']}" if step.get("request_id") and request_id else ""
        message = f"  {step['message']}" if step.get("message") and step.get("outcome") != "ok" else ""
        return f"attempt {number}: {step.get('outcome')} {status}{code}{request}  {step.get('latency_ms')} ms{message}"
    if kind == "coalesced":
        return f"coalesced: superseded by the newer firing event #{step.get('by')}, not sent"
    if kind == "replayed":
        return "replayed from the dead letters" + (" (forced)" if step.get("forced") else "")
    if kind == "expired":
        return f"expired: {step.get('message')}"
    if kind == "parked":
        return f"dead letter: {step.get('code')}: {step.get('message')}"
    if kind == "purged":
        return "purged from the dead letters"
    return json.dumps(step)


def render(alert_key: str, events: list[dict[str, Any]]) -> str:
    """The timeline of ``events`` (as the events API returns them), newest first."""
    if not events:
        return f"alert_key {alert_key}: no events (none arrived, or they are past storage.history)\n"
    lines = [f"alert_key {alert_key}: {len(events)} event(s), newest first", ""]
    for event in events:
        outcome = OUTCOME_WORDS.get(event["outcome"], event["outcome"])
        lines.append(
            f"#{event['id']}  {event['event_status']:<8}  {outcome:<19}  {_when(event['received_at'])}"
            f"  {event['source']} -> {event['destination']}  {event['title']}"
        )
        request = event.get("inbound_request_id")
        lines.append(
            f"    {_when(event['received_at'], day=False)}  accepted" + (f", request {request}" if request else "")
        )
        if event["outcome"] == "suppressed":
            lines.append("    not queued: it repeats the key's last accepted event within delivery.refresh_interval")
        attempts = 0
        for step in event["steps"]:
            if step.get("kind") == "attempt":
                attempts += 1
            lines.append(f"    {_when(step.get('at'), day=False)}  {describe_step(step, attempts)}")
        if event["attempts"] > attempts:
            lines.append(f"    ({event['attempts'] - attempts} more attempts not kept: the first and the latest are)")
        if event["outcome"] == "dead":
            lines.append(
                f"    dead letter: {event['last_code']}: {event['last_error']}"
                f" (to replay: deadletter replay --id {event['id']})"
            )
        lines.append("")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= MAX_LIMIT:
        print(f"error: --limit must be between 1 and {MAX_LIMIT}", file=sys.stderr)
        return 2
    try:
        if args.url:
            token = args.token or os.environ.get(TOKEN_ENV_VAR, "")
            events = fetch(args.url, token, args.alert_key, args.limit)
        else:
            events = asyncio.run(from_config(args))
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.json:
        print(json.dumps({"events": events}, indent=2, ensure_ascii=False))
    else:
        print(render(args.alert_key, events), end="")
    return 0
