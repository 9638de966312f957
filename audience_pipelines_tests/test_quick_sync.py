"""Quick sync on a copy of the demo's YAML: the template is the newest active sync of the same entity and
destination; the YAML written loads and runs; with no template nothing is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import yaml
from dagster.components.testing import create_defs_folder_sandbox

from audience_pipelines.cli import main as cli
from audience_pipelines.components import quick_sync
from audience_pipelines.components.load_errors import first_user_error
from audience_pipelines.demo import create_demo_warehouse
from audience_pipelines.engine import ConfigError
from audience_pipelines.resources import AudienceStorage
from audience_pipelines_tests.dagster_helpers import DEFS, demo_in_postgres, materialize, metadata

ACTIVE = staticmethod(lambda sync: False)


@pytest.fixture
def project(home, monkeypatch):
    """A copy of the demo's defs folder the CLI reads and writes, loaded as the code location would."""
    create_demo_warehouse(home / "demo_warehouse.duckdb", rows=2_000)
    with create_defs_folder_sandbox() as sandbox:
        folder = sandbox.defs_folder_path
        for sub in DEFS.iterdir():
            if sub.is_dir() and not sub.name.startswith("__"):
                shutil.copytree(sub, folder / sub.name)

        def load():
            try:
                with sandbox.build_all_defs() as defs:
                    return dg.Definitions.merge(defs, dg.Definitions(resources={"audience_storage": AudienceStorage()}))
            except Exception as exc:  # as the code location reports it: the YAML mistake first
                raise ConfigError(str(first_user_error(exc))) from exc

        monkeypatch.setattr(quick_sync, "DEFS", folder)
        monkeypatch.setattr(quick_sync, "validate_project", load)
        yield folder, load


def syncs(folder: Path) -> dict[str, dict]:
    return {s.attributes["name"]: s.attributes for s in quick_sync.declared(folder, quick_sync.SYNC_TYPE)}


def test_the_newest_active_sync_of_the_entity_and_destination_is_the_template(project):
    folder, _ = project
    plan = quick_sync.plan_quick_sync("newsletter_subscribers", "crm_table", lambda s: False, defs=folder)
    # churn_risk_to_crm is declared after high_value_to_crm in the same file: it is the newest.
    assert plan.template.attributes["name"] == "churn_risk_to_crm"
    assert plan.attributes == {
        "name": "newsletter_subscribers_to_crm_table", "audience": "newsletter_subscribers",
        "destination": "crm_table", "target": {"name": "newsletter_subscribers"}, "mode": "additive",
        "schedule": "on_audience_update", "identifiers": {"email": "email"},
        "fields": {"plan": "plan", "last_purchase_at": "last_purchase_at"}}
    paused = quick_sync.plan_quick_sync("newsletter_subscribers", "crm_table", lambda s: s == "churn_risk_to_crm",
                                        defs=folder)
    assert paused.template.attributes["name"] == "high_value_to_crm"  # a paused sync is never a template
    assert paused.attributes["mode"] == "mirror" and paused.attributes["phone_region_column"] == "country"
    none = quick_sync.plan_quick_sync("newsletter_subscribers", "crm_table", lambda s: True, defs=folder)
    assert none.template is None and none.path is None


def test_the_written_sync_loads_and_runs(project, home, capsys):
    folder, load = project
    before = (folder / "syncs" / "defs.yaml").read_text()
    assert cli(["quick-sync", "newsletter_subscribers", "--to", "crm_table"]) == 1  # demo: every trigger stopped
    out = capsys.readouterr().out
    assert "nothing was written" in out and "name: newsletter_subscribers_to_crm_table" in out
    assert (folder / "syncs" / "defs.yaml").read_text() == before
    plan = quick_sync.plan_quick_sync("newsletter_subscribers", "crm_table", lambda s: False, defs=folder)
    quick_sync.write_quick_sync(plan, load)
    assert (folder / "syncs" / "defs.yaml").read_text().startswith(before)
    assert syncs(folder)["newsletter_subscribers_to_crm_table"]["target"] == {"name": "newsletter_subscribers"}
    result = materialize(load(), "audiences/newsletter_subscribers", "syncs/newsletter_subscribers_to_crm_table",
                         instance=dg.DagsterInstance.ephemeral())
    assert result.success and metadata(result, "syncs/newsletter_subscribers_to_crm_table")["sync_mode"] == "additive"
    members = pq.read_table(AudienceStorage().membership_path("newsletter_subscribers"))
    with duckdb.connect(str(home / "demo_crm.duckdb"), read_only=True) as con:
        sent = con.execute("SELECT key, plan FROM audience_members WHERE audience = 'newsletter_subscribers' "
                           "ORDER BY 1").fetchall()
    assert sent == sorted(zip(members["customer_id"].to_pylist(), members["plan"].to_pylist())) and len(sent) > 1000


