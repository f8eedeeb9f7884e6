"""Mapping benchmark: CPU µs per alert of decode → parse → route → map, no HTTP, no store.

    python -m bench.mapping --bridge-src /work/main --bridge-src .   # compare checkouts, interleaved

Each ``--bridge-src`` runs in its own child process (its ``bridge`` package first on the path).
Payloads are Alertmanager webhooks of 1, 10 and 100 distinct alerts, mapped under two configs:
``plain`` (the defaults) and ``routed`` (five routes with regex matchers, global and per-route
label rules with drop/keep regexes, a route severity map), the second being where matchers and
label rules cost something. A child times ``--iterations`` runs of the whole pipeline on the
raw body, ``--rounds`` times per case, and the table gives the median µs per alert. Checkouts
are run one after the other within each round, their order flipping every round.

The machine is shared and noisy: compare rows of one invocation, not absolutes across runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
from typing import Any

from bench._proc import log, sources_from

SIZES = (1, 10, 100)

CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {},
    "routed": {
        "destinations": {"db": {"integration_key": "k1"}, "web": {"integration_key": "k2"}},
        "flashduty": {"integration_key": "k0"},
        "labels": {"drop": ["tmp_.*", "__.*"], "rename": {"host": "instance"}},
        "routes": [
            {"matchers": ['team=~"db|storage"', 'env!~"dev|test"'], "destination": "db", "continue": True},
            {"matchers": ['instance=~".*-canary-.*"'], "drop": True},
            {"matchers": ['severity=~"critical|warning"', 'job=~"node|api.*"'], "destination": "web"},
            {
                "matchers": ['alertname=~"Bench.*"'],
                "destination": "web",
                "severity_map": {"P1": "Critical"},
                "labels": {"keep": ["alertname", "instance", "job", "severity", "team", "summary", "description"]},
            },
            {"matchers": ['team="ops"'], "destination": "db"},
        ],
    },
}

# Runs inside the child: builds the payloads and times the pipeline with whichever API the checkout has.
CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    import bridge
    from bridge import config as config_module

    spec = json.loads(sys.argv[1])
    cfg = config_module.Config.model_validate({"storage": {"path": "/nonexistent"}, **spec["config"]})
    headers = {"content-type": "application/json"}

    def payload(size, seed):
        alerts = []
        for i in range(size):
            labels = {"alertname": "Bench", "instance": f"node-{seed}-{i}", "job": "node", "severity": "critical",
                      "team": "db" if i % 2 else "web", "env": "prod", "tmp_x": "1"}
            alerts.append({"status": "firing", "labels": labels,
                           "annotations": {"summary": f"bench alert {i}", "description": "load test"},
                           "startsAt": "2026-11-26T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                           "generatorURL": "http://prometheus.local/graph", "fingerprint": f"{seed:08x}{i:08x}"})
        return json.dumps({"version": "4", "status": "firing", "receiver": "bench", "groupKey": "{}:{}",
                           "alerts": alerts}).encode()

    # Asked of the checkout's files: the editable install would supply a missing module from elsewhere.
    if os.path.exists(os.path.join(os.path.dirname(bridge.__file__), "intake.py")):
        from bridge import intake

        snapshot = intake.build(cfg)

        def run(raw):
            outcome = intake.prepare(snapshot, intake.Received("alertmanager", raw, headers, {}, None))
            assert isinstance(outcome, intake.Prepared), outcome
            return len(outcome.events)
    else:  # before the intake pipeline: runtime.prepare over the source's own stages
        from prometheus_client import CollectorRegistry
        from bridge.metrics import Metrics
        from bridge.routing import Router
        from bridge.runtime import Runtime, sources

        runtime = Runtime(cfg, Router(cfg), sources(cfg, Metrics(CollectorRegistry())), {}, {})
        source = runtime.sources["alertmanager"]

        def run(raw):
            try:
                body = source.decode(raw, headers)
            except TypeError:
                body = source.decode(raw)
            return len(runtime.prepare(source, source.parse(body, headers, {})).events)

    bodies = [payload(spec["size"], seed) for seed in range(spec["iterations"])]
    run(bodies[0])  # warm up caches and lazy imports
    results = []
    for _ in range(spec["repeats"]):
        started = time.process_time()
        for raw in bodies:
            run(raw)
        results.append((time.process_time() - started) / (spec["iterations"] * spec["size"]) * 1e6)
    print(json.dumps(min(results)))
    """
)


def measure(source: Any, config: str, size: int, iterations: int) -> float:
    spec = {"config": CONFIGS[config], "size": size, "iterations": iterations, "repeats": 3}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**source.env(), "PATH": "/usr/bin:/bin"},
    )
    if result.returncode != 0:
        raise RuntimeError(f"{source.label} {config}/{size}: {result.stderr[-2000:]}")
    return float(json.loads(result.stdout))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mapping", description=__doc__)
    parser.add_argument("--bridge-src", action="append", default=[], metavar="PATH")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--alerts", type=int, default=3000, help="alerts mapped per timing (default 3000)")
    args = parser.parse_args(argv)
    sources = sources_from(args.bridge_src)
    results: dict[tuple[str, str, int], list[float]] = {}
    for round_ in range(args.rounds):
        order = sources if round_ % 2 == 0 else list(reversed(sources))
        for config in CONFIGS:
            for size in SIZES:
                for source in order:
                    value = measure(source, config, size, max(1, args.alerts // size))
                    results.setdefault((source.label, config, size), []).append(value)
                    log(f"round {round_ + 1} {source.label} {config}/{size}: {value:.1f} µs/alert")
    first = sources[0].label
    print(f"{'checkout':<28} {'config':<8} {'alerts/req':>10} {'µs/alert':>9} {'vs first':>8}")
    for (label, config, size), values in results.items():
        median = statistics.median(values)
        base = statistics.median(results[(first, config, size)])
        print(f"{label:<28} {config:<8} {size:>10} {median:>9.1f} {median / base:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
