"""Load the project's definitions (real YAML, optionally with extra files) and run them."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
import sqlalchemy as sa
from dagster.components.testing import create_defs_folder_sandbox

from audience_pipelines.demo import create_demo_warehouse
from audience_pipelines.resources import AudienceStorage

DEFS = Path(__file__).parents[1] / "audience_pipelines" / "defs"
EXAMPLES = Path(__file__).parents[1] / "examples"


@contextmanager
def project_defs(extra: dict[str, str] | None = None, drop: tuple[str, ...] = (), examples: tuple[str, ...] = ()):
    """The shipped defs folder, plus `extra` YAML files (relative path -> text), minus `drop` folders."""
    with create_defs_folder_sandbox() as sandbox:
        for folder in DEFS.iterdir():
            if folder.is_dir() and folder.name not in drop and not folder.name.startswith("__"):
                shutil.copytree(folder, sandbox.defs_folder_path / folder.name)
        for name in examples:
            shutil.copytree(EXAMPLES / name, sandbox.defs_folder_path / name)
        for rel, text in (extra or {}).items():
            path = sandbox.defs_folder_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        with sandbox.build_all_defs() as defs:
            yield dg.Definitions.merge(defs, dg.Definitions(resources={"audience_storage": AudienceStorage()}))


def materialize(defs: dg.Definitions, *keys: str, instance: dg.DagsterInstance, run_config=None, tags=None,
                raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    job = defs.resolve_implicit_global_asset_job_def()
    selection = [dg.AssetKey(k.split("/")) for k in keys] if keys else None
    return job.execute_in_process(instance=instance, asset_selection=selection, run_config=run_config or {},
                                  tags=tags, raise_on_error=raise_on_error)


def metadata(result: dg.ExecuteInProcessResult, key: str) -> dict:
    mats = result.asset_materializations_for_node(key.replace("/", "__"))
    assert mats, f"no materialization for {key}"
    return {k: v.value for k, v in mats[-1].metadata.items()}


def demo_in_postgres(url: str, tmp_path: Path, rows: int, prepare=None, tables=("customers",)) -> sa.Engine:
    """The demo warehouse's `tables` copied into the PostgreSQL schema of `url` (after `prepare(duckdb
    connection)`, if given); returns an engine on it."""
    source = create_demo_warehouse(tmp_path / "src.duckdb", rows=rows)
    with duckdb.connect(str(source)) as con:
        if prepare:
            prepare(con)
        copies = {t: con.sql(f"SELECT * FROM {t}").to_arrow_table() for t in tables}
    engine = sa.create_engine(url)
    for table, data in copies.items():
        data.to_pandas().to_sql(table, engine, index=False)
    return engine


def partitioned_without_whole_reads(monkeypatch, partition_rows: int) -> None:
    """Runs go over key-hash partitions of about `partition_rows` members, and a sync run that reads
    its membership whole fails."""
    from audience_pipelines.components.sources import MembershipSource
    from audience_pipelines.engine import partitions

    def whole(*_):
        raise AssertionError("the sync read its membership whole")

    monkeypatch.setattr(partitions, "PARTITION_ROWS", partition_rows)
    monkeypatch.setattr(MembershipSource, "read", whole)
