"""Stateful fake of Meta Marketing API custom audiences (destination-apis.md §0, §1)."""

from __future__ import annotations

import base64
import itertools
import json
import re
import secrets
from collections import namedtuple
from urllib.parse import urlencode

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
_VERSION = re.compile(r"^/v\d+(?:\.\d+)?(?=/)")
_ACT_CA = re.compile(r"^/act_([^/]+)/customaudiences$")
_USERS = re.compile(r"^/(\d+)/users$")
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


def _jsonish(value, name: str):
    """Graph params arrive as JSON strings (form/query) or as native JSON values."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise _bad(f"Param {name} must be a JSON object") from None
    if value is not None and not isinstance(value, dict):
        raise _bad(f"Param {name} must be a JSON object")
    return value


class FakeMeta(FakeServer):
    def __init__(self, access_token="test-token", ad_account_id="1234", api_version="v25.0"):
        super().__init__()
        self.access_token = access_token
        self.ad_account_id = str(ad_account_id).removeprefix("act_")
        self.api_version = api_version
        self._audiences: dict[str, dict] = {}  # insertion order = creation order = list order
        self._members: dict[str, set[frozenset]] = {}
        self._invalid_values: set[str] = set()
        self._max_samples = MAX_SAMPLES
        self._ids = itertools.count(23850000000000001)

    # -- inspection -------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{self.origin}/{self.api_version}"

    @property
    def audiences(self) -> dict[str, dict]:
        with self._lock:
            return {aid: self._view(aid) for aid in self._audiences}

    def members(self, audience_id: str) -> set[frozenset]:
        """Set of frozenset({(FIELD, value), ...}) rows; only non-empty values are kept."""
        with self._lock:
            return set(self._members[str(audience_id)])

    def member_values(self, audience_id: str, field: str) -> set[str]:
        return {v for row in self.members(audience_id) for f, v in row if f == field}

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
            self._members[aid] = set()
            return aid

    # -- injections -------------------------------------------------------
    # Faults (throttle, server error) share one FIFO queue. Each use is consumed by the
    # next authenticated request in scope: endpoint="users" (POST/DELETE /{id}/users,
    # the default) or "all". Delays have their own queue and hit before auth.
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
        return "users" if _USERS.match(_VERSION.sub("", req.path)) else "other"

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
        elif (m := _OBJECT.match(route)) and req.method == "GET":
            with self._lock:
                if m.group(1) not in self._audiences:
                    raise _missing(m.group(1))
                return self._view(m.group(1), params.get("fields"))
        raise GraphError(2500, f"Unknown path components: {route} ({req.method})")

    def _view(self, aid: str, fields: str | None = None) -> dict:
        """All fields when `fields` is absent; else id + the named ones (unknown ignored)."""
        n = len(self._members[aid])
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

        valid, samples, n_invalid = [], {}, 0
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
                valid.append(frozenset(nonempty.items()))
                continue
            n_invalid += 1
            if len(samples) < min(max_samples, MAX_SAMPLES):
                samples[key] = reason
        with self._lock:
            members = self._members[aid]
            if not remove:
                members.update(valid)
            else:
                holders: dict[tuple, list[frozenset]] = {}
                for held in members:
                    for pair in held:
                        if pair[0] in MATCH_KEYS:
                            holders.setdefault(pair, []).append(held)
                for row in valid:
                    keys = [pair for pair in row if pair[0] in MATCH_KEYS]
                    for held in [h for pair in keys for h in holders.get(pair, ())] if keys else [row]:
                        members.discard(held)
        return {"audience_id": aid,
                "session_id": str(session.get("session_id") or secrets.randbelow(2**62)),
                "num_received": len(rows), "num_invalid_entries": n_invalid,
                "invalid_entry_samples": samples}

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
