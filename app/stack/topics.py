"""The declared topic plan and ``loyalty-cdp topics apply``.

One YAML (``config/topics.yaml``) declares every topic with its partitions and config; the
change topics of the connectors are added from the connector YAML so the plan can never
drift from what Debezium writes. ``apply`` is idempotent: it creates what is missing and
reports what exists (it never deletes or shrinks a topic).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.cdc.connectors import ConnectorSpec, change_topics
from app.stack.errors import StackError

__all__ = ["TopicPlan", "TopicSpec", "apply_topics", "load_plan"]


class TopicSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    partitions: int = Field(ge=1, le=1024)
    config: dict[str, str] = {}


class _PlanFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cdc_defaults: TopicSpec
    topics: dict[str, TopicSpec]


@dataclass
class TopicPlan:
    topics: dict[str, TopicSpec] = field(default_factory=dict)


def load_plan(path: Path, connectors: list[ConnectorSpec]) -> TopicPlan:
    try:
        raw = _PlanFile.model_validate(yaml.safe_load(path.read_text()))
    except OSError as exc:
        raise StackError(f"cannot read topic plan {path}: {exc.strerror}") from exc
    except (yaml.YAMLError, ValidationError) as exc:
        raise StackError(f"{path}: invalid topic plan: {str(exc).splitlines()[0]}") from exc
    plan = TopicPlan(dict(raw.topics))
    for topic in change_topics(connectors):
        plan.topics.setdefault(topic, raw.cdc_defaults)
    for spec in connectors:
        hb = spec.heartbeat_topic()
        if hb:  # Kafka Connect writes heartbeat-table changes here (never auto-created)
            plan.topics.setdefault(hb, TopicSpec(partitions=1, config={"retention.ms": "86400000"}))
    return plan


def apply_topics(bootstrap: str, plan: TopicPlan, replication_factor: int = 1) -> dict[str, str]:
    """Create missing topics; return ``{topic: "created" | "exists"}``."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000})
    try:
        existing = set(admin.list_topics(timeout=10).topics)
    except KafkaException as exc:
        raise StackError(f"broker {bootstrap} unreachable: {exc.args[0]}") from exc
    result = {t: "exists" for t in plan.topics if t in existing}
    new = [
        NewTopic(name, spec.partitions, replication_factor, config=dict(spec.config))
        for name, spec in plan.topics.items()
        if name not in existing
    ]
    if new:
        for name, fut in admin.create_topics(new, request_timeout=15).items():
            try:
                fut.result()
                result[name] = "created"
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" in str(exc):
                    result[name] = "exists"
                else:
                    raise StackError(f"cannot create topic {name}: {exc.args[0]}") from exc
    return dict(sorted(result.items()))
