"""The `meta_custom_audiences` client.

Members are added with POST and removed with DELETE on `/{audience_id}/users`,
at most 10,000 rows a request, identifiers normalised and SHA-256 hashed by
Meta's rules (`identifiers.meta`). Meta signals throttles in the body (error
codes 4, 17, 341, 613, 80000-80014) rather than with HTTP 429.

A full resend of a mirror sync runs as one `usersreplace` session: every batch carries the
session id and its sequence number, rows stay pending until the session closes (the last batch
sent again with `last_batch_flag`), and then the audience holds exactly what was sent. The
session is journalled before its first batch: a run killed mid-replace leaves the audience
half-replaced, so the next run replaces it in full.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from audience_pipelines.contract import (
    AudienceStats, BatchContext, BatchResult, CredentialsError, Destination, DestinationError, Finish,
    MatchListSession, Recovery, Session, SessionContext, TerminalError, sent_columns,
)
from audience_pipelines.destinations.http import HttpClient
from audience_pipelines.destinations.meta_custom_audiences import MetaCustomAudiences, MetaSettings
from audience_pipelines.identifiers.kinds import META_FIELDS
from audience_pipelines.identifiers.meta import to_meta

THROTTLE_CODES = frozenset({4, 17, 32, 341, 613, *range(80000, 80015)})
FATAL_CODES = frozenset({190, 200, 294, 1487301, 1487366})
def _error(response: httpx.Response) -> dict:
    try:
        err = response.json().get("error")
    except ValueError:
        return {}
    return err if isinstance(err, dict) else {}


def throttle_delay(response: httpx.Response) -> float | None:
    """Seconds to wait when Meta says it is throttling (or a transient error), else None."""
    if response.status_code < 400:
        return None
    err = _error(response)
    code = err.get("code")
    if code in THROTTLE_CODES or err.get("is_transient") or code in (1, 2) or response.status_code >= 500:
        usage = response.headers.get("X-Business-Use-Case-Usage")
        try:
            minutes = max(e.get("estimated_time_to_regain_access", 0)
                          for entries in json.loads(usage).values() for e in entries) if usage else 0
        except (ValueError, AttributeError, TypeError):
            minutes = 0
        return minutes * 60.0 if minutes else -1.0  # -1: back off with jitter
    return None


def _rows_named(rows: pa.Table, samples: dict) -> dict[int, str]:
    """Positions of the rows holding a value that Meta's invalid_entry_samples names, with its reason."""
    named: dict[int, str] = {}
    for c in sent_columns(rows):
        hit = pc.is_in(rows[c], value_set=pa.array([str(v) for v in samples], pa.string()))
        for i in np.flatnonzero(np.asarray(hit.fill_null(False), dtype=bool)):
            value = rows[c][int(i)].as_py()
            named.setdefault(int(i), f"Meta invalid entry ({c}): {samples[value]}")
    return named


