"""Run history of syncs in a table any SQLAlchemy database can hold.

SQLite beside the snapshots by default; PostgreSQL (or any URL) when
configured. One row per attempt of one sync in one run, failed ones included:
a run that materializes several syncs keeps a row for each, and a retried
step adds a row instead of replacing the first attempt's.
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
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("sync", sa.String(200), nullable=False, index=True),
    sa.Column("attempt", sa.Integer, nullable=False, default=1),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # success | partial_failure | error
    sa.Column("run_kind", sa.String(20)),  # first_run | full_resend | diff (full: recorded before they were told apart)
    sa.Column("sync_mode", sa.String(20)),  # mirror | additive | subtractive
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
    sa.UniqueConstraint("run_id", "sync", "attempt", name="audience_sync_runs_attempt"),
)
COUNTS = ("added", "removed", "updated", "resent", "failed", "set_aside", "skipped")


@dataclass
class RunRecord:
    run_id: str
    sync: str
    started_at: dt.datetime
    finished_at: dt.datetime
    status: str
    run_kind: str | None = None
    sync_mode: str | None = None
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
    attempt: int = 1

    @classmethod
    def from_result(cls, r, started_at: dt.datetime, finished_at: dt.datetime, *, status: str | None = None,
                    error: str | None = None) -> "RunRecord":
        """The record of a run (`r` is an engine SyncResult, complete or as far as a stopped run got)."""
        return cls(run_id=r.run_id, sync=r.sync, started_at=started_at, finished_at=finished_at,
                   status=status or r.status, run_kind=r.run_kind, sync_mode=r.sync_mode,
                   duration_s=(finished_at - started_at).total_seconds(),
                   destination_audience_id=r.destination_audience_id, errors_sample=r.errors_sample,
                   rejected_path=r.rejected_path, error=error, **{c: getattr(r, c) for c in COUNTS})


class RunHistory:
    def __init__(self, url: str):
        self.engine = sa.create_engine(url)
        with self.engine.begin() as conn:
            _migrate(conn)
            _md.create_all(conn, tables=[runs], checkfirst=True)

    def record(self, rec: RunRecord) -> RunRecord:
        """Adds the record as the next attempt of its (run, sync); returns it with that attempt number."""
        values = {**rec.__dict__, "errors_sample": json.dumps(rec.errors_sample or [], default=str)}
        with self.engine.begin() as conn:
            last = conn.execute(sa.select(sa.func.max(runs.c.attempt)).where(
                runs.c.run_id == rec.run_id, runs.c.sync == rec.sync)).scalar()
            values["attempt"] = (last or 0) + 1
            conn.execute(sa.insert(runs), [values])
        return RunRecord(**{**rec.__dict__, "attempt": values["attempt"]})

    def list(self, sync: str | None = None, limit: int = 20, offset: int = 0,
             statuses: tuple[str, ...] | None = None) -> list[RunRecord]:
        """Newest first."""
        q = sa.select(runs).order_by(runs.c.started_at.desc(), runs.c.id.desc()).limit(limit).offset(offset)
        if sync:
            q = q.where(runs.c.sync == sync)
        if statuses:
            q = q.where(runs.c.status.in_(statuses))
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return [RunRecord(**{k: v for k, v in r.items() if k != "id"}
                          | {"errors_sample": json.loads(r["errors_sample"] or "[]")}) for r in rows]

    def count(self, sync: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(runs).where(runs.c.sync == sync)).scalar()

    def latest(self, sync: str, statuses: tuple[str, ...] | None = None) -> RunRecord | None:
        found = self.list(sync, limit=1, statuses=statuses)
        return found[0] if found else None

    def close(self) -> None:
        self.engine.dispose()


def _migrate(conn: sa.Connection) -> None:
    """Moves a table of the first layout (one row per run id, a `mode` column) into the current one."""
    inspector = sa.inspect(conn)
    if not inspector.has_table(TABLE) or "attempt" in {c["name"] for c in inspector.get_columns(TABLE)}:
        return
    old = sa.Table(TABLE, sa.MetaData(), autoload_with=conn)
    rows = [dict(r) for r in conn.execute(sa.select(old)).mappings()]
    old.drop(conn)
    _md.create_all(conn, tables=[runs])
    for r in rows:
        r["run_kind"] = r.pop("mode", None)
        r["attempt"] = 1
    if rows:
        conn.execute(sa.insert(runs), rows)
