"""Routing to many integrations, label hygiene, key passthrough, check-config and hot reload.

Unit tests drive the Router and the label rules directly; process tests run the real
bridge against one emulator that tells integration keys apart.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bridge.config import AlertmanagerConfig, Config, LabelRules
from bridge.mapping import Mapper, apply_rules
from bridge.models import Alert
from bridge.notes import Notes
from bridge.routing import Router, Skip, passthrough_destination
from bridge.sources.alertmanager import fingerprint
from tests.conftest import TEST_KEY, Bridge, Emulator, wait_for
from tests.test_app import alert, webhook

MakeBridge = Callable[..., Bridge]
DB_KEY, WEB_KEY = "db-key-SECRET-1", "web-key-SECRET-2"


def am_alert(**labels: str) -> Alert:
    return Alert("alertmanager", "firing", labels, {}, fingerprint(labels))


def config(**data: Any) -> Config:
    base: dict[str, Any] = {"flashduty": {"integration_key": "default-key"}}
    base.update(data)
    return Config.model_validate(base)


DESTINATIONS = {"db": {"integration_key": "k1"}, "web": {"integration_key": "k2"}}


def test_first_matching_route_decides_and_no_match_goes_to_default() -> None:
    """Routes are tried in order; the first match wins; without a match the default destination gets it."""
    router = Router(
        config(
            destinations=DESTINATIONS,
            routes=[
                {"matchers": ['team="db"'], "destination": "db"},
                {"matchers": ['team=~"db|web"'], "destination": "web"},
            ],
        )
    )
    assert [t.destination for t in router.route(am_alert(team="db"))] == ["db"]
    assert [t.destination for t in router.route(am_alert(team="web"))] == ["web"]
    assert [t.destination for t in router.route(am_alert(team="ops"))] == ["default"]


def test_continue_fans_out_and_each_destination_gets_the_alert_once() -> None:
    """continue: true sends to every matching route's destination, without duplicates."""
    router = Router(
        config(
            destinations=DESTINATIONS,
            routes=[
                {"matchers": ['team="db"'], "destination": "db", "continue": True},
                {"matchers": ['severity="critical"'], "destination": "db", "continue": True},
                {"matchers": ['severity="critical"'], "destination": "web"},
            ],
        )
    )
    targets = router.route(am_alert(team="db", severity="critical"))
    assert [t.destination for t in targets] == ["db", "web"]
    assert [t.route for t in targets] == [0, 2]


def test_drop_route_stops_the_alert_and_no_default_means_no_route() -> None:
    """A drop route raises Skip(dropped_by_route); with no default destination an unmatched alert is no_route."""
    router = Router(config(destinations=DESTINATIONS, routes=[{"matchers": ['env="dev"'], "drop": True}]))
    with pytest.raises(Skip) as dropped:
        router.route(am_alert(env="dev"))
    assert dropped.value.reason == "dropped_by_route"
    no_default = Router(
        Config.model_validate(
            {"destinations": DESTINATIONS, "routes": [{"matchers": ['team="db"'], "destination": "db"}]}
        )
    )
    with pytest.raises(Skip) as unrouted:
        no_default.route(am_alert(team="web"))
    assert unrouted.value.reason == "no_route"


def test_sources_restrict_a_route_to_some_senders() -> None:
    """A route with sources only matches alerts from those senders."""
    router = Router(config(destinations=DESTINATIONS, routes=[{"sources": ["grafana"], "destination": "web"}]))
    assert [t.destination for t in router.route(am_alert(a="b"))] == ["default"]


