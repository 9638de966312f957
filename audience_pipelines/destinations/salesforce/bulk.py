"""Salesforce Bulk API 2.0 ingest jobs, run to the end within one batch, and per-record outcomes.

A job: `POST jobs/ingest` (object, operation, CSV), one `PUT jobs/ingest/{id}/batches` with the CSV,
`PATCH jobs/ingest/{id}` {"state": "UploadComplete"}, `GET jobs/ingest/{id}` until JobComplete,
Failed or Aborted, then `successfulResults/` and `failedResults/` (CSV, rows in no set order,
each carrying the uploaded columns, so a row is told by its key column).

A job accepts one upload only, so the upload is never sent twice: when its answer is lost the job
is aborted (a job never closed is never processed) and a new one takes the rows. A repeated close
finds the job already closed; its state is read instead. [unverified] The `sf__Error` text is taken
as "CODE:message:fields --", the form Salesforce's examples show.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from audience_pipelines.contract import DestinationError

DONE = ("JobComplete", "Failed", "Aborted")
CLOSED = ("UploadComplete", "InProgress", *DONE)
UPLOAD_ATTEMPTS = 3


@dataclass(frozen=True)
class Saved:
    """One record's outcome: an sObject Collections SaveResult or a Bulk job's result row."""

    ok: bool
    id: str | None = None
    code: str = ""
    message: str = ""
    fields: tuple[str, ...] = field(default_factory=tuple)

    @property
    def reason(self) -> str:
        where = f" (fields {', '.join(self.fields)})" if self.fields else ""
        return f"{self.code}: {self.message}{where}" if self.code else (self.message or "refused")


def saved_from_json(entry: dict) -> Saved:
    """A SaveResult {"id", "success", "errors": [{"statusCode", "message", "fields"}]}."""
    if entry.get("success"):
        return Saved(True, str(entry.get("id") or "") or None)
    errors = [e for e in entry.get("errors") or [] if isinstance(e, dict)] or [{}]
    first = errors[0]
    message = "; ".join(str(e.get("message") or "") for e in errors if e.get("message"))
    fields = tuple(str(f) for e in errors for f in e.get("fields") or [])
    return Saved(False, None, str(first.get("statusCode") or first.get("errorCode") or "ERROR"), message, fields)


def saved_from_error_text(text: str) -> Saved:
    """A failedResults `sf__Error`, e.g. "DUPLICATE_VALUE:Already a campaign member.:--"."""
    code, _, rest = text.partition(":")
    message, fields = rest, ()
    if ":" in rest:
        message, _, tail = rest.rpartition(":")
        fields = tuple(f.strip() for f in tail.replace("--", "").split(",") if f.strip())
    return Saved(False, None, code.strip() or "ERROR", message.strip(), fields)


def to_csv(header: list[str], rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


class BulkJobs:
    """Runs ingest jobs through the client's `call` (auth, retries, errors) and `ok` (JSON or raise)."""

    def __init__(self, call: Callable[..., httpx.Response], ok: Callable[[httpx.Response, str, str], dict], *,
                 poll_interval_s: float, poll_timeout_s: float, sleep, clock):
        self.call, self.ok = call, ok
        self.poll_interval_s, self.poll_timeout_s = poll_interval_s, poll_timeout_s
        self.sleep, self.clock = sleep, clock

    def ingest(self, sobject: str, operation: str, header: list[str], rows: list[list[str]],
               key: str) -> list[Saved]:
        """Run one job over `rows`; the outcome of each row, in order. `key` names the column that tells
        rows apart in the results (unique per row)."""
        job = self._upload(sobject, operation, to_csv(header, rows))
        info = self._close(job)
        if info.get("state") not in DONE:
            info = self._wait(job)
        if info.get("state") == "Aborted":
            raise DestinationError(f"salesforce: Bulk API job {job} was aborted in Salesforce; its rows are sent "
                                   "again next run")
        outcome: dict[str, Saved] = {}
        for row in self._results(job, "successfulResults"):
            outcome[row.get(key, "")] = Saved(True, row.get("sf__Id") or None)
        for row in self._results(job, "failedResults"):
            outcome[row.get(key, "")] = saved_from_error_text(row.get("sf__Error") or "")
        failed = str(info.get("errorMessage") or "")
        unprocessed = Saved(False, None, "NOT_PROCESSED", f"Bulk API job {job} ended {info.get('state')} without "
                            f"processing this row" + (f": {failed}" if failed else ""))
        at = header.index(key)
        return [outcome.get(row[at], unprocessed) for row in rows]

    def _upload(self, sobject: str, operation: str, data: bytes) -> str:
        last = ""
        for _ in range(UPLOAD_ATTEMPTS):
            path = "jobs/ingest/"
            created = self.ok(self.call("POST", path, json={"object": sobject, "operation": operation,
                                                            "contentType": "CSV", "lineEnding": "LF",
                                                            "columnDelimiter": "COMMA"}), "POST", path)
            job = str(created["id"])
            upload = f"jobs/ingest/{job}/batches"
            try:  # one upload per job: never sent twice
                response = self.call("PUT", upload, content=data, headers={"Content-Type": "text/csv"}, once=True)
            except DestinationError as exc:
                last = str(exc)
            else:
                if response.status_code < 400:
                    return job
                if response.status_code < 500:
                    self.ok(response, "PUT", upload)  # a refusal no new job would escape: raises
                last = f"HTTP {response.status_code} on PUT {upload}"
            self._abort(job)
        raise DestinationError(f"salesforce: the Bulk API upload failed {UPLOAD_ATTEMPTS} times (last: {last}); "
                               "its rows are sent again next run")

    def _abort(self, job: str) -> None:
        try:
            self.call("PATCH", f"jobs/ingest/{job}", json={"state": "Aborted"})
        except DestinationError:
            pass  # an open job that is never closed is never processed either

    def _close(self, job: str) -> dict:
        path = f"jobs/ingest/{job}"
        response = self.call("PATCH", path, json={"state": "UploadComplete"})
        if response.status_code < 400:
            return self.ok(response, "PATCH", path)
        info = self.ok(self.call("GET", path), "GET", path)  # closed already, by a first try whose answer was lost?
        if info.get("state") not in CLOSED:
            self.ok(response, "PATCH", path)  # raises with Salesforce's own words
        return info

    def _wait(self, job: str) -> dict:
        path = f"jobs/ingest/{job}"
        started = self.clock()
        while True:
            info = self.ok(self.call("GET", path), "GET", path)
            left = self.poll_timeout_s - (self.clock() - started)
            if info.get("state") in DONE:
                return info
            if left <= 0:
                raise DestinationError(f"salesforce: Bulk API job {job} is still {info.get('state')} after "
                                       f"{self.poll_timeout_s:g} s; its rows are sent again next run")
            self.sleep(min(self.poll_interval_s, left))

    def _results(self, job: str, which: str) -> list[dict[str, str]]:
        path = f"jobs/ingest/{job}/{which}/"
        response = self.call("GET", path, headers={"Accept": "text/csv"})
        if response.status_code >= 400:
            self.ok(response, "GET", path)
        return read_csv(response.text)
