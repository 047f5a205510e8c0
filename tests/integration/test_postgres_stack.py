"""Embedded PostgreSQL lifecycle and migrations against a real server (no mocks)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from alembic.script import ScriptDirectory

from app.db.migrate import DATABASES, alembic_config, current_revision, upgrade_all
from app.stack import postgres
from app.stack.ports import free_port
from tests.private_dirs import private_dir

pytestmark = pytest.mark.integration

TS, MONEY, TEXT, INT, BOOL, CHAR3 = "tstz", "money", "text", "int", "bool", "char3"
NULL, NOT_NULL = True, False

# SPEC section 3, written out independently of the migrations: (column, type, nullable).
SPEC_TABLES: dict[str, dict[str, list[tuple[str, str, bool]]]] = {
    "pos": {
        "loyalty_cards": [("card_no", TEXT, NOT_NULL), ("member_no", TEXT, NOT_NULL),
                          ("phone", TEXT, NULL), ("issued_at", TS, NOT_NULL)],
        "transactions": [("txn_id", TEXT, NOT_NULL), ("store_id", TEXT, NULL),
                         ("card_no", TEXT, NULL), ("total", MONEY, NOT_NULL),
                         ("currency", CHAR3, NULL), ("occurred_at", TS, NOT_NULL)],
        "transaction_lines": [("txn_id", TEXT, NOT_NULL), ("line_no", INT, NOT_NULL),
                              ("sku", TEXT, NULL), ("qty", INT, NULL),
                              ("unit_price", MONEY, NULL)],
        "returns": [("return_id", TEXT, NOT_NULL), ("txn_id", TEXT, NOT_NULL),
                    ("amount", MONEY, NOT_NULL), ("occurred_at", TS, NULL)],
    },
    "web": {
        "customers": [("customer_id", TEXT, NOT_NULL), ("email", TEXT, NULL),
                      ("phone", TEXT, NULL), ("member_no", TEXT, NULL),
                      ("email_opt_in", BOOL, NULL), ("sms_consent", BOOL, NULL),
                      ("admt_opt_out", BOOL, NULL), ("updated_at", TS, NOT_NULL)],
        "loyalty_enrollments": [("member_no", TEXT, NOT_NULL), ("customer_id", TEXT, NOT_NULL),
                                ("enrolled_at", TS, NOT_NULL)],
        "orders": [("order_id", TEXT, NOT_NULL), ("customer_id", TEXT, NOT_NULL),
                   ("total", MONEY, NULL), ("currency", CHAR3, NULL), ("status", TEXT, NULL),
                   ("refunded_amount", MONEY, NULL), ("updated_at", TS, NOT_NULL)],
        "order_items": [("order_id", TEXT, NOT_NULL), ("line_no", INT, NOT_NULL),
                        ("sku", TEXT, NULL), ("qty", INT, NULL), ("unit_price", MONEY, NULL)],
    },
    "app": {
        "users": [("user_id", TEXT, NOT_NULL), ("email", TEXT, NULL), ("phone", TEXT, NULL),
                  ("member_no", TEXT, NULL), ("push_token", TEXT, NULL),
                  ("push_opt_in", BOOL, NULL), ("updated_at", TS, NOT_NULL)],
        "purchases": [("purchase_id", TEXT, NOT_NULL), ("user_id", TEXT, NOT_NULL),
                      ("total", MONEY, NULL), ("currency", CHAR3, NULL),
                      ("occurred_at", TS, NULL)],
        "redemptions": [("redemption_id", TEXT, NOT_NULL), ("user_id", TEXT, NOT_NULL),
                        ("points", INT, NOT_NULL), ("reward_code", TEXT, NULL),
                        ("occurred_at", TS, NULL)],
        "app_events": [("event_id", TEXT, NOT_NULL), ("user_id", TEXT, NOT_NULL),
                       ("kind", TEXT, NULL), ("sku", TEXT, NULL), ("occurred_at", TS, NULL)],
    },
}
PRIMARY_KEYS = {
    "loyalty_cards": ["card_no"], "transactions": ["txn_id"],
    "transaction_lines": ["txn_id", "line_no"], "returns": ["return_id"],
    "customers": ["customer_id"], "loyalty_enrollments": ["member_no"], "orders": ["order_id"],
    "order_items": ["order_id", "line_no"], "users": ["user_id"], "purchases": ["purchase_id"],
    "redemptions": ["redemption_id"], "app_events": ["event_id"],
}

_COLUMNS_SQL = """
SELECT table_name, column_name, data_type, numeric_precision, numeric_scale,
       character_maximum_length, is_nullable = 'YES'
