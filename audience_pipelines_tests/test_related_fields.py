"""Related fields through the real YAML: a contact's company name joined many-to-one from another table of the
demo warehouse (DuckDB) and of PostgreSQL; a relation that is one-to-many fails naming it and a key."""

from __future__ import annotations

import glob

import dagster as dg
import duckdb
import pyarrow.csv as pacsv
import pytest

from audience_pipelines.demo import create_demo_warehouse
from audience_pipelines.components.load_errors import first_user_error
from audience_pipelines_tests.dagster_helpers import (
    demo_in_postgres, materialize, metadata, partitioned_without_whole_reads, project_defs,
)

SYNC = "syncs/accounts_to_files"
YAML = """
type: audience_pipelines.components.Entity
attributes:
  name: contacts
  kind: person
  table: customers
  key: customer_id
  identifiers: {email: email}
  attributes: [plan, company_id]
  related:
    company: {table: companies, key: company_id, on: company_id}
    purchase: {table: orders, key: customer_id, on: customer_id}
---
type: audience_pipelines.components.Audience
attributes:
  name: business_accounts
  entity: contacts
  filter: company_id IS NOT NULL
---
type: audience_pipelines.components.AudienceSync
attributes:
  name: accounts_to_files
  audience: business_accounts
  destination: exports
  target: {name: accounts}
  identifiers: {email: email}
  fields: {company: company.name, industry: company.industry, plan: plan}
"""


def add_companies(con) -> None:
    """Every third customer works at one of 40 companies."""
    con.execute("ALTER TABLE customers ADD COLUMN company_id VARCHAR")
    con.execute("UPDATE customers SET company_id = 'co_' || lpad(CAST(CAST(substr(customer_id, 5) AS INTEGER) % 40 "
                "AS VARCHAR), 2, '0') WHERE CAST(substr(customer_id, 5) AS INTEGER) % 3 = 0")
    con.execute("CREATE TABLE companies AS SELECT 'co_' || lpad(CAST(i AS VARCHAR), 2, '0') AS company_id, "
                "'Company ' || i AS name, CASE WHEN i % 2 = 0 THEN 'retail' ELSE 'software' END AS industry "
                "FROM range(40) t(i)")


def sent(home, run_id: str | None = None) -> dict[str, tuple]:
    """key -> (company, industry) in the files the exports destination wrote (adds and updates)."""
    rows = {}
    for path in sorted(glob.glob(str(home / "exports" / "accounts" / (run_id or "*") / "*.csv"))):
        if "/remove-" in path:
            continue
        for r in pacsv.read_csv(path).to_pylist():
            rows[r["key"]] = (r["company"], r["industry"])
    return rows


@pytest.fixture
def warehouse(home):
    path = create_demo_warehouse(home / "demo_warehouse.duckdb", rows=2_000)
    with duckdb.connect(str(path)) as con:
        add_companies(con)
    return path


def expected(con) -> dict[str, tuple]:
    return {k: (n, i) for k, n, i in con.execute(
        "SELECT c.customer_id, co.name, co.industry FROM customers c JOIN companies co USING (company_id) "
        "WHERE c.customer_id IS NOT NULL AND c.customer_id IN (SELECT customer_id FROM customers "
        "GROUP BY 1 HAVING count(*) = 1)").fetchall()}


@pytest.fixture(params=["one partition", "16 partitions"])
def partitioned(request, monkeypatch):
    """The related fields are joined a key-hash partition at a time: over 16, the sync never reads the
    membership whole."""
    if request.param == "16 partitions":
        partitioned_without_whole_reads(monkeypatch, 40)
    return request.param


def test_related_fields_are_joined_and_a_renamed_company_updates_its_contacts(warehouse, home, partitioned):
    with project_defs(extra={"related/defs.yaml": YAML}) as defs:
        instance = dg.DagsterInstance.ephemeral()
        first = metadata(materialize(defs, "audiences/business_accounts", SYNC, instance=instance), SYNC)
        with duckdb.connect(str(warehouse)) as con:
            want = expected(con)
            assert len(want) > 500 and first["rows_added"] == len(want)
            assert sent(home) == want
            con.execute("UPDATE companies SET name = 'Renamed Ltd' WHERE company_id = 'co_07'")
            renamed = {k for k, in con.execute("SELECT customer_id FROM customers WHERE company_id = 'co_07'")
                       .fetchall() if k in want}
        # The audience is not evaluated again: the related field is read when the sync runs.
        result = materialize(defs, SYNC, instance=instance)
        second = metadata(result, SYNC)
        assert (second["rows_updated"], second["rows_added"], second["rows_removed"]) == (len(renamed), 0, 0)
        assert {k: v[0] for k, v in sent(home, result.run_id).items()} == {k: "Renamed Ltd" for k in renamed}


def test_a_relation_that_is_not_many_to_one_fails_naming_it_and_a_key(warehouse, home, partitioned):
    yaml = YAML.replace("fields: {company: company.name, industry: company.industry, plan: plan}",
                        "fields: {amount: purchase.amount}")
    with project_defs(extra={"related/defs.yaml": yaml}) as defs:
        result = materialize(defs, "audiences/business_accounts", SYNC, instance=dg.DagsterInstance.ephemeral(),
                             raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
    assert "sync 'accounts_to_files': relation 'purchase' (table orders) is not many-to-one" in failure
    assert "e.g. customer_id = 'cus_" in failure and "matches" in failure
    assert ("members (one key-hash partition of " in failure) == (partitioned == "16 partitions")
    assert not glob.glob(str(home / "exports" / "accounts" / "*" / "*.csv"))  # nothing sent


def load_error(yaml: str) -> str:
    """The YAML mistake loading reports first (as the code location shows it)."""
    with pytest.raises(Exception) as err:
        with project_defs(extra={"related/defs.yaml": yaml}):
            pass
    return str(first_user_error(err.value))


def test_a_field_naming_an_undeclared_relation_fails_when_definitions_load(warehouse):
    assert ("sync 'accounts_to_files', key 'fields': 'employer.industry' names relation 'employer', which entity "
            "'contacts' does not declare (its relations: ['company', 'purchase']") in load_error(
        YAML.replace("company.industry", "employer.industry"))
    assert ("entity 'contacts', key 'related.company.on': column 'employer_id' is not a column of the entity"
            in load_error(YAML.replace("on: company_id}", "on: employer_id}")))
    assert "key 'related.company': give exactly ['table', 'key', 'on']; missing ['key']" in load_error(
        YAML.replace("company: {table: companies, key: company_id,", "company: {table: companies,"))


@pytest.mark.postgres
def test_related_fields_from_postgres(home, pg_schema, monkeypatch, tmp_path):
    url, _ = pg_schema
    want = {}
    engine = demo_in_postgres(url, tmp_path, rows=1_500, tables=("customers", "companies"),
                              prepare=lambda con: (add_companies(con), want.update(expected(con))))
    monkeypatch.setenv("AUDIENCE_PIPELINES_WAREHOUSE_URL", url)
    with project_defs(extra={"related/defs.yaml": YAML}) as defs:
        result = materialize(defs, "audiences/business_accounts", SYNC, instance=dg.DagsterInstance.ephemeral())
    assert metadata(result, SYNC)["rows_added"] == len(want) and sent(home) == want
    engine.dispose()
