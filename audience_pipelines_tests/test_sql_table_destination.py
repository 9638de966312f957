"""sql_table: a row the database refuses fails alone; the rest of its batch and every later batch go through."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from audience_pipelines.contract import EnvSecret, Target
from audience_pipelines.destinations.sql_table import SqlTable, SqlTableSettings
from audience_pipelines.destinations.sql_table.client import SqlTableDestination
from audience_pipelines.engine import RunOptions, SnapshotStore, SyncSpec, run_sync

SPEC = SyncSpec(name="t", audience="a", destination="db", target=Target(name="vip"),
                identifiers={"email": "email"}, fields={"plan": "plan"}, batch_size=20, max_removal_share=1.0)


def members(keys, bad=()) -> pa.Table:
    keys = list(keys)
    return pa.table({"key": keys, "email": [f"{k}@bad.example" if k in bad else f"{k}@example.com" for k in keys],
                     "plan": ["gold"] * len(keys)})


def held(engine) -> set[str]:
    with engine.connect() as conn:
        return {r[0] for r in conn.execute(sa.text("select key from audience_members where audience = 'vip'"))}


def run(url, store, table, run_id):
    dest = SqlTableDestination(SqlTableSettings(url=url, table="audience_members"))
    try:
        return run_sync(SPEC, table, dest, store, RunOptions(run_id=run_id))
    finally:
        dest.close()


@pytest.fixture(params=["duckdb", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request, tmp_path) -> str:
    """The table's database: a DuckDB file, or a throwaway PostgreSQL schema."""
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path / 'crm.duckdb'}"
    return request.getfixturevalue("pg_schema")[0]


CREATE = """create table audience_members (audience text, key text, email text check (email not like '%bad%'),
            plan text, synced_at timestamp with time zone, primary key (audience, key))"""


def test_a_refused_row_fails_alone_and_never_blocks_the_rest(tmp_path, url):
    # DuckDB gets each batch as registered Arrow, PostgreSQL by COPY: a refusal still names its row.
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text(CREATE))
    store = SnapshotStore(tmp_path / "snapshots", "t")
    keys = [f"k{i:02d}" for i in range(50)]
    first = run(url, store, members(keys, bad={"k07", "k33"}), "r1")
    assert (first.added, first.failed) == (48, 2)
    rejected = pq.read_table(first.rejected_path).to_pylist()
    assert {r["key"] for r in rejected} == {"k07", "k33"}
    assert all("check constraint" in r["reason"].lower() for r in rejected)
    assert held(engine) == set(keys) - {"k07", "k33"} == set(store.read()["key"].to_pylist())

    second = run(url, store, members(keys, bad={"k07", "k33"}), "r2")  # still refused: only they are retried
    assert (second.added, second.failed, second.unchanged) == (0, 2, 48)
    third = run(url, store, members(keys), "r3")  # the data is fixed
    assert (third.added, third.failed) == (2, 0) and held(engine) == set(keys)
    engine.dispose()


@pytest.mark.postgres
def test_a_removal_the_database_refuses_fails_alone(pg_schema, tmp_path):
    url, _ = pg_schema
    engine = sa.create_engine(url)
    store = SnapshotStore(tmp_path / "snapshots", "t")
    keys = [f"k{i:02d}" for i in range(30)]
    run(url, store, members(keys), "r1")
    with engine.begin() as conn:  # another table still points at one leaver
        conn.execute(sa.text("create table orders (audience text, key text, "
                             "foreign key (audience, key) references audience_members (audience, key))"))
        conn.execute(sa.text("insert into orders values ('vip', 'k03')"))
    stay = keys[10:]
    second = run(url, store, members(stay), "r2")
    assert (second.removed, second.failed) == (9, 1)
    assert pq.read_table(second.rejected_path).to_pylist()[0]["key"] == "k03"
    assert "foreign key" in second.errors_sample[0]["reason"]
    assert held(engine) == set(stay) | {"k03"} == set(store.read()["key"].to_pylist())
    with engine.begin() as conn:
        conn.execute(sa.text("drop table orders"))
    third = run(url, store, members(stay), "r3")
    assert (third.removed, third.failed) == (1, 0) and held(engine) == set(stay)
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("on_delete", ["", "on delete cascade"])
def test_updates_and_resends_keep_rows_other_tables_reference(pg_schema, tmp_path, on_delete):
    url, _ = pg_schema
    engine = sa.create_engine(url)
    store = SnapshotStore(tmp_path / "snapshots", "t")
    keys = [f"k{i:02d}" for i in range(5)]
    run(url, store, members(keys), "r1")
    with engine.begin() as conn:
        conn.execute(sa.text(f"create table orders (id int, audience text, key text, "
                             f"foreign key (audience, key) references audience_members (audience, key) {on_delete})"))
        conn.execute(sa.text("insert into orders values (1, 'vip', 'k01'), (2, 'vip', 'k02')"))
    changed = members(keys).set_column(2, "plan", pa.array(["silver"] * 5))
    second = run(url, store, changed, "r2")
    assert (second.updated, second.failed) == (5, 0)
    dest = SqlTableDestination(SqlTableSettings(url=url, table="audience_members"))
    resend = run_sync(SPEC, changed, dest, store, RunOptions(run_id="r3", full_resync=True))
    dest.close()
    assert (resend.resent, resend.failed) == (5, 0)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from orders")).scalar_one() == 2
        assert set(conn.execute(sa.text("select plan from audience_members")).scalars()) == {"silver"}
    engine.dispose()


