"""Intake benchmark: Alertmanager webhooks answered 200 (after the commit), driven by ``wrk``.

Targets, each started fresh for every run on loopback:

* ``bare``: a bare Starlette app under the same uvicorn settings that parses the
  JSON body and answers 200: the ceiling for any Python webhook receiver here;
* ``durable``: the simplest receiver that may promise "200 means on disk": it validates the
  body with pydantic and INSERTs every alert in one SQLite WAL transaction per request with
  ``synchronous=FULL``, then answers (the fair reference: ``vs durable``);
* the bridge (``flashduty-bridge serve`` from each ``--bridge-src`` checkout) in dry-run
  mode on a fresh outbox, so delivery runs too (it shares the cores, as in production)
  but nothing leaves the machine; with a PostgreSQL server, also on a fresh schema
  (``<label> postgresql``, one replica).

Payloads carry 1, 10 or 100 alerts, distinct in every request (a Lua script builds them).
Max-rate runs use ``wrk -t2``; baseline and bridge runs are interleaved, and their order
flips every round. With ``--pinned`` every server under test runs on CPU 0 (``taskset``: its
threads and worker processes too, as under a one-CPU limit) and ``wrk`` on CPU 1, so CPU per
alert and the ratios are those of one core. Half-load runs pace one ``wrk`` thread with the script's ``delay()``
(a schedule kept with the monotonic clock, through LuaJIT's FFI), so the rate does not
depend on the latency. Every run is bounded by ``wrk -d``.

Run through ``python -m bench`` (``--only intake``); ``python -m bench.intake`` is the same.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx

from bench._proc import PINNING, BridgeSource, cpu_seconds, log, rss_mib, scrape, start_bridge, start_module, value
from tests.support import postgres
from tests.support.procs import Proc

BASELINE = "bare"  # the ceiling: "vs bare"
DURABLE = "durable"  # the fair reference: "vs durable"
SIZES = (1, 10, 100)
ACCEPTED = "flashduty_bridge_alerts_received_total"
ACCEPTED_LABELS = {"outcome": "accepted", "source": "alertmanager"}
PENDING = "flashduty_bridge_outbox_pending"
#: Appended to a bridge's label: the same bridge on a fresh PostgreSQL schema (one replica).
POSTGRESQL_SUFFIX = " postgresql"
WRK_TIMEOUT = "10s"  # well above any latency here, so slow answers count in the percentiles, not as errors

BARE_APP = textwrap.dedent(
    """
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def receive(request):
        body = await request.json()
        return JSONResponse({"request_id": "x", "data": {"accepted": len(body.get("alerts", []))}})

    async def ready(request):
        return JSONResponse({"status": "ready"})

    app = Starlette(routes=[Route("/alertmanager", receive, methods=["POST"]), Route("/-/ready", ready)])
    """
)

# The simplest receiver that may say "200 means on disk": parse and validate with pydantic,
# INSERT every alert in one SQLite WAL transaction per request with synchronous=FULL (the
# commit is fsynced before the answer), answer. No group commit, no thread: the commit runs on
# the loop, as a plain receiver would write it.
DURABLE_APP = textwrap.dedent(
    """
    import os
    import sqlite3

    from pydantic import BaseModel
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    class Alert(BaseModel):
        status: str
        labels: dict[str, str]
        annotations: dict[str, str] = {}
        startsAt: str = ""
        endsAt: str = ""
        generatorURL: str = ""
        fingerprint: str = ""

    class Webhook(BaseModel):
        version: str = "4"
        status: str
        receiver: str = ""
        groupKey: str = ""
        alerts: list[Alert]

    db = sqlite3.connect(os.environ["DURABLE_DB"], isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS alerts (id INTEGER PRIMARY KEY, fingerprint TEXT, status TEXT, body TEXT)"
    )

    async def receive(request):
        hook = Webhook.model_validate_json(await request.body())
        rows = [(a.fingerprint, a.status, a.model_dump_json()) for a in hook.alerts]
        db.execute("BEGIN")
        db.executemany("INSERT INTO alerts (fingerprint, status, body) VALUES (?, ?, ?)", rows)
        db.execute("COMMIT")
        return JSONResponse({"request_id": "x", "data": {"accepted": len(rows)}})

    async def ready(request):
        return JSONResponse({"status": "ready"})

    app = Starlette(routes=[Route("/alertmanager", receive, methods=["POST"]), Route("/-/ready", ready)])
    """
)
BASELINES = {"bare": BARE_APP, "durable": DURABLE_APP}

# ALERTS_PER_REQUEST alerts per request, distinct across requests and threads, each with the
# fingerprint Alertmanager (since 0.19) sends, unique per alert like a real one. With
# RATE_PER_THREAD (requests/s) set, delay() paces each thread on a fixed schedule: every
# request takes the next slot, so the rate holds whatever the latency, as long as enough
# connections are idle; a thread that falls behind by more than a slot restarts from now
# (no burst to catch up), and the bench reports the rate achieved.
LUA = textwrap.dedent(
    """
    local n = 0
    local per = tonumber(os.getenv("ALERTS_PER_REQUEST") or "1")
    local rate = tonumber(os.getenv("RATE_PER_THREAD") or "0")
    local thread_id = 0
    setup = function(thread) thread:set("tid", thread_id); thread_id = thread_id + 1 end
    request = function()
      n = n + 1
      local alerts = {}
      for i = 1, per do
        alerts[i] = string.format(
          '{"status":"firing","labels":{"alertname":"Bench","instance":"node-%d-%d-%d","job":"node",' ..
          '"severity":"critical"},"annotations":{"summary":"bench alert %d","description":"load test"},' ..
          '"startsAt":"2026-11-26T10:00:00Z","endsAt":"0001-01-01T00:00:00Z",' ..
          '"generatorURL":"http://prometheus.local/graph","fingerprint":"%02x%06x%08x"}', tid, n, i, n, tid, n, i)
      end
      local body = '{"receiver":"bench","status":"firing","alerts":[' .. table.concat(alerts, ",") ..
        '],"groupLabels":{},"commonLabels":{},"commonAnnotations":{},"externalURL":"http://am",' ..
        '"version":"4","groupKey":"{}:{}","truncatedAlerts":0}'
      return wrk.format("POST", "/alertmanager", {["Content-Type"] = "application/json"}, body)
    end
    if rate > 0 then
      local ffi = require("ffi")
      ffi.cdef[[
        typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
        int clock_gettime(int clk_id, bench_timespec *tp);
      ]]
      local ts = ffi.new("bench_timespec")
      local interval = 1000 / rate
      local slot = nil
      delay = function()
        ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
        local now = tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
        if slot == nil or slot < now - interval then slot = now end
        local wait = slot - now
        slot = slot + interval
        return math.floor(wait + 0.5)
      end
    end
    """
)

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str | None) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text or "")
    return float(match.group(1)) * UNITS[match.group(2)] if match else float("nan")


def parse_wrk(output: str, per_request: int) -> dict[str, float]:
    """Counts, rates and percentiles from ``wrk --latency`` output; non-2xx is wrk's count of status ≥ 400."""
    done = re.search(r"(\d+) requests in ([\d.]+(?:us|ms|s|m|h))", output)
    if done is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    requests, seconds = float(done.group(1)), _ms(done.group(2)) / 1000
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)$", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)$", output, re.MULTILINE)
    bad = float(non2xx.group(1)) if non2xx else 0.0
    return {
        "seconds": seconds,
        "requests": requests,
        "non_2xx": bad,
        "socket_errors": float(sum(int(n) for n in socket.groups())) if socket else 0.0,
        "ok_alerts": (requests - bad) * per_request,
        "requests_per_s": requests / seconds,
        "alerts_per_s": (requests - bad) * per_request / seconds,
        "p50_ms": _ms(p50.group(1) if p50 else None),
        "p99_ms": _ms(p99.group(1) if p99 else None),
    }


