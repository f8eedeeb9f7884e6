"""Run a real Prometheus server on loopback: scrape targets, rule files, one Alertmanager.

Tests write rule files, start :class:`Prometheus`, and change rules while it runs with
:meth:`Prometheus.reload` (``POST /-/reload``, enabled by ``--web.enable-lifecycle``).
Process handling is :class:`tests.support.procs.Proc`, as for Alertmanager.

Written against Prometheus 2.42 (Debian package ``prometheus``). Behaviour the tests
rely on:

* Alertmanagers are discovered like scrape targets, and discovery results are passed
  on at most every 5 s: alerts that fire before that are dropped ("no alertmanagers"),
  so wait for :meth:`Prometheus.alertmanagers` before making rules fire.
* An alerting rule without ``for`` fires at its first evaluation, and Prometheus sends
  it to Alertmanager at once; firing alerts are re-sent every ``resend_delay`` (default
  1m, here 2s so a lost send is repeated quickly) with ``endsAt`` four times that ahead.
* On reload, rules keep their state when their name and labels are unchanged (the
  expression may change). When such a rule stops returning a series, the alert turns
  inactive and is sent once more, resolved (``endsAt`` = now), at the next evaluation.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.support.procs import LOOPBACK, LoopbackServer


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


class Prometheus(LoopbackServer):
    """A real Prometheus on loopback with short scrape and evaluation intervals."""

    name = "Prometheus"

    def __init__(
        self,
        workdir: Path,
        *,
        rule_files: Sequence[Path] = (),
        scrape_targets: Mapping[str, str] | None = None,
        alertmanager: str | None = None,
        interval: str = "1s",
        resend_delay: str = "2s",
    ) -> None:
        """``scrape_targets`` maps a job name to one HOST:PORT; ``alertmanager`` is HOST:PORT."""
        super().__init__()
        self.workdir = Path(workdir)
        self.rule_files = [Path(p) for p in rule_files]
        self.scrape_targets = dict(scrape_targets or {})
        self.alertmanager = alertmanager
        self.interval = interval
        self.resend_delay = resend_delay
        self.config_path = self.workdir / "prometheus.yml"
        self.storage_path = self.workdir / "prometheus-data"
        self.log_path = self.workdir / "prometheus.log"

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in self.scrape_targets.items()
            ],
        }
        if self.alertmanager:
            config["alerting"] = {
                "alertmanagers": [{"api_version": "v2", "static_configs": [{"targets": [self.alertmanager]}]}]
            }
        return config

    def argv(self, binary: str, port: int) -> list[str]:
        return [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.storage_path}",
            f"--web.listen-address={LOOPBACK}:{port}",
            # generatorURL (sent to Alertmanager) is built from it; the default uses the host name.
            f"--web.external-url=http://{LOOPBACK}:{port}",
            "--web.enable-lifecycle",
            f"--rules.alert.resend-delay={self.resend_delay}",
            "--log.level=info",
        ]

    def _prepare(self) -> Callable[[int], list[str]]:
        binary = prometheus_binary()
        if binary is None:
            raise RuntimeError("Prometheus binary not found (apt-get install prometheus)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        # JSON is YAML: quoting is handled for us.
        self.config_path.write_text(json.dumps(self.config(), indent=2) + "\n")
        return lambda port: self.argv(binary, port)

    def _get(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=10.0, trust_env=False)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise RuntimeError(f"GET {path} {params} -> {response.status_code}: {response.text}")
        return body["data"]

    def reload(self) -> None:
        """Re-read the config and rule files; raise with the log when Prometheus refuses them."""
        response = httpx.post(f"{self.url}/-/reload", timeout=30.0, trust_env=False)
        if response.status_code != 200:
            raise RuntimeError(f"reload -> {response.status_code}: {response.text}\n{self.output()[-3000:]}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result (a list of {metric, value})."""
        data = self._get("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"] if isinstance(data["result"], list) else [data]
        return result

    def alertmanagers(self) -> list[str]:
        """URLs of the Alertmanagers Prometheus currently sends to."""
        data = self._get("/api/v1/alertmanagers")
        return [item["url"] for item in data["activeAlertmanagers"]]

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule with its health, lastError and (for alerts) state."""
        groups = self._get("/api/v1/rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]
