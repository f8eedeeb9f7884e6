"""Unit tests for ``bridge.config.load()`` and the frozen config models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from bridge import config
from bridge.config import Config, ConfigError, load, split_listen

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = REPO_ROOT / "config" / "example.yaml"
DRY_RUN = REPO_ROOT / "config" / "dry-run.yaml"
SECRET = "sk-test-SECRET-123"
KEY_ENV = {"FLASHDUTY_INTEGRATION_KEY": SECRET}

DURATION_FIELDS = [
    ("flashduty", "timeout"),
    ("delivery", "backoff_initial"),
    ("delivery", "backoff_max"),
    ("delivery", "retry_after_max"),
]


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    return load(write(tmp_path, text), {} if env is None else env)


def problems_for(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, env)
    assert info.value.problems, "a ConfigError must list at least one problem"
    return info.value.problems


def field_names(model: type[pydantic.BaseModel], prefix: str = "") -> set[str]:
    names: set[str] = set()
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        dotted = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            names |= field_names(annotation, f"{dotted}.")
        else:
            names.add(dotted)
    return names


def yaml_keys(data: dict[str, Any], prefix: str = "", nested: frozenset[str] = frozenset()) -> set[str]:
    names: set[str] = set()
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted in nested:
            names |= yaml_keys(value, f"{dotted}.", nested)
        else:
            names.add(dotted)
    return names


# --- defaults ----------------------------------------------------------------------------------


def test_load_without_file_returns_documented_defaults() -> None:
    """With no file and an empty environment every field takes its documented default."""
    cfg = load(None, {})
    assert cfg.listen == "0.0.0.0:9095"
    assert cfg.storage.path == Path.cwd() / "data"  # relative to the working directory, made absolute once
    assert cfg.storage.max_pending == 100_000
    assert cfg.flashduty.url == "https://api.flashcat.cloud/event/push/alert/standard"
    assert cfg.flashduty.integration_key.get_secret_value() == ""
    assert cfg.flashduty.timeout == 10.0
    assert cfg.delivery.workers == 8
    assert (cfg.delivery.backoff_initial, cfg.delivery.backoff_max, cfg.delivery.retry_after_max) == (1, 60, 300)
    assert cfg.alertmanager.key_prefix == "alertmanager"
    assert cfg.alertmanager.severity_labels == ("severity", "priority", "level")
    assert cfg.alertmanager.severity_map == config.DEFAULT_SEVERITY_MAP
    assert cfg.alertmanager.default_severity == "Warning"
    assert cfg.alertmanager.identity_labels[0] == "alertname"
    assert cfg.alertmanager.allow_tpl_titles is False
    assert cfg.max_body_bytes == 4 * 1024 * 1024
    assert cfg.limits == config.LimitsConfig()
    assert cfg.log_level == "info"
    assert cfg.unset_variables == ()
    assert cfg.flashduty.dry_run is True


def test_empty_file_loads_as_defaults(tmp_path: Path) -> None:
    """An empty (or comment-only) file is the same as no file."""
    assert load_text(tmp_path, "# nothing here\n") == load(None, {})


def test_load_with_env_none_reads_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit env mapping load() reads os.environ."""
    monkeypatch.setenv("FLASHDUTY_INTEGRATION_KEY", SECRET)
    assert load(None).flashduty.integration_key.get_secret_value() == SECRET


# --- unknown keys and error reporting ----------------------------------------------------------


def test_unknown_top_level_key_is_named_with_its_line(tmp_path: Path) -> None:
    """An unknown top-level key is an error naming the key and the line it is on."""
    problems = problems_for(tmp_path, "listen: 127.0.0.1:9095\nlog_level: info\nlisten_port: 9095\n")
    assert problems == ["line 3: unknown key 'listen_port'"]


