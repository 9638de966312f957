"""Stateful fake of Meta Marketing API custom audiences (destination-apis.md §0, §1)."""

from __future__ import annotations

import base64
import itertools
import json
import re
import secrets
import time
from collections import namedtuple
from urllib.parse import urlencode

import orjson

from ._server import FakeServer, Request, Response, json_response

MULTI_KEYS = frozenset("EXTERN_ID EMAIL PHONE GEN DOBY DOBM DOBD LN FN FI CT ST ZIP MADID "
                       "COUNTRY LOOKALIKE_VALUE".split())
UNHASHED = frozenset({"EXTERN_ID", "MADID", "LOOKALIKE_VALUE"})
# Meta matches a person on any one of these; a removal takes out every person it matches.
MATCH_KEYS = frozenset({"EMAIL", "PHONE", "MADID", "EXTERN_ID"})
# Single-key schemas are stored under the multi-key field name so state is uniform.
SINGLE_KEYS = {"EMAIL_SHA256": "EMAIL", "PHONE_SHA256": "PHONE", "MOBILE_ADVERTISER_ID": "MADID"}
FILE_SOURCES = frozenset({"USER_PROVIDED_ONLY", "PARTNER_PROVIDED_ONLY",
                          "BOTH_USER_AND_PARTNER_PROVIDED"})
MAX_ROWS, MAX_SAMPLES = 10_000, 10
REPLACE_WINDOW_S = 5400  # Meta ends a usersreplace session 90 minutes after its first batch
THROTTLES = {  # code -> (subcode, message)
    4: (1504022, "Application request limit reached"),
    17: (2446079, "User request limit reached"),
    341: (None, "Application limit reached"),
    613: (1487742, "There have been too many calls from this ad-account. Wait a bit and try "
                   "again."),
    80003: (None, "There have been too many calls to this ad-account. Wait a bit and try again."),
}
MetaRequest = namedtuple("MetaRequest", "method path n_rows status")  # one per request

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX_DIGITS = b"0123456789abcdef"


def _well_formed_columns(fields: list[str], rows: list[list]) -> list[list[str]] | None:
    """The payload's columns when every value is a non-empty string and every hashed one 64
    lowercase hex (the per-row checks would pass every row, so they run column-wise at C speed)."""
    columns = [[row[j] for row in rows] for j in range(len(fields))]
    for field, column in zip(fields, columns):
        if set(map(type, column)) - {str} or "" in column:
            return None
        if field not in UNHASHED and (set(map(len, column)) - {64}
                                      or "".join(column).encode().translate(None, _HEX_DIGITS)):
            return None
    return columns


class _Rows:
    """Uploaded people grouped by their fields (sorted): [(fields, [values, ...]), ...].

    A person is the non-empty (field, value) pairs of a row; value tuples follow `fields`."""

    def __init__(self, groups: list[tuple[tuple[str, ...], list[tuple]]] | None = None):
        self.groups = groups or []

    def __len__(self) -> int:
        return sum(len(values) for _, values in self.groups)

    @classmethod
    def of_columns(cls, fields: list[str], rows: list[list[str]], columns: list[list[str]]) -> _Rows:
        order = sorted(range(len(fields)), key=fields.__getitem__)
        values = list(map(tuple, rows)) if order == list(range(len(fields))) else \
            list(zip(*(columns[j] for j in order)))
        return cls([(tuple(fields[j] for j in order), values)])

    def append(self, person: dict[str, str]) -> None:
        fields = tuple(sorted(person))
        values = tuple(person[f] for f in fields)
        for held_fields, held in self.groups:
            if held_fields == fields:
                held.append(values)
                return
        self.groups.append((fields, [values]))


class _People:
    """One audience's people: for each set of fields, the set of value tuples (compact, where
    a frozenset of pairs per person made the fake the slowest part of a 1M-row benchmark)."""

    def __init__(self):
        self.groups: dict[tuple[str, ...], set[tuple]] = {}

    def __len__(self) -> int:
        return sum(map(len, self.groups.values()))

    def add(self, rows: _Rows) -> None:
        for fields, values in rows.groups:
            self.groups.setdefault(fields, set()).update(values)

    def remove(self, rows: _Rows) -> None:
        """A held person goes when any of its match keys is in the request; a row with none of
        them takes out only the person it equals."""
        wanted: dict[str, set[str]] = {}
        for fields, values in rows.groups:
            for j, f in enumerate(fields):
                if f in MATCH_KEYS:
                    wanted.setdefault(f, set()).update(v[j] for v in values)
        for fields, held in self.groups.items():
            for j, w in [(j, wanted[f]) for j, f in enumerate(fields) if f in wanted]:
                held.difference_update([v for v in held if v[j] in w])
        for fields, values in rows.groups:
            if not MATCH_KEYS.intersection(fields) and fields in self.groups:
                self.groups[fields].difference_update(values)

    def frozensets(self) -> set[frozenset]:
        return {frozenset(zip(fields, v)) for fields, held in self.groups.items() for v in held}

    def values(self, field: str) -> set[str]:
        return {v[fields.index(field)] for fields, held in self.groups.items() if field in fields for v in held}