class MetaCustomAudiencesDestination(Destination[MetaSettings]):
    destination_type = MetaCustomAudiences

    def __init__(self, settings: MetaSettings, sleep=time.sleep, clock=time.monotonic):
        super().__init__(settings)
        self._token = settings.access_token.value()
        self._app_secret = settings.app_secret.value() if settings.app_secret else None
        self.clock = clock
        headers = {"Authorization": f"Bearer {self._token}"}
        self.http = HttpClient(settings.base_url.rstrip("/") + "/", timeout_s=settings.timeout_s, headers=headers,
                               throttle_delay=throttle_delay, describe_error=self._describe,
                               name="meta_custom_audiences", sleep=sleep, clock=clock)

    def _redact(self, text: str) -> str:
        """Meta's text with any of our secrets (token, app secret, proof) taken out."""
        for secret in (self._token, self._app_secret, self._params().get("appsecret_proof")):
            if secret:
                text = text.replace(secret, "[redacted]")
        return text

    def _describe(self, response: httpx.Response) -> str | None:
        """Meta's error code, subcode and message: the HTTP status (400 for most) does not say why."""
        err = _error(response)
        if not err:
            return None
        code, sub = err.get("code"), err.get("error_subcode")
        text = f"Meta error code {code}" + (f" (subcode {sub})" if sub is not None else "")
        if err.get("message"):
            text += f": {err['message']}"
        return self._redact(text)

    def _params(self) -> dict[str, str]:
        if not self._app_secret:
            return {}
        proof = hmac.new(self._app_secret.encode(), self._token.encode(), hashlib.sha256)
        return {"appsecret_proof": proof.hexdigest()}

    def _call(self, method: str, path: str, **kwargs) -> dict:
        response = self.http.request(method, path, params={**self._params(), **kwargs.pop("params", {})}, **kwargs)
        if response.status_code >= 400:
            err = _error(response)
            code, sub = err.get("code"), err.get("error_subcode")
            described = self._describe(response) or self._redact(response.text[:200])
            message = f"HTTP {response.status_code} on {method} {path.split('?')[0]}: {described}"
            if code == 190:
                raise CredentialsError(f"meta_custom_audiences: the setting 'access_token' was refused: {message}",
                                       status=response.status_code)
            if code in FATAL_CODES or (code == 100 and sub in (33, 1713230)):
                raise TerminalError(message, status=response.status_code)
            raise DestinationError(message, status=response.status_code)
        return response.json()

    def identifier_column(self, kind: str) -> str:
        return META_FIELDS[kind]

    def transform_identifier(self, kind: str, canonical: pa.Array) -> pa.Array:
        return to_meta(kind, canonical)

    def _act(self) -> str:
        return f"{self.account()}/customaudiences"

    def check_audience(self, audience_id: str) -> None:
        self._call("GET", audience_id, params={"fields": "id,name"})

    def find_audience(self, name: str) -> str | None:
        params = {"fields": "id,name", "limit": "200"}
        while True:
            page = self._call("GET", self._act(), params=params)
            for audience in page.get("data", []):
                if audience.get("name") == name:
                    return str(audience["id"])
            after = page.get("paging", {}).get("cursors", {}).get("after")
            if not after or not page.get("paging", {}).get("next"):
                return None
            params = {**params, "after": after}

    def create_audience(self, name: str) -> str:
        with self.http.once():  # a lost answer is looked up by name next run, never sent twice
            created = self._call("POST", self._act(), json={
                "name": name, "subtype": "CUSTOM", "description": "Managed by audience_pipelines",
                "customer_file_source": self.settings.customer_file_source})
        return str(created["id"])

    def open_session(self, ctx: SessionContext) -> Session:
        return _ReplaceSession(self, ctx) if ctx.replace else _DiffSession(self, ctx.audience_id)

    def recover(self, audience_id: str, state: dict) -> Recovery:
        if state.get("kind") != "replace":
            return Recovery("nothing to settle")
        sid = state.get("session_id")
        stage = self.session_stage(audience_id, sid)
        if stage == "finished" and state.get("closing"):
            return Recovery(f"replace session {sid} was closed; the rows it carried are checked again")
        if stage == "finished":  # Meta ended it (its window passed) before the run closed it
            return Recovery(f"replace session {sid} ended before it was closed, so the audience may hold only "
                            "part of the membership; this run replaces it in full in a new session",
                            settled=False, replace_again=True)
        return Recovery(f"replace session {sid} on audience {audience_id} is still open, so the audience may "
                        "hold only part of the membership; this run carries it on with the full membership "
                        "and closes it", settled=False, replace_again=True, resume=state)

    def session_stage(self, audience_id: str, session_id) -> str | None:
        """A session's stage as Meta reports it ("finished" once closed or ended), None if not listed."""
        try:
            body = self._call("GET", f"{audience_id}/sessions", params={"session_id": str(session_id)})
        except DestinationError:
            return None
        stages = [s.get("stage") for s in body.get("data", []) if str(s.get("session_id")) == str(session_id)]
        return stages[0] if stages else None

    def _users(self, path: str, method: str, rows: pa.Table, session: dict) -> BatchResult:
        if rows.num_rows == 0:
            return BatchResult()
        cols = sent_columns(rows)
        data = [["" if v is None else v for v in row] for row in zip(*(rows[c].to_pylist() for c in cols))]
        body = self._call(method, path, json={"payload": {"schema": cols, "data": data}, "session": session})
        received = int(body.get("num_received") or 0)
        invalid = int(body.get("num_invalid_entries") or 0)
        result = BatchResult(stats={"num_received": received, "num_invalid_entries": invalid})
        # Meta names at most a few invalid entries (value -> reason); the rest are only counted.
        samples = body.get("invalid_entry_samples") or {}
        if invalid and isinstance(samples, dict):
            result.rejected = _rows_named(rows, samples)
        missing = max(0, rows.num_rows - received) if "num_received" in body else 0
        result.unapplied = max(0, invalid - len(result.rejected)) + missing
        if result.unapplied:
            reasons = sorted({str(r) for r in samples.values()}) if isinstance(samples, dict) else []
            result.unapplied_reason = (f"Meta did not apply the row (num_invalid_entries {invalid}, "
                                       f"num_received {received} of {rows.num_rows})"
                                       + (f"; reasons given: {'; '.join(reasons)[:200]}" if reasons else ""))
        return result

    def audience_stats(self, audience_id: str) -> AudienceStats:
        body = self._call("GET", audience_id, params={"fields": "approximate_count_lower_bound"})
        value = body.get("approximate_count_lower_bound")
        return AudienceStats(size=int(value) if value is not None else None)

    def close(self) -> None:
        self.http.close()


