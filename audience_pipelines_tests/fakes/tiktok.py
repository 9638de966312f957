"""Stateful fake of TikTok's Business API custom audiences, segment endpoints (destination-apis.md §0, §4).

Every answer is HTTP 200 with TikTok's envelope `{"code", "message", "request_id", "data"}`; a
refusal is a non-zero code. Codes used here: 40001 (no permission on the advertiser), 40002
(parameters refused, worded like TikTok's field errors), 40007 (no such audience), 40100 (rate
limit), 40104/40105 (access token missing / refused), 50000-range (TikTok busy or failing). A batch
holding a value set with `refuse_values` is refused whole with code 40000 (the fake's choice: TikTok
reports no per-row results and the code for refused data is not documented).

Members are kept per audience as rows: the set of (schema, sha256) pairs one mapping row carried.
A delete takes out every held row sharing any pair with a deleted row (TikTok matches on each id).
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import time
from collections import namedtuple

from ._server import FakeServer, Request, Response, json_response

MAX_ROWS = 1_000  # [unverified] TikTok's per-request limit; the client assumes the same
MAX_PAGE_SIZE = 100
MAX_GET_IDS = 100
ID_TYPES = ("EMAIL_SHA256", "PHONE_SHA256", "IDFA_SHA256", "GAID_SHA256", "AAID_SHA256")
ACTIONS = ("add", "delete")
REFUSED_CODE = 40000
TikTokRequest = namedtuple("TikTokRequest", "method path action id_schema n_rows code status")  # one per request

_HEX64 = re.compile(r"[0-9a-f]{64}")
_PREFIX = re.compile(r"^/open_api/v\d+\.\d+(?=/)")
ROUTES = {
    "/dmp/custom_audience/list/": ("GET", "list"),
    "/dmp/custom_audience/get/": ("GET", "get"),
    "/segment/audience/": ("POST", "create"),
    "/segment/mapping/": ("POST", "mapping"),
}
THROTTLE_MESSAGE = "Too many requests. Please retry in some time."


class TikTokError(Exception):
    def __init__(self, code: int, message: str, status: int = 200):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def _param(message: str) -> TikTokError:
    return TikTokError(40002, message)


def _request_id() -> str:
    return time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(9).upper()


def _int(value, name: str, low: int, high: int, default: int) -> int:
    if value is None:
        return default
    text = str(value).strip()
    if not re.fullmatch(r"\d+", text) or not low <= int(text) <= high:
        raise _param(f"{name}: Must be greater than or equal to {low} and less than or equal to {high}.")
    return int(text)


class FakeTikTok(FakeServer):
    def __init__(self, access_token="test-token", advertiser_id="7000000000000000001", api_version="v1.3"):
        super().__init__()
        self.access_token = access_token
        self.advertiser_id = str(advertiser_id)
        self.api_version = api_version
        self._audiences: dict[str, dict] = {}  # insertion order = creation order = list order
        self._members: dict[str, set[frozenset]] = {}
        self._index: dict[str, dict[tuple, set[frozenset]]] = {}  # audience -> pair -> rows holding it
        self._refused: set[str] = set()
        self._ids = itertools.count(7_100_000_000_000_000_001)

    # -- inspection and seeding -------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{self.origin}/open_api/{self.api_version}"

    @property
    def audiences(self) -> dict[str, dict]:
        with self._lock:
            return {aid: self._view(aid) for aid in self._audiences}

    def members(self, audience_id) -> set[frozenset]:
        """Rows held: frozensets of (schema, sha256) pairs."""
        with self._lock:
            return set(self._members[str(audience_id)])

    def audience_id_by_name(self, name: str) -> str | None:
        with self._lock:
            ids = [aid for aid, a in self._audiences.items() if a["name"] == name]
        if len(ids) > 1:  # duplicate creation is usually the client bug under test
            raise LookupError(f"{len(ids)} audiences are named {name!r}: {ids}")
        return ids[0] if ids else None

    def create_audience(self, name: str, id_type: str = "EMAIL_SHA256") -> str:
        """Seed an audience directly (no HTTP); returns its id."""
        with self._lock:
            aid = str(next(self._ids))
            self._audiences[aid] = {"audience_id": aid, "name": name, "id_type": id_type,
                                    "audience_type": "Customer File", "create_time": time.strftime("%Y-%m-%d %H:%M:%S")}
            self._members[aid] = set()
            self._index[aid] = {}
            return aid

    # -- faults -----------------------------------------------------------------------------
    def inject_throttle(self, times=1, code=40100, message=THROTTLE_MESSAGE, scope="mapping") -> None:
        """HTTP 200 with a throttle code, as TikTok throttles (scope "mapping", "other" or "all")."""
        self._push("fault", times, scope, code=code, message=message, status=200)

    def inject_busy(self, times=1, code=50002, message="System busy, please try again later.", scope="mapping"):
        self._push("fault", times, scope, code=code, message=message, status=200)

    def inject_server_error(self, times=1, status=503, scope="mapping") -> None:
        self._push("fault", times, scope, code=50000, message="Internal service error.", status=status)

    def inject_error(self, code: int, message: str, times=1, scope="mapping") -> None:
        """Any envelope error at HTTP 200, e.g. 40001 or 40105."""
        self._push("fault", times, scope, code=code, message=message, status=200)

    def inject_delay(self, seconds: float, times=1, scope="mapping") -> None:
        self._push("delay", times, scope, seconds=seconds)

    def refuse_values(self, values) -> None:
        """Persistent: a mapping request holding any of these ids is refused whole, nothing applied."""
        with self._lock:
            self._refused.update(values)

    def clear_refused(self) -> None:
        with self._lock:
            self._refused.clear()

    def revoke_token(self) -> None:
        self.access_token = "revoked-" + secrets.token_hex(8)

    # -- HTTP -------------------------------------------------------------------------------
    def _route_of(self, req: Request) -> str:
        return _PREFIX.sub("", req.path) if _PREFIX.match(req.path) else req.path

    def _scope(self, req: Request) -> str:
        return "mapping" if self._route_of(req) == "/segment/mapping/" else "other"

    def _log_entry(self, req: Request, resp: Response):
        notes = req.notes
        return TikTokRequest(req.method, self._route_of(req), notes.get("action"), notes.get("id_schema"),
                             notes.get("n_rows"), notes.get("code"), resp.status)

    def _handle(self, req: Request) -> Response:
        try:
            if not _PREFIX.match(req.path) or self._route_of(req) not in ROUTES:
                return json_response(404, {"code": 40400, "message": f"Path {req.path} not found",
                                           "request_id": _request_id(), "data": {}})
            method, name = ROUTES[self._route_of(req)]
            if req.method != method:
                return json_response(405, {"code": 40500, "message": f"Method {req.method} not allowed",
                                           "request_id": _request_id(), "data": {}})
            self._check_auth(req)
            if fault := self._pop("fault", self._scope(req)):
                raise TikTokError(fault["code"], fault["message"], fault["status"])
            data = getattr(self, f"_{name}")(req)
            req.notes["code"] = 0
            return json_response(200, {"code": 0, "message": "OK", "request_id": _request_id(), "data": data})
        except TikTokError as e:
            req.notes["code"] = e.code
            return json_response(e.status, {"code": e.code, "message": e.message, "request_id": _request_id(),
                                            "data": {}})

    def _check_auth(self, req: Request) -> None:
        token = req.headers.get("access-token")
        if not token:
            raise TikTokError(40104, "Access token is null, you need to pass it in the header.")
        if token != self.access_token:  # a "Bearer " prefix is refused too
            raise TikTokError(40105, "Access token is incorrect or has been revoked.")

    def _check_advertiser(self, value) -> None:
        if value in (None, ""):
            raise _param("advertiser_id: Missing data for required field.")
        if str(value) != self.advertiser_id:
            raise TikTokError(40001, f"No permission to operate advertiser {value}.")

    def _body(self, req: Request) -> dict:
        if "application/json" not in req.headers.get("content-type", ""):
            raise _param("Content-Type must be application/json.")
        try:
            body = req.json()
        except ValueError:
            raise _param("Request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise _param("Request body must be a JSON object.")
        return body

    def _view(self, aid: str) -> dict:
        return {**self._audiences[aid], "cover_num": len(self._members[aid]), "is_valid": True,
                "is_expiring": False}

    # -- endpoints --------------------------------------------------------------------------
    def _list(self, req: Request) -> dict:
        q = req.query
        self._check_advertiser(q.get("advertiser_id"))
        page = _int(q.get("page"), "page", 1, 99_999, 1)
        size = _int(q.get("page_size"), "page_size", 1, MAX_PAGE_SIZE, 10)
        with self._lock:
            ids = list(self._audiences)
            chunk = [self._view(aid) for aid in ids[(page - 1) * size:page * size]]
        return {"list": chunk, "page_info": {"page": page, "page_size": size, "total_number": len(ids),
                                             "total_page": -(-len(ids) // size)}}

    def _get(self, req: Request) -> dict:
        q = req.query
        self._check_advertiser(q.get("advertiser_id"))
        try:
            wanted = json.loads(q.get("custom_audience_ids") or "")
        except ValueError:
            raise _param("custom_audience_ids: Not a valid list.") from None
        if not isinstance(wanted, list) or not 1 <= len(wanted) <= MAX_GET_IDS:
            raise _param(f"custom_audience_ids: Length must be between 1 and {MAX_GET_IDS}.")
        with self._lock:
            for aid in wanted:
                if str(aid) not in self._audiences:
                    raise TikTokError(40007, f"Custom audience {aid} does not exist.")
            return {"list": [{"audience_details": self._view(str(aid)), "audience_history": []} for aid in wanted]}

    def _create(self, req: Request) -> dict:
        body = self._body(req)
        self._check_advertiser(body.get("advertiser_id"))
        if body.get("action") != "create":
            raise _param("action: Must be one of: create.")
        name = body.get("custom_audience_name")
        if not isinstance(name, str) or not name.strip():
            raise _param("custom_audience_name: Missing data for required field.")
        if len(name) > 128:
            raise _param("custom_audience_name: Length must be between 1 and 128.")
        id_type = body.get("id_type", "EMAIL_SHA256")
        if id_type not in ID_TYPES:
            raise _param(f"id_type: Must be one of: {', '.join(ID_TYPES)}.")
        return {"audience_id": self.create_audience(name, id_type)}

    def _mapping(self, req: Request) -> dict:
        body = self._body(req)
        advertisers = body.get("advertiser_ids")
        if not isinstance(advertisers, list) or not advertisers:
            raise _param("advertiser_ids: Missing data for required field.")
        for adv in advertisers:
            self._check_advertiser(adv)
        action = body.get("action")
        req.notes["action"] = action
        if action not in ACTIONS:
            raise _param(f"action: Must be one of: {', '.join(ACTIONS)}.")
        schema = body.get("id_schema")
        if not isinstance(schema, list) or not schema:
            raise _param("id_schema: Missing data for required field.")
        if bad := [s for s in schema if s not in ID_TYPES]:
            raise _param(f"id_schema: Must be one of: {', '.join(ID_TYPES)} (got {bad}).")
        if len(set(schema)) != len(schema):
            raise _param("id_schema: Duplicate id types.")
        req.notes["id_schema"] = tuple(schema)
        data = body.get("batch_data")
        if not isinstance(data, list) or not data:
            raise _param("batch_data: Missing data for required field.")
        req.notes["n_rows"] = len(data)
        if len(data) > MAX_ROWS:
            raise _param(f"batch_data: Length must be between 1 and {MAX_ROWS}.")
        rows = [self._row(i, row, schema) for i, row in enumerate(data)]
        with self._lock:
            for _, audiences in rows:
                for aid in audiences:
                    if aid not in self._audiences:
                        raise TikTokError(40007, f"Custom audience {aid} does not exist.")
            if refused := sorted({v for pairs, _ in rows for _, v in pairs} & self._refused):
                raise TikTokError(REFUSED_CODE, f"Invalid batch_data: id {refused[0]} was refused.")
            for pairs, audiences in rows:
                for aid in audiences:
                    self._apply(aid, action, pairs)
        return {}

    @staticmethod
    def _row(i: int, row, schema: list) -> tuple[frozenset, set[str]]:
        """(pairs, audience ids) of one batch_data row, lined up with id_schema."""
        if not isinstance(row, list) or len(row) != len(schema):
            raise _param(f"batch_data.{i}: Must be a list of {len(schema)} items, one per id_schema entry.")
        pairs, audiences = set(), set()
        for j, entry in enumerate(row):
            if not isinstance(entry, dict):
                raise _param(f"batch_data.{i}.{j}: Not a valid mapping type.")
            if not entry:
                continue  # a missing id
            value, ids = entry.get("id"), entry.get("audience_ids")
            if not isinstance(value, str) or not _HEX64.fullmatch(value):
                raise _param(f"batch_data.{i}.{j}.id: Must be a lowercase SHA256 hex string.")
            if not isinstance(ids, list) or not ids or not all(isinstance(a, str) and a for a in ids):
                raise _param(f"batch_data.{i}.{j}.audience_ids: Must be a non-empty list of audience ids.")
            pairs.add((schema[j], value))
            audiences.update(ids)
        if not pairs:
            raise _param(f"batch_data.{i}: At least one id is required.")
        return frozenset(pairs), audiences

    def _apply(self, aid: str, action: str, pairs: frozenset) -> None:
        held, index = self._members[aid], self._index[aid]
        if action == "add":
            held.add(pairs)
            for pair in pairs:
                index.setdefault(pair, set()).add(pairs)
            return
        for row in set().union(*(index.get(pair, ()) for pair in pairs)):
            held.discard(row)
            for pair in row:
                index[pair].discard(row)
