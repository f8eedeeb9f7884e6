"""Intake benchmark: alerts/s answered 200 (after commit) vs a bare Starlette JSON endpoint.

Runs, interleaved, for ``--rounds`` rounds on loopback:

* ``baseline``: a bare Starlette app under the same uvicorn settings that parses the
  JSON body and answers 200: the ceiling for any Python webhook receiver here;
* ``bridge-1`` / ``bridge-10``: ``flashduty-bridge serve`` with 1-alert and 10-alert
  Alertmanager payloads (distinct alerts per request), each run on a fresh outbox,
  in dry-run mode so delivery runs too (it shares the two cores, as in production)
  but nothing leaves the machine.

Load comes from ``wrk`` (Debian package ``wrk``) with a Lua script that makes every
request's alerts distinct. Each run is bounded (``--seconds``). The machine is
shared and noisy: read the medians and the ratios of one invocation, not absolutes.

    python -m bench.intake --rounds 3 --seconds 8
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import yaml

from tests.support.procs import LOOPBACK, Proc, free_port, python_module

RESULTS = Path(__file__).resolve().parent / "results"
ACCEPTED_SERIES = r'flashduty_bridge_alerts_received_total\{outcome="accepted",source="alertmanager"\} ([\d.e+]+)'

BASELINE_APP = textwrap.dedent(
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

LUA = textwrap.dedent(
    """
    local n = 0
    local per = tonumber(os.getenv("ALERTS_PER_REQUEST") or "1")
    local thread_id = 0
    setup = function(thread) thread:set("tid", thread_id); thread_id = thread_id + 1 end
    request = function()
      n = n + 1
      local alerts = {}
      for i = 1, per do
        alerts[i] = string.format(
          '{"status":"firing","labels":{"alertname":"Bench","instance":"node-%%d-%%d-%%d","job":"node",' ..
          '"severity":"critical"},"annotations":{"summary":"bench alert %%d","description":"load test"},' ..
          '"startsAt":"2026-11-26T10:00:00Z","endsAt":"0001-01-01T00:00:00Z",' ..
          '"generatorURL":"http://prometheus.local/graph"}', tid, n, i, n)
      end
      local body = '{"receiver":"bench","status":"firing","alerts":[' .. table.concat(alerts, ",") ..
        '],"groupLabels":{},"commonLabels":{},"commonAnnotations":{},"externalURL":"http://am",' ..
        '"version":"4","groupKey":"{}:{}","truncatedAlerts":0}'
      return wrk.format("POST", "/alertmanager", {["Content-Type"] = "application/json"}, body)
    end
    """
).replace("%%", "%")


def run_wrk(port: int, per_request: int, seconds: int, connections: int, script: Path) -> dict[str, float]:
    output = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://{LOOPBACK}:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
        env={"ALERTS_PER_REQUEST": str(per_request), "PATH": "/usr/bin:/bin"},
    ).stdout
    requests = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", output)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "requests_per_s": requests,
        "alerts_per_s": requests * per_request,
        "non_2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "p50_ms": float(p50.group(1)) * scale[p50.group(2)] if p50 else float("nan"),
    }


def start_baseline(work: Path) -> tuple[Proc, int]:
    (work / "baseline_app.py").write_text(BASELINE_APP)
    port = free_port()
    proc = Proc(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(work),
            "baseline_app:app",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        work / "baseline.log",
    )
    proc.wait_http(f"http://{LOOPBACK}:{port}/-/ready")
    return proc, port


def start_bridge(work: Path, name: str) -> tuple[Proc, int]:
    config = {
        "storage": {"path": str(work / f"outbox-{name}"), "max_pending": 5_000_000},
        "log_level": "warning",
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    proc = Proc(
        python_module("bridge", "serve", "--config", str(path), "--listen", f"{LOOPBACK}:{port}"), work / f"{name}.log"
    )
    proc.wait_http(f"http://{LOOPBACK}:{port}/-/ready")
    return proc, port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    runs: dict[str, list[dict[str, float]]] = {"baseline-1": [], "baseline-10": [], "bridge-1": [], "bridge-10": []}
    with tempfile.TemporaryDirectory(prefix="bench-intake-") as tmp:
        work = Path(tmp)
        script = work / "alerts.lua"
        script.write_text(LUA)
        for round_ in range(args.rounds):
            for name in runs:
                kind, per = name.split("-")
                proc, port = start_baseline(work) if kind == "baseline" else start_bridge(work, f"{name}-{round_}")
                try:
                    result = run_wrk(port, int(per), args.seconds, args.connections, script)
                    if kind == "bridge":
                        # Every 200 must be in the outbox (pending) or already delivered (dry-run list).
                        stats = httpx.get(f"http://{LOOPBACK}:{port}/metrics").text
                        accepted = re.search(ACCEPTED_SERIES, stats)
                        result["accepted_alerts"] = float(accepted.group(1)) if accepted else 0.0
                finally:
                    proc.stop()
                runs[name].append(result)
                print(
                    f"round {round_ + 1} {name:12s} {result['alerts_per_s']:9.0f} alerts/s"
                    f"  p50 {result['p50_ms']:6.2f} ms  non-2xx {result['non_2xx']:.0f}",
                    flush=True,
                )
                time.sleep(0.5)
    summary = {
        name: {
            "median_alerts_per_s": statistics.median(r["alerts_per_s"] for r in results),
            "median_requests_per_s": statistics.median(r["requests_per_s"] for r in results),
            "median_p50_ms": statistics.median(r["p50_ms"] for r in results),
            "runs": results,
        }
        for name, results in runs.items()
    }
    print()
    for per in ("1", "10"):
        base, bridge = summary[f"baseline-{per}"], summary[f"bridge-{per}"]
        ratio = bridge["median_alerts_per_s"] / base["median_alerts_per_s"]
        print(
            f"{per:>2}-alert payloads: bridge {bridge['median_alerts_per_s']:8.0f} alerts/s, "
            f"bare Starlette {base['median_alerts_per_s']:8.0f} alerts/s, ratio {ratio:.2f}"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / time.strftime("intake-%Y%m%d-%H%M%S.json")
    out.write_text(json.dumps({"args": vars(args), "summary": summary}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