FROM information_schema.columns WHERE table_schema = 'public'
ORDER BY table_name, ordinal_position
"""


def _kind(data_type: str, precision: int | None, scale: int | None, length: int | None) -> str:
    return {
        ("timestamp with time zone", None, None, None): TS,
        ("numeric", 12, 2, None): MONEY,
        ("text", None, None, None): TEXT,
        ("integer", 32, 0, None): INT,
        ("boolean", None, None, None): BOOL,
        ("character", None, None, 3): CHAR3,
    }.get((data_type, precision, scale, length), f"{data_type}({precision},{scale},{length})")


@pytest.fixture()
def data_dir():  # type: ignore[no-untyped-def]
    with private_dir("loyalty-cdp-pgtest-") as root:
        path = root / "state" / "postgres"
        yield path
        postgres.stop(path)


def test_lifecycle_schema_and_durability(data_dir: Path) -> None:
    postgres.init(data_dir)
    postgres.init(data_dir)  # idempotent
    assert not postgres.is_running(data_dir)
    port = free_port()
    admin = postgres.start(data_dir, port)
    assert postgres.is_running(data_dir)
    assert postgres.start(data_dir, port) == admin  # already running: same DSN
    with psycopg.connect(admin) as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('wal_level','max_replication_slots','max_wal_senders','listen_addresses')"
        ).fetchall())
        is_super, can_replicate = conn.execute(
            "SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user"
        ).fetchone() or (False, False)
    assert settings["wal_level"] == "logical"
    assert int(settings["max_replication_slots"]) >= 10
    assert int(settings["max_wal_senders"]) >= 10
    assert settings["listen_addresses"] == "127.0.0.1"
    assert is_super and can_replicate

    dsns = upgrade_all(admin)
    assert upgrade_all(admin) == dsns  # idempotent
    assert sorted(dsns) == sorted(DATABASES)
    for db, dsn in dsns.items():
        head = ScriptDirectory.from_config(alembic_config(db, dsn)).get_current_head()
        assert head is not None and head.startswith(f"{db}_")
        assert current_revision(dsn) == head

    for db, tables in SPEC_TABLES.items():
        with psycopg.connect(dsns[db]) as conn:
            got: dict[str, list[tuple[str, str, bool]]] = {}
            for table, col, dtype, prec, scale, length, nullable in conn.execute(_COLUMNS_SQL):
                got.setdefault(table, []).append((col, _kind(dtype, prec, scale, length),
                                                  nullable))
            assert got == tables, db
            identity = dict(conn.execute(
                "SELECT relname, relreplident FROM pg_class "
                "WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
            ).fetchall())
            assert identity == dict.fromkeys(tables, "f"), db
            for table in tables:
                pk = [r[0] for r in conn.execute(
                    "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                    "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                    "WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY a.attnum",
                    (table,),
                )]
                assert pk == PRIMARY_KEYS[table], table

    with psycopg.connect(dsns["web"]) as conn:
        conn.execute("INSERT INTO customers (customer_id, updated_at) VALUES ('W1', now())")
        conn.execute(
            "INSERT INTO orders (order_id, customer_id, total, currency, status, updated_at) "
            "VALUES ('O1', 'W1', 10.50, 'USD', 'placed', now())"
        )
        default_refund, admt = conn.execute(
            "SELECT o.refunded_amount, c.admt_opt_out FROM orders o JOIN customers c USING "
            "(customer_id)"
        ).fetchone() or (None, None)
        assert (str(default_refund), admt) == ("0.00", False)
        conn.commit()
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE orders SET status = 'shipped' WHERE order_id = 'O1'")
    with psycopg.connect(dsns["pos"]) as conn:
        conn.execute("INSERT INTO transactions (txn_id, total, occurred_at) VALUES "
                     "('T1', 1.00, now())")
        assert conn.execute("SELECT currency FROM transactions").fetchone() == ("USD",)

    # Data survives stop/start, also on another port.
    assert postgres.stop(data_dir)
    assert not postgres.is_running(data_dir)
    assert not postgres.stop(data_dir)
    admin = postgres.start(data_dir, free_port())
    dsns = upgrade_all(admin)
    with psycopg.connect(dsns["web"]) as conn:
        assert conn.execute("SELECT status FROM orders").fetchall() == [("placed",)]
    with psycopg.connect(dsns["pos"]) as conn:
        assert conn.execute("SELECT txn_id FROM transactions").fetchall() == [("T1",)]


def test_taken_port_is_a_typed_one_line_error(data_dir: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(postgres.PortInUseError) as err:
            postgres.start(data_dir, port)
    assert str(port) in str(err.value) and "\n" not in str(err.value)
    assert not postgres.is_running(data_dir)


def test_missing_binaries_is_a_typed_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(postgres.ENV_BIN, str(tmp_path / "nowhere"))
    with pytest.raises(postgres.PostgresNotFoundError) as err:
        postgres.find_binaries()
    assert "\n" not in str(err.value)
