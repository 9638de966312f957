import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import duckdb
import pyarrow.compute as pc
import pytest

from audience_pipelines.demo import warehouse
from audience_pipelines.demo.warehouse import (
    DEMO_REFERENCE_DATE, DUPLICATED_IDS, MALFORMED_EMAILS, MALFORMED_PHONES, NULL_CUSTOMER_IDS,
    create_demo_warehouse, ensure_demo_warehouse,
)
from audience_pipelines.identifiers import normalize

ROWS = 5_000


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    path = create_demo_warehouse(tmp_path_factory.mktemp("wh") / "demo.duckdb", rows=ROWS, seed=7)
    con = duckdb.connect(str(path), read_only=True)
    yield con
    con.close()


def scalar(con, sql):
    return con.execute(sql).fetchall()[0][0]


def digest(path) -> str:
    with duckdb.connect(str(path), read_only=True) as con:
        rows = con.execute("SELECT * FROM customers ORDER BY ALL").fetchall()
        rows += con.execute("SELECT * FROM orders ORDER BY ALL").fetchall()
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def test_row_count_and_schema(demo_db):
    assert scalar(demo_db, "SELECT count(*) FROM customers") == ROWS
    types = dict(demo_db.execute("SELECT column_name, data_type FROM information_schema.columns "
                                 "WHERE table_name = 'customers'").fetchall())
    assert types["customer_id"] == "VARCHAR"
    assert types["lifetime_value"] == "DOUBLE"
    assert types["orders_count"] == "INTEGER"
    assert types["last_purchase_at"] == types["signup_at"] == types["updated_at"] == "TIMESTAMP"
    assert types["marketing_opt_in"] == "BOOLEAN"


def test_planted_key_problems_exact(demo_db):
    assert scalar(demo_db, "SELECT count(*) FROM customers WHERE customer_id IS NULL") == NULL_CUSTOMER_IDS == 12
    dupes = demo_db.execute("SELECT customer_id, count(*) FROM customers WHERE customer_id IS NOT NULL "
                            "GROUP BY 1 HAVING count(*) > 1").fetchall()
    assert len(dupes) == DUPLICATED_IDS == 25 and all(n == 2 for _, n in dupes)
    # Duplicates are different customers sharing an id, not copied rows.
    assert scalar(demo_db, """SELECT count(*) FROM (SELECT customer_id FROM customers WHERE customer_id IS NOT NULL
                              GROUP BY 1 HAVING count(DISTINCT signup_at) > 1)""") == 25
    assert scalar(demo_db, "SELECT min(customer_id) FROM customers") == "cus_0000001"


def test_malformed_and_noisy_contact_fields(demo_db):
    table = demo_db.sql("SELECT email, phone, country FROM customers").to_arrow_table()
    emails = normalize("email", table["email"])
    assert pc.sum(emails.invalid).as_py() == MALFORMED_EMAILS
    raw = set(table["email"].to_pylist())
    assert any(e and " at " in e for e in raw) and any(e and e.endswith("@") for e in raw)
    assert any(e and e != e.strip() for e in raw) and any(e and e != e.lower() for e in raw)
    # Every planted-good phone parses with the row's own country as region.
    phones = normalize("phone", table["phone"], default_region=table["country"])
    assert pc.sum(phones.invalid).as_py() == MALFORMED_PHONES
    assert {"12", "n/a", "555-CALL-NOW"} <= set(table["phone"].to_pylist())


def test_realistic_distributions(demo_db):
    null_country = scalar(demo_db, "SELECT avg((country IS NULL)::INT) FROM customers")
    assert 0.003 < null_country < 0.02
    assert 0.04 < scalar(demo_db, "SELECT avg((lifetime_value > 1000)::INT) FROM customers") < 0.13
    assert 0.33 < scalar(demo_db, "SELECT avg((device_id IS NOT NULL)::INT) FROM customers") < 0.47
    assert scalar(demo_db, "SELECT count(*) FROM customers WHERE device_id <> lower(device_id)") == 0
    assert scalar(demo_db, "SELECT count(*) FROM customers WHERE last_purchase_at IS NULL") > 0
    plans = dict(demo_db.execute("SELECT plan, count(*) FROM customers GROUP BY 1").fetchall())
    assert set(plans) == {"free", "starter", "pro", "enterprise"} and plans["free"] > plans["enterprise"]
    lo, hi = demo_db.execute("SELECT min(last_purchase_at), max(last_purchase_at) FROM customers").fetchall()[0]
    assert lo >= DEMO_REFERENCE_DATE - timedelta(days=400) and hi <= DEMO_REFERENCE_DATE
    assert scalar(demo_db, "SELECT max(updated_at) FROM customers") <= DEMO_REFERENCE_DATE
    names = {r[0] for r in demo_db.execute("SELECT DISTINCT first_name FROM customers UNION "
                                            "SELECT DISTINCT last_name FROM customers").fetchall()}
    assert {"José", "Zoë", "Søren", "Łukasz", "Müller", "O'Brien"} <= names


def test_orders_agree_with_customers(demo_db):
    assert scalar(demo_db, "SELECT sum(orders_count) FROM customers") == scalar(demo_db, "SELECT count(*) FROM orders")
    assert scalar(demo_db, "SELECT count(DISTINCT order_id) FROM orders") == scalar(demo_db, "SELECT count(*) FROM orders")


def test_deterministic_per_seed(tmp_path):
    a = create_demo_warehouse(tmp_path / "a.duckdb", rows=ROWS, seed=7)
    b = create_demo_warehouse(tmp_path / "b.duckdb", rows=ROWS, seed=7)
    c = create_demo_warehouse(tmp_path / "c.duckdb", rows=ROWS, seed=8)
    assert digest(a) == digest(b) != digest(c)
    # Only the finished databases remain: no temp files or WALs.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.duckdb", "b.duckdb", "c.duckdb"]


def test_ensure_does_not_rebuild(tmp_path):
    path = ensure_demo_warehouse(tmp_path / "sub" / "demo.duckdb", rows=1_000)
    before = os.stat(path)
    assert ensure_demo_warehouse(path, rows=1_000) == path
    after = os.stat(path)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_ensure_concurrent_builds_once(tmp_path, monkeypatch):
    calls = []
    real = warehouse.create_demo_warehouse

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(warehouse, "create_demo_warehouse", counting)
    path = tmp_path / "demo.duckdb"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: ensure_demo_warehouse(path, rows=1_000), range(4)))
    assert results == [path] * 4 and len(calls) == 1
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM customers").fetchall()[0][0] == 1_000


def test_rows_minimum(tmp_path):
    with pytest.raises(ValueError):
        create_demo_warehouse(tmp_path / "x.duckdb", rows=10)
    assert list(tmp_path.iterdir()) == []
