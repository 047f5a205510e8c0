from __future__ import annotations

from pathlib import Path

import pytest

from app.mapping import (
    Mapper,
    MappingConfigError,
    load_mapping_file,
    validate_mapping_dir,
    validate_mapping_file,
)
from tests.mapping.conftest import MAPPINGS


@pytest.mark.parametrize("source", ["pos", "web", "app"])
def test_shipped_mappings_are_valid(source: str) -> None:
    assert validate_mapping_file(MAPPINGS / f"{source}.yaml") == []


def test_shipped_mappings_cover_every_spec_table(mapper: Mapper) -> None:
    assert mapper.topics == sorted(
        f"{s}.public.{t}"
        for s, tables in {
            "pos": ["loyalty_cards", "transactions", "transaction_lines", "returns"],
            "web": ["customers", "loyalty_enrollments", "orders", "order_items"],
            "app": ["users", "purchases", "redemptions", "app_events"],
        }.items()
        for t in tables
    )


def _errors(tmp_path: Path, text: str) -> list[str]:
    p = tmp_path / "shop.yaml"
    p.write_text(text)
    return validate_mapping_file(p)


GOOD = """
source: shop
tables:
  sales:
    pk: [sale_id]
    events:
      - type: purchase.completed
        when: insert
        time: sold_at
        identifiers: {email: buyer_email}
        fields:
          purchase_id: {template: "shop:{sale_id}"}
          amount_cents: {column: total, as: cents}
          currency: {const: EUR}
"""


def test_minimal_custom_mapping(tmp_path: Path) -> None:
    assert _errors(tmp_path, GOOD) == []
    m = Mapper([load_mapping_file(tmp_path / "shop.yaml")])
    assert m.topics == ["shop.public.sales"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "type: purchase.completed",
            "type: purchase.exploded",
            "tables.sales.events.0.type: unknown canonical type 'purchase.exploded'",
        ),
        ("when: insert", "when: sometimes", "tables.sales.events.0.when.0.on: Input should be"),
        (
            "when: insert",
            "when: {becomes: {status: paid}, increase_of: x}",
            "tables.sales.events.0.when.0: a trigger is insert, update, or one of",
        ),
        ("time: sold_at", "tme: sold_at", "tables.sales.events.0.time: Field required"),
        ("as: cents", "as: money", "tables.sales.events.0.fields.amount_cents.as: Input should be"),
        ("{email: buyer_email}", "{ssn: buyer_ssn}", "tables.sales.events.0.identifiers.ssn"),
        (
            "currency: {const: EUR}",
            "currency: {const: EUR, column: cur}",
            "tables.sales.events.0.fields.currency: give exactly one of",
        ),
        (
            "currency: {const: EUR}",
            "points: {const: 1}",
            "tables.sales.events.0: fields not in cdp.purchase.completed: points; "
            "fields required by cdp.purchase.completed missing: currency",
        ),
        (
            '{template: "shop:{sale_id}"}',
            '{template: "shop"}',
            "tables.sales.events.0.fields.purchase_id: template has no {column} placeholder",
        ),
        ("pk: [sale_id]", "pk: []", "tables.sales.pk: List should have at least 1 item"),
        ("source: shop", "source: Shop!", "source: String should match pattern"),
    ],
)
def test_errors_have_key_paths(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in GOOD
    errors = _errors(tmp_path, GOOD.replace(old, new))
    assert any(e.startswith(expected) for e in errors), errors


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    [err] = _errors(tmp_path, "source: shop\ntables:\n  sales: [unclosed\n")
    assert err.startswith("line ") and "YAML syntax error" in err


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    assert validate_mapping_file(tmp_path / "nope.yaml")[0].startswith("(file): cannot read")
    assert _errors(tmp_path, "- just\n- a list\n") == [
        "(top): expected a mapping with source and tables"
    ]


def test_source_defaults_to_file_name(tmp_path: Path) -> None:
    p = tmp_path / "shop.yaml"
    p.write_text(GOOD.replace("source: shop\n", ""))
    assert load_mapping_file(p).source == "shop"


def test_load_raises_with_all_errors(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD.replace("time: sold_at", "time: 'sold at'"))
    (tmp_path / "b.yaml").write_text(GOOD.replace("as: cents", "as: money"))
    with pytest.raises(MappingConfigError) as err:
        Mapper.from_dir(tmp_path)
    assert [e.split(":")[0] for e in err.value.errors] == ["a.yaml", "b.yaml"]


def test_same_source_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD)
    with pytest.raises(MappingConfigError, match="defined twice"):
        Mapper.from_dir(tmp_path)


def test_custom_topic_prefix_and_schema(tmp_path: Path) -> None:
    p = tmp_path / "shop.yaml"
    p.write_text(GOOD.replace("source: shop", "source: shop\ntopic_prefix: eu1\nschema: sales_db"))
    assert Mapper([load_mapping_file(p)]).topics == ["eu1.sales_db.sales"]


def test_validate_dir(tmp_path: Path) -> None:
    assert validate_mapping_dir(MAPPINGS) == []
    assert validate_mapping_dir(tmp_path / "missing")[0].startswith("(dir): cannot read")
    assert validate_mapping_dir(tmp_path) == ["(dir): no mapping YAML files"]
    (tmp_path / "a.yaml").write_text(GOOD.replace("pk: [sale_id]", "pk: []"))
    assert validate_mapping_dir(tmp_path) == [
        "a.yaml: tables.sales.pk: List should have at least 1 item after validation, not 0"
    ]
