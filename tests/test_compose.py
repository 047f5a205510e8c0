"""docker-compose.yml is the production deployment; Docker is not available here, so the
file is checked structurally and its connector configs against `connectors render`."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from app.cdc.compose import render_compose
from app.cli import app
from app.settings import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_is_the_current_rendering() -> None:
    assert COMPOSE.read_text() == render_compose(), "regenerate: python -m app.cdc.compose"


def test_compose_services() -> None:
    services = _compose()["services"]
    assert {"postgres", "kafka", "connect", "connectors", "migrate", "topics", "worker"} <= set(
        services
    )
    assert "wal_level=logical" in services["postgres"]["command"]
    env = services["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert "debezium/connect" in services["connect"]["image"]
    assert services["worker"]["command"][:3] == ["worker", "--broker", "kafka:9092"]
    # no secret literal anywhere: only environment references
    assert "POSTGRES_PASSWORD" in services["postgres"]["environment"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${")


def test_compose_connector_configs_equal_render() -> None:
    result = CliRunner().invoke(app, ["connectors", "render", "--target", "connect"])
    assert result.exit_code == 0, result.output
    rendered = {c["name"]: c["config"] for c in json.loads(result.output)}
    configs = _compose()["configs"]
    in_compose = {name: json.loads(c["content"].replace("$$", "$")) for name, c in configs.items()}
    assert in_compose == rendered
    for cfg in rendered.values():
        assert cfg["connector.class"] == "io.debezium.connector.postgresql.PostgresConnector"
        assert cfg["plugin.name"] == "pgoutput"
        assert cfg["decimal.handling.mode"] == "string"
        assert cfg["database.password"] == "${env:LOYALTY_CDP_PG_PASSWORD}"
        assert {
            "slot.name",
            "publication.name",
            "topic.prefix",
            "table.include.list",
            "heartbeat.interval.ms",
        } <= set(cfg)
    # the connectors service mounts every config it PUTs
    mounted = {c["source"] for c in _compose()["services"]["connectors"]["configs"]}
    assert mounted == set(rendered)
