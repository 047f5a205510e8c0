"""Catalog validation: the shipped file is valid; every error names the key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from app.decisioning import catalog_errors, load_catalog, validate_offer_file
from app.decisioning.catalog import CatalogError
from tests.decisioning.helpers import catalog_doc

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "offers.yaml"


def test_the_shipped_catalog_is_valid() -> None:
    assert validate_offer_file(SHIPPED) == []
    cat = load_catalog(SHIPPED)
    kinds = {o.kind for o in cat.loyalty_offers}
    assert {"double_points", "tier_preview", "referral_bonus", "early_access", "enrollment",
            "welcome", "win_back", "points_receipt"} <= kinds
    assert cat.product_offers and all(0 <= p.margin <= 1 for p in cat.product_offers)


def test_the_test_catalog_is_valid() -> None:
    assert catalog_errors(catalog_doc()) == []


def broken(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = catalog_doc()
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("product_offers", 0, "price_cents"), -1,
         "product_offers.0.price_cents: Input should be greater than 0"),
        (("product_offers", 1, "margin"), "1.5",
         "product_offers.1.margin: Input should be less than or equal to 1"),
        (("product_offers", 0, "templates", "email", "body"), "Hi {first_name}",
         "product_offers.0.templates.email.body: unknown placeholder {first_name}"),
        (("product_offers", 0, "templates", "email", "body"), "{points:,} points",
         "product_offers.0.templates.email.body: placeholder {points} takes no format spec"),
        (("product_offers", 0, "templates", "email", "body"), "Hi {",
         "product_offers.0.templates.email.body: bad template syntax"),
        (("product_offers", 0, "eligibility", "moments"), ["purchase", "birthday"],
         "product_offers.0.eligibility.moments: unknown moment types ['birthday']"),
        (("product_offers", 0, "eligibility", "tiers"), ["gold", "diamond"],
         "product_offers.0.eligibility.tiers.1: unknown tier 'diamond'"),
        (("loyalty_offers", 0, "kind"), "cashback",
         "loyalty_offers.0.kind: Input should be"),
        (("loyalty_offers", 1, "eligibility", "enrolled"), True,
         "loyalty_offers.1: an enrollment offer must have eligibility.enrolled: false"),
        (("loyalty_offers", 5, "eligibility", "segment", 0, "field"), "shoe_size",
         "loyalty_offers.5.eligibility.segment.0.field: unknown segment field 'shoe_size'"),
        (("loyalty_offers", 5, "eligibility", "segment", 0, "op"), "gte",
         None),
        (("loyalty_offers", 5, "eligibility", "segment", 0, "value"), "ten",
         "loyalty_offers.5.eligibility.segment.0: op gte needs a number"),
        (("loyalty_offers", 2, "templates"), {},
         "loyalty_offers.2.templates: at least one channel template is required"),
        (("loyalty_offers", 2, "templates", "email"), {"body": "no subject"},
         "loyalty_offers.2.templates: email template needs a subject"),
        (("loyalty_offers", 2, "templates", "sms"), {"body": "x" * 400},
         "loyalty_offers.2.templates: sms body longer than 320 characters"),
        (("loyalty_offers", 2, "colour"), "red",
         "loyalty_offers.2.colour: Extra inputs are not permitted"),
        (("models", "default", "coefficients", "shoe_size"), 1,
         "models.default.coefficients: unknown features ['shoe_size']"),
        (("loyalty_offers", 2, "model"), "nope",
         "(root): offer 'winback': unknown model 'nope'"),
        (("loyalty_offers", 3, "id"), "winback", "(root): duplicate offer id 'winback'"),
        (("contact_policy", "timezone"), "Mars/Olympus",
         "contact_policy.timezone: unknown IANA timezone 'Mars/Olympus'"),
        (("contact_policy", "channels", "sms", "quiet_hours", "start"), "9pm",
         "contact_policy.channels.sms.quiet_hours.start: must be HH:MM (24 h)"),
        (("contact_policy", "channels", "fax"), {"cap": 1},
         "contact_policy.channels: unknown channels ['fax']"),
        (("contact_policy", "channels", "email", "cap"), -1,
         "contact_policy.channels.email.cap: Input should be greater than or equal to 0"),
        (("contact_policy", "channel_order"), ["email", "sms"],
         "contact_policy.channel_order: must list each of email, sms, push once"),
    ],
)
def test_errors_name_the_key_path(path: tuple[Any, ...], value: Any, expected: str | None) -> None:
    errors = catalog_errors(broken(path, value))
    if expected is None:
        assert errors == []
    else:
        assert any(e.startswith(expected) for e in errors), errors


def test_all_errors_at_once_and_empty_catalogs(tmp_path: Path) -> None:
    doc = broken(("product_offers", 0, "price_cents"), 0)
    doc["contact_policy"]["timezone"] = "Nowhere"
    assert len(catalog_errors(doc)) == 2
    assert catalog_errors({"loyalty_offers": []}) == [
        "(root): the catalog has no offers (product_offers / loyalty_offers)"]
    assert catalog_errors([1]) == [
        "(root): must be a mapping with product_offers / loyalty_offers"]


def test_files_and_the_cli(tmp_path: Path) -> None:
    from app.cli import app as cli

    bad = tmp_path / "offers.yaml"
    bad.write_text(yaml.safe_dump(broken(("product_offers", 2, "price_cents"), "cheap")))
    errors = validate_offer_file(bad)
    assert errors and errors[0].startswith("product_offers.2.price_cents:")
    with pytest.raises(CatalogError):
        load_catalog(bad)
    assert validate_offer_file(tmp_path / "missing.yaml")[0].startswith("(file): cannot read")
    result = CliRunner().invoke(cli, ["config", "validate", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}: product_offers.2.price_cents:" in result.output


def test_tiers_come_from_the_program_beside_the_catalog(tmp_path: Path) -> None:
    (tmp_path / "program.yaml").write_text(
        "tiers:\n  - {name: bronze, threshold_cents: 0, multiplier: 1}\n"
        "  - {name: diamond, threshold_cents: 100, multiplier: 2}\n"
    )
    doc = broken(("product_offers", 0, "eligibility", "tiers"), ["diamond"])
    doc["loyalty_offers"][4]["eligibility"]["tiers"] = ["diamond"]
    f = tmp_path / "offers.yaml"
    f.write_text(yaml.safe_dump(doc))
    assert validate_offer_file(f) == []
    doc["product_offers"][0]["eligibility"]["tiers"] = ["gold"]
    f.write_text(yaml.safe_dump(doc))
    assert validate_offer_file(f)[0].startswith("product_offers.0.eligibility.tiers.0:")
