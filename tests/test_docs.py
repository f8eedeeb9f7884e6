"""The README and the config examples are checked against the code, so that they cannot rot.

Every fenced block of README.md is claimed by one rule below, or test_every_readme_block_is_checked fails:

* ``yaml``: a bridge config is loaded as ``check-config`` loads it (its ``${VAR}`` set; key files it names
  are the reader's own Secret mounts and are not read); an Alertmanager config (``route``/``receivers``)
  must pass ``amtool check-config``.
* ``sh``: run, command after command, as a reader would (SESSIONS), in a sandbox with its own loopback,
  ``/tmp`` and a copy-on-write checkout (tests/support/sandbox.py), so the README's fixed ports and paths
  are used as written. A server the reader starts in the foreground and leaves in its terminal is started
  in the background, and the next command waits until it answers. The harness's own commands (a session's
  setup and checks) are written out in full below. ``...`` placeholders are filled only where FILL says.
  Commands that are not run are in NOT_RUN, with why, and are checked otherwise.
* Blocks in the deploy sections (DEPLOY_SECTIONS: helm, kubectl, docker) belong to the deploy tests; they
  are skipped here, by section, each one listed as a skipped test.
* A block without a language is text (the layout tree).

The YAML examples written as comments in config/example.yaml load once un-commented in place (the config
files themselves pass check-config in tests/test_cli.py and tests/test_senders.py). The README's tables of
metrics, codes and configuration keys are compared with the Metrics registry, the destination's closed
set of codes and the config models' defaults; and no README table may be split by a blank line.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel, SecretStr

from bridge import config as config_module
from bridge.destinations.flashduty import ATTEMPT_CODES, KNOWN_CODES, FlashdutyDestination, Transports
from bridge.metrics import PREFIX, Metrics
from bridge.outbox.dispatcher import UNKNOWN_DESTINATION
from bridge.outbox.pacing import RateLimiter
from bridge.sources import grafana
from tests.support import docs, sandbox
from tests.support.tools import require_tool

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLE = ROOT / "config" / "example.yaml"

#: README sections whose blocks (helm, kubectl, docker, promtool) the deploy tests check.
DEPLOY_SECTIONS = ("Deploy on Kubernetes", "Operate")

#: Commands of the README that are not run, and why; each is checked another way (test_not_run_commands).
NOT_RUN = {
    "./scripts/test": "the test suite itself: it would run inside itself (CI runs it, .ci/run)",
    ".venv/bin/python -m bench": "a benchmark of one to ten minutes: its arguments are parsed by bench's parser",
}

#: The only ``...`` placeholders filled in run commands.
FILL = {"export BRIDGE_ADMIN_TOKEN=...": "export BRIDGE_ADMIN_TOKEN=docs-admin-token"}

FIXTURE = "tests/fixtures/payloads/alertmanager-0.25-firing.json"


def readme_blocks() -> list[docs.Block]:
    return docs.blocks(README)


def in_deploy_section(block: docs.Block) -> bool:
    return any(title in DEPLOY_SECTIONS for title in block.headings)


def block_at(*headings: str, index: int = 0) -> docs.Block:
    """The README block under headings ending with ``headings`` (the index-th there)."""
    found = [b for b in readme_blocks() if b.headings[-len(headings) :] == headings and b.index == index]
    assert len(found) == 1, f"no single README block under {' / '.join(headings)} #{index}"
    return found[0]


def variables(text: str) -> dict[str, str]:
    """A value for every ``${VAR}`` in ``text``, as a reader's environment would have."""
    return {name: f"docs-{name.lower()}" for name in re.findall(r"\$\{(\w+)\}", text)}


def load_config_text(tmp_path: Path, text: str, name: str = "config.yaml") -> config_module.Config:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return config_module.load(path, variables(text))


# -- sessions: README shell blocks, run --------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """README shell blocks run one after another in one sandbox, with the harness's setup and checks."""

    name: str
    blocks: tuple[tuple[tuple[str, ...], int], ...]  # (headings, index) of each README block, in order
    setup: str = ""  # commands before the README's (not from the README)
    after: str = ""  # checks after them
    check: Callable[[dict[str, str]], None] = lambda outputs: None  # on the output of each README command
    files: dict[str, str] = field(default_factory=dict)  # written in the checkout before anything runs


