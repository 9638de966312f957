"""Stateful fake of our generic webhook destination convention (destination-apis.md §10)."""

from __future__ import annotations

import copy
import hashlib
import hmac
from collections import namedtuple

from ._server import FakeServer, Request, Response, json_response

KINDS = ("added", "updated", "removed")  # the order rows are indexed and applied
MAX_ROWS = 1000
WebhookRequest = namedtuple("WebhookRequest", "method path headers body status replayed")


def sign(secret: str, body: bytes) -> str:
    """X-Signature value for `body`, as the client must send it."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _error(status: int, message: str, headers=None) -> Response:
    return json_response(status, {"error": message}, headers)


class FakeWebhook(FakeServer):
    def __init__(self, secret="whsec_test", path="/hook"):
        super().__init__()
        self.secret, self.path = secret, path
        self._members: dict = {}  # audience id -> row id -> row dict (ids as sent in JSON)
        self._batches: list[dict] = []
        self._rows: dict[str, list[dict]] = {k: [] for k in KINDS}
        self._replays = 0
        self._idem: dict[str, tuple[str, Response]] = {}  # key -> (body sha256, response)
        self._rejects: dict[str, str] = {}  # str(row id) -> error
        self._no_results = False
        self._result_fields = {"index", "id"}

    # -- inspection (snapshots, safe to keep) ----------------------------
    @property
    def url(self) -> str:
        return self.origin + self.path

    def _snapshot(self, value):
        with self._lock:
            return copy.deepcopy(value)

    members = property(lambda self: self._snapshot(self._members))
    batches_applied = property(lambda self: self._snapshot(self._batches))
    replays = property(lambda self: self._replays)

    def member_ids(self, audience_id) -> set:
        return set(self._snapshot(self._members.get(audience_id, {})))

    def rows_received(self, kind: str) -> list[dict]:
        """Rows of `kind` from applied (non-replayed) requests, rejected ones included."""
        return self._snapshot(self._rows[kind])

    # -- injections -------------------------------------------------------
    def reject_ids(self, ids, error="invalid email") -> None:
        """Persistent: rows with these ids get status "rejected" and are not applied."""
        with self._lock:
            self._rejects.update({str(i): error for i in ids})

    def inject_status(self, status: int, times=1, retry_after=None) -> None:
        """Answer the next `times` requests with `status`; nothing applied or stored."""
        self._push("status", times, status=status, retry_after=retry_after)

    def inject_delay(self, seconds: float, times=1) -> None:
        """Sleep before handling the next `times` requests."""
        self._push("delay", times, seconds=seconds)

    def clear_rejections(self) -> None:
        with self._lock:
            self._rejects.clear()

    def name_results_by(self, *fields: str) -> None:
        """Which of "index", "id" each per-row result carries (none: status and error only)."""
        with self._lock:
            self._result_fields = set(fields)

    def respond_without_results(self, enabled=True) -> None:
        """Answer 200 `{}` instead of per-row results (rows are still applied/rejected)."""
        with self._lock:
            self._no_results = enabled

    # -- HTTP -------------------------------------------------------------
    def _log_entry(self, req: Request, resp: Response):
        try:
            body = req.json()
        except ValueError:
            body = None
        return WebhookRequest(req.method, req.path, req.headers, body, resp.status,
                              req.notes.get("replayed", False))

    def _handle(self, req: Request) -> Response:
        if req.path != self.path:
            return _error(404, "not found")
        if req.method != "POST":
            return _error(405, "method not allowed")
        if inj := self._pop("status", "all"):
            retry = {} if inj["retry_after"] is None else {"Retry-After": str(inj["retry_after"])}
            return _error(inj["status"], "injected failure", retry)
        if not hmac.compare_digest(req.headers.get("x-signature", ""), sign(self.secret, req.body)):
            return _error(401, "invalid signature")
        if not (key := req.headers.get("idempotency-key")):
            return _error(400, "Idempotency-Key header is required")
        if not req.headers.get("content-type", "").startswith("application/json"):
            return _error(415, "Content-Type must be application/json")
        digest = hashlib.sha256(req.body).hexdigest()
        # One lock around check-and-apply: concurrent retries of a key are serialized
        # (the later one sees a replay), so no 409 "in flight" state is needed.
        with self._lock:
            if key in self._idem:
                if self._idem[key][0] != digest:
                    return _error(422, "Idempotency-Key reused with a different body")
                self._replays += 1
                req.notes["replayed"] = True
                return self._idem[key][1]
            resp = self._apply(req, key)
            if resp.status == 200:  # only accepted batches are replayable
                self._idem[key] = (digest, resp)
            return resp

    def _apply(self, req: Request, key: str) -> Response:
        try:
            body = req.json()
        except ValueError:
            return _error(400, "body is not valid JSON")
        aud = body.get("audience") if isinstance(body, dict) else None
        if not isinstance(aud, dict) or aud.get("id") is None:
            return _error(400, "body.audience.id is required")
        if any(not isinstance(body.get(k) or [], list) for k in KINDS):
            return _error(400, f"{'/'.join(KINDS)} must be lists")
        rows = [(kind, row) for kind in KINDS for row in body.get(kind) or []]
        if len(rows) > MAX_ROWS:
            return _error(413, f"{len(rows)} rows in one request; at most {MAX_ROWS}")

        members = self._members.setdefault(aud["id"], {})
        results, counts = [], dict.fromkeys((*KINDS, "rejected"), 0)
        for index, (kind, row) in enumerate(rows):
            rid = row.get("id") if isinstance(row, dict) else None
            error = "row has no id" if rid is None else self._rejects.get(str(rid))
            if self.keep_log:
                self._rows[kind].append(copy.deepcopy(row))
            named = {"index": index, "id": rid}
            results.append({**{k: v for k, v in named.items() if k in self._result_fields},
                            "status": "rejected" if error else "ok", "error": error})
            counts["rejected" if error else kind] += 1
            if error is None and kind == "removed":
                members.pop(rid, None)
            elif error is None:
                members[rid] = copy.deepcopy(row)  # upsert replaces the whole row
        batch = body.get("batch") if isinstance(body.get("batch"), dict) else {}
        self._batches.append({"idempotency_key": key, "audience_id": aud["id"],
                              "run_id": batch.get("run_id"), "seq": batch.get("seq"),
                              "last": batch.get("last"), **counts})
        return json_response(200, {} if self._no_results else {"results": results})