_VERSION = re.compile(r"^/v\d+(?:\.\d+)?(?=/)")
_ACT_CA = re.compile(r"^/act_([^/]+)/customaudiences$")
_USERS = re.compile(r"^/(\d+)/users$")
_REPLACE = re.compile(r"^/(\d+)/usersreplace$")
_SESSIONS = re.compile(r"^/(\d+)/sessions$")
_OBJECT = re.compile(r"^/(\d+)$")


class GraphError(Exception):
    def __init__(self, code, message, *, status=400, subcode=None, type="OAuthException",
                 transient=False, headers=None):
        super().__init__(message)
        self.code, self.message, self.status, self.subcode = code, message, status, subcode
        self.type, self.transient, self.headers = type, transient, headers or {}

    def response(self) -> Response:
        err = {"message": self.message, "type": self.type, "code": self.code,
               "error_subcode": self.subcode, "is_transient": self.transient,
               "fbtrace_id": "A" + secrets.token_urlsafe(16)}
        if self.subcode is None:
            del err["error_subcode"]
        return json_response(self.status, {"error": err}, self.headers)


def _bad(message: str) -> GraphError:
    return GraphError(100, f"(#100) {message}")


def _missing(obj_id: str) -> GraphError:
    return GraphError(100, f"Unsupported request - Object with ID '{obj_id}' does not exist, "
                      "cannot be loaded due to missing permissions, or does not support this "
                      "operation.", subcode=33, type="GraphMethodException")


def _int_param(value, name: str, low: int, high: int = 2**63 - 1) -> int:
    """Graph accepts integers as JSON numbers or numeric strings."""
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(f"Param {name} must be an integer between {low} and {high}")
    return value


def _replace_session(session: dict) -> tuple[int, int, bool, int | None]:
    """usersreplace requires `session`; -> (session_id, batch_seq, last_batch_flag, estimate)."""
    if not session:
        raise _bad("The parameter session is required")
    for key in ("session_id", "batch_seq"):
        if session.get(key) is None:
            raise _bad(f"The parameter session.{key} is required")
    last = session.get("last_batch_flag", False)
    if isinstance(last, str) and last.lower() in ("true", "false"):
        last = last.lower() == "true"
    if not isinstance(last, bool):
        raise _bad("Param session.last_batch_flag must be a boolean")
    estimated = session.get("estimated_num_total")
    return (_int_param(session["session_id"], "session.session_id", -2**63),
            _int_param(session["batch_seq"], "session.batch_seq", 1), last,
            None if estimated is None else _int_param(estimated, "session.estimated_num_total", 0))


def _jsonish(value, name: str):
    """Graph params arrive as JSON strings (form/query) or as native JSON values."""
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except ValueError:
            raise _bad(f"Param {name} must be a JSON object") from None
    if value is not None and not isinstance(value, dict):
        raise _bad(f"Param {name} must be a JSON object")
    return value