def output_of(outputs: dict[str, str], prefix: str) -> str:
    (found,) = [text for command, text in outputs.items() if command.startswith(prefix)]
    return found


def json_of(outputs: dict[str, str], prefix: str) -> Any:
    return json.loads(output_of(outputs, prefix))


def check_dry_run(outputs: dict[str, str]) -> None:
    answer = json_of(outputs, "curl -s -XPOST localhost:9095/alertmanager")
    assert answer["data"]["accepted"] >= 1, answer
    assert json_of(outputs, "curl -s localhost:9095/-/dry-run")["dry_run"] is True


def worked_example() -> tuple[dict[str, Any], dict[str, Any]]:
    """The template source example's payload and the event the README says it gives."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    payload = re.search(r"posts `(\{.*?\})`:", text)
    event = re.search(r"gives `(\{.*?\})`, and the same check", text)
    assert payload and event, "the worked example of template sources moved: update this test"
    return json.loads(payload.group(1)), json.loads(event.group(1))


def check_preview(outputs: dict[str, str]) -> None:
    _, claimed = worked_example()
    rendered = json_of(outputs, "flashduty-bridge render")["events"]
    served = json_of(outputs, "curl -s -XPOST localhost:9095/-/render/uptime")["data"]["events"]
    for events in (rendered, served):
        (entry,) = events
        assert {key: entry["event"].get(key) for key in claimed} == claimed, entry
    assert re.search(r"\b\d+ passed, 0 failed", output_of(outputs, "flashduty-bridge test-templates"))


def check_dead_letters(outputs: dict[str, str]) -> None:
    letters = json_of(outputs, "flashduty-bridge deadletter list   --url")["dead_letters"]
    assert letters and {letter["last_code"] for letter in letters} == {"InvalidIntegrationKey"}
    assert json_of(outputs, "flashduty-bridge deadletter show 1")["id"] == 1
    assert sorted(json_of(outputs, "flashduty-bridge deadletter replay")["replayed"]) == [x["id"] for x in letters]
    assert json_of(outputs, "flashduty-bridge deadletter purge")["purged"] == 0
    assert "dead_letters" in json_of(outputs, "flashduty-bridge deadletter list   --config")
    # The event trail of the fixture's first alert: dead-lettered for the wrong key, then replayed.
    for where in ("--url", "--config"):
        timeline = output_of(outputs, f"flashduty-bridge trail alertmanager:59375702559462c1 {where}")
        assert "alert_key alertmanager:59375702559462c1: 1 event(s)" in timeline, timeline
        assert "give_up 400 InvalidIntegrationKey" in timeline and "replayed from the dead letters" in timeline


WRONG_KEY_BRIDGE = """\
listen: 127.0.0.1:9095
storage: {path: /tmp/docs-outbox}
flashduty: {url: "http://127.0.0.1:9096/event/push/alert/standard", integration_key: docs-wrong-key}
admin: {token: "${BRIDGE_ADMIN_TOKEN}"}
"""

SESSIONS = [
    Session(
        "dry run",
        ((("Two commands",), 0), (("Two commands",), 1)),
        after="poll 'curl -s localhost:9095/-/dry-run' '\"alert_key\"'",
        check=check_dry_run,
    ),
    Session(
        "offline pipeline",
        ((("Try the whole pipeline offline",), 0), (("Try the whole pipeline offline",), 1)),
        after="poll 'curl -s localhost:9096/-/events' '\"alert_key\"'",
    ),
    Session(
        "preview",
        ((("Senders",), 1),),
        # "With the example above saved as bridge.yaml and its payload as payload.json", and a bridge running.
        setup="export UPTIME_TOKEN=docs-uptime-token\nflashduty-bridge serve --config bridge.yaml",
        check=check_preview,
        files={"bridge.yaml": "<Senders #0>", "payload.json": "<worked example payload>"},
    ),
    Session(
        "dead letters",
        ((("Delivery", "Dead letters"), 0), (("Delivery", "Where did my alert go? The event trail"), 0)),
        # A bridge with a wrong key, its events parked; then the key is fixed and the config reloaded.
        setup=f"""\
