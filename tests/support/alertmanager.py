"""Run a real Prometheus Alertmanager on loopback whose only receiver is a webhook.

Tests use :class:`Alertmanager` to drive the bridge the way production does:
they post alerts to Alertmanager's v2 API, Alertmanager groups them and sends
its own webhook payloads (``version: "4"``) to the URL under test. Nothing is
faked on the Alertmanager side, so grouping, fingerprints, resolved
notifications and headers are exactly what the real binary produces.

Process handling (start, log file, readiness polling, SIGTERM/SIGKILL) is done
by :class:`tests.support.procs.Proc`; this module only builds the config and the
command line and talks to the HTTP API.

Written against Alertmanager 0.25 (Debian package ``prometheus-alertmanager``).
Observed 0.25 behaviour worth knowing when asserting on payloads:

* ``group_interval`` and ``repeat_interval`` may be any non-zero duration
  (``100ms`` works); ``0s`` is rejected at startup. ``group_wait`` may be 0s.
* Firing alerts arrive with ``endsAt: "0001-01-01T00:00:00Z"`` even when the
  posted alert had an endsAt in the future.
* Timestamps are Go RFC 3339 with trailing fractional zeros trimmed
  (``...:19.53Z``), so compare instants, not strings.
* Requests carry ``User-Agent: Alertmanager/0.25.0``.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.support.procs import LOOPBACK, LoopbackServer

RECEIVER = "bridge"
"""Name of the single receiver (and the route's receiver) in the generated config."""


def alertmanager_binary() -> str | None:
    """Path of the Alertmanager binary on PATH, or None when it is not installed.

    Debian names it ``prometheus-alertmanager``; upstream tarballs and most
    other distributions call it ``alertmanager``.
    """
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def rfc3339(moment: datetime) -> str:
    """Format ``moment`` as RFC 3339 in UTC with a ``Z`` suffix (millisecond precision)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_rfc3339(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Alertmanager(LoopbackServer):
    """A real Alertmanager on loopback whose only receiver is a webhook."""

    name = "Alertmanager"

    def __init__(
        self,
        workdir: Path,
        webhook_url: str,
        *,
        group_wait: str = "1s",
        group_interval: str = "2s",
        repeat_interval: str = "1h",
        group_by: Sequence[str] = ("alertname",),
        bearer_token: str | None = None,
    ) -> None:
        super().__init__()
        self.workdir = Path(workdir)
        self.webhook_url = webhook_url
        self.group_wait = group_wait
        self.group_interval = group_interval
        self.repeat_interval = repeat_interval
        self.group_by = list(group_by)
        self.bearer_token = bearer_token
        self.config_path = self.workdir / "alertmanager.yml"
        self.storage_path = self.workdir / "alertmanager-data"
        self.log_path = self.workdir / "alertmanager.log"

    # -- configuration -----------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The Alertmanager configuration as a plain dict (written to ``config_path``)."""
        webhook: dict[str, Any] = {
            "url": self.webhook_url,
            "send_resolved": True,
            # 0 means "all alerts of the group in one payload" (no truncation).
            "max_alerts": 0,
        }
        if self.bearer_token is not None:
            webhook["http_config"] = {
                "authorization": {"type": "Bearer", "credentials": self.bearer_token},
            }
        return {
            "route": {
                "receiver": RECEIVER,
                "group_by": self.group_by,
                "group_wait": self.group_wait,
                "group_interval": self.group_interval,
                "repeat_interval": self.repeat_interval,
            },
            "receivers": [{"name": RECEIVER, "webhook_configs": [webhook]}],
        }

    def write_config(self) -> Path:
        """Write the config file and return its path.

        JSON is valid YAML, so ``json.dumps`` gives a correctly quoted file
        without depending on a YAML library (tokens and URLs are escaped).
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2) + "\n")
        return self.config_path

    def argv(self, binary: str, port: int) -> list[str]:
        """Command line for Alertmanager 0.25 listening on ``LOOPBACK:port``."""
        return [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.path={self.storage_path}",
            f"--web.listen-address={LOOPBACK}:{port}",
            # Without it the payload's externalURL is derived from the host name
            # (e.g. http://<hostname>:<port>), which differs between machines.
            f"--web.external-url=http://{LOOPBACK}:{port}",
            # Empty disables HA gossip. The default is 0.0.0.0:9094, which would
            # listen on every interface, collide between parallel tests and make
            # Alertmanager wait for cluster peers to settle before notifying.
            "--cluster.listen-address=",
            "--log.level=info",
        ]

    # -- lifecycle -----------------------------------------------------------

    def _prepare(self) -> Callable[[int], list[str]]:
        """Find the binary and write the config; the argv for a port."""
        binary = alertmanager_binary()
        if binary is None:
            raise RuntimeError("Alertmanager binary not found (prometheus-alertmanager or alertmanager)")
        self.write_config()
        self.storage_path.mkdir(parents=True, exist_ok=True)
        return lambda port: self.argv(binary, port)

    # -- alerts --------------------------------------------------------------

    def post_alerts(self, alerts: Sequence[dict[str, Any]]) -> None:
        """POST ``alerts`` to ``/api/v2/alerts``; raise with the body and log on non-2xx.

        Each alert is ``{labels, annotations?, startsAt?, endsAt?, generatorURL?}``
        with RFC 3339 timestamps.
        """
        # trust_env=False: an HTTP(S)_PROXY in the environment must never
        # redirect a request meant for a loopback process.
        response = httpx.post(f"{self.url}/api/v2/alerts", json=list(alerts), timeout=5.0, trust_env=False)
        if not response.is_success:
            raise RuntimeError(f"POST /api/v2/alerts -> {response.status_code}: {response.text}\n{self.output()}")

    def fire(self, labels: dict[str, str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
        """Post one firing alert (startsAt now, endsAt in one hour); return the posted dict.

        An explicit endsAt in the future keeps the alert firing for the whole
        test instead of relying on the global ``resolve_timeout`` (5m).
        """
        now = datetime.now(UTC)
        alert: dict[str, Any] = {
            "labels": dict(labels),
            "annotations": dict(annotations or {}),
            "startsAt": rfc3339(now),
            "endsAt": rfc3339(now + timedelta(hours=1)),
        }
        self.post_alerts([alert])
        return copy.deepcopy(alert)

    def resolve(self, alert: dict[str, Any]) -> None:
        """Re-post ``alert`` (same labels, same startsAt) with endsAt one second ago.

        Alertmanager treats an alert as resolved once endsAt is in the past; the
        one-second margin avoids racing its clock. endsAt is clamped to startsAt
        because Alertmanager rejects endsAt before startsAt (400), which would
        happen when resolving within a second of firing.
        """
        resolved = copy.deepcopy(alert)
        ends_at = datetime.now(UTC) - timedelta(seconds=1)
        starts_at = resolved.get("startsAt")
        if isinstance(starts_at, str):
            ends_at = max(ends_at, _parse_rfc3339(starts_at))
        resolved["endsAt"] = rfc3339(ends_at)
        self.post_alerts([resolved])
