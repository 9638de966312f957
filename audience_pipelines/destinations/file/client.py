"""The `file` client.

Layout: `<path>/<audience>/<run_id>/<operation>-<batch seq>.<format>`. Files
appear whole (temp file + rename); a rerun of the same run overwrites them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from audience_pipelines.contract import BatchContext, BatchDestination, BatchResult, without_engine_columns
from audience_pipelines.destinations.file import File, FileSettings

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class FileDestination(BatchDestination[FileSettings]):
    destination_type = File

    def __init__(self, settings: FileSettings):
        super().__init__(settings)
        self.root = Path(settings.path)

    def find_audience(self, name: str) -> str:
        (self.root / _SAFE.sub("_", name)).mkdir(parents=True, exist_ok=True)
        return name

    def _write(self, audience_id: str, rows: pa.Table, ctx: BatchContext, operation: str) -> BatchResult:
        folder = self.root / _SAFE.sub("_", audience_id) / _SAFE.sub("_", ctx.run_id)
        folder.mkdir(parents=True, exist_ok=True)
        rows = without_engine_columns(rows)
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
