"""``asyncapi.yaml`` against the topic plan and the JSON Schemas in ``schemas/``.

Every topic ``loyalty-cdp topics apply`` creates (config/topics.yaml plus the connectors'
change and heartbeat topics) is described by exactly one channel (literal name or a
parameterised pattern), with the plan's partitions and compaction, a key description and a
value; every referenced schema file exists and is a valid JSON Schema; every schema file in
``schemas/`` is referenced.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from app.cdc.connectors import load_connectors
from app.settings import REPO_ROOT, settings
from app.stack.topics import TopicPlan, load_plan


@cache
def _doc() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "asyncapi.yaml").read_text())  # type: ignore[no-any-return]


@cache
def _plan() -> TopicPlan:
    conf = settings()
    return load_plan(conf.topics_file, load_connectors(conf.connectors_dir))


def _pattern(name: str, params: dict[str, Any]) -> re.Pattern[str]:
    out, pos = "", 0
    for m in re.finditer(r"\{(\w+)\}", name):
        out += re.escape(name[pos:m.start()])
        schema = params[m.group(1)]["schema"]
        if "enum" in schema:
            out += "(?:" + "|".join(re.escape(v) for v in schema["enum"]) + ")"
        else:
            out += "(?:" + schema["pattern"].lstrip("^").rstrip("$") + ")"
        pos = m.end()
    return re.compile(out + re.escape(name[pos:]))


def _channel_of(topic: str) -> str:
    channels = _doc()["channels"]
    matches = [
        name for name, ch in channels.items()
        if (name == topic if "{" not in name
            else _pattern(name, ch.get("parameters", {})).fullmatch(topic))
    ]
    assert len(matches) == 1, f"{topic}: described by {matches or 'no channel'}"
    return str(matches[0])


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [r for k, v in node.items() for r in ([v] if k == "$ref" else _refs(v))]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(pointer: str) -> Any:
    node: Any = _doc()
    for part in pointer.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_document_is_asyncapi_2_6() -> None:
    doc = _doc()
    assert doc["asyncapi"].startswith("2.6")
    assert doc["info"]["title"] and doc["channels"]


@pytest.mark.parametrize("topic", sorted(_plan().topics))
def test_every_planned_topic_is_described(topic: str) -> None:
    name = _channel_of(topic)
    ch = _doc()["channels"][name]
    spec = _plan().topics[topic]
    kafka = ch["bindings"]["kafka"]
    assert kafka["partitions"] == spec.partitions, topic
    compact = spec.config.get("cleanup.policy") == "compact"
    assert ("compact" in kafka["topicConfiguration"].get("cleanup.policy", [])) == compact, topic
    ops = [op for op in ("publish", "subscribe") if op in ch]
    assert ops, f"{name}: no operation"
    for op in ops:
        msg = _resolve(ch[op]["message"]["$ref"])
        assert msg["bindings"]["kafka"]["key"]["description"], f"{name}: key undescribed"
        assert "payload" in msg


def test_referenced_schemas_exist_and_are_valid() -> None:
    refs = _refs(_doc())
    files = {r for r in refs if r.startswith("./")}
    for r in refs:
        if r.startswith("#/"):
            _resolve(r)  # raises KeyError when dangling
    assert files
    for ref in sorted(files):
        path = REPO_ROOT / ref
        assert path.is_file(), ref
        Draft202012Validator.check_schema(json.loads(path.read_text()))
    shipped = {f"./schemas/{p.name}" for p in (REPO_ROOT / "schemas").glob("*.json")}
    assert shipped <= files, f"schemas not in the AsyncAPI document: {shipped - files}"


def test_offer_schema_rejects_a_broken_message() -> None:
    schema = json.loads((REPO_ROOT / "schemas" / "offers.schema.json").read_text())
    v = Draft202012Validator(schema)
    ok = {
        "specversion": "1.0", "id": "0" * 32, "source": "loyalty-cdp/decisioning",
        "type": "offers.sms", "subject": "M1", "time": "2026-06-10T16:00:00.000000Z",
        "datacontenttype": "application/json", "data": {"channel": "email"},
    }
    assert not v.is_valid(ok)  # channel must match the type, and data is incomplete
