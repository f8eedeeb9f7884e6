"""flashduty-bridge benchmark: intake and delivery in one run, one table.

    python -m bench            # full run, about 10 minutes per bridge source
    python -m bench --quick    # smoke run, about a minute

Intake (``bench/intake.py``, needs ``wrk``): a bare Starlette baseline, a plain durable
receiver (pydantic, one SQLite WAL transaction per request, synchronous=FULL) and the bridge
in dry-run mode, fresh for every run, with 1-, 10- and 100-alert Alertmanager payloads;
interleaved over ``--rounds`` rounds of ``--seconds`` s, medians reported: requests/s,
alerts/s answered 200, p50/p99 latency, ratios to both baselines, CPU µs per accepted alert
and RSS idle and under load. Then each bridge at half its max alerts/s: rate achieved,
p50/p99. Delivery (``bench/delivery.py``): a ``--events`` backlog built during a 503 outage
drains into a minimal receiver (``bench/receiver.py``; ``--receiver emulate``: the strict
emulator): events/s, CPU µs per event, RSS with the backlog and after the drain. ``--pinned``
puts the servers under test on CPU 0 and the load on CPU 1. Progress goes to stderr, the
table to stdout, the JSON (with the README's Markdown tables, see ``bench/readme.py``) to
bench/results/.

The machine is shared and noisy: compare rows of one invocation, not absolutes across runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import delivery, intake, readme
from bench._proc import RESULTS, log, pin, sources_from

FULL = {"rounds": 3, "seconds": 8, "events": 100_000, "drain_seconds": 90.0}
INTAKE_COLUMNS = (
    "target|alerts/req|req/s|alerts/s|p50 ms|p99 ms|vs bare|vs durable|CPU µs/alert|RSS idle MiB|RSS load MiB"
    "|queued at end|non-2xx/sock err|200 => stored"
)
HALF_COLUMNS = "target|alerts/req|target alerts/s|alerts/s|achieved|req/s|p50 ms|p99 ms|non-2xx/sock err|200 => stored"
DELIVERY_COLUMNS = (
    "target|events/s|CPU µs/event|DB RT/event|intake alerts/s|CPU µs/alert in|DB RT/alert in"
    "|RSS idle MiB|RSS backlog MiB|RSS after MiB|drained|fill s|drain s"
)
QUICK = {"rounds": 1, "seconds": 3, "events": 5_000, "drain_seconds": 30.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    quick = ", ".join(f"--{key.replace('_', '-')} {value}" for key, value in QUICK.items())
    parser.add_argument("--quick", action="store_true", help=f"smoke run ({quick}), under 90 s")
    parser.add_argument("--rounds", type=int, help=f"rounds of every measurement (default {FULL['rounds']})")
    parser.add_argument("--seconds", type=int, help=f"duration of each wrk run (default {FULL['seconds']})")
    parser.add_argument("--events", type=int, help=f"delivery backlog in events (default {FULL['events']})")
    parser.add_argument(
        "--drain-seconds", type=float, help=f"longest drain measured per round (default {FULL['drain_seconds']:.0f})"
    )
    parser.add_argument("--only", choices=("intake", "delivery"), help="run one half of the benchmark")
    parser.add_argument(
        "--bridge-src",
        action="append",
        default=[],
        metavar="PATH",
        help="checkout whose bridge package the bridge process runs (first on its PYTHONPATH; the emulator and"
        " baseline always run from this repository); default: this repository. Give it more than once to"
        " compare checkouts in one invocation, interleaved",
    )
    parser.add_argument(
        "--no-postgresql",
        action="store_true",
        help="skip the PostgreSQL rows of intake and delivery (they run when BRIDGE_TEST_POSTGRES_DSN, default"
        " postgresql://postgres@127.0.0.1:5432/test, answers)",
    )
    parser.add_argument(
        "--pinned",
        action="store_true",
        help="every server under test on CPU 0 (taskset: its threads and workers too, as under a one-CPU limit),"
        " wrk, the receiver and the emulator on CPU 1: CPU per alert and ratios of one core",
    )
    parser.add_argument(
        "--receiver",
        choices=("minimal", "emulate"),
        default="minimal",
        help="what delivery drains into: bench/receiver.py, which only answers and counts (default), or the strict"
        " emulator (which costs about as much CPU per event as the bridge)",
    )
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite delivery rows")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--workers", type=int, default=8, help="bridge delivery workers (default 8)")
    args = parser.parse_args(argv)
    for key, default in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    if args.rounds < 1 or args.seconds < 1 or args.events < 1:
        parser.error("--rounds, --seconds and --events must be at least 1")
    if args.pinned and (os.cpu_count() or 1) < 2:
        parser.error("--pinned needs two CPUs")
    return args


def fmt(x: float | None, unit: str = "") -> str:
    """Three significant digits or so, no exponent; '-' for missing values."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if abs(x) >= 100:
        text = f"{x:,.0f}"
    elif abs(x) >= 10:
        text = f"{x:.1f}"
    else:
        text = f"{x:.2f}"
    return text + unit


