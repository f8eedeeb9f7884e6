"""Reusable field types: each value is normalised once, the same way wherever it is written."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from bridge import deadletters, templating
from bridge.config import Config
from bridge.fields import CompiledTemplate, Duration, SeverityMap, parse_duration
from tests.conftest import ADMIN_TOKEN
from tests.support.inprocess import make_config, running

WEEK = 7 * 86400.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("7d", WEEK),
        ("1w", WEEK),
        ("1.5d", 1.5 * 86400),
        ("90m", 5400.0),
        ("250ms", 0.25),
        ("12", 12.0),
        (" 3 h ", 10800.0),
    ],
)
def test_durations_take_days_and_weeks_as_well_as_ms_s_m_h(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["7 days", "d", "1dd", "1.d", "١٢s", "1e3", "", "1 w x"])
def test_durations_refuse_anything_else_naming_the_units(text: str) -> None:
    with pytest.raises(ValueError, match="ms, s, m, h, d or w"):
        parse_duration(text)


async def test_admin_api_accepts_older_than_in_days_as_the_readme_shows(tmp_path: Path) -> None:
    """GET /api/v1/dead-letters?older_than=7d and purge {"older_than": "1w"} are valid selections."""
    async with running(make_config(tmp_path, admin={"token": ADMIN_TOKEN})) as bridge:
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        listed = await bridge.client.get("/api/v1/dead-letters", params={"older_than": "7d"}, headers=auth)
        assert listed.status_code == 200, listed.text
        purged = await bridge.client.post("/api/v1/dead-letters/purge", json={"older_than": "1w"}, headers=auth)
        assert purged.status_code == 200, purged.text
        assert purged.json()["data"] == {"purged": 0}


def test_cli_older_than_accepts_days() -> None:
    """`deadletter purge --older-than 7d` selects letters dead for a week."""
    parser = argparse.ArgumentParser()
    deadletters.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["deadletter", "purge", "--older-than", "7d", "--url", "http://127.0.0.1:9"])
    assert deadletters._selection(args).older_than == WEEK


class _Route(BaseModel):
    severity_map: SeverityMap | None = None
    wait: Duration = 1.0
    title: CompiledTemplate | None = None


def test_severity_map_type_strips_and_lower_cases_keys_once() -> None:
    assert _Route(severity_map={" P1 ": "Critical", "Sev2": "Info"}).severity_map == {"p1": "Critical", "sev2": "Info"}
    with pytest.raises(ValidationError, match="a firing alert can only be one of Critical, Warning, Info"):
        _Route(severity_map={"p1": "Ok"})


def test_template_fields_hold_the_compiled_template_and_dump_its_source() -> None:
    """Compiled once when the config is validated; dumped (and pickled) as its source."""
    route = _Route(title="{{ payload.x }}!")
    assert isinstance(route.title, templating.Template)
    assert route.title.render({"payload": {"x": 1}}) == "1!"
    assert route.model_dump()["title"] == "{{ payload.x }}!"
    again = pickle.loads(pickle.dumps(route))
    assert again.title is not None and again.title.render({"payload": {"x": 2}}) == "2!"
    assert again == route


def test_templates_of_a_config_are_compiled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a template source compiles each template once; building its runtime compiles none again."""
    from bridge.intake import sources as build_sources

    compiled: list[str] = []
    original = templating.Engine.compile

    def counting(self: templating.Engine, source: str, name: str) -> templating.Template:
        compiled.append(name)
        return original(self, source, name)

    monkeypatch.setattr(templating.Engine, "compile", counting)
    source = {"title": "{{ payload.t }}", "event_status": "Critical", "labels": {"a": "{{ 1 }}"}}
    cfg = Config.model_validate({"sources": {"s": source}, "alertmanager": {"title": "{{ alert.status }}"}})
    assert sorted(compiled) == ["event_status", "labels.a", "title", "title"]
    compiled.clear()
    build_sources(cfg)
    assert compiled == []


def test_a_config_survives_pickling() -> None:
    """Plain data all the way down, so a worker process can be handed the config it runs on."""
    cfg = Config.model_validate(
        {
            "sources": {"s": {"alerts": "payload.items", "title": "{{ alert.t }}", "event_status": "Critical"}},
            "routes": [{"matchers": ['team=~"db|web"'], "destination": "default", "severity_map": {"P1": "Critical"}}],
            "labels": {"drop": ["tmp_.*"]},
        }
    )
    again = pickle.loads(pickle.dumps(cfg))
    assert again == cfg
    assert again.routes[0].matchers[0].matches({"team": "web"})