def test_a_sync_that_would_not_load_leaves_the_file_as_it_was(project):
    folder, load = project
    plan = quick_sync.plan_quick_sync("newsletter_subscribers", "crm_table", lambda s: False, defs=folder)
    plan.attributes["fields"] = {"plan": "no_such_column"}
    before = (folder / "syncs" / "defs.yaml").read_text()
    with pytest.raises(Exception, match="no_such_column"):
        quick_sync.write_quick_sync(plan, load)
    assert (folder / "syncs" / "defs.yaml").read_text() == before


def test_unknown_audience_or_a_taken_name_is_refused(project):
    folder, _ = project
    with pytest.raises(ConfigError, match="no audience named 'vips'"):
        quick_sync.plan_quick_sync("vips", "crm_table", lambda s: False, defs=folder)
    with pytest.raises(ConfigError, match="a sync named 'high_value_to_crm' is already declared"):
        quick_sync.plan_quick_sync("churn_risk", "crm_table", lambda s: False, name="high_value_to_crm", defs=folder)


def test_the_cli_writes_from_an_active_template_and_says_what_it_copied(project, capsys, monkeypatch):
    folder, _ = project
    import audience_pipelines.cli as cli_module

    monkeypatch.setattr(cli_module, "_load_definitions", lambda: None)
    monkeypatch.setattr(cli_module, "_paused_in_instance", lambda defs: (lambda sync: sync != "high_value_to_crm"))
    file = folder / "syncs" / "defs.yaml"
    assert cli(["quick-sync", "newsletter_subscribers", "--to", "crm_table"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"sync 'newsletter_subscribers_to_crm_table' written to {file} (document 4), copied from "
                          f"sync 'high_value_to_crm' ({file}, document 1): mode, schedule, identifiers, fields, "
                          "phone_region_column; target: {'name': 'newsletter_subscribers'}")
    written = list(yaml.safe_load_all(file.read_text()))[-1]["attributes"]
    assert written["target"] == {"name": "newsletter_subscribers"}
    assert written["identifiers"] == {"email": "email", "phone": "phone"}
    # A second audience synced to the destination audience another sync writes: refused, file untouched.
    before = file.read_text()
    assert cli(["quick-sync", "churn_risk", "--to", "crm_table", "--name", "churn_copy"]) == 2
    assert ("sync 'churn_copy' also writes destination 'crm_table' audience name 'churn_risk'"
            in capsys.readouterr().err)
    assert file.read_text() == before


@pytest.mark.postgres
def test_a_quick_sync_runs_from_a_postgres_warehouse_to_a_postgres_table(project, home, pg_schema, monkeypatch,
                                                                        tmp_path):
    folder, load = project
    url, _ = pg_schema
    engine = demo_in_postgres(url, tmp_path, rows=1_500)
    monkeypatch.setenv("AUDIENCE_PIPELINES_WAREHOUSE_URL", url)
    monkeypatch.setenv("AUDIENCE_PIPELINES_CRM_URL", url)
    plan = quick_sync.plan_quick_sync("newsletter_subscribers", "crm_table", lambda s: s != "high_value_to_crm",
                                      defs=folder)
    quick_sync.write_quick_sync(plan, load)
    result = materialize(load(), "audiences/newsletter_subscribers", "syncs/newsletter_subscribers_to_crm_table",
                         instance=dg.DagsterInstance.ephemeral())
    members = pq.read_table(AudienceStorage().membership_path("newsletter_subscribers"))
    with engine.connect() as conn:
        sent = conn.execute(sa.text("SELECT key, plan FROM audience_members WHERE audience = 'newsletter_subscribers' "
                                    "ORDER BY 1")).fetchall()
    engine.dispose()
    assert result.success and [tuple(r) for r in sent] == sorted(
        zip(members["customer_id"].to_pylist(), members["plan"].to_pylist())) and len(sent) > 500
