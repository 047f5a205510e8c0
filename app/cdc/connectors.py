"""Debezium connector definitions: one YAML per source, two render targets.

The same ``connectors/<source>.yaml`` produces the Kafka Connect REST config used in
production and the embedded-engine properties used by ``loyalty-cdp up``; everything that
shapes the change topics (prefix, tables, decimal handling, plugin, slot, publication) comes
from the shared part, so both targets publish identical change events and the stream code
from the topic on is one code path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.stack.errors import StackError

__all__ = [
    "ConnectionSpec",
    "ConnectorSpec",
    "change_topics",
    "load_connectors",
    "render_connect",
    "render_embedded",
]

CONNECTOR_CLASS = "io.debezium.connector.postgresql.PostgresConnector"
ENV_PROVIDER = "org.apache.kafka.common.config.provider.EnvVarConfigProvider"


class ConnectionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "postgres"
    port: int = Field(5432, ge=1, le=65535)
    user: str = "cdp"
    password: str = "${env:LOYALTY_CDP_PG_PASSWORD}"


class ConnectorSpec(BaseModel):
    """One source database captured by one Debezium PostgreSQL connector."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    database: str
    schema_: str = Field("public", alias="schema")
    tables: list[str] = Field(min_length=1)
    topic_prefix: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    slot_name: str = Field(pattern=r"^[a-z0-9_]+$")
    publication_name: str
    snapshot_mode: Literal["initial", "always", "no_data", "when_needed", "initial_only"] = (
        "initial"
    )
    heartbeat_interval_ms: int = Field(10_000, ge=0)
    #: Bookkeeping table in each source (app/db/heartbeat.py): captured so that
    #: `wait --caught-up` can pass a token through capture, and updated by Debezium's
    #: heartbeat action so an idle database's slot keeps advancing. Empty to disable.
    heartbeat_table: str = "loyalty_cdp.cdc_heartbeat"
    connection: ConnectionSpec = ConnectionSpec()
    properties: dict[str, str | int | bool] = {}

    def topics(self) -> list[str]:
        return [f"{self.topic_prefix}.{self.schema_}.{t}" for t in self.tables]

    def common_properties(self) -> dict[str, str]:
        """Properties shared by both targets: they define the shape of the change topics."""
        props: dict[str, str] = {
            "connector.class": CONNECTOR_CLASS,
            "plugin.name": "pgoutput",
            "database.dbname": self.database,
            "topic.prefix": self.topic_prefix,
            "slot.name": self.slot_name,
            "publication.name": self.publication_name,
            "publication.autocreate.mode": "filtered",
            "table.include.list": ",".join(
                [f"{self.schema_}.{t}" for t in self.tables]
                + ([self.heartbeat_table] if self.heartbeat_table else [])
            ),
            "decimal.handling.mode": "string",
            "snapshot.mode": self.snapshot_mode,
            "heartbeat.interval.ms": str(self.heartbeat_interval_ms),
            "tombstones.on.delete": "false",
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "key.converter.schemas.enable": "false",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter.schemas.enable": "false",
        }
        if self.heartbeat_table:
            props["heartbeat.action.query"] = (
                f"UPDATE {self.heartbeat_table} SET at = now() WHERE source = '{self.name}'"
            )
        props.update({k: _str(v) for k, v in self.properties.items()})
        return props

    def heartbeat_topic(self) -> str | None:
        """Change topic of the heartbeat table (not mapped; the CDC runner reads tokens)."""
        return f"{self.topic_prefix}.{self.heartbeat_table}" if self.heartbeat_table else None


def _str(v: str | int | bool) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def load_connectors(directory: Path) -> list[ConnectorSpec]:
    """Load and validate every ``*.yaml`` in ``directory`` (not recursive)."""
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise StackError(f"no connector YAML in {directory}")
    specs = []
    for f in files:
        try:
            raw = yaml.safe_load(f.read_text())
            specs.append(ConnectorSpec.model_validate(raw))
        except yaml.YAMLError as exc:
            raise StackError(f"{f}: not valid YAML: {str(exc).splitlines()[0]}") from exc
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise StackError(f"{f}: {loc}: {first['msg']}") from exc
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise StackError(f"duplicate connector names in {directory}: {names}")
    return specs


def change_topics(specs: list[ConnectorSpec]) -> list[str]:
    return [t for s in specs for t in s.topics()]


def render_connect(spec: ConnectorSpec) -> dict[str, Any]:
    """Kafka Connect REST body for ``PUT /connectors/<name>/config`` (plus the name)."""
    config = spec.common_properties()
    config.update(
        {
            "name": f"loyalty-cdp-{spec.name}",
            "tasks.max": "1",
            "database.hostname": spec.connection.host,
            "database.port": str(spec.connection.port),
            "database.user": spec.connection.user,
            "database.password": spec.connection.password,
            "config.providers": "env",
            "config.providers.env.class": ENV_PROVIDER,
        }
    )
    return {"name": config["name"], "config": config}


def render_embedded(
    spec: ConnectorSpec,
    *,
    host: str,
    port: int,
    user: str,
    offsets_file: Path,
    snapshot_mode: str | None = None,
    offset_flush_interval_ms: int = 1000,
    poll_interval_ms: int = 100,
) -> dict[str, str]:
    """Properties for the Debezium embedded engine run by ``loyalty-cdp up``.

    Offsets go to a file in the state dir (durable across ``down``/``up``); the poll
    interval (``LOYALTY_CDP_CDC_POLL_INTERVAL_MS``, app/settings.py) trades a change's wait
    for its batch against the idle engines' CPU.
    """
    props = spec.common_properties()
    props.update(
        {
            "name": f"loyalty-cdp-{spec.name}",
            "database.hostname": host,
            "database.port": str(port),
            "database.user": user,
            "database.password": "",
            "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
            "offset.storage.file.filename": str(offsets_file),
            "offset.flush.interval.ms": str(offset_flush_interval_ms),
            "poll.interval.ms": str(poll_interval_ms),
            "max.batch.size": "4096",
            "max.queue.size": "16384",
            "converter.schemas.enable": "false",
        }
    )
    if snapshot_mode:
        props["snapshot.mode"] = snapshot_mode
    return props
