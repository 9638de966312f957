"""Stateful fake of the Snap Marketing API customer-list segments (destination-apis.md Part 2 §1).

The OAuth refresh-token exchange, the segment list (paged with a small page size, following
`paging.next_link`), segment creation and lookup, and POST / DELETE on `/segments/{id}/users`
(one schema per request, at most 100,000 lowercase-hex SHA-256 values), plus DELETE
`/all_users`. A segment's members are (schema, hash) pairs; `approximate_number_users` is their
count. Error bodies use Snap's envelope (`request_status: ERROR`, `request_id`,
`debug_message`, `display_message`, `error_code`); only E3002 (HTTP 403) is a documented code,
so other errors carry no `error_code` here. The 401 body and the 400 for a users request
carrying a rejected identifier are assumptions: Snap reports failures per request only.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import secrets
import time
from collections import namedtuple
from urllib.parse import urlencode

from ._server import FakeServer, Request, Response, json_response

SnapRequest = namedtuple("SnapRequest", "method path schema n_ids status")  # one per request

SCHEMAS = frozenset({"EMAIL_SHA256", "PHONE_SHA256", "MOBILE_AD_ID_SHA256"})
MAX_IDS = 100_000
MAX_NAME = 375
MAX_LIMIT = 1000
TARGETABLE_AT = 1000  # members a segment needs before Snap can target it
TOKEN_PATH = "/login/oauth2/access_token"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_SEGMENTS = re.compile(r"^/v1/adaccounts/([^/]+)/segments$")
_SEGMENT = re.compile(r"^/v1/segments/([^/]+)$")
_USERS = re.compile(r"^/v1/segments/([^/]+)/(users|all_users)$")


class SnapError(Exception):
    def __init__(self, status: int, debug: str, *, code: str | None = None, display: str | None = None,
                 headers: dict | None = None):
        super().__init__(debug)
        self.status, self.debug, self.code = status, debug, code
        self.display = display or "Something went wrong. Please try again later."
        self.headers = headers or {}

    def response(self) -> Response:
        body = {"request_status": "ERROR", "request_id": secrets.token_hex(12), "debug_message": self.debug,
                "display_message": self.display}
        if self.code:
            body["error_code"] = self.code
        return json_response(self.status, body, self.headers)


def _bad(debug: str) -> SnapError:
    return SnapError(400, debug, display="The request is invalid.")


def _no_permission() -> SnapError:
    return SnapError(403, "Caller does not have permission", code="E3002",
                     display="You do not have permission to perform this action.")


def _ok(**body) -> dict:
    return {"request_status": "SUCCESS", "request_id": secrets.token_hex(12), **body}


class FakeSnapchat(FakeServer):
    def __init__(self, client_id="snap-client-id", client_secret="snap-client-secret",
                 refresh_token="snap-refresh-token", ad_account_id="8adc3db7-8148-4fbf-999c-8d2266369d74", *,
                 page_size=3, token_lifetime=1800):
        super().__init__()
        self.client_id, self.client_secret, self.refresh_token = client_id, client_secret, refresh_token
        self.ad_account_id = ad_account_id
        self.page_size = page_size  # segments a list page holds when the client gives no limit
        self.token_lifetime = token_lifetime
        self._tokens: dict[str, float] = {}  # access token -> monotonic expiry
        self._segments: dict[str, dict] = {}  # insertion order = creation order = list order
        self._members: dict[str, set[tuple[str, str]]] = {}
        self._ids = itertools.count(5677923948298240)
        self._rejected_values: set[str] = set()

    # -- inspection and seeding ----------------------------------------------
    @property
    def url(self) -> str:
        return f"{self.origin}/v1"

    @property
    def token_url(self) -> str:
        return f"{self.origin}{TOKEN_PATH}"

    @property
    def segments(self) -> dict[str, dict]:
        """segment id -> the segment object GET /segments/{id} returns."""
        with self._lock:
            return {sid: self._view(sid) for sid in self._segments}

    def members(self, segment_id) -> set[tuple[str, str]]:
        """{(schema, sha256 hex), ...} held by a segment."""
        with self._lock:
            return set(self._members[str(segment_id)])

    def member_values(self, segment_id, schema: str) -> set[str]:
        return {v for s, v in self.members(segment_id) if s == schema}

    def segment_id_by_name(self, name: str) -> str | None:
        with self._lock:
            ids = [sid for sid, s in self._segments.items() if s["name"] == name]
        if len(ids) > 1:  # Snap allows it; here it is the client bug under test
            raise LookupError(f"{len(ids)} segments are named {name!r}: {ids}")
        return ids[0] if ids else None

    def create_segment(self, name: str, *, ad_account_id: str | None = None, source_type="FIRST_PARTY",
                       retention_in_days=9999, description="") -> str:
        """Seed a segment directly (no HTTP, no checks); returns its id."""
        with self._lock:
            sid = str(next(self._ids))
            now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
            self._segments[sid] = {"id": sid, "name": name, "description": description, "status": "ACTIVE",
                                   "source_type": source_type, "retention_in_days": retention_in_days,
                                   "ad_account_id": ad_account_id or self.ad_account_id,
                                   "created_at": now, "updated_at": now, "uploaded": False}
            self._members[sid] = set()
            return sid

    def add_members(self, segment_id, pairs) -> None:
        """Seed members directly: (schema, hash) pairs."""
        with self._lock:
            self._members[str(segment_id)].update(pairs)

    def issue_access_token(self) -> str:
        token = "snap-at-" + secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = time.monotonic() + self.token_lifetime
        return token

    def expire_access_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    # -- injections ----------------------------------------------------------
    # Faults share one FIFO queue, consumed by the next authenticated API request in scope:
    # "users" (POST / DELETE on users and all_users, the default), "other" (segments) or "all".
    # They never hit the token endpoint. Delays, resets and lost answers (base class) hit before
    # auth, in scopes "users", "other" or "token".
    def inject_throttle(self, times=1, scope="users") -> None:
        """HTTP 429, as Snap throttles (no Retry-After)."""
        self._push("fault", times, scope, status=429)

    def inject_server_error(self, times=1, status=500, scope="users") -> None:
        self._push("fault", times, scope, status=status)

    def inject_permission_denied(self, times=1, scope="users") -> None:
        """HTTP 403 E3002."""
        self._push("fault", times, scope, status=403)

    def inject_token_expiry(self, times=1, scope="users") -> None:
        """The access token of the next request in scope stops being valid there (HTTP 401)."""
        self._push("fault", times, scope, status=401)

    def inject_unconfirmed(self, times=1) -> None:
        """The next users call answers 200 with sub_request_status FAILED and applies nothing."""
        self._push("fault", times, "users", status=200)

    def inject_delay(self, seconds: float, times=1, scope="users") -> None:
        self._push("delay", times, scope, seconds=seconds)

    def reject_values(self, values) -> None:
        """Persistent: a users request carrying any of these values is refused whole (HTTP 400)."""
        with self._lock:
            self._rejected_values.update(values)

    def clear_rejected_values(self) -> None:
        with self._lock:
            self._rejected_values.clear()

    # -- HTTP ------------------------------------------------------------------
    def _scope(self, req: Request) -> str:
        if req.path == TOKEN_PATH:
            return "token"
        return "users" if _USERS.match(req.path) else "other"

    def _log_entry(self, req: Request, resp: Response):
        return SnapRequest(req.method, req.path, req.notes.get("schema"), req.notes.get("n_ids"), resp.status)

    def _handle(self, req: Request) -> Response:
        if req.path == TOKEN_PATH:
            return self._token(req)
        try:
            token = self._check_auth(req)
            if fault := self._pop("fault", self._scope(req)):
                if fault["status"] == 200:
                    return json_response(200, _ok(users=[{
                        "sub_request_status": "FAILED", "debug_message": "Failed to process the users upload"}]))
                if fault["status"] == 401:
                    with self._lock:
                        self._tokens.pop(token, None)
                raise self._fault(fault["status"])
            return json_response(200, self._route(req))
        except SnapError as e:
            return e.response()

    @staticmethod
    def _fault(status: int) -> SnapError:
        if status == 429:
            return SnapError(429, "Too many requests", display="Too many requests. Please try again later.")
        if status == 403:
            return _no_permission()
        if status == 401:
            return SnapError(401, "Unauthorized: the access token is invalid or has expired")
        return SnapError(status, "Internal server error")

    def _check_auth(self, req: Request) -> str:
        auth = req.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        with self._lock:
            expiry = self._tokens.get(token)
        if expiry is None or time.monotonic() >= expiry:
            raise SnapError(401, "Unauthorized: the access token is invalid or has expired")
        return token

    def _token(self, req: Request) -> Response:
        def refuse(status, error, description):
            return json_response(status, {"error": error, "error_description": description})

        if req.method != "POST" or "application/x-www-form-urlencoded" not in req.headers.get("content-type", ""):
            return refuse(400, "invalid_request", "POST a form (application/x-www-form-urlencoded)")
        form = req.form()
        if form.get("grant_type") != "refresh_token":
            return refuse(400, "unsupported_grant_type", "grant_type must be refresh_token")
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return refuse(401, "invalid_client", "Invalid client credentials")
        if form.get("refresh_token") != self.refresh_token:
            return refuse(400, "invalid_grant", "Invalid refresh token")
        return json_response(200, {"access_token": self.issue_access_token(), "token_type": "Bearer",
                                   "expires_in": self.token_lifetime, "refresh_token": self.refresh_token,
                                   "scope": "snapchat-marketing-api"})

    def _body(self, req: Request) -> dict:
        if "application/json" not in req.headers.get("content-type", ""):
            raise _bad("Content-Type must be application/json")
        try:
            body = req.json()
        except ValueError:
            raise _bad("Malformed JSON in the request body") from None
        if not isinstance(body, dict):
            raise _bad("The request body must be a JSON object")
        return body

    def _route(self, req: Request) -> dict:
        if m := _SEGMENTS.match(req.path):
            if m.group(1) != self.ad_account_id:
                raise _no_permission()
            if req.method == "GET":
                return self._list(req, m.group(1))
            if req.method == "POST":
                return self._create(req, m.group(1))
        elif (m := _SEGMENT.match(req.path)) and req.method == "GET":
            with self._lock:
                return _ok(segments=[{"sub_request_status": "SUCCESS", "segment": self._view(self._own(m.group(1)))}])
        elif (m := _USERS.match(req.path)) and m.group(2) == "users" and req.method in ("POST", "DELETE"):
            return self._users(req, m.group(1), remove=req.method == "DELETE")
        elif (m := _USERS.match(req.path)) and req.method == "DELETE":
            with self._lock:
                sid = self._own(m.group(1))
                self._members[sid].clear()
                self._segments[sid]["uploaded"] = True
                return _ok(segments=[{"sub_request_status": "SUCCESS", "segment": self._view(sid)}])
        raise SnapError(404, f"Resource not found: {req.method} {req.path}", display="Not found.")

    def _own(self, sid: str) -> str:
        """A segment of this ad account (caller holds the lock)."""
        segment = self._segments.get(sid)
        if segment is None:
            raise SnapError(404, f"Segment with id {sid} not found", display="Not found.")
        if segment["ad_account_id"] != self.ad_account_id:
            raise _no_permission()
        return sid

    def _view(self, sid: str) -> dict:
        s = self._segments[sid]
        n = len(self._members[sid])
        targetable = "READY" if n >= TARGETABLE_AT else "TOO_FEW_USERS" if s["uploaded"] else "NOT_READY"
        view = {k: v for k, v in s.items() if k != "uploaded"}
        return {**view, "approximate_number_users": n, "targetable_status": targetable,
                "upload_status": "COMPLETE" if s["uploaded"] else "NO_UPLOAD"}

    def _list(self, req: Request, aid: str) -> dict:
        limit = req.query.get("limit")
        if limit is not None and not (limit.isdigit() and 1 <= int(limit) <= MAX_LIMIT):
            raise _bad(f"limit must be an integer from 1 to {MAX_LIMIT}")
        size = int(limit) if limit else self.page_size
        start = 0
        if cursor := req.query.get("cursor"):
            try:  # opaque to clients; here base64 of the next offset
                start = int(json.loads(base64.urlsafe_b64decode(cursor.encode()).decode())["o"])
            except (ValueError, KeyError, TypeError):
                raise _bad("Invalid cursor") from None
        with self._lock:
            ids = [sid for sid, s in self._segments.items() if s["ad_account_id"] == aid]
            page = [{"sub_request_status": "SUCCESS", "segment": self._view(sid)} for sid in ids[start:start + size]]
        paging = {}
        if start + size < len(ids):
            query = {"cursor": base64.urlsafe_b64encode(json.dumps({"o": start + size}).encode()).decode()}
            if limit:
                query["limit"] = limit
            paging["next_link"] = f"{self.url}/adaccounts/{aid}/segments?{urlencode(query)}"
        return _ok(paging=paging, segments=page)

    def _create(self, req: Request, aid: str) -> dict:
        segments = self._body(req).get("segments")
        if not isinstance(segments, list) or not segments:
            raise _bad("segments must be a non-empty list")
        for i, s in enumerate(segments):
            if not isinstance(s, dict):
                raise _bad(f"segments[{i}] must be an object")
            name = s.get("name")
            if not isinstance(name, str) or not name.strip():
                raise _bad(f"segments[{i}].name is required")
            if len(name) > MAX_NAME:
                raise _bad(f"segments[{i}].name is longer than {MAX_NAME} characters")
            if s.get("source_type") != "FIRST_PARTY":
                raise _bad(f"segments[{i}].source_type must be FIRST_PARTY for a customer list")
            days = s.get("retention_in_days")
            if isinstance(days, bool) or not isinstance(days, int) or days < 1:
                raise _bad(f"segments[{i}].retention_in_days is required (a positive integer; 9999 for lifetime)")
            if s.get("ad_account_id", aid) != aid:
                raise _bad(f"segments[{i}].ad_account_id does not match the ad account in the path")
            if not isinstance(s.get("description", ""), str):
                raise _bad(f"segments[{i}].description must be a string")
        with self._lock:
            out = []
            for s in segments:
                sid = self.create_segment(s["name"], ad_account_id=aid, retention_in_days=s["retention_in_days"],
                                          description=s.get("description", ""))
                out.append({"sub_request_status": "success", "segment": self._view(sid)})
        # Snap's create example writes the statuses in lowercase.
        return {"request_status": "success", "request_id": secrets.token_hex(12), "segments": out}

    def _users(self, req: Request, sid: str, remove: bool) -> dict:
        with self._lock:
            self._own(sid)
            if self._segments[sid]["source_type"] != "FIRST_PARTY":
                raise _bad(f"Segment {sid} is not a FIRST_PARTY segment; users cannot be uploaded to it")
            rejected = set(self._rejected_values)
        users = self._body(req).get("users")
        if not isinstance(users, list) or len(users) != 1 or not isinstance(users[0], dict):
            raise _bad("users must hold exactly one entry: one schema per request")
        entry = users[0]
        if "id" in entry and str(entry["id"]) != sid:
            raise _bad(f"users[0].id {entry['id']} does not match segment {sid}")
        schema = entry.get("schema")
        if not (isinstance(schema, list) and len(schema) == 1 and schema[0] in SCHEMAS):
            raise _bad(f"users[0].schema must be one of {sorted(SCHEMAS)}, as a list of one")
        data = entry.get("data")
        if not isinstance(data, list) or not data:
            raise _bad("users[0].data must be a non-empty list")
        req.notes.update(schema=schema[0], n_ids=len(data))
        if len(data) > MAX_IDS:
            raise _bad(f"users[0].data holds {len(data)} identifiers; at most {MAX_IDS} per request")
        values = []
        for i, row in enumerate(data):
            if not (isinstance(row, list) and len(row) == 1 and isinstance(row[0], str)
                    and _HEX64.fullmatch(row[0])):
                raise _bad(f"users[0].data[{i}] must be a list of one lowercase SHA-256 hex value")
            values.append(row[0])
        if refused := [v for v in values if v in rejected]:
            raise _bad(f"Invalid identifier in users[0].data: {refused[0]}")
        pairs = {(schema[0], v) for v in values}
        with self._lock:
            if sid not in self._segments:  # deleted meanwhile
                raise SnapError(404, f"Segment with id {sid} not found", display="Not found.")
            if remove:
                self._members[sid].difference_update(pairs)
            else:
                self._members[sid].update(pairs)
            self._segments[sid]["uploaded"] = True
        return _ok(users=[{"sub_request_status": "SUCCESS", "user": {"number_uploaded_users": len(values)}}])