def test_unknown_nested_key_is_named_dotted_with_its_line(tmp_path: Path) -> None:
    """A typo such as flashduty.integraton_key is reported by dotted name and line, not silently ignored."""
    text = (
        "listen: 127.0.0.1:9095\n"
        "flashduty:\n"
        "  url: https://api.flashcat.cloud/event/push/alert/standard\n"
        f"  integraton_key: {SECRET}\n"
    )
    problems = problems_for(tmp_path, text)
    assert problems == ["line 4: unknown key 'flashduty.integraton_key'"]
    assert SECRET not in " ".join(problems)


def test_several_problems_are_reported_at_once(tmp_path: Path) -> None:
    """Every problem in a file is listed in one ConfigError, each with its own line."""
    text = "flashduty:\n  timeout: 10 parsecs\n  integraton_key: x\ndelivery:\n  workers: 0\ncolour: blue\n"
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    problems = info.value.problems
    assert len(problems) == 4
    assert any(p.startswith("line 2: flashduty.timeout:") for p in problems)
    assert "line 3: unknown key 'flashduty.integraton_key'" in problems
    assert any(p.startswith("line 5: delivery.workers:") for p in problems)
    assert "line 6: unknown key 'colour'" in problems
    assert str(info.value).startswith(str(tmp_path / "config.yaml"))


def test_wrong_type_for_section_is_reported(tmp_path: Path) -> None:
    """A section that is not a mapping is an error naming the section."""
    assert problems_for(tmp_path, "storage: /var/lib/x\n")[0].startswith("line 1: storage:")


def test_non_mapping_flashduty_section_is_rejected_even_with_env_key(tmp_path: Path) -> None:
    """`flashduty: oops` is an error whether or not the environment provides the key."""
    problems_for(tmp_path, "flashduty: oops\n", KEY_ENV)


# --- ${VAR} expansion ---------------------------------------------------------------------------


def test_variables_expand_in_nested_strings_and_lists(tmp_path: Path) -> None:
    """${VAR} is replaced in strings at any depth, including list items and mapping values."""
    text = (
        "listen: ${HOST}:${PORT}\n"
        "storage:\n"
        "  path: ${DATA}/outbox\n"
        "flashduty:\n"
        "  url: https://${FD_HOST}/event/push/alert/standard?channel=${CHANNEL}\n"
        "alertmanager:\n"
        "  key_prefix: ${PREFIX}\n"
        "  severity_labels: ['${LABEL}', level]\n"
        "  severity_map:\n"
        "    p1: ${SEV}\n"
    )
    env = {
        "HOST": "127.0.0.1",
        "PORT": "9000",
        "DATA": "/srv",
        "FD_HOST": "fd.example",
        "CHANNEL": "42",
        "PREFIX": "prod",
        "LABEL": "urgency",
        "SEV": "Critical",
    }
    cfg = load_text(tmp_path, text, env)
    assert cfg.listen == "127.0.0.1:9000"
    assert cfg.storage.path == Path("/srv/outbox")
    assert cfg.flashduty.url == "https://fd.example/event/push/alert/standard?channel=42"
    assert cfg.alertmanager.key_prefix == "prod"
    assert cfg.alertmanager.severity_labels == ("urgency", "level")
    assert cfg.alertmanager.severity_map == {"p1": "Critical"}
    assert cfg.unset_variables == ()


def test_double_dollar_is_a_literal_dollar(tmp_path: Path) -> None:
    """`$$` yields a single `$`, so `$${VAR}` stays a literal `${VAR}` and is not expanded."""
    text = "flashduty:\n  integration_key: a$$b-$${NAME}\n"
    cfg = load_text(tmp_path, text, {"NAME": "expanded"})
    assert cfg.flashduty.integration_key.get_secret_value() == "a$b-${NAME}"
    assert cfg.unset_variables == ()