def test_passthrough_bypasses_routes_and_hides_the_key() -> None:
    """A key from the URL wins over routes; its destination name is a hash, never the key."""
    router = Router(config(destinations=DESTINATIONS, routes=[{"matchers": ['team="db"'], "destination": "db"}]))
    name = passthrough_destination("secret-key")
    assert [t.destination for t in router.route(am_alert(team="db"), name)] == [name]
    assert "secret" not in name and name.startswith("key-")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"routes": [{"matchers": ['team=~"(db"'], "destination": "default"}]}, "invalid regex"),
        ({"routes": [{"matchers": ['team="db"'], "destination": "nope"}]}, "unknown destination 'nope'"),
        ({"routes": [{"matchers": ['team="db"']}]}, "either a destination or drop: true"),
        ({"routes": [{"destination": "default", "severity_map": {"x": "Ok"}}]}, "firing alert can only be"),
        ({"destinations": {"db": {}}}, "exactly one of integration_key and integration_key_file"),
        ({"destinations": {"default": {"integration_key": "x"}}}, "not 'default'"),
        ({"labels": {"drop": ["(unclosed"]}}, "invalid regex"),
    ],
)
def test_invalid_routing_config_is_rejected_with_the_reason(data: dict[str, Any], message: str) -> None:
    """Bad regexes, unknown destinations and incomplete routes fail validation, naming the problem."""
    with pytest.raises(ValueError) as info:
        config(**data)
    assert message in str(info.value)


def test_label_rules_rename_enrich_add_drop_and_keep_in_order() -> None:
    """Rules apply to labels and annotations: rename, enrich from candidates, add, then drop/keep."""
    rules = [
        LabelRules(rename={"host": "hostname"}, enrich={"resource": ("instance", "hostname"), "service": ("job",)}),
        LabelRules(add={"team": "sre", "service": "fixed"}, drop=("tmp_.*",), keep=()),
    ]
    labels = {"host": "h1", "instance": "10.0.0.1:9100", "team": "db", "tmp_x": "1"}
    own, notes, removed = apply_rules(labels, {"tmp_note": "n", "summary": "s"}, rules)
    assert own == {
        "hostname": "h1",
        "instance": "10.0.0.1:9100",
        "team": "sre",
        "resource": "10.0.0.1:9100",
        "service": "fixed",
    }
    assert notes == {"summary": "s"}
    assert removed == 2


def test_keep_rule_keeps_only_matching_names_and_priority_beats_identity() -> None:
    """keep narrows the labels; priority names survive the 50-label cap first."""
    notes = Notes()
    mapper = Mapper(AlertmanagerConfig())
    labels = {f"z{i:02d}": "v" for i in range(60)} | {"alertname": "A", "owner": "me"}
    out = mapper.labels(am_alert(**labels), Notes(), [LabelRules(priority=("owner",))])
    assert list(out)[:2] == ["owner", "alertname"]
    kept = mapper.labels(am_alert(**labels), notes, [LabelRules(keep=("alertname|owner",))])
    assert kept == {"alertname": "A", "owner": "me"}
    assert notes.labels_dropped["rule"] == 60


# -- through the real processes ----------------------------------------------------------------


def routed_config(tmp_path: Path, emulator: Emulator, routes: list[dict[str, Any]]) -> dict[str, Any]:
    key_file = tmp_path / "db.key"
    key_file.write_text(DB_KEY + "\n")
    return {
        "flashduty": {"url": emulator.push_url, "integration_key": TEST_KEY, "timeout": "3s"},
        "destinations": {"db": {"integration_key_file": str(key_file)}, "web": {"integration_key": WEB_KEY}},
        "routes": routes,
    }


ROUTES: list[dict[str, Any]] = [
    {"matchers": ['team="db"'], "destination": "db", "continue": True},
    {"matchers": ['env="dev"'], "drop": True},
    {"matchers": ['severity=~"critical|warning"'], "destination": "web", "labels": {"add": {"routed": "web"}}},
]


def keys_of(emulator: Emulator, key: str) -> list[str]:
    return [body["labels"]["alertname"] for body in emulator.bodies(key)]


