"""Dagster resources: where files live, how to reach a warehouse, how to build a destination.

Secrets are read from environment variables when a run starts, never stored
in configuration, metadata or logs.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import sqlalchemy as sa
from pydantic import PrivateAttr

from audience_pipelines.config import resolve_placeholders
from audience_pipelines.engine import ConfigError, SnapshotStore
from audience_pipelines.engine.audiences import AudienceRegistry
from audience_pipelines.engine.history import RunHistory, RunRecord
from audience_pipelines.project import HOME_ENV, state_root

HISTORY_URL_ENV = "AUDIENCE_PIPELINES_HISTORY_URL"
DEMO_URL = "demo"


class AudienceStorage(dg.ConfigurableResource):
    """Membership files, snapshots and run files: `home`, else project.state_root() (the same for every command)."""

    home: str | None = None

    @property
    def root(self) -> Path:
        root = state_root(self.home)
        root.mkdir(parents=True, exist_ok=True)
        return root

    def membership_path(self, audience: str) -> Path:
        return self.root / "audiences" / audience / "membership.parquet"

    def set_aside_path(self, audience: str) -> Path:
        return self.root / "audiences" / audience / "set_aside.parquet"

    def snapshot_store(self, sync: str) -> SnapshotStore:
        return SnapshotStore(self.root / "syncs", sync)

    def audience_registry(self) -> AudienceRegistry:
        """Audiences created or found per destination account, shared by every sync."""
        return AudienceRegistry(self.root / "destinations")

    def history(self) -> RunHistory:
        return open_history(self.root)

    def record_run(self, record: RunRecord) -> RunRecord:
        """Adds a run to the history; returns it with its attempt number."""
        history = self.history()
        try:
            return history.record(record)
        finally:
            history.close()


def open_history(root: Path) -> RunHistory:
    """The run-history table: $AUDIENCE_PIPELINES_HISTORY_URL, else SQLite beside the snapshots."""
    return RunHistory(os.environ.get(HISTORY_URL_ENV) or f"sqlite:///{root / 'run_history.sqlite'}")


class WarehouseResource(dg.ConfigurableResource):
    """A SQLAlchemy URL, given inline or by environment variable; `demo` is the embedded DuckDB."""

    name: str
    url: str | None = DEMO_URL
    url_env: str | None = None
    _engine: sa.Engine | None = PrivateAttr(default=None)

    def resolved_url(self, storage: AudienceStorage) -> str:
        url = os.environ.get(self.url_env) if self.url_env else None
        if not url:
            url = self.url
        if not url:
            raise ConfigError(f"warehouse '{self.name}' needs its URL: set the environment variable {self.url_env}")
        if url == DEMO_URL:
            from audience_pipelines.demo import ensure_demo_warehouse

            path = ensure_demo_warehouse(storage.root / "demo_warehouse.duckdb")
            # Read-only, so several runs can read the demo warehouse at once.
            return f"duckdb:///{path}?access_mode=read_only"
        return resolve_placeholders(url, storage.root)

    def engine(self, storage: AudienceStorage) -> sa.Engine:
        if self._engine is None:
            self._engine = sa.create_engine(self.resolved_url(storage))
        return self._engine

    def teardown_after_execution(self, context) -> None:
        if self._engine is not None:
            self._engine.dispose()