def test_expanded_values_are_not_expanded_again(tmp_path: Path) -> None:
    """A variable's value containing ${...} is used verbatim (no recursive expansion)."""
    cfg = load_text(tmp_path, "storage:\n  path: ${A}\n", {"A": "${B}", "B": "nope"})
    assert cfg.storage.path == Path.cwd() / "${B}"


def test_a_problem_caused_by_an_unset_variable_names_the_variable(tmp_path: Path) -> None:
    """${FD_URL} unset makes flashduty.url invalid: the problem says which variable is unset."""
    (problem,) = problems_for(tmp_path, "flashduty:\n  url: ${FD_URL}\n")
    assert problem.startswith("line 2: flashduty.url: must be an http(s) URL with a host")
    assert "${FD_URL} is not set" in problem


def test_a_model_level_problem_names_the_unset_variable_inside_it(tmp_path: Path) -> None:
    """The destination's own check (one of key and key file) points at the variable in its key."""
    text = "destinations:\n  db:\n    integration_key: ${DB_KEY}\n"
    (problem,) = problems_for(tmp_path, text)
    assert "give exactly one of integration_key and integration_key_file" in problem
    assert "${DB_KEY} is not set" in problem


def test_unset_variables_unrelated_to_the_problem_are_still_listed(tmp_path: Path) -> None:
    """When validation fails elsewhere, the unset variables are listed too: they may be why."""
    problems = problems_for(tmp_path, "admin:\n  token: ${ADMIN}\nlisten: nowhere\n")
    assert problems[0].startswith("line 3: listen:")
    assert problems[-1] == "environment variables not set (each expanded to an empty string): ADMIN"