def test_routes_fan_out_drop_default_and_passthrough_through_the_real_bridge(
    tmp_path: Path, emulator: Emulator, make_bridge: MakeBridge
) -> None:
    """Each alert lands under the right integration keys; dropped ones are counted; ?integration_key= goes direct."""
    bridge = make_bridge(**routed_config(tmp_path, emulator, ROUTES))
    alerts = [
        alert({"alertname": "DbCrit", "team": "db", "severity": "critical"}),  # db and web (continue)
        alert({"alertname": "DbDev", "team": "db", "env": "dev"}),  # db, then dropped: db only
        alert({"alertname": "WebWarn", "severity": "warning"}),  # web
        alert({"alertname": "Other", "severity": "info"}),  # default
        alert({"alertname": "Dev", "env": "dev"}),  # dropped
    ]
    response = bridge.post("/alertmanager", webhook(*alerts))
    assert response.status_code == 200, response.text
    assert response.json()["data"]["unrouted"] == 1
    assert (
        bridge.post(
            "/alertmanager?integration_key=direct-key-SECRET", webhook(alert({"alertname": "Direct", "team": "db"}))
        ).status_code
        == 200
    )
    wait_for(lambda: len(emulator.events()) == 6, what="6 events")
    assert sorted(keys_of(emulator, DB_KEY)) == ["DbCrit", "DbDev"]
    assert sorted(keys_of(emulator, WEB_KEY)) == ["DbCrit", "WebWarn"]
    assert keys_of(emulator, TEST_KEY) == ["Other"]
    assert keys_of(emulator, "direct-key-SECRET") == ["Direct"]
    assert all(body["labels"]["routed"] == "web" for body in emulator.bodies(WEB_KEY))
    assert bridge.metric("flashduty_bridge_alerts_unrouted_total", reason="dropped_by_route") == 1
    for secret in (DB_KEY, WEB_KEY, "direct-key-SECRET"):
        assert secret not in bridge.log() and secret not in bridge.metrics()


def test_passthrough_key_survives_a_restart_with_events_queued(
    tmp_path: Path, emulator: Emulator, make_bridge: MakeBridge
) -> None:
    """Events for a key given in the URL are delivered after kill -9 and restart, though no config names the key."""
    emulator.fault(*[{"status": 503, "code": "InternalError"}] * 50)
    bridge = make_bridge(emulator, delivery={"backoff_initial": "2s", "backoff_max": "2s"})
    assert (
        bridge.post("/alertmanager?integration_key=url-key-SECRET", webhook(alert({"alertname": "Url"}))).status_code
        == 200
    )
    wait_for(lambda: len(emulator.requests()) >= 1, what="a failed attempt")
    assert bridge.proc is not None
    bridge.proc.kill9()
    httpx.delete(f"{emulator.url}/-/faults").raise_for_status()
    bridge.start()
    wait_for(lambda: keys_of(emulator, "url-key-SECRET") == ["Url"], timeout=20, what="delivery after restart")


def test_passthrough_can_be_switched_off(tmp_path: Path, emulator: Emulator, make_bridge: MakeBridge) -> None:
    """With passthrough: false the URL key is ignored and routes apply."""
    bridge = make_bridge(emulator, passthrough=False)
    assert bridge.post("/alertmanager?integration_key=ignored", webhook(alert({"alertname": "X"}))).status_code == 200
    wait_for(lambda: keys_of(emulator, TEST_KEY) == ["X"], what="default delivery")
    assert keys_of(emulator, "ignored") == []


