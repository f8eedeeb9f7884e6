"""The README's benchmark tables, rendered from one run's JSON (``bench/results/bench-*.json``).

    python -m bench.readme bench/results/bench-20261203-161500.json

Prints two Markdown tables: intake per payload size (the bare and the durable baselines, then
every bridge source: alerts/s, its ratio to the durable receiver, CPU µs per alert, and the p99
at half its own max rate), and delivery (events/s and bridge CPU µs per event). The README
pastes them verbatim; tests/test_docs.py checks that its tables have these headers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.intake import BASELINE, DURABLE

INTAKE_HEADER = ["alerts/request", "target", "alerts/s", "vs durable", "CPU µs/alert", "p99 ms at half load"]
DELIVERY_HEADER = ["target", "receiver", "events/s", "CPU µs/event"]


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(row) for row in rows)]


def render(report: dict[str, Any]) -> str:
    """Both tables, with a line saying which run they come from."""
    lines = []
    summary = report.get("intake", {}).get("summary", {})
    half = {(run["target"], run["alerts_per_request"]): run for run in report.get("half_load", [])}
    rows = []
    for name, row in summary.items():
        target, per = name.rsplit("/", 1)
        half_run = half.get((target, int(per)))
        rows.append(
            [
                per,
                target,
                _num(row["alerts_per_s"]),
                _num(row.get("ratio_to_durable"), 2) if target not in (BASELINE, DURABLE) else "",
                _num(row["cpu_us_per_alert"], 1),
                _num(half_run["p99_ms"], 1) if half_run else "",
            ]
        )
    if rows:
        lines += ["Intake, max rate (alerts answered 200, committed) and p99 at half of it:", ""]
        lines += [*_table(INTAKE_HEADER, rows), ""]
    delivery = report.get("delivery", {}).get("summary", {})
    receiver = report["args"].get("receiver", "emulate")
    if delivery:
        drows = [
            [target, receiver, _num(row["events_per_s"]), _num(row["cpu_us_per_event"])]
            for target, row in delivery.items()
        ]
        lines += [f"Delivery of a {report['args']['events']:,}-event backlog:", ""]
        lines += [*_table(DELIVERY_HEADER, drows), ""]
    args = report["args"]
    sources = ", ".join(f"{s['label']} = git {s['git'] or '?'}" for s in report["sources"])
    lines.append(
        f"Run {report['started']}: `python -m bench{' --pinned' if args.get('pinned') else ''}"
        f"{' --no-postgresql' if args.get('no_postgresql') else ''}"
        f"{''.join(' --bridge-src ' + Path(s['path']).name for s in report['sources'])}`"
        f" ({args['rounds']} rounds of {args['seconds']} s, {args['events']:,}-event backlog; {sources})."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        raise SystemExit(2)
    print(render(json.loads(Path(sys.argv[1]).read_text())))