def test_check_config_and_reload_name_the_unset_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At start (check-config, serve) and on reload, a config broken by an unset ${VAR} names it."""
    import asyncio
    import subprocess
    import sys

    from tests.support.inprocess import make_config, running

    broken = "flashduty:\n  url: ${FD_URL_UNSET_IN_TEST}\n"
    path = write(tmp_path, broken)
    env = {key: value for key, value in os.environ.items() if key != "FD_URL_UNSET_IN_TEST"}
    check = subprocess.run(
        [sys.executable, "-m", "bridge", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert check.returncode == 2
    assert "${FD_URL_UNSET_IN_TEST} is not set" in check.stderr, check.stderr

    monkeypatch.delenv("FD_URL_UNSET_IN_TEST", raising=False)

    async def reload() -> str:
        async with running(make_config(tmp_path), config_path=path) as bridge:
            response = await bridge.client.post("/-/reload")
            assert response.status_code >= 400
            return str(response.json()["error"]["message"])

    assert "${FD_URL_UNSET_IN_TEST} is not set" in asyncio.run(reload())


def test_unset_variable_expands_to_empty_and_is_listed_once(tmp_path: Path) -> None:
    """An unset variable becomes "" and is listed in unset_variables once, in order of appearance."""
    text = "storage:\n  path: ${MISSING_DIR}/x\nflashduty:\n  integration_key: ${MISSING_KEY}${MISSING_DIR}\n"
    cfg = load_text(tmp_path, text, {})
    assert cfg.storage.path == Path("/x")
    assert cfg.flashduty.integration_key.get_secret_value() == ""
    assert cfg.flashduty.dry_run is True
    assert cfg.unset_variables == ("MISSING_DIR", "MISSING_KEY")
    assert "unset_variables" not in cfg.model_dump()


def test_non_string_values_are_not_touched_by_expansion(tmp_path: Path) -> None:
    """Numbers and booleans pass through expansion unchanged."""
    cfg = load_text(tmp_path, "max_body_bytes: 1024\nalertmanager:\n  allow_tpl_titles: true\n", {})
    assert cfg.max_body_bytes == 1024
    assert cfg.alertmanager.allow_tpl_titles is True


# --- FLASHDUTY_INTEGRATION_KEY fallback ---------------------------------------------------------


def test_env_key_is_used_when_there_is_no_file() -> None:
    """FLASHDUTY_INTEGRATION_KEY alone configures delivery with no config file at all."""
    cfg = load(None, KEY_ENV)
    assert cfg.flashduty.integration_key.get_secret_value() == SECRET
    assert cfg.flashduty.dry_run is False


def test_env_key_is_used_when_file_omits_the_key(tmp_path: Path) -> None:
    """A file without flashduty.integration_key (or without a flashduty section) takes the key from env."""
    with_section = load_text(tmp_path, "flashduty:\n  timeout: 5s\n", KEY_ENV)
    assert with_section.flashduty.integration_key.get_secret_value() == SECRET
    assert with_section.flashduty.timeout == 5.0
    without_section = load_text(tmp_path, "log_level: debug\n", KEY_ENV)
    assert without_section.flashduty.integration_key.get_secret_value() == SECRET


def test_explicit_key_in_file_wins_over_env(tmp_path: Path) -> None:
    """A key written in the file takes precedence over FLASHDUTY_INTEGRATION_KEY."""
    cfg = load_text(tmp_path, "flashduty:\n  integration_key: from-file\n", KEY_ENV)
    assert cfg.flashduty.integration_key.get_secret_value() == "from-file"


# --- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("section", "field"), DURATION_FIELDS)
@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("30", 30.0),
        (3, 3.0),
        (0.25, 0.25),
        ("7d", 7 * 86400.0),
        ("1w", 7 * 86400.0),
        (" 2 d ", 2 * 86400.0),
    ],
)
def test_durations_accept_units_and_plain_seconds(
    tmp_path: Path, section: str, field: str, raw: str | float, seconds: float
) -> None:
    """Durations accept numbers of seconds and strings with ms/s/m/h/d/w units (the README says 7d)."""
    value = f'"{raw}"' if isinstance(raw, str) else raw
    cfg = load_text(tmp_path, f"{section}:\n  {field}: {value}\n")
    assert getattr(getattr(cfg, section), field) == pytest.approx(seconds)


@pytest.mark.parametrize(("section", "field"), DURATION_FIELDS)
@pytest.mark.parametrize(
    "raw",
    [
        '"10 parsecs"',
        "0",
        '"0s"',
        "-1",
        '"-5s"',
        '""',
        "[1]",
        "true",
    ],
)
def test_invalid_durations_are_rejected_naming_the_field(tmp_path: Path, section: str, field: str, raw: str) -> None:
    """Unparseable, zero, negative and boolean durations are errors naming the dotted field."""
    problems = problems_for(tmp_path, f"{section}:\n  {field}: {raw}\n")
    assert len(problems) == 1
    assert problems[0].startswith(f"line 2: {section}.{field}:")


def test_unparseable_duration_message_explains_the_format(tmp_path: Path) -> None:
    """The error for a bad duration quotes the value and lists the accepted units."""
    (problem,) = problems_for(tmp_path, 'flashduty:\n  timeout: "10 parsecs"\n')
    assert "'10 parsecs'" in problem
    assert "ms, s, m, h, d or w" in problem


def test_a_hostile_duration_is_refused_in_linear_time() -> None:
    """The old pattern (\\s*, an optional unit, \\s*) backtracked quadratically on "1" + spaces + "x"."""
    import subprocess
    import sys

    script = (
        "from bridge.fields import parse_duration\n"
        "for _ in range(20):\n"
        "    try:\n"
        "        parse_duration('1' + ' ' * 200_000 + 'x')\n"
        "    except ValueError:\n"
        "        pass\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


# --- severities ---------------------------------------------------------------------------------


def test_severity_map_keys_that_normalise_alike_are_refused(tmp_path: Path) -> None:
    """P1 and ' p1' are the same key once normalised: say so rather than keep one silently."""
    (problem,) = problems_for(tmp_path, "alertmanager:\n  severity_map:\n    P1: Critical\n    ' p1': Info\n")
    assert problem.startswith("line 2: alertmanager.severity_map:")
    assert "'P1' and ' p1'" in problem


def test_severity_map_replaces_default_and_lower_cases_keys(tmp_path: Path) -> None:
    """severity_map keys are stripped and lower-cased; values are kept."""
    text = "alertmanager:\n  severity_map:\n    P1: Critical\n    ' Sev2 ': Warning\n    NOTICE: Info\n"
    cfg = load_text(tmp_path, text)
    assert cfg.alertmanager.severity_map == {"p1": "Critical", "sev2": "Warning", "notice": "Info"}


def test_severity_map_rejects_ok_because_firing_alerts_are_never_ok(tmp_path: Path) -> None:
    """Mapping a label value to Ok is an error explaining that a firing alert cannot be Ok."""
    text = "alertmanager:\n  severity_map:\n    critical: Critical\n    resolved: Ok\n"
    (problem,) = problems_for(tmp_path, text)
    assert problem.startswith("line 2: alertmanager.severity_map:")
    assert "'resolved' maps to 'Ok'" in problem
    assert "firing alert" in problem
    assert "Critical, Warning, Info" in problem


@pytest.mark.parametrize("status", ["critical", "Error", "", "OK"])
def test_severity_map_rejects_values_other_than_firing_statuses(tmp_path: Path, status: str) -> None:
    """Only the exact statuses Critical, Warning and Info are valid severity_map values."""
    (problem,) = problems_for(tmp_path, f"alertmanager:\n  severity_map:\n    p1: '{status}'\n")
    assert problem.startswith("line 2: alertmanager.severity_map:")


@pytest.mark.parametrize("status", ["Critical", "Warning", "Info"])
def test_default_severity_accepts_firing_statuses(tmp_path: Path, status: str) -> None:
    """default_severity may be any firing status."""
    assert load_text(tmp_path, f"alertmanager:\n  default_severity: {status}\n").alertmanager.default_severity == status


@pytest.mark.parametrize("status", ["Ok", "warning", "High", ""])
def test_default_severity_rejects_other_values(tmp_path: Path, status: str) -> None:
    """default_severity outside Critical/Warning/Info is an error naming the field and the allowed values."""
    (problem,) = problems_for(tmp_path, f"alertmanager:\n  default_severity: '{status}'\n")
    assert problem.startswith("line 2: alertmanager.default_severity:")
    assert "Critical, Warning, Info" in problem


# --- url ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/event/push/alert/standard",
        "https://api.flashcat.cloud/event/push/alert/standard?channel_id=42&x=a%20b",
    ],
)
def test_http_urls_are_accepted_verbatim_with_extra_query(tmp_path: Path, url: str) -> None:
    """http(s) URLs are accepted and extra query parameters are preserved exactly."""
    assert load_text(tmp_path, f"flashduty:\n  url: '{url}'\n").flashduty.url == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://api.flashcat.cloud/x",
        "api.flashcat.cloud/event/push",
        "https://",
        "http:///path",
        "",
        "https://:443/event/push/alert/standard",
    ],
)
def test_url_without_http_scheme_or_host_is_rejected(tmp_path: Path, url: str) -> None:
    """flashduty.url must be an http(s) URL with a host."""
    (problem,) = problems_for(tmp_path, f"flashduty:\n  url: '{url}'\n")
    assert problem.startswith("line 2: flashduty.url:")
    assert "http(s) URL with a host" in problem


# --- listen -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("0.0.0.0:9095", "0.0.0.0", 9095),
        ("127.0.0.1:1", "127.0.0.1", 1),
        ("localhost:65535", "localhost", 65535),
        ("[::1]:9095", "::1", 9095),
        ("[::]:9095", "::", 9095),
        (":9095", "0.0.0.0", 9095),
    ],
)
def test_listen_accepts_host_port_including_bracketed_ipv6(tmp_path: Path, listen: str, host: str, port: int) -> None:
    """listen accepts HOST:PORT and [IPv6]:PORT, and split_listen returns the bind host and port."""
    assert load_text(tmp_path, f"listen: '{listen}'\n").listen == listen
    assert split_listen(listen) == (host, port)


@pytest.mark.parametrize(
    "listen", ["9095", "localhost", "localhost:0", "localhost:65536", "localhost:http", "[::1]", "host:-1", ""]
)
def test_listen_rejects_values_that_are_not_host_port(tmp_path: Path, listen: str) -> None:
    """An invalid listen address is an error naming the field and the expected HOST:PORT form."""
    (problem,) = problems_for(tmp_path, f"listen: '{listen}'\n")
    assert problem.startswith("line 1: listen:")
    assert "HOST:PORT" in problem


# --- other fields -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("storage:\n  max_pending: 0\n", "storage.max_pending"),
        ("delivery:\n  workers: 257\n", "delivery.workers"),
        ("max_body_bytes: -1\n", "max_body_bytes"),
        ("log_level: verbose\n", "log_level"),
        ("alertmanager:\n  key_prefix: 'has space'\n", "alertmanager.key_prefix"),
        ("alertmanager:\n  key_prefix: ''\n", "alertmanager.key_prefix"),
    ],
)
def test_out_of_range_scalars_are_rejected_naming_the_field(tmp_path: Path, text: str, field: str) -> None:
    """Bounds on counts, sizes, log level and key prefix are enforced with the field named."""
    (problem,) = problems_for(tmp_path, text)
    assert f" {field}:" in problem


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    """log_level accepts DEBUG as well as debug."""
    assert load_text(tmp_path, "log_level: DEBUG\n").log_level == "DEBUG"


# --- invalid files ------------------------------------------------------------------------------


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    """A YAML syntax error raises ConfigError pointing at the line."""
    (problem,) = problems_for(tmp_path, "listen: 127.0.0.1:9095\nstorage: [unclosed\n")
    assert "invalid YAML:" in problem
    assert problem.startswith(("line 2", "line 3"))


@pytest.mark.parametrize("text", ["- listen\n- storage\n", "just a string\n", "42\n"])
def test_non_mapping_top_level_is_a_config_error(tmp_path: Path, text: str) -> None:
    """A file whose top level is a list or scalar is rejected."""
    assert problems_for(tmp_path, text) == ["the top level must be a mapping of keys"]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A path that does not exist raises ConfigError naming the file, not OSError."""
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load(missing, {})
    assert info.value.source == str(missing)
    assert info.value.problems[0].startswith("cannot read:")


