"""Run history of syncs in a table any SQLAlchemy database can hold.

SQLite beside the snapshots by default; PostgreSQL (or any URL) when
configured. One row per sync run, failed runs included.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import sqlalchemy as sa

TABLE = "audience_sync_runs"
_md = sa.MetaData()
runs = sa.Table(
    TABLE, _md,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("sync", sa.String(200), nullable=False, index=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # success | partial_failure | error
    sa.Column("mode", sa.String(10)),  # diff | full
    sa.Column("added", sa.BigInteger, default=0),
    sa.Column("removed", sa.BigInteger, default=0),
    sa.Column("updated", sa.BigInteger, default=0),
    sa.Column("resent", sa.BigInteger, default=0),
    sa.Column("failed", sa.BigInteger, default=0),
    sa.Column("set_aside", sa.BigInteger, default=0),
    sa.Column("skipped", sa.BigInteger, default=0),
    sa.Column("duration_s", sa.Float),
    sa.Column("destination_audience_id", sa.String(200)),
    sa.Column("error", sa.Text),
    sa.Column("errors_sample", sa.Text),  # JSON
    sa.Column("rejected_path", sa.Text),
)
COUNTS = ("added", "removed", "updated", "resent", "failed", "set_aside", "skipped")


@dataclass
class RunRecord:
    run_id: str
    sync: str
    started_at: dt.datetime
    finished_at: dt.datetime
    status: str
    mode: str | None = None
    added: int = 0
    removed: int = 0
    updated: int = 0
    resent: int = 0
    failed: int = 0
    set_aside: int = 0
    skipped: int = 0
    duration_s: float | None = None
    destination_audience_id: str | None = None
    error: str | None = None
    errors_sample: list | None = None
    rejected_path: str | None = None


    @classmethod
    def from_result(cls, r, started_at: dt.datetime, finished_at: dt.datetime) -> "RunRecord":
        """The record of a completed run (`r` is an engine SyncResult)."""
        return cls(run_id=r.run_id, sync=r.sync, started_at=started_at, finished_at=finished_at,
                   status=r.status, mode=r.mode, duration_s=r.duration_s,
                   destination_audience_id=r.destination_audience_id, errors_sample=r.errors_sample,
                   rejected_path=r.rejected_path, **{c: getattr(r, c) for c in COUNTS})


class RunHistory:
    def __init__(self, url: str):
        self.engine = sa.create_engine(url)
        _md.create_all(self.engine, tables=[runs], checkfirst=True)

    def record(self, rec: RunRecord) -> None:
        values = {**rec.__dict__, "errors_sample": json.dumps(rec.errors_sample or [], default=str)}
        with self.engine.begin() as conn:
            # A retried step reuses the run id: the last attempt's outcome wins.
            conn.execute(sa.delete(runs).where(runs.c.run_id == rec.run_id))
            conn.execute(sa.insert(runs), [values])

    def list(self, sync: str | None = None, limit: int = 20) -> list[RunRecord]:
        q = sa.select(runs).order_by(runs.c.started_at.desc()).limit(limit)
        if sync:
            q = q.where(runs.c.sync == sync)
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return [RunRecord(**{**r, "errors_sample": json.loads(r["errors_sample"] or "[]")}) for r in rows]

    def close(self) -> None:
        self.engine.dispose()