def test_reload_changes_routing_from_the_next_request_and_loses_nothing(
    tmp_path: Path, emulator: Emulator, make_bridge: MakeBridge
) -> None:
    """SIGHUP and POST /-/reload apply a new config; events queued before stay with their destination."""
    emulator.fault(*[{"status": 503, "code": "InternalError"}] * 3)
    data = routed_config(tmp_path, emulator, [{"matchers": ['team="db"'], "destination": "db"}])
    bridge = make_bridge(**data)
    assert bridge.post("/alertmanager", webhook(alert({"alertname": "Before", "team": "db"}))).status_code == 200

    data["routes"] = [{"matchers": ['team="db"'], "destination": "web"}]
    bridge.config_path.write_text(yaml.safe_dump(data))
    assert bridge.proc is not None
    bridge.proc.signal(signal.SIGHUP)
    wait_for(lambda: bridge.metric("flashduty_bridge_config_reloads_total", result="success") == 1, what="reload")
    assert bridge.post("/alertmanager", webhook(alert({"alertname": "After", "team": "db"}))).status_code == 200
    wait_for(lambda: len(emulator.events()) == 2, what="both events")
    assert keys_of(emulator, DB_KEY) == ["Before"]  # queued before the reload: not re-routed
    assert keys_of(emulator, WEB_KEY) == ["After"]

    # Rotate the Secret file: the next reload reads it.
    (tmp_path / "db.key").write_text("rotated-db-key-SECRET\n")
    data["routes"] = [{"matchers": ['team="db"'], "destination": "db"}]
    bridge.config_path.write_text(yaml.safe_dump(data))
    assert httpx.post(f"{bridge.url}/-/reload").status_code == 200
    assert bridge.post("/alertmanager", webhook(alert({"alertname": "Rotated", "team": "db"}))).status_code == 200
    wait_for(lambda: keys_of(emulator, "rotated-db-key-SECRET") == ["Rotated"], what="rotated key")
    assert "rotated-db-key-SECRET" not in bridge.log()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda d, p: d["routes"].append({"matchers": ['x=~"(oops"'], "destination": "db"}), "invalid regex"),
        (lambda d, p: d.update(routez=[]), "unknown key 'routez'"),
        (lambda d, p: d["destinations"]["db"].update(integration_key_file=str(p / "missing.key")), "cannot read"),
    ],
)
def test_broken_config_is_refused_by_check_config_and_reload_while_the_bridge_keeps_serving(
    tmp_path: Path,
    emulator: Emulator,
    make_bridge: MakeBridge,
    breakage: Callable[[dict[str, Any], Path], None],
    message: str,
) -> None:
    """A bad regex, an unknown key or a missing key file: check-config exits 2, reload is refused, traffic flows."""
    data = routed_config(tmp_path, emulator, [{"matchers": ['team="db"'], "destination": "db"}])
    bridge = make_bridge(**data)
    breakage(data, tmp_path)
    bridge.config_path.write_text(yaml.safe_dump(data))
    check = subprocess.run(
        [sys.executable, "-m", "bridge", "check-config", "--config", str(bridge.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 2 and message in check.stderr, check.stderr
    refused = httpx.post(f"{bridge.url}/-/reload")
    assert refused.status_code == 409 and message in refused.json()["error"]["message"]
    assert bridge.metric("flashduty_bridge_config_last_reload_successful") == 0
    assert bridge.metric("flashduty_bridge_config_reloads_total", result="failure") == 1
    assert bridge.post("/alertmanager", webhook(alert({"alertname": "Still", "team": "db"}))).status_code == 200
    wait_for(lambda: keys_of(emulator, DB_KEY) == ["Still"], what="old routing still in force")
    assert "reload refused" in bridge.log()


def test_route_severity_map_overrides_entries_and_keeps_the_rest() -> None:
    """A route mapping warning to Critical still maps critical and info through the source's table."""
    mapper = Mapper(AlertmanagerConfig())
    router = Router(config(routes=[{"destination": "default", "severity_map": {"warning": "Critical"}}]))
    (target,) = router.route(am_alert(severity="warning"))
    assert mapper.event(am_alert(severity="warning"), Notes(), target).event_status == "Critical"
    assert mapper.event(am_alert(severity="info"), Notes(), target).event_status == "Info"
    assert mapper.event(am_alert(severity="warning"), Notes()).event_status == "Warning"


def test_route_severity_map_is_normalised_like_the_sources() -> None:
    """{P1: Critical} on a route maps severity="P1" to Critical, as the same map on the source does."""
    mapper = Mapper(AlertmanagerConfig())
    routed = config(routes=[{"destination": "default", "severity_map": {" P1 ": "Critical"}}])
    assert routed.routes[0].severity_map == {"p1": "Critical"}
    (target,) = Router(routed).route(am_alert(severity="P1"))
    assert mapper.event(am_alert(severity="P1"), Notes(), target).event_status == "Critical"
    on_source = Mapper(AlertmanagerConfig(severity_map={"P1": "Critical"}))
    assert on_source.event(am_alert(severity="P1"), Notes()).event_status == "Critical"