class FakeMeta(FakeServer):
    def __init__(self, access_token="test-token", ad_account_id="1234", api_version="v25.0",
                 replace_window_s: float = REPLACE_WINDOW_S):
        super().__init__()
        self.access_token = access_token
        self.match_share = 1.0  # share of uploaded people Meta reports as matched
        self.ad_account_id = str(ad_account_id).removeprefix("act_")
        self.api_version = api_version
        self._audiences: dict[str, dict] = {}  # insertion order = creation order = list order
        self._members: dict[str, _People] = {}
        self._invalid_values: set[str] = set()
        self._max_samples = MAX_SAMPLES
        self._ids = itertools.count(23850000000000001)
        # Upload sessions per audience, oldest first: kind "users" or "replace" (see _new_session).
        self._sessions: dict[str, list[dict]] = {}
        self.replace_window_s = replace_window_s  # checked against time.monotonic()

    # -- inspection -------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{self.origin}/{self.api_version}"

    @property
    def audiences(self) -> dict[str, dict]:
        with self._lock:
            return {aid: self._view(aid) for aid in self._audiences}

    def members(self, audience_id: str) -> set[frozenset]:
        """Set of frozenset({(FIELD, value), ...}) rows; only non-empty values are kept.

        During a usersreplace session: only the rows uploaded so far in that session.
        """
        with self._lock:
            return self._members[str(audience_id)].frozensets()

    def member_values(self, audience_id: str, field: str) -> set[str]:
        with self._lock:
            return self._members[str(audience_id)].values(field)

    def audience_id_by_name(self, name: str) -> str | None:
        with self._lock:
            ids = [aid for aid, a in self._audiences.items() if a["name"] == name]
        if len(ids) > 1:  # duplicate creation is usually the client bug under test
            raise LookupError(f"{len(ids)} audiences are named {name!r}: {ids}")
        return ids[0] if ids else None

    def create_audience(self, name: str, *, description="",
                        customer_file_source="USER_PROVIDED_ONLY") -> str:
        """Seed an audience directly (no HTTP); returns its id."""
        with self._lock:
            aid = str(next(self._ids))
            self._audiences[aid] = {"id": aid, "name": name, "subtype": "CUSTOM",
                                    "description": description,
                                    "customer_file_source": customer_file_source}
            self._members[aid] = _People()
            self._sessions[aid] = []
            return aid

    def replace_sessions(self, audience_id: str) -> list[dict]:
        """usersreplace sessions of an audience, oldest first: session_id (int), status
        ("open", "finished" or "expired"), batches (batch_seq values, arrival order),
        rows_received, rows_invalid."""
        with self._lock:
            self._expire_due()
            return [{"session_id": s["session_id"], "status": s["status"],
                     "batches": list(s["responses"]), "rows_received": s["num_received"],
                     "rows_invalid": s["num_invalid"]}
                    for s in self._sessions[str(audience_id)] if s["kind"] == "replace"]

    def expire_sessions(self, audience_id: str | None = None) -> list[int]:
        """Simulate the 90-minute window passing: end every open replace session (of one
        audience, or all). The audience keeps only what the session uploaded. Returns their ids."""
        with self._lock:
            aids = [str(audience_id)] if audience_id is not None else list(self._sessions)
            ended = []
            for aid in aids:
                if open_ := self._open_replace(aid):
                    self._end(open_, "expired")
                    ended.append(open_["session_id"])
            return ended

    # -- injections -------------------------------------------------------
    # Faults (throttle, server error) share one FIFO queue. Each use is consumed by the
    # next authenticated request in scope: endpoint="users" (POST/DELETE /{id}/users and
    # POST /{id}/usersreplace, the default), "usersreplace" (replace calls only) or "all".
    # Delays have their own queue and hit before auth.
    def inject_throttle(self, times=1, code=80003, endpoint="users", message=None) -> None:
        """`message` replaces Meta's text (e.g. one echoing a request parameter)."""
        if code not in THROTTLES:
            raise ValueError(f"unsupported throttle code {code}; use one of {sorted(THROTTLES)}")
        self._push("fault", times, endpoint, code=code, status=400, message=message)

    def inject_server_error(self, times=1, status=500, endpoint="users") -> None:
        self._push("fault", times, endpoint, code=2, status=status)

    def inject_delay(self, seconds: float, times=1, endpoint="users") -> None:
        self._push("delay", times, endpoint, seconds=seconds)

    def inject_invalid(self, values, *, samples: int = MAX_SAMPLES) -> None:
        """Persistent: any row holding one of these values is counted invalid, not applied.

        `samples` caps how many of them a response names in invalid_entry_samples
        (0: counts only).
        """
        with self._lock:
            self._invalid_values.update(values)
            self._max_samples = samples

    def clear_invalid(self) -> None:
        with self._lock:
            self._invalid_values.clear()

    # -- HTTP -------------------------------------------------------------
    def _scope(self, req: Request) -> str:
        route = _VERSION.sub("", req.path)
        if _REPLACE.match(route):
            return "usersreplace"  # _pop lets "users" injections hit it too
        return "users" if _USERS.match(route) else "other"

    def _pop(self, kind: str, scope: str) -> dict | None:
        if scope != "usersreplace":
            return super()._pop(kind, scope)
        with self._lock:  # as FakeServer._pop, but a replace call is also in scope "users"
            for inj in self._injections:
                if inj["kind"] == kind and inj["scope"] in ("all", "users", "usersreplace"):
                    inj["left"] -= 1
                    if inj["left"] == 0:
                        self._injections.remove(inj)
                    return inj
        return None

    def _log_entry(self, req: Request, resp: Response):
        return MetaRequest(req.method, req.path, req.notes.get("n_rows"), resp.status)

    def _handle(self, req: Request) -> Response:
        try:
            params = self._params(req)
            self._check_auth(req, params)
            if fault := self._pop("fault", self._scope(req)):
                raise self._fault(fault)
            return json_response(200, self._route(req, params))
        except GraphError as e:
            return e.response()

    def _params(self, req: Request) -> dict:
        params = dict(req.query)
        if req.body and "json" in req.headers.get("content-type", ""):
            params.update(_jsonish(req.body.decode(errors="replace"), "body") or {})
        elif req.body:
            params.update(req.form())
        return params

    def _check_auth(self, req: Request, params: dict) -> None:
        token = params.get("access_token")
        auth = req.headers.get("authorization", "")
        if token is None and auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        if token != self.access_token:
            raise GraphError(190, "Invalid OAuth access token.", subcode=460)

    def _fault(self, inj: dict) -> GraphError:
        if inj["code"] == 2:
            return GraphError(2, "An unexpected error has occurred. Please retry your request "
                              "later.", status=inj["status"], transient=True)
        subcode, message = THROTTLES[inj["code"]]
        message = inj.get("message") or message
        usage = {self.ad_account_id: [{"type": "custom_audience", "call_count": 100,
                                       "total_cputime": 100, "total_time": 100,
                                       "estimated_time_to_regain_access": 0}]}
        return GraphError(inj["code"], message, subcode=subcode, transient=True,
                          headers={"X-Business-Use-Case-Usage": json.dumps(usage)})

    def _route(self, req: Request, params: dict) -> dict:
        route = _VERSION.sub("", req.path)
        if m := _ACT_CA.match(route):
            if m.group(1) != self.ad_account_id:
                raise _missing(f"act_{m.group(1)}")
            if req.method == "GET":
                return self._list(req, params)
            if req.method == "POST":
                return self._create(params)
        elif (m := _USERS.match(route)) and req.method in ("POST", "DELETE"):
            return self._users(req, params, m.group(1), remove=req.method == "DELETE")
        elif (m := _REPLACE.match(route)) and req.method == "POST":
            return self._usersreplace(req, params, m.group(1))
        elif (m := _SESSIONS.match(route)) and req.method == "GET":
            return self._list_sessions(params, m.group(1))
        elif (m := _OBJECT.match(route)) and req.method == "GET":
            with self._lock:
                if m.group(1) not in self._audiences:
                    raise _missing(m.group(1))
                return self._view(m.group(1), params.get("fields"))
        raise GraphError(2500, f"Unknown path components: {route} ({req.method})")

    def _view(self, aid: str, fields: str | None = None) -> dict:
        """All fields when `fields` is absent; else id + the named ones (unknown ignored)."""
        # Meta counts the people it matched, not the rows uploaded.
        n = int(len(self._members[aid]) * self.match_share)
        full = {**self._audiences[aid], "account_id": self.ad_account_id,
                "approximate_count_lower_bound": n, "approximate_count_upper_bound": n,
                "operation_status": {"code": 200, "description": "Normal"}}
        if not fields:
            return full
        wanted = {"id"} | {f.strip() for f in fields.split(",")}
        return {k: v for k, v in full.items() if k in wanted}

    def _list(self, req: Request, params: dict) -> dict:
        limit = str(params.get("limit", 25))
        if not limit.isdigit() or int(limit) < 1:
            raise _bad("Param limit must be a positive integer")
        limit = int(limit)
        with self._lock:
            ids = list(self._audiences)
            start = 0
            if after := params.get("after"):
                try:  # cursors are opaque to clients; here base64 of the last id seen
                    start = ids.index(base64.urlsafe_b64decode(after.encode()).decode()) + 1
                except ValueError:
                    raise _bad("Invalid cursor") from None
            page = ids[start:start + limit]
            data = [self._view(aid, params.get("fields")) for aid in page]
        if not page:
            return {"data": []}  # Graph omits paging on an empty page
        before, after = (base64.urlsafe_b64encode(page[i].encode()).decode() for i in (0, -1))
        paging = {"cursors": {"before": before, "after": after}}
        if start + limit < len(ids):
            paging["next"] = f"{self.origin}{req.path}?{urlencode({**req.query, 'after': after})}"
        return {"data": data, "paging": paging}

    def _create(self, params: dict) -> dict:
        if not params.get("name"):
            raise _bad("The parameter name is required")
        if params.get("subtype", "CUSTOM") != "CUSTOM":
            raise _bad("Param subtype must be CUSTOM")
        source = params.get("customer_file_source")  # optional; validated when sent
        if source is not None and source not in FILE_SOURCES:
            raise _bad(f"Param customer_file_source must be one of {sorted(FILE_SOURCES)}")
        return {"id": self.create_audience(params["name"], customer_file_source=source,
                                           description=params.get("description", ""))}

    def _users(self, req: Request, params: dict, aid: str, remove: bool) -> dict:
        session, n_rows, valid, n_invalid, samples = self._read_rows(req, params, aid)
        with self._lock:
            self._expire_due()
            if open_ := self._open_replace(aid):
                raise GraphError(2650, "Failed to update the custom audience: replace session "
                                 f"{open_['session_id']} is in progress for this audience")
            members = self._members[aid]
            if not remove:
                members.add(valid)
            else:
                members.remove(valid)
            sid = str(session.get("session_id") or secrets.randbelow(2**62))
            self._record_users_session(aid, sid, session, n_rows, len(valid), n_invalid)
        return {"audience_id": aid, "session_id": sid,
                "num_received": n_rows, "num_invalid_entries": n_invalid,
                "invalid_entry_samples": samples}

    def _read_rows(self, req: Request, params: dict, aid: str):
        """Validate payload (and parse session); -> (session, n_rows, valid, n_invalid, samples)."""
        with self._lock:
            if aid not in self._audiences:
                raise _missing(aid)
            bad_values, max_samples = set(self._invalid_values), self._max_samples
        payload = _jsonish(params.get("payload"), "payload")
        if payload is None:
            raise _bad("The parameter payload is required")
        data = payload.get("data")
        if not isinstance(data, list):
            raise _bad("payload.data must be a list")
        req.notes["n_rows"] = len(data)
        fields, rows = self._shape(payload.get("schema"), data)
        if len(rows) > MAX_ROWS:
            raise _bad(f"Too many rows in payload.data: {len(rows)} (max {MAX_ROWS} per request)")
        # `session` may be a top-level param (docs) or sit inside the payload (some clients).
        session = _jsonish(params.get("session", payload.get("session")), "session") or {}

        if not bad_values and (columns := _well_formed_columns(fields, rows)) is not None:
            return session, len(rows), _Rows.of_columns(fields, rows, columns), 0, {}
        valid, samples, n_invalid = _Rows(), {}, 0
        for i, row in enumerate(rows):
            nonempty = {f: str(v) for f, v in zip(fields, row) if v not in (None, "")}
            malformed = [(f, v) for f, v in nonempty.items()
                         if f not in UNHASHED and not _HEX64.fullmatch(v)]
            injected = [v for v in nonempty.values() if v in bad_values]
            if not nonempty:
                key, reason = f"row {i}", "row has no non-empty value"
            elif malformed:
                key, reason = malformed[0][1], f"{malformed[0][0]}: not lowercase SHA-256 hex"
            elif injected:
                key, reason = injected[0], "invalid entry (injected)"
            else:
                valid.append(nonempty)
                continue
            n_invalid += 1
            if len(samples) < min(max_samples, MAX_SAMPLES):
                samples[key] = reason
        return session, len(rows), valid, n_invalid, samples

    # -- replace sessions and the session log ------------------------------
    def _usersreplace(self, req: Request, params: dict, aid: str) -> dict:
        session, n_rows, valid, n_invalid, samples = self._read_rows(req, params, aid)
        sid, seq, last, estimated = _replace_session(session)
        with self._lock:
            self._expire_due()
            open_ = self._open_replace(aid)
            if open_ and open_["session_id"] != sid:
                raise _bad(f"Another replace session is in progress for this audience (session "
                           f"{open_['session_id']}); wait for it to finish before starting one")
            rec = open_ or next((s for s in self._sessions[aid]
                                 if s["kind"] == "replace" and s["session_id"] == sid), None)
            if rec is not None and rec["status"] != "open":
                raise _bad(f"Replace session {sid} has ended ({rec['status']}); start a new "
                           "session with a new session_id")
            if rec is not None and seq in rec["responses"]:
                return rec["responses"][seq]  # a retried batch: answered again, not re-applied
            if rec is not None and seq < max(rec["responses"]):
                raise _bad(f"session.batch_seq must increase: got {seq} after "
                           f"{max(rec['responses'])} in replace session {sid}")
            if rec is None:  # first batch: the old membership is gone from here on
                rec = self._new_session(aid, "replace", sid)
                self._members[aid] = _People()
            self._members[aid].add(valid)
            rec["num_received"] += n_rows
            rec["num_matched"] += len(valid)
            rec["num_invalid"] += n_invalid
            rec["estimated_num_total"] = estimated or rec["estimated_num_total"]
            rec["responses"][seq] = resp = {
                "account_id": self.ad_account_id, "session_id": str(sid), "num_received": n_rows,
                "num_invalid_entries": n_invalid, "invalid_entry_samples": samples}
            if last:
                self._end(rec, "finished")
            return resp

    def _new_session(self, aid: str, kind: str, sid) -> dict:
        rec = {"kind": kind, "session_id": sid, "status": "open", "responses": {},
               "num_received": 0, "num_matched": 0, "num_invalid": 0,
               "estimated_num_total": None, "started": time.monotonic(),
               "start_time": int(time.time()), "end_time": None}
        self._sessions[aid].append(rec)
        return rec

    @staticmethod
    def _end(rec: dict, status: str) -> None:
        rec["status"], rec["end_time"] = status, int(time.time())

    def _open_replace(self, aid: str) -> dict | None:
        return next((s for s in self._sessions[aid]
                     if s["kind"] == "replace" and s["status"] == "open"), None)

    def _expire_due(self) -> None:
        """Lazily end replace sessions whose window has passed (caller holds the lock)."""
        now = time.monotonic()
        for recs in self._sessions.values():
            for s in recs:
                if (s["kind"] == "replace" and s["status"] == "open"
                        and now - s["started"] >= self.replace_window_s):
                    self._end(s, "expired")

    def _record_users_session(self, aid, sid: str, session: dict, n_rows, n_valid, n_invalid):
        """Log a /users call under its session; one without `session` is a one-batch session."""
        rec = next((s for s in self._sessions[aid]
                    if s["kind"] == "users" and s["session_id"] == sid), None)
        if rec is None:
            rec = self._new_session(aid, "users", sid)
        rec["num_received"] += n_rows
        rec["num_matched"] += n_valid
        rec["num_invalid"] += n_invalid
        if rec["status"] == "open" and (not session or session.get("last_batch_flag") in (
                True, "true", "True", 1)):
            self._end(rec, "finished")

    def _list_sessions(self, params: dict, aid: str) -> dict:
        """GET /{id}/sessions: newest first; numbers as numeric strings, as Graph types them."""
        with self._lock:
            if aid not in self._audiences:
                raise _missing(aid)
            self._expire_due()
            want = params.get("session_id")
            data = []
            for s in reversed(self._sessions[aid]):
                if want is not None and str(s["session_id"]) != str(want):
                    continue
                ended = s["status"] != "open"
                est = s["estimated_num_total"]
                progress = 100 if ended else min(99, s["num_received"] * 100 // est) if est else 0
                data.append({"session_id": str(s["session_id"]),
                             "num_received": str(s["num_received"]),
                             "num_matched": str(s["num_matched"]),
                             "num_invalid_entries": str(s["num_invalid"]),
                             "stage": "finished" if ended else "uploading",
                             "progress": str(progress),
                             "start_time": str(s["start_time"]),
                             "end_time": str(s["end_time"] or 0)})
        return {"data": data}

    @staticmethod
    def _shape(schema, data: list) -> tuple[list[str], list[list]]:
        """Normalize single-key and multi-key payloads to (fields, rows)."""
        if isinstance(schema, str):
            if schema not in SINGLE_KEYS:
                raise _bad(f"Invalid schema {schema!r}; single-key schemas: {sorted(SINGLE_KEYS)}")
            if any(isinstance(v, (list, dict)) for v in data):
                raise _bad(f"payload.data must be a flat list for schema {schema}")
            return [SINGLE_KEYS[schema]], [[v] for v in data]
        if not isinstance(schema, list) or not schema:
            raise _bad("The parameter payload.schema is required")
        if unknown := [f for f in schema if f not in MULTI_KEYS]:
            raise _bad(f"Invalid schema field(s) {unknown}")
        if len(set(schema)) != len(schema):
            raise _bad("Duplicate field in payload.schema")
        for i, row in enumerate(data):
            if not isinstance(row, list) or len(row) != len(schema):
                raise _bad(f"payload.data[{i}] must be a list of {len(schema)} values "
                           "(one per schema field)")
        return list(schema), data
