"""In-process destinations for engine tests: keep members, reject and crash on request.

`MemoryDestination` answers every batch at once (the per-batch adapter). `MemoryJobDestination`
works like a platform job: batches are staged and their rows stay pending until the session
finishes and the job runs; the job can fail, and the process can die mid-job.
"""

from __future__ import annotations

import itertools

import pyarrow as pa

from audience_pipelines.contract import (
    KEY, BatchContext, BatchDestination, BatchResult, Capabilities, Destination, DestinationSettings,
    DestinationType, Finish, Recovery, Session, SessionContext, sent_columns,
)
from audience_pipelines.identifiers.kinds import KINDS


class Crash(BaseException):
    """Stands for the process dying: the engine must not catch it."""


class MemorySettings(DestinationSettings):
    batch_rows: int = 3


class Memory(DestinationType):
    name = "memory"
    settings_model = MemorySettings
    kind_tag = "memory"
    summary = "in-process, for tests"

    @classmethod
    def capabilities(cls, settings=None):
        return Capabilities(identifier_kinds=frozenset(KINDS), max_batch_rows=settings.batch_rows if settings else 3,
                            can_list_audiences=True)

    @classmethod
    def open(cls, settings):
        return MemoryDestination(settings.batch_rows)


class _Members:
    def __init__(self):
        self.audiences: dict[str, dict[str, dict]] = {}
        self.reject: set[str] = set()  # keys rejected per row, whatever the operation
        self.crash_at_batch: int | None = None  # crash when this batch seq starts (after applying nothing)
        self.requests: list[str] = []  # ctx.request_id of every call
        self.batches = 0

    def members(self, audience_id: str) -> dict[str, dict]:
        return self.audiences.get(audience_id, {})

    def _check(self, ctx: BatchContext) -> None:
        self.batches += 1
        self.requests.append(ctx.request_id)
        if self.crash_at_batch is not None and ctx.seq == self.crash_at_batch:
            raise Crash(f"crash at batch {ctx.seq}")

    def _split(self, rows: pa.Table) -> tuple[list[tuple[str, dict]], dict[int, str]]:
        """(key, sent values) of the rows to apply, and the rows rejected."""
        good, rejected = [], {}
        for i, row in enumerate(rows.select([KEY, *sent_columns(rows)]).to_pylist()):
            key = row.pop(KEY)
            if key in self.reject:
                rejected[i] = "rejected by test"
            else:
                good.append((key, row))
        return good, rejected


class MemoryDestination(_Members, BatchDestination):
    destination_type = Memory

    def __init__(self, batch_rows: int = 3):
        BatchDestination.__init__(self, MemorySettings(batch_rows=batch_rows))
        _Members.__init__(self)
        self.count_only = False  # report rejections as a count that names no row

    def find_audience(self, name: str) -> str:
        self.audiences.setdefault(name, {})
        return name

    def _apply(self, audience_id: str, rows: pa.Table, ctx: BatchContext, remove: bool) -> BatchResult:
        self._check(ctx)
        state = self.audiences.setdefault(audience_id, {})
        good, rejected = self._split(rows)
        for key, row in good:
            if remove:
                state.pop(key, None)
            else:
                state[key] = row
        if self.count_only:
            return BatchResult(unapplied=len(rejected), unapplied_reason="counted, not named")
        return BatchResult(rejected=rejected)

    def add(self, audience_id, rows, ctx):
        return self._apply(audience_id, rows, ctx, remove=False)

    def remove(self, audience_id, rows, ctx):
        return self._apply(audience_id, rows, ctx, remove=True)


class MemoryJob(Memory):
    name = "memory_job"

    @classmethod
    def capabilities(cls, settings=None):
        return Capabilities(identifier_kinds=frozenset(KINDS), max_batch_rows=settings.batch_rows if settings else 3,
                            can_list_audiences=False, uses_jobs=True)


class MemoryJobDestination(_Members, Destination):
    """Batches are staged in a job; the job applies them in order when the session finishes."""

    destination_type = MemoryJob

    def __init__(self, batch_rows: int = 3):
        Destination.__init__(self, MemorySettings(batch_rows=batch_rows))
        _Members.__init__(self)
        self.jobs: dict[str, dict] = {}  # job id -> {"ops": [...], "status": PENDING|SUCCESS|FAILED}
        self.fail_next_job: str | None = None  # the job's failure reason
        self.crash_after_job = False  # die after the job ran, before the engine hears of it
        self.jobs_left_running = 0  # this many sessions end with their job still running
        self.created: list[str] = []
        self._ids = itertools.count(1)

    def check_audience(self, audience_id: str) -> None:
        if audience_id not in self.audiences:
            from audience_pipelines.contract import TerminalError

            raise TerminalError(f"no audience {audience_id}")

    def create_audience(self, name: str) -> str:
        audience_id = f"aud-{next(self._ids)}"
        self.audiences[audience_id] = {}
        self.created.append(name)
        return audience_id

    def open_session(self, ctx: SessionContext) -> Session:
        return _JobSession(self, ctx)

    def run_job(self, job_id: str) -> str:
        job = self.jobs[job_id]
        if job["status"] != "PENDING":
            return job["status"]
        if self.fail_next_job:
            job["status"], job["reason"], self.fail_next_job = "FAILED", self.fail_next_job, None
            return "FAILED"
        state = self.audiences.setdefault(job["audience"], {})
        for op, key, row in job["ops"]:
            if op == "remove":
                state.pop(key, None)
            else:
                state[key] = row
        job["status"] = "SUCCESS"
        return "SUCCESS"

    def recover(self, audience_id: str, state: dict) -> Recovery:
        job = self.jobs.get(state.get("job"))
        if job is None:
            return Recovery("no job was created")
        if job["status"] == "PENDING" and state.get("stage") == "running":
            return Recovery(f"job {state['job']} ran: {self.run_job(state['job'])}")
        return Recovery(f"job {state['job']} ended {job['status']}" if job["status"] != "PENDING"
                        else f"job {state['job']} never ran; abandoned")


class _JobSession(Session):
    def __init__(self, dest: MemoryJobDestination, ctx: SessionContext):
        self.dest, self.ctx, self.job = dest, ctx, None

    def send(self, operation, rows, previous, ctx):
        self.dest._check(ctx)
        if self.job is None:
            self.job = f"job-{next(self.dest._ids)}"
            self.dest.jobs[self.job] = {"ops": [], "status": "PENDING", "audience": self.ctx.audience_id}
            self.ctx.save_state({"job": self.job, "stage": "created"})
        good, rejected = self.dest._split(rows)
        staged = self.dest.jobs[self.job]["ops"]
        if operation == "update" and previous is not None:
            staged += [("remove", k, r) for k, r in self.dest._split(previous)[0]]
        staged += [("remove" if operation == "remove" else "add", k, r) for k, r in good]
        return BatchResult(rejected=rejected, pending=True)

    def finish(self, complete: bool) -> Finish:
        if self.job is None:
            return Finish("applied")
        if not complete:
            return Finish("failed", reason=f"job {self.job} abandoned before it ran")
        self.ctx.save_state({"job": self.job, "stage": "running"})
        if self.dest.jobs_left_running:
            self.dest.jobs_left_running -= 1
            return Finish("unknown", reason=f"job {self.job} still running")
        status = self.dest.run_job(self.job)
        if self.dest.crash_after_job:
            raise Crash("died after the job ran")
        if status == "FAILED":
            return Finish("failed", reason=f"job {self.job} failed: {self.dest.jobs[self.job]['reason']}")
        return Finish("applied")