export BRIDGE_ADMIN_TOKEN=docs-admin-token
flashduty-bridge emulate --listen 127.0.0.1:9096 --keys docs-right-key &
flashduty-bridge serve --config bridge.yaml
curl -s -XPOST localhost:9095/alertmanager -H 'Content-Type: application/json' --data-binary @{FIXTURE}
poll "curl -s -H 'Authorization: Bearer docs-admin-token' localhost:9095/api/v1/dead-letters" InvalidIntegrationKey
sed -i s/docs-wrong-key/docs-right-key/ bridge.yaml
curl -s -XPOST localhost:9095/-/reload""",
        after="poll 'curl -s localhost:9096/-/events?integration_key=docs-right-key' '\"alert_key\"'",
        check=check_dead_letters,
        files={"bridge.yaml": WRONG_KEY_BRIDGE},
    ),
]

PRELUDE = r"""
set -euo pipefail
export HOME=/tmp
finish() {
    status=$?
    if [ "$status" -ne 0 ]; then
        for log in /tmp/docs-server-*.log; do [ -e "$log" ] && { echo "--- $log"; tail -n 40 "$log"; }; done
    fi
    kill $(jobs -p) 2>/dev/null || true
    wait 2>/dev/null || true
    exit "$status"
}
trap finish EXIT
# Every README curl fails the session on an HTTP error (-s alone would hide it).
curl() { command curl --silent --show-error --fail-with-body --max-time 30 "$@"; }
# URL LOG: wait (bounded) until a server just started answers.
wait_http() {
    for _ in $(seq 300); do
        if command curl -s -o /dev/null "$1"; then return 0; fi
        sleep 0.1
    done
    echo "not answering: $1"; cat "$2"; return 1
}
# COMMAND TEXT: run COMMAND until its output contains TEXT (bounded).
poll() {
    local out=""
    for _ in $(seq 300); do
        if out=$(eval "$1" 2>&1) && grep -qF -- "$2" <<<"$out"; then return 0; fi
        sleep 0.1
    done
    echo "timed out: '$1' never said $2; last: $out"; return 1
}
"""

SERVERS = ("serve", "emulate")


def is_server(words: list[str]) -> bool:
    return (
        bool(words)
        and words[0] in ("./scripts/bridge", "flashduty-bridge")
        and (len(words) == 1 or words[1] in SERVERS)
    )


def not_run_reason(command: str) -> str | None:
    return next((why for prefix, why in NOT_RUN.items() if command.startswith(prefix)), None)


def server_port(words: list[str], files: dict[str, str]) -> int:
    """Where a server command listens: --listen, else its config's listen (the heredocs seen so far, else
    the checkout's file), else the default."""
    if "--listen" in words:
        return config_module.split_listen(words[words.index("--listen") + 1])[1]
    if len(words) > 1 and words[1] == "emulate":
        return 9096
    path = words[words.index("--config") + 1] if "--config" in words else "config/dry-run.yaml"
    text = files.get(path) or (ROOT / path).read_text(encoding="utf-8")
    return config_module.split_listen((yaml.safe_load(text) or {}).get("listen", config_module.DEFAULT_LISTEN))[1]


def session_script(session: Session) -> tuple[str, list[str]]:
    """The bash script of a session, and the README commands it runs (in order)."""
    files = session_files(session)
    lines = [PRELUDE]
    readme_commands: list[str] = []
    servers = 0

    def emit(command: str, label: int | None) -> None:
        nonlocal servers
        if label is not None:
            lines.append(f"printf '\\n::: {label}\\n'")
        heredoc = re.match(r"cat > (\S+) <<'(\w+)'\n(.*)\n\2$", command, re.DOTALL)
        if heredoc:
            files[heredoc.group(1)] = heredoc.group(3) + "\n"
        words = docs.argv(command)
        if (why := not_run_reason(command)) is not None:
            lines.append(f"echo {shlex.quote('not run: ' + why)}")
        elif is_server(words):
            assert "\n" not in command, f"a server command on one line, please: {command}"
            servers += 1
            log = f"/tmp/docs-server-{servers}.log"
            port = server_port(words, files)
            words = words[:-1] if words[-1] == "&" else words  # its comment and & go: output to a log
            lines.append(f"{shlex.join(words)} > {log} 2>&1 &")
            lines.append(f"wait_http http://127.0.0.1:{port}/-/healthy {log}")
        else:
            lines.append(command)

    for command in docs.commands(session.setup):
        emit(command, None)
    for headings, index in session.blocks:
        for command in docs.commands(block_at(*headings, index=index).text):
            for placeholder, value in FILL.items():
                command = command.replace(placeholder, value)
            assert "..." not in command, f"unfilled placeholder in a README command: {command}"
            readme_commands.append(command)
            emit(command, len(readme_commands) - 1)
    for command in docs.commands(session.after):
        emit(command, None)
    lines.append(f"printf '\\n::: {len(readme_commands)}\\n'")
    return "\n".join(lines) + "\n", readme_commands