def test_directory_instead_of_file_is_a_config_error(tmp_path: Path) -> None:
    """A directory passed as the config path raises ConfigError."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, {})
    assert info.value.problems[0].startswith("cannot read:")


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not valid UTF-8 raises ConfigError rather than UnicodeDecodeError."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes("log_level: d\xe9bug\n".encode("latin-1"))
    with pytest.raises(ConfigError):
        load(path, {})


# --- immutability and secrecy -------------------------------------------------------------------


def test_models_are_frozen() -> None:
    """Assigning to any config field, top-level or nested, raises."""
    cfg = load(None, KEY_ENV)
    with pytest.raises(pydantic.ValidationError):
        cfg.listen = "127.0.0.1:1"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        cfg.flashduty.timeout = 1.0  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        cfg.alertmanager.default_severity = "Info"  # type: ignore[misc]


@pytest.mark.parametrize("source", ["env", "file"])
def test_integration_key_never_appears_in_repr_str_or_json(tmp_path: Path, source: str) -> None:
    """repr(), str() and model_dump_json() mask the integration key whether it came from env or file."""
    cfg = load(None, KEY_ENV) if source == "env" else load_text(tmp_path, f"flashduty:\n  integration_key: {SECRET}\n")
    assert cfg.flashduty.integration_key.get_secret_value() == SECRET
    for text in (repr(cfg), str(cfg), cfg.model_dump_json(), repr(cfg.flashduty), str(cfg.flashduty)):
        assert SECRET not in text
        assert "SECRET" not in text


def test_integration_key_is_absent_from_validation_errors(tmp_path: Path) -> None:
    """A ConfigError about other fields never echoes the key written in the file."""
    text = f"flashduty:\n  integration_key: {SECRET}\n  url: nope\n  timeout: forever\n"
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    assert SECRET not in str(info.value)


def test_integration_key_is_absent_from_yaml_syntax_errors(tmp_path: Path) -> None:
    """A YAML syntax error on the integration_key line does not quote the key back."""
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, f'flashduty:\n  integration_key: "{SECRET}\n')
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("text", "env", "dry_run"),
    [
        ("", {}, True),
        ("flashduty:\n  integration_key: ''\n", {}, True),
        ("flashduty:\n  integration_key: ${UNSET_KEY}\n", {}, True),
        ("flashduty:\n  integration_key: k\n", {}, False),
        ("", KEY_ENV, False),
    ],
)
def test_dry_run_is_true_exactly_when_the_key_is_empty(
    tmp_path: Path, text: str, env: dict[str, str], dry_run: bool
) -> None:
    """flashduty.dry_run is true iff the resolved integration key is empty."""
    assert load_text(tmp_path, text, env).flashduty.dry_run is dry_run


# --- shipped example configs --------------------------------------------------------------------


def test_example_config_loads_in_dry_run_without_env() -> None:
    """config/example.yaml loads; without the env key it is a dry run and warns about the unset variable."""
    cfg = load(EXAMPLE, {})
    assert cfg.flashduty.dry_run is True
    assert cfg.unset_variables == ("FLASHDUTY_INTEGRATION_KEY", "BRIDGE_ADMIN_TOKEN")
    assert cfg.listen == "0.0.0.0:9095"
    assert cfg.storage.path == Path("/var/lib/flashduty-bridge")


def test_example_config_takes_key_from_env() -> None:
    """config/example.yaml delivers for real once FLASHDUTY_INTEGRATION_KEY is set."""
    cfg = load(EXAMPLE, KEY_ENV)
    assert cfg.flashduty.integration_key.get_secret_value() == SECRET
    assert cfg.unset_variables == ("BRIDGE_ADMIN_TOKEN",)


def test_example_config_lists_every_accepted_key() -> None:
    """config/example.yaml spells out every key the Config model accepts and nothing else."""
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    sections = frozenset(
        {
            "storage",
            "storage.history",
            "flashduty",
            "flashduty.rate_limit",
            "delivery",
            "delivery.circuit",
            "alertmanager",
            "admin",
            "labels",
            "grafana",
            "limits",
        }
    )
    assert yaml_keys(data, nested=sections) == field_names(Config)


def test_example_config_values_are_the_defaults() -> None:
    """Apart from the production storage path, config/example.yaml values equal the built-in defaults."""
    example = load(EXAMPLE, {}).model_dump()
    defaults = load(None, {}).model_dump()
    example["storage"].pop("path")
    defaults["storage"].pop("path")
    example["flashduty"].pop("integration_key")
    defaults["flashduty"].pop("integration_key")
    assert example == defaults


def test_a_relative_storage_path_is_made_absolute_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logs and reloads see one absolute path, resolved once at load against where the command was run."""
    monkeypatch.chdir(tmp_path)
    cfg = load_text(tmp_path, "storage:\n  path: ./outbox/../data\n", {})
    assert cfg.storage.path == tmp_path / "data"
    assert load(None, {}).storage.path == tmp_path / "data"