def test_a_table_without_a_unique_key_is_still_upserted(tmp_path, url):
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("create table audience_members (audience text, key text, email text, plan text, "
                             "synced_at timestamp with time zone)"))
    store = SnapshotStore(tmp_path / "snapshots", "t")
    run(url, store, members(["a", "b"]), "r1")
    run(url, store, members(["a", "b"]).set_column(2, "plan", pa.array(["silver"] * 2)), "r2")
    # A lost snapshot: every member is added again, and nothing can refuse a duplicate row.
    run(url, SnapshotStore(tmp_path / "lost", "t"), members(["a", "b", "c"]), "r3")
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.text("select key, plan from audience_members")).fetchall()) == [
            ("a", "gold"), ("b", "gold"), ("c", "gold")]
    engine.dispose()


def test_adds_of_keys_the_table_already_holds_are_upserted_never_refused(tmp_path, url):
    # Adds go as a plain INSERT; a key already there (a lost snapshot, a batch sent before a
    # crash) must turn into an update of that row. Another unique column still refuses its row alone.
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text('create table audience_members (audience text, key text, email text unique, '
                             '"tier:level" text, synced_at timestamp with time zone, primary key (audience, key))'))
        conn.execute(sa.text("""insert into audience_members values
            ('vip', 'k25', 'old25@example.com', 'old', null), ('vip', 'k26', 'old26@example.com', 'old', null),
            ('other', 'x', 'k40@example.com', 'x', null)"""))
    spec = SyncSpec(name="t", audience="a", destination="db", target=Target(name="vip"),
                    identifiers={"email": "email"}, fields={"tier:level": "plan"}, batch_size=20)
    keys = [f"k{i:02d}" for i in range(50)]
    dest = SqlTableDestination(SqlTableSettings(url=url, table="audience_members"))
    try:
        result = run_sync(spec, members(keys), dest, SnapshotStore(tmp_path / "snapshots", "t"), RunOptions(run_id="r1"))
    finally:
        dest.close()
    assert (result.added, result.failed) == (49, 1)
    assert pq.read_table(result.rejected_path)["key"].to_pylist() == ["k40"]
    with engine.connect() as conn:
        rows = conn.execute(sa.text('select key, email, "tier:level", synced_at is not null '
                                    "from audience_members where audience = 'vip' order by key")).fetchall()
    assert rows == [(k, f"{k}@example.com", "gold", True) for k in keys if k != "k40"]
    engine.dispose()


def test_the_account_is_the_database_and_table_without_credentials(monkeypatch):
    # Batches in flight are limited per account: two databases' tables of one name are two accounts.
    monkeypatch.setenv("CRM_URL", "postgresql+psycopg2://crm:s3cret-pw@db.internal:5433/crm")
    monkeypatch.setenv("OTHER_URL", "postgresql+psycopg2://crm:another-pw@db.internal:5433/crm")
    monkeypatch.setenv("STAGING_URL", "postgresql+psycopg2://crm:s3cret-pw@db.internal:5433/staging")
    account = lambda var: SqlTable.account(SqlTableSettings(url=EnvSecret(var), table="members"))  # noqa: E731
    assert account("CRM_URL") == "postgresql://db.internal:5433/crm#.members"
    assert account("CRM_URL") == account("OTHER_URL") != account("STAGING_URL")
    assert "pw" not in account("CRM_URL") + account("OTHER_URL")
    assert SqlTable.account(SqlTableSettings(url="duckdb:///crm.duckdb", table="members", db_schema="main")) \
        == "duckdb:///crm.duckdb#main.members"