def table(title: str, headers: list[str], rows: list[list[str]]) -> list[str]:
    """A titled block with fixed-width columns: the first left-aligned, the others right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        first, *rest = cells
        return "  ".join([first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))])

    return [title, line(headers), "  ".join("-" * w for w in widths), *(line(row) for row in rows), ""]


def stored(row: dict[str, Any]) -> str:
    if "stored_ok" not in row:
        return "n/a"
    return "yes" if row["stored_ok"] else f"NO ({row['missing_alerts']:.0f} missing)"


def intake_rows(summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for name, row in summary.items():  # by payload size, baseline first: the order of the first round
        target, per = name.rsplit("/", 1)
        rows.append(
            [
                target,
                per,
                fmt(row["requests_per_s"]),
                fmt(row["alerts_per_s"]),
                fmt(row["p50_ms"]),
                fmt(row["p99_ms"]),
                fmt(row.get("ratio_to_baseline")),
                fmt(row.get("ratio_to_durable")),
                fmt(row["cpu_us_per_alert"]),
                fmt(row["rss_idle_mib"]),
                fmt(row["rss_load_mib"]),
                fmt(row["pending_after"]),
                f"{row['non_2xx']:.0f}/{row['socket_errors']:.0f}",
                stored(row),
            ]
        )
    return rows


def half_rows(runs: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            run["target"],
            str(run["alerts_per_request"]),
            fmt(run["target_alerts_per_s"]),
            fmt(run["alerts_per_s"]),
            f"{run['alerts_per_s'] / run['target_alerts_per_s']:.0%}",
            fmt(run["requests_per_s"]),
            fmt(run["p50_ms"]),
            fmt(run["p99_ms"]),
            f"{run['non_2xx']:.0f}/{run['socket_errors']:.0f}",
            "yes" if run["stored_ok"] else f"NO ({run['ok_alerts'] - run['accepted_alerts']:.0f} missing)",
        ]
        for run in runs
    ]


def delivery_rows(summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    return [
        [
            target,
            fmt(row["events_per_s"]),
            fmt(row["cpu_us_per_event"]),
            fmt(row["round_trips_per_event"]),
            fmt(row["intake_alerts_per_s"]),
            fmt(row["cpu_us_per_alert_in"]),
            fmt(row["round_trips_per_alert_in"]),
            fmt(row["rss_idle_mib"]),
            fmt(row["rss_backlog_mib"]),
            fmt(row["rss_after_mib"]),
            f"{row['drained_rounds']}/{row['rounds']}",
            fmt(row["fill_s"]),
            fmt(row["drain_s"]),
        ]
        for target, row in summary.items()
    ]


def checks(report: dict[str, Any]) -> list[str]:
    """Every sanity check that failed, one line each."""
    problems = []
    for name, row in report.get("intake", {}).get("summary", {}).items():
        if row["non_2xx"] or row["socket_errors"]:
            problems.append(
                f"intake {name}: {row['non_2xx']:.0f} non-2xx answers, {row['socket_errors']:.0f} socket errors"
            )
        if row.get("stored_ok") is False:
            problems.append(
                f"intake {name}: {row['missing_alerts']:.0f} alerts answered 200 but not counted as accepted"
            )
    for run in report.get("half_load", []):
        name = f"{run['target']}/{run['alerts_per_request']}"
        if run["non_2xx"] or run["socket_errors"]:
            problems.append(
                f"half load {name}: {run['non_2xx']:.0f} non-2xx answers, {run['socket_errors']:.0f} socket errors"
            )
        if not run["stored_ok"]:
            problems.append(f"half load {name}: alerts answered 200 but not counted as accepted")
    for target, row in report.get("delivery", {}).get("summary", {}).items():
        if row["refused_alerts"]:
            problems.append(f"delivery {target}: {row['refused_alerts']:.0f} backlog alerts not answered 2xx")
    return problems


def render(report: dict[str, Any]) -> str:
    args = report["args"]
    lines = [
        f"flashduty-bridge benchmark {report['started']}, {report['minutes']:.1f} min, {os.cpu_count()} CPUs,"
        f" load average {report['loadavg_start']} at start, {report['loadavg_end']} at end"
        + (", pinned: servers under test on CPU 0, load on CPU 1" if args.get("pinned") else ""),
    ]
    for source in report["sources"]:
        lines.append(f"  {source['label']}: {source['path']} (version {source['version']}, git {source['git'] or '?'})")
    lines.append("")
    if "intake" in report:
        lines += table(
            f"Intake at max rate: wrk -t2 -c{args['connections']} -d{args['seconds']}s, median of {args['rounds']}"
            " interleaved round(s); bridge in dry-run mode, fresh outbox per run",
            INTAKE_COLUMNS.split("|"),
            intake_rows(report["intake"]["summary"]),
        )
        lines += table(
            f"Intake at half the max alerts/s above: wrk -t1 -c{args['connections']} -d{args['seconds']}s paced by"
            " delay(), one run each",
            HALF_COLUMNS.split("|"),
            half_rows(report["half_load"]),
        )
    if "delivery" in report:
        lines += table(
            f"Delivery: {args['events']:,} events queued during an emulated 503 outage, then drained into"
            f" {'the minimal receiver' if args.get('receiver', 'emulate') == 'minimal' else 'emulate'}"
            f" (limits lifted, {args['workers']} workers, drain cut at {args['drain_seconds']:.0f} s);"
            f" median of {args['rounds']} round(s)",
            DELIVERY_COLUMNS.split("|"),
            delivery_rows(report["delivery"]["summary"]),
        )
    problems = report["checks"]
    lines.append(
        "Checks (every wrk run: no non-2xx answer, no socket error; bridge: alerts accepted per /metrics >= alerts"
        " answered 200; delivery: every backlog webhook answered 2xx): "
        + ("all passed" if not problems else f"{len(problems)} FAILED")
    )
    lines += [f"  FAILED {problem}" for problem in problems]
    notes = [
        f"  note: {target}: drain cut short in {row['rounds'] - row['drained_rounds']} round(s); at least"
        f" {row['min_delivered']:.0f} of {row['backlog']:,} delivered, RSS after is at the cut"
        for target, row in report.get("delivery", {}).get("summary", {}).items()
        if row["drained_rounds"] < row["rounds"]
    ]
    return "\n".join(lines + notes)


def without_nan(data: Any) -> Any:
    """NaN (a value that could not be measured) as null: NaN is not JSON."""
    if isinstance(data, float) and math.isnan(data):
        return None
    if isinstance(data, dict):
        return {key: without_nan(item) for key, item in data.items()}
    if isinstance(data, list):
        return [without_nan(item) for item in data]
    return data


def postgresql_answers() -> bool:
    """Whether the PostgreSQL server of the tests answers (the PostgreSQL rows need it)."""
    import asyncio

    import asyncpg

    from tests.support.postgres import server_dsn

    async def probe() -> None:
        conn = await asyncpg.connect(server_dsn(), timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        log(f"no PostgreSQL server answers ({type(exc).__name__}): the PostgreSQL rows are left out")
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.only != "delivery" and shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    sources = sources_from(args.bridge_src)
    if args.pinned:
        pin(server="0", load="1")
    started, t0 = time.strftime("%Y-%m-%d %H:%M:%S"), time.monotonic()
    report: dict[str, Any] = {
        "args": vars(args),
        "started": started,
        "loadavg_start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "sources": [source.describe() for source in sources],
    }
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        if args.only != "delivery":
            with_postgresql = not args.no_postgresql and postgresql_answers()
            runs = intake.max_rate(
                work, sources, args.rounds, args.seconds, args.connections, postgresql=with_postgresql
            )
            summary = intake.summarize(runs)
            report["intake"] = {"summary": summary, "runs": runs}
            report["half_load"] = intake.half_load(
                work, sources, summary, args.seconds, args.connections, postgresql=with_postgresql
            )
        if args.only != "intake":
            targets = delivery.targets(
                sources,
                postgresql=not args.no_postgresql and postgresql_answers(),
                receiver=args.receiver,
                sqlite=not args.no_sqlite,
            )
            runs = delivery.run_rounds(
                work, targets, args.rounds, args.events, args.workers, drain_seconds=args.drain_seconds
            )
            report["delivery"] = {"summary": delivery.summarize(runs), "runs": runs}
    report["minutes"] = (time.monotonic() - t0) / 60
    report["loadavg_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    report["checks"] = checks(report)
    text = render(report)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / time.strftime("bench-%Y%m%d-%H%M%S.json")
    report["table"] = text
    report["markdown"] = readme.render(report)  # the README's tables: python -m bench.readme FILE prints them
    out.write_text(json.dumps(without_nan(report), indent=2))
    print(text)
    log(f"wrote {out}")
    return 1 if report["checks"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