def test_dry_run_config_is_minimal_and_local() -> None:
    """config/dry-run.yaml binds to localhost, stores in ./data and has no key."""
    cfg = load(DRY_RUN, {})
    assert cfg.listen == "127.0.0.1:9095"
    assert cfg.storage.path == Path.cwd() / "data"
    assert cfg.flashduty.dry_run is True
    assert cfg.unset_variables == ()
    assert "flashduty" not in yaml.safe_load(DRY_RUN.read_text(encoding="utf-8"))


# --- storage: SQLite or PostgreSQL -------------------------------------------------------------


def test_a_dsn_selects_postgresql_and_a_path_sqlite(tmp_path: Path) -> None:
    """storage.dsn or storage.dsn_file selects the PostgreSQL outbox; storage.path (or nothing) keeps SQLite."""
    assert not load_text(tmp_path, "storage:\n  path: /tmp/x\n").storage.postgresql
    assert not load(None, {}).storage.postgresql
    assert load_text(tmp_path, "storage:\n  dsn: postgresql://u@h/db\n").storage.postgresql
    assert load_text(tmp_path, "storage:\n  dsn_file: /run/dsn\n  dsn: null\n").storage.postgresql


@pytest.mark.parametrize(
    "storage",
    [
        "path: data\n  dsn: postgresql://u:SECRET-pw@h/db",
        "dsn: postgresql://u:SECRET-pw@h/db\n  dsn_file: /run/dsn",
        "dsn: mysql://u:SECRET-pw@h/db",
        "dsn: SECRET-pw",
    ],
)
def test_a_wrong_storage_is_refused_without_echoing_the_dsn(tmp_path: Path, storage: str) -> None:
    """One place for the outbox, and a postgresql:// DSN; the error names the keys, never the DSN."""
    with pytest.raises(ConfigError) as refused:
        load_text(tmp_path, f"storage:\n  {storage}\n")
    assert "storage" in str(refused.value)
    assert "SECRET-pw" not in str(refused.value)


