"""dagster.yaml works as shipped, and its commented PostgreSQL block works when switched on."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

DAGSTER_YAML = Path(__file__).parents[1] / "dagster.yaml"


def test_shipped_dagster_yaml_loads(tmp_path, monkeypatch):
    shutil.copy(DAGSTER_YAML, tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"


def test_commented_postgres_storage_block_works(tmp_path, monkeypatch, pg_url):
    text = DAGSTER_YAML.read_text()
    block = text[text.index("# storage:"):]
    enabled = re.sub(r"^# ?", "", block, flags=re.M)
    (tmp_path / "dagster.yaml").write_text(text[: text.index("# Production")] + enabled)
    url = sa.make_url(pg_url)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_PG_HOST", url.host or "127.0.0.1")
    monkeypatch.setenv("DAGSTER_PG_DB", url.database)
    monkeypatch.setenv("DAGSTER_PG_USERNAME", url.username or "postgres")
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", url.password or "")
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        instance.get_runs(limit=1)  # talks to the server