def run_wrk(
    url: str,
    per_request: int,
    seconds: int,
    connections: int,
    script: Path,
    *,
    threads: int = 2,
    rate: float = 0.0,
    watch: int | None = None,
) -> dict[str, float]:
    """One bounded wrk run; with ``watch`` (a PID), also that process's CPU and RSS during the run."""
    env = {"ALERTS_PER_REQUEST": str(per_request), "PATH": "/usr/bin:/bin"}
    if rate:
        env["RATE_PER_THREAD"] = str(rate / threads)
    argv = [
        *PINNING.load_prefix(),
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        f"--timeout={WRK_TIMEOUT}",
        "--latency",
    ]
    cpu0 = cpu_seconds(watch) if watch else 0.0
    wrk = subprocess.Popen(
        [*argv, "-s", str(script), f"{url}/"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    rss: list[float] = []
    try:
        deadline = time.monotonic() + seconds + 30
        while wrk.poll() is None and time.monotonic() < deadline:
            if watch:
                rss.append(rss_mib(watch))
            time.sleep(0.25)
        output, _ = wrk.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk exited with {wrk.returncode}:\n{output}")
    result = parse_wrk(output, per_request)
    if watch:
        result["cpu_s"] = cpu_seconds(watch) - cpu0
        result["rss_load_mib"] = rss[-1] if rss else rss_mib(watch)  # the last sample before wrk ended
        result["rss_peak_mib"] = max(rss, default=result["rss_load_mib"])
    return result


def start_baseline(work: Path, name: str, target: str) -> tuple[Proc, str]:
    (work / f"{target}_app.py").write_text(BASELINES[target])
    argv = ["env", f"DURABLE_DB={work / name}.db", sys.executable, "-m", "uvicorn", "--app-dir", str(work)]
    argv += [
        f"{target}_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    return start_module(work, name, argv, "/-/ready", under_test=True)


def start_dry_run_bridge(
    work: Path, name: str, source: BridgeSource, storage: dict[str, Any] | None = None
) -> tuple[Proc, str]:
    """A dry-run bridge on ``storage`` (default: a fresh SQLite outbox in ``work``)."""
    storage = storage or {"path": str(work / f"outbox-{name}")}
    config = {"storage": {**storage, "max_pending": 5_000_000}, "log_level": "warning"}
    # No integration key anywhere (an empty variable counts as unset): dry run, nothing leaves the machine.
    proc, url = start_bridge(work, name, config, source, env={"FLASHDUTY_INTEGRATION_KEY": ""})
    if httpx.get(f"{url}/-/ready").json().get("dry_run") is False:
        proc.stop()
        raise RuntimeError(f"{name} is not in dry-run mode; refusing to load it")
    return proc, url


def one_run(
    work: Path,
    target: str,
    source: BridgeSource | None,
    per: int,
    seconds: int,
    connections: int,
    script: Path,
    *,
    threads: int = 2,
    rate: float = 0.0,
) -> dict[str, Any]:
    """Start ``target`` fresh, load it once, stop it. Bridge runs also check that 200 meant stored.

    A target labelled ``... postgresql`` runs its bridge on a fresh PostgreSQL schema."""
    if source is not None and target.endswith(POSTGRESQL_SUFFIX):
        with postgres.sync_database() as database:
            return _one_run(work, target, source, per, seconds, connections, script, threads, rate, database.dsn)
    return _one_run(work, target, source, per, seconds, connections, script, threads, rate, None)


def _one_run(
    work: Path,
    target: str,
    source: BridgeSource | None,
    per: int,
    seconds: int,
    connections: int,
    script: Path,
    threads: int,
    rate: float,
    dsn: str | None,
) -> dict[str, Any]:
    name = f"{target.replace(':', '-').replace(' ', '-')}-{per}-{time.monotonic_ns()}"
    if source is None:
        proc, url = start_baseline(work, name, target)
    else:
        proc, url = start_dry_run_bridge(work, name, source, {"dsn": dsn} if dsn else None)
    try:
        time.sleep(0.3)
        result: dict[str, Any] = {"target": target, "alerts_per_request": per, "rss_idle_mib": rss_mib(proc.pid)}
        before = value(scrape(url), ACCEPTED, **ACCEPTED_LABELS) if source else 0.0
        result |= run_wrk(url, per, seconds, connections, script, threads=threads, rate=rate, watch=proc.pid)
        if source is not None:
            samples = scrape(url)
            result["accepted_alerts"] = value(samples, ACCEPTED, **ACCEPTED_LABELS) - before
            result["pending_after"] = value(samples, PENDING)
            result["stored_ok"] = result["accepted_alerts"] >= result["ok_alerts"]
        counted = result.get("accepted_alerts", result["ok_alerts"])
        result["cpu_us_per_alert"] = result["cpu_s"] / counted * 1e6 if counted else float("nan")
    finally:
        proc.stop()
    return result


def median(runs: list[dict[str, Any]], key: str) -> float:
    values = [run[key] for run in runs if key in run]
    return statistics.median(values) if values else float("nan")


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Medians per ``target/size``, with the bridge/baseline ratio of the median alerts/s."""
    keys = (
        *("requests_per_s", "alerts_per_s", "p50_ms", "p99_ms", "cpu_us_per_alert"),
        *("rss_idle_mib", "rss_load_mib", "pending_after"),
    )
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(f"{run['target']}/{run['alerts_per_request']}", []).append(run)
    summary = {}
    for name, group in groups.items():
        row: dict[str, Any] = {key: median(group, key) for key in keys}
        row["rounds"] = len(group)
        row["non_2xx"] = sum(run["non_2xx"] for run in group)
        row["socket_errors"] = sum(run["socket_errors"] for run in group)
        if "stored_ok" in group[0]:
            row["stored_ok"] = all(run["stored_ok"] for run in group)
            row["missing_alerts"] = sum(max(0.0, run["ok_alerts"] - run["accepted_alerts"]) for run in group)
        summary[name] = row
    for name, row in summary.items():
        target, per = name.rsplit("/", 1)
        base = summary.get(f"{BASELINE}/{per}")
        if target != BASELINE and base and base["alerts_per_s"] > 0:
            row["ratio_to_baseline"] = row["alerts_per_s"] / base["alerts_per_s"]
        durable = summary.get(f"{DURABLE}/{per}")
        if target not in (BASELINE, DURABLE) and durable and durable["alerts_per_s"] > 0:
            row["ratio_to_durable"] = row["alerts_per_s"] / durable["alerts_per_s"]
    return summary


def bridge_targets(sources: list[BridgeSource], postgresql: bool) -> list[tuple[str, BridgeSource]]:
    """Every source on SQLite; with ``postgresql``, every source on it too (one replica)."""
    found = [(s.label, s) for s in sources]
    if postgresql:
        found += [(s.label + POSTGRESQL_SUFFIX, s) for s in sources]
    return found


def max_rate(
    work: Path,
    sources: list[BridgeSource],
    rounds: int,
    seconds: int,
    connections: int,
    sizes: tuple[int, ...] = SIZES,
    postgresql: bool = False,
) -> list[dict[str, Any]]:
    """Interleaved max-rate runs: per round and size, the baseline and every bridge, order flipped each round."""
    script = work / "alerts.lua"
    script.write_text(LUA)
    targets: list[tuple[str, BridgeSource | None]] = [
        (BASELINE, None),
        (DURABLE, None),
        *bridge_targets(sources, postgresql),
    ]
    runs = []
    for round_ in range(rounds):
        for per in sizes:
            for target, source in targets if round_ % 2 == 0 else targets[::-1]:
                result = one_run(work, target, source, per, seconds, connections, script)
                result["round"] = round_ + 1
                runs.append(result)
                log(
                    f"round {round_ + 1} {target:>16s} {per:3d}/req {result['alerts_per_s']:8.0f} alerts/s"
                    f"  p50 {result['p50_ms']:7.2f} ms  p99 {result['p99_ms']:7.2f} ms  non-2xx {result['non_2xx']:.0f}"
                )
    return runs


def half_load(
    work: Path,
    sources: list[BridgeSource],
    summary: dict[str, dict[str, Any]],
    seconds: int,
    connections: int,
    sizes: tuple[int, ...] = SIZES,
    postgresql: bool = False,
) -> list[dict[str, Any]]:
    """Each bridge at half its median max alerts/s, one paced wrk thread, per payload size."""
    script = work / "alerts.lua"
    script.write_text(LUA)
    runs = []
    for per in sizes:
        for label, source in bridge_targets(sources, postgresql):
            target_alerts = summary[f"{label}/{per}"]["alerts_per_s"] / 2
            if not target_alerts > 0:
                continue
            rate = target_alerts / per
            result = one_run(work, label, source, per, seconds, connections, script, threads=1, rate=rate)
            result["target_alerts_per_s"] = target_alerts
            runs.append(result)
            log(
                f"half load {label:>16s} {per:3d}/req target {target_alerts:8.0f} alerts/s,"
                f" got {result['alerts_per_s']:8.0f}  p50 {result['p50_ms']:7.2f} ms  p99 {result['p99_ms']:7.2f} ms"
            )
    return runs


if __name__ == "__main__":
    from bench.__main__ import main

    raise SystemExit(main(["--only", "intake", *sys.argv[1:]]))