# --- limits ----------------------------------------------------------------------------------------


def test_sizes_take_bytes_or_binary_units_and_limits_are_checked_together(tmp_path: Path) -> None:
    """limits sizes: bytes or KiB/MiB/GiB; a body larger than the in-flight budget could never be admitted."""
    cfg = load_text(
        tmp_path,
        "limits:\n  worker_memory: 80MiB\n  max_inflight_bytes: 65536\n  inline_bytes: 1KiB\nmax_body_bytes: 1024\n",
        {},
    )
    assert (cfg.limits.worker_memory, cfg.limits.max_inflight_bytes, cfg.limits.inline_bytes) == (
        80 * 2**20,
        65536,
        1024,
    )
    for text, where in [
        ("limits:\n  worker_memory: 80 MB\n", "limits.worker_memory: invalid size '80 MB'"),
        ("limits:\n  inline_bytes: -1\n", "limits.inline_bytes"),
        ("limits:\n  request_cpu: 0\n", "limits.request_cpu"),
        ("limits:\n  workers: 0\n", "limits.workers"),
        ("limits:\n  max_inflight_bytes: 1MiB\n", "max_body_bytes (4194304) is larger than limits.max_inflight_bytes"),
    ]:
        with pytest.raises(config.ConfigError) as caught:
            load_text(tmp_path, text, {})
        assert any(where in problem for problem in caught.value.problems), (text, caught.value.problems)


def test_the_readme_limits_table_states_the_defaults() -> None:
    """Every limits.* key has a row in README's Limits table whose value is the built-in default."""
    rows = {}
    for line in (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`limits.") and cells[1].startswith("`"):
            rows[cells[0].strip("`").removeprefix("limits.")] = cells[1].strip("`")
    assert set(rows) == set(config.LimitsConfig.model_fields)
    for name, text in rows.items():
        value = yaml.safe_load(text)
        assert config.LimitsConfig.model_validate({name: value}) == config.LimitsConfig(), (name, text)
    assert f"| `max_body_bytes` | `{config.DEFAULT_MAX_BODY_BYTES}` |" in (REPO_ROOT / "README.md").read_text()