def session_files(session: Session) -> dict[str, str]:
    (senders,) = [b for b in readme_blocks() if b.headings[-1:] == ("Senders",) and b.language == "yaml"]
    payload, _ = worked_example()
    known = {"<Senders #0>": senders.text, "<worked example payload>": json.dumps(payload)}
    return {path: known.get(text, text) for path, text in session.files.items()}


def sandbox_env() -> dict[str, str]:
    venv_bin = ROOT / ".venv" / "bin"
    if not (venv_bin / "flashduty-bridge").exists():
        pytest.skip("the README's commands run with the checkout's .venv: run the suite with ./scripts/test")
    return {"PATH": f"{venv_bin}:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


@pytest.mark.parametrize("session", SESSIONS, ids=lambda s: s.name)
def test_readme_shell_blocks_run_as_written(session: Session) -> None:
    """The README's commands run in order, against real processes, and do what the README says."""
    env = sandbox_env()
    sandbox.require(ROOT)
    script, commands = session_script(session)
    writes = "".join(
        f"cat > {shlex.quote(path)} <<'DOCS_FILE'\n{text.rstrip()}\nDOCS_FILE\n"
        for path, text in session_files(session).items()
    )
    result = sandbox.run(ROOT, writes + script, env)
    transcript = f"--- script\n{script}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.returncode == 0, transcript
    sections = re.split(r"\n::: (\d+)\n", "\n" + result.stdout)
    assert sections[1::2] == [str(n) for n in range(len(commands) + 1)], transcript
    outputs = dict(zip(commands, sections[2::2], strict=False))  # the last section: the harness's checks
    try:
        session.check(outputs)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{transcript}") from exc


def test_not_run_commands_are_checked_otherwise() -> None:
    """./scripts/test exists and is executable; bench's arguments parse."""
    from bench.__main__ import parse_args

    seen = set()
    for block in readme_blocks():
        if block.language != "sh" or in_deploy_section(block):
            continue
        for command in docs.commands(block.text):
            if (why := not_run_reason(command)) is None:
                continue
            seen.add(why)
            words = docs.argv(command)
            if words[0] == "./scripts/test":
                assert os.access(ROOT / "scripts" / "test", os.X_OK)
            else:
                assert words[:3] == [".venv/bin/python", "-m", "bench"]
                parse_args(words[3:])  # exits (fails the test) on an unknown or malformed argument
    assert seen == set(NOT_RUN.values())


def test_every_readme_block_is_checked() -> None:
    """Each block is YAML (checked), run in a session, not run with a reason, text, or in a deploy section."""
    in_sessions = {(headings, index) for session in SESSIONS for headings, index in session.blocks}
    unclaimed = []
    for block in readme_blocks():
        if in_deploy_section(block) or block.language in ("yaml", ""):
            continue
        claimed = any(block.headings[-len(h) :] == h and block.index == i for h, i in in_sessions)
        only_not_run = block.language == "sh" and all(not_run_reason(c) for c in docs.commands(block.text))
        if not (claimed or only_not_run):
            unclaimed.append(f"{block.id} (line {block.line}, {block.language or 'text'})")
    assert unclaimed == [], "README blocks no test checks: add them to a session or a rule of tests/test_docs.py"
    assert {block.language for block in readme_blocks()} <= {"sh", "yaml", ""}


@pytest.mark.parametrize(
    "block", [b for b in readme_blocks() if in_deploy_section(b)], ids=lambda b: f"line {b.line}: {b.id}"
)
def test_deploy_section_blocks_are_left_to_the_deploy_tests(block: docs.Block) -> None:
    pytest.skip(f"a block of {DEPLOY_SECTIONS}: checked by the deploy tests, not here")


def test_the_readme_layout_names_every_module_and_only_modules_that_exist() -> None:
    """Each module under bridge/ is named in Layout (itself, or its folder as ``name/``), and each name there exists."""
    (block,) = [b for b in readme_blocks() if b.headings[-1] == "Layout"]
    lines = block.text.splitlines()
    assert lines[0] == "bridge/"
    named: set[str] = set()
    for line in lines[1:]:
        if not line.startswith("  "):
            break
        column = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        named.update(column.split(", "))
    missing = sorted(name for name in named if not (ROOT / "bridge" / name).exists())
    assert missing == [], "Layout names paths that do not exist"
    folders = tuple(name for name in named if name.endswith("/"))
    modules = [
        path.relative_to(ROOT / "bridge").as_posix()
        for path in (ROOT / "bridge").rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    ]
    unnamed = sorted(module for module in modules if module not in named and not module.startswith(folders))
    assert unnamed == [], "modules the README's Layout does not name"


#: Claims the docs once made that the code disproves (issue 12, item 9), each with the test that disproves it.
RETRACTED_CLAIMS = {
    # tests/test_sources_grafana.py: Grafana's own webhook ("version": "1") is parsed.
    r'"?version"?:? *"1"[^.]*\brejects?\b|\brejects?\b[^.]*"version"?:? *"1"': "Grafana's version 1 is rejected",
    # tests/test_auth.py: bearer tokens are checked.
    r"does not check tokens": "the bridge does not check tokens",
    # tests/test_config.py: integration_key_file exists.
    r"planned `?integration_key_file": "integration_key_file is planned",
    # The shipped rules name causes of 400s other than Grafana.
    r"a Grafana webhook pointed at the bridge is the usual cause": "Grafana is blamed for invalid requests",
}


def test_the_docs_no_longer_make_claims_the_code_disproves() -> None:
    """The README, the shipped config examples and the chart's files: none says what issue 12 found untrue."""
    files = [ROOT / "README.md", *sorted((ROOT / "config").rglob("*.y*ml")), *sorted((ROOT / "deploy").rglob("*"))]
    found = []
    for path in (p for p in files if p.is_file()):
        text = " ".join(path.read_text(errors="replace").split())  # a claim may span lines
        found += [
            f"{path.relative_to(ROOT)}: {claim}"
            for pattern, claim in RETRACTED_CLAIMS.items()
            if re.search(pattern, text, re.I)
        ]
    assert found == []


# -- YAML blocks and config examples --------------------------------------------------------------------


@pytest.mark.parametrize(
    "block",
    [b for b in readme_blocks() if b.language == "yaml" and not in_deploy_section(b)],
    ids=lambda b: f"line {b.line}: {b.id}",
)
def test_readme_yaml_blocks_are_valid(block: docs.Block, tmp_path: Path) -> None:
    """A bridge config loads as check-config loads it; an Alertmanager config passes amtool check-config."""
    data = yaml.safe_load(block.text)
    assert isinstance(data, dict), block.text
    if {"route", "receivers"} & set(data):
        amtool = require_tool("amtool", env="BRIDGE_REQUIRE_ALERTMANAGER", hint="Debian: prometheus-alertmanager")
        path = tmp_path / "alertmanager.yml"
        path.write_text(block.text, encoding="utf-8")
        check = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
    else:
        load_config_text(tmp_path, block.text)


def test_the_worked_template_example_gives_the_event_the_readme_shows(tmp_path: Path) -> None:
    """The README's uptime source, fed its payload, renders exactly the event the README prints."""
    from bridge import intake
    from bridge.preview import prepare

    payload, claimed = worked_example()
    senders = next(b for b in readme_blocks() if b.headings[-1:] == ("Senders",) and b.language == "yaml")
    snapshot = intake.build(load_config_text(tmp_path, senders.text))
    outcome = prepare(snapshot, "uptime", json.dumps(payload).encode(), {}, {})
    assert isinstance(outcome, intake.Prepared), outcome
    (event,) = [json.loads(event.body) for event in outcome.events]
    assert {key: event.get(key) for key in claimed} == claimed


EXAMPLE_RUNS = docs.comment_examples(EXAMPLE.read_text(encoding="utf-8"))


@pytest.mark.parametrize("upto", range(len(EXAMPLE_RUNS)), ids=lambda n: f"line {EXAMPLE_RUNS[n][0] + 1}")
def test_commented_examples_in_example_yaml_load_in_place(upto: int, tmp_path: Path) -> None:
    """Each example written as a comment in config/example.yaml is valid YAML and a valid config where it
    stands, with the examples above it (the routes example routes to the destinations example's)."""
    text = EXAMPLE.read_text(encoding="utf-8")
    example = "\n".join(text.splitlines()[EXAMPLE_RUNS[upto][0] : EXAMPLE_RUNS[upto][1]])
    for run in reversed(EXAMPLE_RUNS[: upto + 1]):  # bottom up: the runs above keep their line numbers
        text = docs.uncomment_example(text, run)
    try:
        load_config_text(tmp_path, text)
    except config_module.ConfigError as exc:
        pytest.fail(f"config/example.yaml line {EXAMPLE_RUNS[upto][0] + 1}:\n{example}\n{exc}")


# -- tables ---------------------------------------------------------------------------------------------


def test_no_readme_table_is_split_by_a_blank_line() -> None:
    """A blank line inside a table ends it: the rows after it render as text."""
    lines = README.read_text(encoding="utf-8").splitlines()
    split = [
        n + 1
        for n in range(2, len(lines))
        if lines[n].startswith("|") and not lines[n - 1].strip() and lines[n - 2].startswith("|")
    ]
    assert split == [], f"README tables split by a blank line before line(s) {split}"


def table(*headings: str, first: str) -> docs.Table:
    (found,) = [t for t in docs.tables(README) if t.headings[-len(headings) :] == headings and t.header[0] == first]
    return found


def registry_metrics() -> tuple[dict[str, tuple[str, ...]], dict[tuple[str, str], set[str]]]:
    """Every exported metric with its labels; and the label values created up front (the closed sets)."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.init_destination("d")
    labels: dict[str, tuple[str, ...]] = {}
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            suffix = {"counter": "_total", "info": "_info"}.get(metric._type, "")
            name = f"{metric._name}{suffix}".removeprefix(f"{PREFIX}_")
            labels[name] = ("version",) if metric._type == "info" else tuple(metric._labelnames)
    values: dict[tuple[str, str], set[str]] = {}
    open_labels = {"source", "destination", "code", "version"}  # config names, the codes table, the build
    for family in registry.collect():
        for sample in family.samples:
            name = sample.name.removeprefix(f"{PREFIX}_")
            if name.endswith(("_created", "_bucket", "_count", "_sum")) or name not in labels:
                continue
            for label, value in sample.labels.items():
                if label not in open_labels:
                    values.setdefault((name, label), set()).add(value)
    # Closed sets not created up front:
    values[("rate_limit_headroom", "window")] = set(RateLimiter(1, 1).headroom(0.0))
    values[("alerts_not_forwarded_total", "reason")] = set(grafana.SKIP_REASONS)
    return labels, values


def test_the_readme_metrics_table_matches_the_registry() -> None:
    """Every metric the bridge exports is in the table with its labels, and every closed label's values."""
    labels, values = registry_metrics()
    documented: dict[str, tuple[str, ...]] = {}
    listed: dict[tuple[str, str], set[str]] = {}
    for row in table("Metrics", first="Metric").rows:
        row_labels = re.findall(r"`(\w+)`(?:\s*\(([^)]*)\))?", row[1])
        for name in docs.code_spans(row[0]):
            documented[name] = tuple(label for label, _ in row_labels)
            for label, items in row_labels:
                if items:
                    listed[(name, label)] = {item.strip() for item in items.split(",")}
    assert documented == labels
    assert listed == values


def test_the_readme_codes_table_lists_every_code() -> None:
    """The codes table has every code the delivery metrics can carry, and Flashduty's codes with their outcome."""
    rows = table("Metrics", "Codes", first="Code").rows
    codes = {code: row[1] for row in rows for code in docs.code_spans(row[0])}
    assert set(codes) == set(ATTEMPT_CODES) | {"expired", UNKNOWN_DESTINATION}
    destination = FlashdutyDestination("d", "http://127.0.0.1:1/x", "k", Transports(1), 1.0)
    for code in KNOWN_CODES:
        outcome = destination.classify(400, json.dumps({"error": {"code": code}}).encode(), None)
        assert codes[code] == outcome.verdict.value.replace("_", " "), code


def model_default(path: list[str]) -> tuple[type[BaseModel], Any]:
    """The model class that holds the last key of ``path``, and that key's default."""
    value: Any = config_module.load(None, {})
    for key in path[:-1]:
        value = getattr(value, key)
    assert isinstance(value, BaseModel) and path[-1] in type(value).model_fields, ".".join(path)
    return type(value), getattr(value, path[-1])


def empty(value: Any) -> bool:
    if isinstance(value, SecretStr):
        return value.get_secret_value() == ""
    if isinstance(value, BaseModel):
        return not any(value.model_dump().values())
    return not value


#: Default cells in words, and what they must mean.
PHRASES: dict[str, Callable[[Any], bool]] = {
    "none": empty,
    "empty → dry run": empty,
    "empty (admin API off)": empty,
    "Flashduty's table": lambda value: value == config_module.DEFAULT_SEVERITY_MAP,
}


def test_the_readme_configuration_table_matches_the_models_and_their_defaults() -> None:
    """Each key exists with the default the table gives; every top-level key of the config is in it."""
    keys_seen = set()
    for row in table("Configuration", first="Key").rows:
        names = [part.strip().strip("`") for part in row[0].split(" / ")]
        path = names[0].split(".")
        defaults = [part.strip() for part in row[1].split(" / ")]
        if len(defaults) == 1 and len(names) > 1:
            defaults *= len(names)
        assert len(defaults) == len(names), row
        for name, default in zip(names, defaults, strict=True):
            key = [*path[:-1], *name.split(".")] if name != names[0] else path
            key = [part for part in key if part not in ("NAME",)]
            key[-1] = key[-1].removesuffix("[]")
            keys_seen.add(key[0])
            model, actual = model_default(key)
            if default.startswith("`") and default.endswith("`"):
                given = model.model_validate({key[-1]: yaml.safe_load(default.strip("`"))})
                assert getattr(given, key[-1]) == actual, (row, default, actual)
            else:
                assert default in PHRASES and PHRASES[default](actual), (row, default, actual)
    fields = set(config_module.Config.model_fields) - {"unset_variables"}
    assert fields <= keys_seen, f"configuration keys missing from the README table: {fields - keys_seen}"


def test_the_readme_severity_table_is_the_default_severity_map() -> None:
    """'critical → Critical; warning, warn → Warning; ...' in the README is the default severity_map."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    rule = re.search(r"case-insensitive: (.*?); missing or unknown", text)
    assert rule, "the README's severity table moved: update this test"
    table_ = {
        name.strip(): status.strip()
        for part in rule.group(1).split(";")
        for names, status in [part.split("→")]
        for name in names.split(",")
    }
    assert table_ == config_module.DEFAULT_SEVERITY_MAP


def test_the_benchmark_tables_are_bench_readme_output_and_their_ratios_add_up() -> None:
    """The README's measured tables have bench.readme's columns; each 'vs durable' is the row's alerts/s over the
    durable receiver's of the same size (so a hand-edited figure shows)."""
    from bench.readme import DELIVERY_HEADER, INTAKE_HEADER

    intake = table("Benchmark", "Measured", first=INTAKE_HEADER[0])
    delivery = table("Benchmark", "Measured", first=DELIVERY_HEADER[0])
    assert list(intake.header) == INTAKE_HEADER
    assert list(delivery.header) == DELIVERY_HEADER
    durable = {row[0]: float(row[2].replace(",", "")) for row in intake.rows if row[1] == "durable"}
    bridges = [row for row in intake.rows if row[1].startswith("bridge")]
    assert bridges and set(durable) == {"1", "10", "100"}
    for row in bridges:
        assert float(row[3]) == pytest.approx(float(row[2].replace(",", "")) / durable[row[0]], abs=0.006), row
