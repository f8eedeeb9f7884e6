"""End-to-end tests of the real ``python -m bridge`` command, run as a subprocess."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge import __version__

REPO_ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-test-SECRET-123"
TIMEOUT = 60


def run_bridge(
    *args: str, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bridge ARGS`` with a clean environment (no integration key unless ``env`` adds one)."""
    base = {name: value for name, value in os.environ.items() if name != "FLASHDUTY_INTEGRATION_KEY"}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        cwd=cwd,
        env=base,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_version_flag_prints_the_package_version() -> None:
    """`--version` prints the package version and exits 0."""
    result = run_bridge("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == __version__


def test_help_names_every_command() -> None:
    """`--help`'s summary names every command argparse lists below it (each registered with its help line)."""
    result = run_bridge("--help")
    assert result.returncode == 0
    listed = re.findall(r"^    (\S+)(?:  |\n)", result.stdout, re.MULTILINE)  # argparse's list of subcommands
    assert {"serve", "check-config", "emulate", "deadletter", "render", "test-templates"} <= set(listed)
    text = " ".join(result.stdout.split())  # argparse wraps the description
    assert f"Commands: {', '.join(listed)};" in text, result.stdout


def test_check_config_on_good_file_says_ok_and_dry_run(tmp_path: Path) -> None:
    """check-config on a valid key-less file exits 0, says OK and reports dry run."""
    path = write(tmp_path, f"listen: 127.0.0.1:9095\nstorage:\n  path: {tmp_path / 'data'}\n")
    result = run_bridge("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert "dry run" in result.stdout
    assert str(path) in result.stdout
    assert result.stderr == ""


def test_check_config_with_env_key_says_delivering_and_hides_key(tmp_path: Path) -> None:
    """With FLASHDUTY_INTEGRATION_KEY set, check-config reports delivery mode and never prints the key."""
    path = write(tmp_path, "log_level: debug\n")
    result = run_bridge("check-config", "--config", str(path), env={"FLASHDUTY_INTEGRATION_KEY": SECRET})
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert "delivering to Flashduty" in result.stdout
    assert "dry run" not in result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_check_config_with_key_in_file_hides_key(tmp_path: Path) -> None:
    """A key written in the config file is not echoed by check-config."""
    path = write(tmp_path, f"flashduty:\n  integration_key: {SECRET}\n")
    result = run_bridge("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "delivering to Flashduty" in result.stdout
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize("name", ["example.yaml", "dry-run.yaml"])
def test_check_config_accepts_shipped_example_configs(name: str) -> None:
    """The configs shipped in config/ pass check-config as dry runs."""
    result = run_bridge("check-config", "--config", str(REPO_ROOT / "config" / name))
    assert result.returncode == 0, result.stderr
    assert "OK (dry run" in result.stdout


def test_check_config_unknown_key_exits_2_naming_key_and_line(tmp_path: Path) -> None:
    """An unknown key makes check-config exit 2 with the dotted key and its line on stderr."""
    path = write(tmp_path, f"listen: 127.0.0.1:9095\nflashduty:\n  timeout: 5s\n  integraton_key: {SECRET}\n")
    result = run_bridge("check-config", "--config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "invalid configuration" in result.stderr
    assert "line 4: unknown key 'flashduty.integraton_key'" in result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr


def test_check_config_missing_file_exits_2_without_traceback(tmp_path: Path) -> None:
    """A config path that does not exist is reported cleanly with exit 2."""
    result = run_bridge("check-config", "--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_names_the_file_when_a_key_file_is_missing(tmp_path: Path) -> None:
    """A missing integration_key_file is reported under the config file's name, not "destinations:"."""
    path = write(tmp_path, f"destinations:\n  db: {{integration_key_file: {tmp_path / 'db.key'}}}\n")
    result = run_bridge("check-config", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: invalid configuration {path}:",
        f"  - destinations.db.integration_key_file: cannot read {tmp_path / 'db.key'}: No such file or directory",
    ]


@pytest.mark.parametrize("token", [None, ""])
def test_deadletter_without_a_token_says_the_token_is_missing(token: str | None) -> None:
    """No --token and no BRIDGE_ADMIN_TOKEN: say so (not "Illegal header value b'Bearer '"), before any request."""
    env = {"BRIDGE_ADMIN_TOKEN": token} if token is not None else {}
    base = {k: v for k, v in os.environ.items() if k != "BRIDGE_ADMIN_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "deadletter", "list", "--url", f"http://127.0.0.1:{free_port()}"],
        cwd=REPO_ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: no admin token: give --token or set BRIDGE_ADMIN_TOKEN to the bridge's admin.token"
    )


def scripts_bridge(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``scripts/bridge`` from ``cwd`` (it uses the checkout's .venv, which ./scripts/test made)."""
    if not (REPO_ROOT / ".venv" / "bin" / "flashduty-bridge").exists():
        pytest.skip("scripts/bridge needs the checkout's .venv: run the suite with ./scripts/test")
    env = {name: value for name, value in os.environ.items() if name != "FLASHDUTY_INTEGRATION_KEY"}
    return subprocess.run(
        [str(REPO_ROOT / "scripts" / "bridge"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_scripts_bridge_resolves_relative_paths_against_the_callers_directory(tmp_path: Path) -> None:
    """`scripts/bridge` runs where it is called: --config and storage.path are the caller's, shown absolute."""
    (tmp_path / "mine.yaml").write_text("storage: {path: ./outbox}\n")
    result = scripts_bridge("check-config", "--config", "mine.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("mine.yaml: OK (dry run")
    assert f"outbox in {tmp_path / 'outbox'})" in result.stdout


def test_check_config_warns_about_unset_variable(tmp_path: Path) -> None:
    """`integration_key: ${SOME_UNSET}` passes but warns on stderr that the variable is not set."""
    path = write(tmp_path, "flashduty:\n  integration_key: ${SOME_UNSET_FOR_BRIDGE_TEST}\n")
    result = run_bridge("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "warning" in result.stderr
    assert "SOME_UNSET_FOR_BRIDGE_TEST" in result.stderr
    assert "not set" in result.stderr
    assert "dry run" in result.stdout


def test_check_config_error_output_never_contains_env_key(tmp_path: Path) -> None:
    """When the config is invalid, the key from the environment is not printed."""
    path = write(tmp_path, "flashduty:\n  url: ftp://nope\n")
    result = run_bridge("check-config", "--config", str(path), env={"FLASHDUTY_INTEGRATION_KEY": SECRET})
    assert result.returncode == 2
    assert "flashduty.url" in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_check_config_yaml_syntax_error_does_not_echo_key(tmp_path: Path) -> None:
    """A YAML syntax error on the integration_key line must not print the key."""
    path = write(tmp_path, f'flashduty:\n  integration_key: "{SECRET}\n')
    result = run_bridge("check-config", "--config", str(path))
    assert result.returncode == 2
    assert SECRET not in result.stdout + result.stderr


def test_check_config_non_utf8_file_exits_2_without_traceback(tmp_path: Path) -> None:
    """A config file that is not UTF-8 is reported as an invalid configuration, not a traceback."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes("log_level: d\xe9bug\n".encode("latin-1"))
    result = run_bridge("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("listen", ["nope", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "[::1]"])
def test_serve_with_invalid_listen_exits_2_with_clear_message(tmp_path: Path, listen: str) -> None:
    """`serve --listen` with a value that is not HOST:PORT exits 2 naming the flag and the bad value."""
    path = write(tmp_path, f"storage:\n  path: {tmp_path / 'data'}\n")
    result = run_bridge("serve", "--config", str(path), "--listen", listen, env={"FLASHDUTY_INTEGRATION_KEY": SECRET})
    assert result.returncode == 2
    assert "--listen" in result.stderr
    assert "HOST:PORT" in result.stderr
    assert repr(listen) in result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert not (tmp_path / "data").exists()


def test_serve_with_invalid_config_exits_2_before_starting(tmp_path: Path) -> None:
    """`serve` validates the config like check-config and exits 2 on an unknown key."""
    path = write(tmp_path, "listen: 127.0.0.1:9095\nbogus: 1\n")
    result = run_bridge("serve", "--config", str(path))
    assert result.returncode == 2
    assert "line 2: unknown key 'bogus'" in result.stderr


@pytest.mark.parametrize("key_source", ["file", "env"])
def test_serve_with_storage_path_that_is_a_file_fails_fast_without_leaking_key(tmp_path: Path, key_source: str) -> None:
    """`serve` whose storage.path is a regular file exits non-zero promptly and never prints the key."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("I am a file\n", encoding="utf-8")
    key_line = f"  integration_key: {SECRET}\n" if key_source == "file" else "  timeout: 2s\n"
    path = write(
        tmp_path,
        f"listen: 127.0.0.1:{free_port()}\nstorage:\n  path: {blocker}\nflashduty:\n{key_line}",
    )
    env = {"FLASHDUTY_INTEGRATION_KEY": SECRET} if key_source == "env" else {}
    started = time.monotonic()
    result = run_bridge("serve", "--config", str(path), env=env, cwd=tmp_path)
    assert time.monotonic() - started < 30, "serve must fail fast, not hang or retry"
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert str(blocker) in output
    assert SECRET not in output
    assert "SECRET" not in output


def test_check_config_with_a_dsn_file_names_the_database_without_its_password(tmp_path: Path) -> None:
    """storage.dsn_file selects PostgreSQL; check-config shows where, never the password (nor a missing file's)."""
    dsn = write(tmp_path, f"postgresql://bridge:{SECRET}@db.example:5432/bridge?sslmode=require\n", "dsn")
    path = write(tmp_path, f"storage:\n  dsn_file: {dsn}\n")
    result = run_bridge("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "outbox in postgresql://bridge@db.example:5432/bridge)" in result.stdout
    assert SECRET not in result.stdout + result.stderr

    missing = write(tmp_path, f"storage:\n  dsn_file: {tmp_path / 'nowhere'}\n", "missing.yaml")
    result = run_bridge("check-config", "--config", str(missing))
    assert result.returncode == 2
    assert "storage.dsn_file" in result.stderr and "cannot read" in result.stderr


def test_check_config_with_a_dsn_from_a_variable_hides_the_password(tmp_path: Path) -> None:
    """${VAR} works in storage.dsn as anywhere; an inline DSN that is not postgresql:// is refused, not echoed."""
    path = write(tmp_path, "storage:\n  dsn: postgresql://bridge:${PGPASSWORD}@db.example/bridge\n")
    result = run_bridge("check-config", "--config", str(path), env={"PGPASSWORD": SECRET})
    assert result.returncode == 0, result.stderr
    assert "outbox in postgresql://bridge@db.example/bridge)" in result.stdout
    assert SECRET not in result.stdout + result.stderr

    path = write(tmp_path, f"storage:\n  dsn: mysql://bridge:{SECRET}@db/x\n  path: data\n", "wrong.yaml")
    result = run_bridge("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "not path and dsn" in result.stderr and SECRET not in result.stderr
