"""Intake by stage, without HTTP: CPU µs per alert to prepare a request and to store it.

    python -m bench.stages --bridge-src /work/base --bridge-src .   # compare checkouts, interleaved

The two halves of what ``bench/intake.py`` measures through HTTP, for the durable receiver (the
very code of its app, ``intake.DURABLE_APP``) and each ``--bridge-src``:

* ``prepare``: the raw body to what is stored. The durable receiver validates the webhook with
  pydantic and dumps each alert to JSON; the bridge runs ``intake.prepare`` (decode → parse →
  route → map, the event's JSON and digest).
* ``store``: what was prepared, committed on a real file with ``synchronous=FULL``, one
  transaction per request, one request after the other (no group commit to share an fsync). The
  durable receiver INSERTs one row per alert; the bridge calls ``outbox.put`` (its outbox thread,
  admission, the event, its key's state and head, and their indexes).

Payloads are the bench's Alertmanager webhooks of 1, 10 and 100 distinct alerts. Each case runs
in a child process (a bridge's package first on its path) that times ``--alerts`` alerts with
``time.process_time`` (every thread of the process: the outbox thread and the fsync's kernel
time count), ``--rounds`` times, the checkouts' order flipping every round; the table gives
medians. The machine is shared and noisy: compare rows of one invocation, not runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap

from bench._proc import REPO, BridgeSource, log, sources_from
from bench.intake import DURABLE, DURABLE_APP

SIZES = (1, 10, 100)

# The payloads, in every child: the bench's own Alertmanager webhook (bench/intake.py's Lua script).
PAYLOADS = textwrap.dedent(
    """
    import json, os, sys, tempfile, time

    spec = json.loads(sys.argv[1])

    def payload(size, seed):
        alerts = [{"status": "firing",
                   "labels": {"alertname": "Bench", "instance": f"node-0-{seed}-{i}", "job": "node",
                              "severity": "critical"},
                   "annotations": {"summary": f"bench alert {seed}", "description": "load test"},
                   "startsAt": "2026-11-26T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                   "generatorURL": "http://prometheus.local/graph", "fingerprint": f"00{seed:06x}{i:08x}"}
                  for i in range(size)]
        return json.dumps({"receiver": "bench", "status": "firing", "alerts": alerts, "groupLabels": {},
                           "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
                           "version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0}).encode()

    requests = max(1, spec["alerts"] // spec["size"])
    bodies = [payload(spec["size"], seed) for seed in range(requests + 1)]
    work = tempfile.mkdtemp()

    def timed(step, items):
        started = time.process_time()
        for item in items:
            step(item)
        return (time.process_time() - started) / (requests * spec["size"]) * 1e6
    """
)

# The durable receiver: its app's own code (the model, the connection, the transaction).
DURABLE_CHILD = PAYLOADS + textwrap.dedent(
    """
    os.environ["DURABLE_DB"] = os.path.join(work, "durable.db")
    app = {}
    exec(spec["app"], app)
    Webhook, db = app["Webhook"], app["db"]

    def prepare(raw):
        hook = Webhook.model_validate_json(raw)
        return [(a.fingerprint, a.status, a.model_dump_json()) for a in hook.alerts]

    def store(rows):
        db.execute("BEGIN")
        db.executemany("INSERT INTO alerts (fingerprint, status, body) VALUES (?, ?, ?)", rows)
        db.execute("COMMIT")

    store(prepare(bodies[0]))  # warm up
    prepared = [prepare(raw) for raw in bodies[1:]]
    print(json.dumps({"prepare": timed(prepare, bodies[1:]), "store": timed(store, prepared)}))
    """
)

# A bridge: intake.prepare and outbox.put, on a fresh SQLite outbox.
BRIDGE_CHILD = PAYLOADS + textwrap.dedent(
    """
    import asyncio
    from pathlib import Path
    from bridge import intake
    from bridge.config import Config
    from bridge.outbox.sqlite.backend import SqliteOutbox

    snapshot = intake.build(Config.model_validate({"storage": {"path": work}}))

    def prepare(raw):
        outcome = intake.prepare(snapshot, intake.Received("alertmanager", raw, {}, {}, None))
        assert isinstance(outcome, intake.Prepared), outcome
        return outcome.events

    async def store_all():
        outbox = SqliteOutbox(Path(work) / "outbox", max_pending=10_000_000)
        await outbox.open()
        try:
            await outbox.put(prepare(bodies[0]), request_id="warm-up")
            prepared = [prepare(raw) for raw in bodies[1:]]
            started = time.process_time()
            for events in prepared:
                stored = await outbox.put(events, request_id="bench")
                assert stored is not None and all(stored), stored
            return (time.process_time() - started) / (requests * spec["size"]) * 1e6
        finally:
            await outbox.close()

    prepare(bodies[0])  # warm up caches and lazy imports
    print(json.dumps({"prepare": timed(prepare, bodies[1:]), "store": asyncio.run(store_all())}))
    """
)


def measure(source: BridgeSource | None, size: int, alerts: int) -> dict[str, float]:
    """One child: µs per alert of each stage, for the durable receiver (``source`` None) or a bridge."""
    spec = {"size": size, "alerts": alerts, "app": DURABLE_APP}
    env = {"PATH": "/usr/bin:/bin"}
    env |= source.env() if source is not None else {"PYTHONPATH": str(REPO), "PYTHONSAFEPATH": "1"}
    result = subprocess.run(
        [sys.executable, "-c", BRIDGE_CHILD if source is not None else DURABLE_CHILD, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    if result.returncode != 0:
        name = source.label if source is not None else DURABLE
        raise RuntimeError(f"{name}/{size}: {result.stderr[-2000:]}")
    found: dict[str, float] = json.loads(result.stdout)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__)
    parser.add_argument("--bridge-src", action="append", default=[], metavar="PATH")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--alerts", type=int, default=2000, help="alerts per timing (default 2000)")
    args = parser.parse_args(argv)
    targets: list[tuple[str, BridgeSource | None]] = [(DURABLE, None)]
    targets += [(source.label, source) for source in sources_from(args.bridge_src)]
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    for round_ in range(args.rounds):
        order = targets if round_ % 2 == 0 else list(reversed(targets))
        for size in SIZES:
            for label, source in order:
                value = measure(source, size, args.alerts)
                results.setdefault((label, size), []).append(value)
                log(f"round {round_ + 1} {label} {size}/req: {value['prepare']:.1f} + {value['store']:.1f} µs/alert")
    print(f"{'target':<24} {'alerts/req':>10} {'prepare':>8} {'store':>8} {'total':>8} {'vs durable':>10}")
    for size in SIZES:
        base = statistics.median(r["prepare"] + r["store"] for r in results[(DURABLE, size)])
        for label, _ in targets:
            runs = results[(label, size)]
            prepare = statistics.median(r["prepare"] for r in runs)
            store = statistics.median(r["store"] for r in runs)
            total = statistics.median(r["prepare"] + r["store"] for r in runs)
            print(f"{label:<24} {size:>10} {prepare:>8.1f} {store:>8.1f} {total:>8.1f} {total / base:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