def _session_id(scope: str) -> int:
    return int(hashlib.sha256(scope.encode()).hexdigest()[:15], 16)


class _DiffSession(MatchListSession):
    """POST and DELETE on /users, a Meta session per operation and method."""

    def _send(self, method: str, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        # A part of a batch sent again gets its own session.
        scope = ctx.request_id if ctx.part else f"{ctx.sync}:{ctx.run_id}"
        session = {"session_id": _session_id(f"{scope}:{ctx.operation}:{method}"),
                   "batch_seq": 1 if ctx.part else ctx.seq, "last_batch_flag": bool(ctx.part) or ctx.last}
        return self.destination._users(f"{self.audience_id}/users", method, rows, session)

    def add(self, rows, ctx):
        return self._send("POST", rows, ctx)

    def remove(self, rows, ctx):
        return self._send("DELETE", rows, ctx)


class _ReplaceSession(Session):
    """One `usersreplace` session: the audience becomes exactly the rows sent when it closes.

    Meta allows one replace session per audience at a time, so a session an earlier run left open
    (journalled) is carried on while its window lasts: same id, later batch numbers, the whole
    membership sent again. Its state is journalled at every batch.
    """

    def __init__(self, client: MetaCustomAudiencesDestination, ctx: SessionContext):
        self.client, self.ctx = client, ctx
        self.session_id = _session_id(f"{ctx.sync}:{ctx.run_id}:replace")
        self.seq = 0
        self.started: float | None = None  # the client's clock
        self.started_at = 0.0  # wall clock, journalled
        self.last_rows: pa.Table | None = None
        window = client.settings.replace_window_s
        resume = ctx.resume or {}
        if resume.get("kind") == "replace" and not resume.get("closing") and \
                time.time() - float(resume.get("started_at", 0)) < window:
            self.session_id, self.seq = int(resume["session_id"]), int(resume.get("batch_seq", 0))
            self.started_at = float(resume["started_at"])
            self.started = client.clock() - (time.time() - self.started_at)

    def _body(self, last: bool) -> dict:
        return {"session_id": self.session_id, "batch_seq": self.seq, "last_batch_flag": last,
                "estimated_num_total": self.ctx.total_rows}

    def _journal(self) -> None:
        self.ctx.save_state({"kind": "replace", "session_id": self.session_id, "batch_seq": self.seq,
                             "started_at": self.started_at})

    def send(self, operation, rows, previous, ctx):
        if self.started is None:
            self.started, self.started_at = self.client.clock(), time.time()
        elif self.client.clock() - self.started > self.client.settings.replace_window_s:
            raise TerminalError(f"the replace session ran past {self.client.settings.replace_window_s:.0f} s, "
                                "near Meta's 90-minute limit; the next run replaces the audience in full")
        self.seq += 1
        # Journalled before the batch: from the first one on, the audience is being replaced.
        self._journal()
        try:
            result = self.client._users(f"{self.ctx.audience_id}/usersreplace", "POST", rows, self._body(False))
        except DestinationError as exc:
            # A batch left out of a replace would drop its members when the session closes: stop
            # with the session open instead, and let the next run carry it on.
            raise TerminalError(f"replace session {self.session_id}: {exc}", status=exc.status) from exc
        self.last_rows = rows
        result.pending = True
        return result

    def finish(self, complete: bool) -> Finish:
        if self.last_rows is None:
            return Finish("applied")  # nothing was sent, nothing replaced
        if not complete:
            return Finish("unknown", reason=f"replace session {self.session_id} cut short")
        # The last batch again, flagged last: sending rows twice in a session is harmless, and
        # no batch is known to be the last before every part sent again has been answered.
        self.seq += 1
        self.ctx.save_state({"kind": "replace", "session_id": self.session_id, "batch_seq": self.seq,
                             "started_at": self.started_at, "closing": True})
        try:
            self.client._users(f"{self.ctx.audience_id}/usersreplace", "POST", self.last_rows, self._body(True))
        except DestinationError as exc:
            # The close may have landed and only its answer been lost: Meta's session list says.
            if self.client.session_stage(self.ctx.audience_id, self.session_id) == "finished":
                return Finish("applied")
            return Finish("unknown", reason=f"replace session {self.session_id} did not close: {exc}")
        return Finish("applied")
