"""`file`: each run's adds, removes and updates as CSV or Parquet files under a folder.

Layout: `<path>/<audience>/<run_id>/<operation>-<batch seq>.<format>`. Files
appear whole (temp file + rename); a rerun of the same run overwrites them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import ClassVar, Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from audience_pipelines.destinations.base import BatchContext, BatchResult, Capabilities, Destination, Target
from audience_pipelines.engine.diff import KEY_HASH, ROW_HASH
from audience_pipelines.identifiers import KINDS

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class FileSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    format: Literal["csv", "parquet"] = "csv"


class FileDestination(Destination):
    type_name = "file"
    capabilities: ClassVar[Capabilities] = Capabilities(
        identifier_kinds=frozenset(KINDS), max_batch_rows=100_000, can_list_audiences=True,
    )
    settings_model = FileSettings
    secret_settings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: FileSettings):
        self.settings = settings
        self.root = Path(settings.path)

    def resolve_target(self, target: Target) -> str:
        audience = target.id or target.name
        (self.root / _SAFE.sub("_", audience)).mkdir(parents=True, exist_ok=True)
        return audience

    def _write(self, audience_id: str, rows: pa.Table, ctx: BatchContext, operation: str) -> BatchResult:
        folder = self.root / _SAFE.sub("_", audience_id) / _SAFE.sub("_", ctx.run_id)
        folder.mkdir(parents=True, exist_ok=True)
        rows = rows.drop_columns([c for c in (KEY_HASH, ROW_HASH) if c in rows.column_names])
        path = folder / f"{operation}-{ctx.seq:06d}.{self.settings.format}"
        tmp = folder / f".{path.name}.tmp"
        if self.settings.format == "csv":
            pacsv.write_csv(rows, tmp)
        else:
            pq.write_table(rows, tmp)
        os.replace(tmp, path)
        return BatchResult()

    def add(self, audience_id: str, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        return self._write(audience_id, rows, ctx, "add")

    def remove(self, audience_id: str, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        return self._write(audience_id, rows, ctx, "remove")

    def update(self, audience_id: str, rows: pa.Table, previous: pa.Table, ctx: BatchContext) -> BatchResult:
        return self._write(audience_id, rows, ctx, "update")
