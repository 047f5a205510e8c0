"""Connector YAML -> Kafka Connect / embedded-engine properties, and the topic plan.

No broker, no PostgreSQL: these are the pure rendering and loading functions."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from app.cdc.connectors import (
    CONNECTOR_CLASS,
    ConnectorSpec,
    change_topics,
    load_connectors,
    render_connect,
    render_embedded,
)
from app.settings import REPO_ROOT
from app.stack.errors import StackError
from app.stack.topics import load_plan

CONNECTORS = REPO_ROOT / "connectors"
TOPICS = REPO_ROOT / "config" / "topics.yaml"


@pytest.fixture(scope="module")
def specs() -> list[ConnectorSpec]:
    return load_connectors(CONNECTORS)


def _spec(**over: object) -> ConnectorSpec:
    raw: dict[str, object] = {
        "name": "pos",
        "database": "pos",
        "tables": ["transactions", "returns"],
        "topic_prefix": "pos",
        "slot_name": "loyalty_cdp_pos",
        "publication_name": "loyalty_cdp_pos",
    }
    raw.update(over)
    return ConnectorSpec.model_validate(raw)


def _embedded(spec: ConnectorSpec, tmp_path: Path, **kw: object) -> dict[str, str]:
    return render_embedded(
        spec,
        host="127.0.0.1",
        port=54321,
        user="postgres",
        offsets_file=tmp_path / "pos.offsets",
        **kw,  # type: ignore[arg-type]
    )


def _included(props: dict[str, str]) -> list[str]:
    """The captured tables of ``table.include.list``, without the connector's own bookkeeping
    table (a heartbeat table outside the mapped schema, when the connector has one)."""
    return [t for t in props["table.include.list"].split(",") if not t.startswith("loyalty_cdp.")]


def _bookkeeping_topics(plan: object) -> set[str]:
    return {t for t in plan.topics if ".loyalty_cdp." in t}  # type: ignore[attr-defined]


def test_repository_connectors_load(specs: list[ConnectorSpec]) -> None:
    assert [s.name for s in specs] == ["app", "pos", "web"]
    by = {s.name: s for s in specs}
    assert by["pos"].database == "pos"
    assert "transactions" in by["pos"].tables


@pytest.mark.parametrize("target", ["connect", "embedded"])
def test_shape_of_change_topics_is_the_same_on_both_targets(
    specs: list[ConnectorSpec], target: str, tmp_path: Path
) -> None:
    for spec in specs:
        props = render_connect(spec)["config"] if target == "connect" else _embedded(spec, tmp_path)
        assert props["connector.class"] == CONNECTOR_CLASS
        assert props["plugin.name"] == "pgoutput"
        assert props["decimal.handling.mode"] == "string"
        assert props["slot.name"] == spec.slot_name == f"loyalty_cdp_{spec.name}"
        assert props["publication.name"] == spec.publication_name
        assert props["topic.prefix"] == spec.topic_prefix
        assert props["database.dbname"] == spec.database
        assert _included(props) == [f"public.{t}" for t in spec.tables]
        assert props["key.converter.schemas.enable"] == "false"
        assert props["value.converter.schemas.enable"] == "false"
        assert int(props["heartbeat.interval.ms"]) > 0
        # every value is a string (Connect REST and Debezium properties are strings)
        assert all(isinstance(v, str) for v in props.values())


def test_render_connect(tmp_path: Path) -> None:
    body = render_connect(_spec(connection={"host": "db", "port": 6543, "user": "u"}))
    cfg = body["config"]
    assert body["name"] == cfg["name"] == "loyalty-cdp-pos"
    assert cfg["database.hostname"] == "db"
    assert cfg["database.port"] == "6543"
    assert cfg["database.user"] == "u"
    # the secret is an env reference resolved by Connect, never a literal
    assert cfg["database.password"] == "${env:LOYALTY_CDP_PG_PASSWORD}"
    assert cfg["config.providers"] == "env"
    assert cfg["config.providers.env.class"].endswith("EnvVarConfigProvider")
    assert cfg["tasks.max"] == "1"
    assert "offset.storage.file.filename" not in cfg


def test_render_embedded_offsets_file_and_connection(tmp_path: Path) -> None:
    props = _embedded(_spec(), tmp_path)
    assert props["offset.storage"].endswith("FileOffsetBackingStore")
    assert props["offset.storage.file.filename"] == str(tmp_path / "pos.offsets")
    assert props["database.hostname"] == "127.0.0.1"
    assert props["database.port"] == "54321"
    assert props["database.user"] == "postgres"
    assert props["snapshot.mode"] == "initial"
    assert "config.providers" not in props


def test_render_embedded_snapshot_override(tmp_path: Path) -> None:
    assert _embedded(_spec(), tmp_path, snapshot_mode="always")["snapshot.mode"] == "always"
    spec = _spec(snapshot_mode="no_data")
    assert _embedded(spec, tmp_path)["snapshot.mode"] == "no_data"
    assert render_connect(spec)["config"]["snapshot.mode"] == "no_data"


def test_offset_flush_interval(tmp_path: Path) -> None:
    props = _embedded(_spec(), tmp_path, offset_flush_interval_ms=250)
    assert props["offset.flush.interval.ms"] == "250"


def test_poll_interval(tmp_path: Path) -> None:
    assert _embedded(_spec(), tmp_path)["poll.interval.ms"] == "100"
    assert _embedded(_spec(), tmp_path, poll_interval_ms=20)["poll.interval.ms"] == "20"


def test_extra_properties_pass_through_to_both_targets(tmp_path: Path) -> None:
    spec = _spec(properties={"slot.drop.on.stop": False, "max.batch.size": 100, "x.y": "z"})
    for props in (render_connect(spec)["config"], _embedded(spec, tmp_path)):
        assert props["slot.drop.on.stop"] == "false"
        assert props["x.y"] == "z"
    assert render_connect(spec)["config"]["max.batch.size"] == "100"


def test_schema_and_topics() -> None:
    spec = _spec(schema="sales", topic_prefix="shop")
    assert spec.topics() == ["shop.sales.transactions", "shop.sales.returns"]
    assert _included(render_connect(spec)["config"]) == ["sales.transactions", "sales.returns"]
    assert change_topics([spec, _spec(name="b", tables=["x"])]) == [
        "shop.sales.transactions",
        "shop.sales.returns",
        "pos.public.x",
    ]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("name: [unclosed", "not valid YAML"),
        ("name: pos\n", "database"),
        (
            yaml.safe_dump(
                {
                    "name": "Bad Name",
                    "database": "d",
                    "tables": ["t"],
                    "topic_prefix": "p",
                    "slot_name": "s",
                    "publication_name": "p",
                }
            ),
            "name",
        ),
        (
            yaml.safe_dump(
                {
                    "name": "a",
                    "database": "d",
                    "tables": [],
                    "topic_prefix": "p",
                    "slot_name": "s",
                    "publication_name": "p",
                }
            ),
            "tables",
        ),
    ],
)
def test_invalid_connector_yaml(tmp_path: Path, content: str, fragment: str) -> None:
    (tmp_path / "bad.yaml").write_text(content)
    with pytest.raises(StackError) as err:
        load_connectors(tmp_path)
    msg = str(err.value)
    assert "bad.yaml" in msg and fragment in msg
    assert "\n" not in msg


def test_unknown_connector_key_rejected(tmp_path: Path) -> None:
    raw = yaml.safe_load((CONNECTORS / "pos.yaml").read_text())
    raw["snapshot_mod"] = "always"  # a typo must not be silently ignored
    (tmp_path / "pos.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(StackError, match="snapshot_mod"):
        load_connectors(tmp_path)


def test_no_connectors_and_duplicate_names(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="no connector YAML"):
        load_connectors(tmp_path)
    text = (CONNECTORS / "pos.yaml").read_text()
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yaml").write_text(text)
    with pytest.raises(StackError, match="duplicate connector names"):
        load_connectors(tmp_path)


# --- topic plan -------------------------------------------------------------------------------


def test_plan_declared_topics(specs: list[ConnectorSpec]) -> None:
    plan = load_plan(TOPICS, specs)
    assert plan.topics["cdp.profiles"].config["cleanup.policy"] == "compact"
    assert plan.topics["cdp.events"].config.get("cleanup.policy", "delete") != "compact"
    assert plan.topics["cdp.events"].partitions >= 1
    for name in ("cdp.events", "cdp.ingest", "cdp.dlq", "loyalty.events"):
        assert name in plan.topics
        assert "retention.ms" in plan.topics[name].config


def test_plan_adds_every_change_topic_with_cdc_defaults(specs: list[ConnectorSpec]) -> None:
    plan = load_plan(TOPICS, specs)
    defaults = yaml.safe_load(TOPICS.read_text())["cdc_defaults"]
    topics = change_topics(specs)
    assert "pos.public.transactions" in topics
    for t in topics:
        assert plan.topics[t].partitions == defaults["partitions"]
        assert plan.topics[t].config == defaults["config"]


def test_plan_follows_the_connectors(tmp_path: Path) -> None:
    plan_file = tmp_path / "topics.yaml"
    plan_file.write_text(
        "cdc_defaults: {partitions: 2, config: {retention.ms: '1000'}}\n"
        "topics:\n"
        "  cdp.profiles: {partitions: 3, config: {cleanup.policy: compact}}\n"
        "  shop.sales.returns: {partitions: 9}\n"
    )
    plan = load_plan(plan_file, [_spec(schema="sales", topic_prefix="shop")])
    assert set(plan.topics) - _bookkeeping_topics(plan) == {
        "cdp.profiles",
        "shop.sales.transactions",
        "shop.sales.returns",
    }
    assert plan.topics["shop.sales.transactions"].partitions == 2
    # an explicit declaration wins over the CDC defaults
    assert plan.topics["shop.sales.returns"].partitions == 9
    assert plan.topics["cdp.profiles"].config == {"cleanup.policy": "compact"}
    assert set(load_plan(plan_file, []).topics) == {"cdp.profiles", "shop.sales.returns"}


@pytest.mark.parametrize(
    "content",
    [
        "topics: {}\n",  # no cdc_defaults
        "cdc_defaults: {partitions: 0}\ntopics: {}\n",
        "cdc_defaults: {partitions: 1}\ntopics: {a: {partitions: 1, retention: 3}}\n",
        "cdc_defaults: [unclosed\n",
    ],
)
def test_invalid_plan(tmp_path: Path, content: str) -> None:
    f = tmp_path / "topics.yaml"
    f.write_text(content)
    with pytest.raises(StackError, match="invalid topic plan"):
        load_plan(f, [])


def test_missing_plan(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="cannot read topic plan"):
        load_plan(tmp_path / "nope.yaml", [])
