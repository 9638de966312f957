"""Stateful fake of the Pinterest Ads API v5: customer lists and audiences (destination-apis.md Part 2 §2).

Real HTTP on 127.0.0.1 under `/v5`. It keeps customer lists (records as members, counters as
Pinterest keeps them), CUSTOMER_LIST audiences and OAuth tokens, and checks what Pinterest checks:
the Bearer token, numeric path ids, required body fields and enums, `records` as one
comma-separated string, page sizes. Errors are `{"code": <int>, "message": "..."}`.

Pinterest matches records to accounts hours later; here a list's members are its usable records
(a lowercase plain email on an EMAIL list, else an MD5/SHA1/SHA256 hex hash), and an audience's
`size` is its list's member count (`status` TOO_SMALL below 100). Records that are not usable
are counted but not kept (`unusable`), as Pinterest reports no per-record result.

Wording marked [unverified] is the fake's own where Pinterest's is not known: the not-found
message of a customer list, 5xx bodies, a refused refresh token, a batch refused for its records.
"""

from __future__ import annotations

import base64
import itertools
import re
import secrets
import threading
import time
from collections import namedtuple

from ._server import FakeServer, Request, Response, json_response

LIST_TYPES = ("EMAIL", "IDFA", "MAID", "LR_ID", "DLX_ID", "HASHED_PINNER_ID")
AUDIENCE_TYPES = ("ACTALIKE", "ENGAGEMENT", "CUSTOMER_LIST", "VISITOR")
MAX_RECORDS = 50_000  # per request [unverified]
MAX_PAGE_SIZE = 250
MIN_USABLE = 100  # matched accounts before a list or audience is usable
THROTTLE_MESSAGE = ("This request exceeded a rate limit. This can happen if the client exceeds one of the "
                    "published rate limits or if multiple write operations are applied to an object within "
                    "a short time window.")
PinterestRequest = namedtuple("PinterestRequest", "method path operation n_records status")

_HASH = re.compile(r"[0-9a-f]{32}|[0-9a-f]{40}|[0-9a-f]{64}")
_EMAIL = re.compile(r"[^@\sA-Z]+@[^@\sA-Z]+\.[^@\sA-Z]+")
_ACCOUNT = r"^/v5/ad_accounts/([^/]+)"
_LISTS = re.compile(_ACCOUNT + r"/customer_lists$")
_LIST = re.compile(_ACCOUNT + r"/customer_lists/([^/]+)$")
_AUDIENCES = re.compile(_ACCOUNT + r"/audiences$")
_AUDIENCE = re.compile(_ACCOUNT + r"/audiences/([^/]+)$")
_ACCOUNT_ONLY = re.compile(_ACCOUNT + r"$")
_DIGITS = re.compile(r"\d{1,18}")


class PinterestError(Exception):
    def __init__(self, status: int, code: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def response(self) -> Response:
        return json_response(self.status, {"code": self.code, "message": self.message}, self.headers)


def _bad(message: str) -> PinterestError:
    return PinterestError(400, 1, message)


def _path_id(value: str, name: str) -> str:
    if not _DIGITS.fullmatch(value):
        raise _bad(f"'{name}' value '{value}' must match the pattern: ^\\d+$")
    return value


def _split(records) -> list[str]:
    """`records` is one comma-separated string (a trailing comma is allowed)."""
    if not isinstance(records, str):
        raise _bad("Invalid request: 'records' must be a string of comma-separated records")
    out = [r.strip() for r in records.split(",") if r.strip()]
    if not out:
        raise _bad("Invalid request: 'records' is empty")
    if len(out) > MAX_RECORDS:
        raise _bad(f"Invalid request: {len(out)} records is more than the {MAX_RECORDS} allowed per request")
    return out


class FakePinterest(FakeServer):
    def __init__(self, access_token="pina_test-access-token", ad_account_id="549755885175",
                 client_id="1484193", client_secret="test-app-secret", refresh_token="pinr_test-refresh-token",
                 token_lifetime=2_592_000, refuse_small_audiences=False):
        super().__init__()
        self.ad_account_id = str(ad_account_id)
        self.access_token, self.client_id, self.client_secret = access_token, client_id, client_secret
        self.refresh_token, self.token_lifetime = refresh_token, token_lifetime
        # Whether creating an audience over a list of fewer than 100 members is refused.
        self.refuse_small_audiences = refuse_small_audiences
        self._tokens: dict[str, float] = {access_token: float("inf")} if access_token else {}
        self._lists: dict[str, dict] = {}  # insertion order = id order
        self._members: dict[str, set[str]] = {}
        self._unusable: dict[str, list[str]] = {}
        self._audiences: dict[str, dict] = {}
        self._refused: set[str] = set()
        self._ids = itertools.count(549755885900)
        self._id_lock = threading.Lock()

    # -- inspection and seeding ---------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{self.origin}/v5"

    @property
    def token_url(self) -> str:
        return f"{self.origin}/v5/oauth/token"

    @property
    def customer_lists(self) -> dict[str, dict]:
        with self._lock:
            return {lid: self._list_view(lid) for lid in self._lists}

    @property
    def audiences(self) -> dict[str, dict]:
        with self._lock:
            return {aid: self._audience_view(aid) for aid in self._audiences}

    def members(self, list_id) -> set[str]:
        with self._lock:
            return set(self._members[str(list_id)])

    def unusable(self, list_id) -> list[str]:
        """Records sent to a list that could match nobody (not kept as members)."""
        with self._lock:
            return list(self._unusable[str(list_id)])

    def list_id_by_name(self, name: str) -> str | None:
        with self._lock:
            ids = [lid for lid, cl in self._lists.items() if cl["name"] == name]
        if len(ids) > 1:  # duplicate creation is usually the client bug under test
            raise LookupError(f"{len(ids)} customer lists are named {name!r}: {ids}")
        return ids[0] if ids else None

    def audiences_of(self, list_id) -> list[dict]:
        """CUSTOMER_LIST audiences whose rule names this list."""
        return [a for a in self.audiences.values()
                if a["audience_type"] == "CUSTOMER_LIST" and a["rule"].get("customer_list_id") == str(list_id)]

    def create_customer_list(self, name: str, records=(), list_type="EMAIL") -> str:
        """Seed a list directly (no HTTP); returns its id."""
        with self._lock:
            lid = self._new_id()
            now = int(time.time())
            self._lists[lid] = {"id": lid, "name": name, "list_type": list_type, "created_time": now,
                                "updated_time": now, "num_batches": 0, "num_uploaded_user_records": 0,
                                "num_removed_user_records": 0}
            self._members[lid], self._unusable[lid] = set(), []
            if records:
                self._apply(lid, "ADD", list(records))
            return lid

    def create_audience(self, name: str, list_id, description="") -> str:
        """Seed a CUSTOMER_LIST audience over a list directly; returns its id."""
        with self._lock:
            aid = self._new_id()
            now = int(time.time())
            self._audiences[aid] = {"id": aid, "name": name, "audience_type": "CUSTOMER_LIST",
                                    "rule": {"customer_list_id": str(list_id)}, "description": description,
                                    "created_timestamp": now, "updated_timestamp": now, "size": "count"}
            return aid

    def set_audience_size(self, audience_id, size) -> None:
        """Report this size (None: null, as before Pinterest has counted) instead of the member count."""
        with self._lock:
            self._audiences[str(audience_id)]["size"] = size

    def issue_access_token(self) -> str:
        token = "pina_" + secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = time.monotonic() + self.token_lifetime
        return token

    def revoke_access_tokens(self) -> None:
        """Every access token (the static one too) now gets 401."""
        with self._lock:
            self._tokens.clear()

    def revoke_refresh_token(self) -> None:
        with self._lock:
            self.refresh_token = None

    # -- injections -------------------------------------------------------------------------
    # Faults share one FIFO queue, consumed by the next authenticated request in scope:
    # "records" (PATCH of a list's members, the default), "lists" (other customer list calls),
    # "audiences", or "all". Delays, resets and lost answers (base class) hit before auth.
    def inject_throttle(self, times=1, scope="records", retry_after: float | None = None) -> None:
        """HTTP 429 {"code": 8}, with a Retry-After header when given."""
        self._push("fault", times, scope, status=429, retry_after=retry_after)

    def inject_server_error(self, times=1, status=500, scope="records") -> None:
        self._push("fault", times, scope, status=status, retry_after=None)

    def inject_delay(self, seconds: float, times=1, scope="records") -> None:
        self._push("delay", times, scope, seconds=seconds)

    def refuse_values(self, values) -> None:
        """Persistent: a request carrying one of these records is refused whole with HTTP 400 [unverified]."""
        with self._lock:
            self._refused.update(values)

    def clear_refused_values(self) -> None:
        with self._lock:
            self._refused.clear()

    # -- HTTP -----------------------------------------------------------------------------
    def _scope(self, req: Request) -> str:
        if req.path.endswith("/oauth/token"):
            return "token"
        if _LIST.match(req.path) and req.method == "PATCH":
            return "records"
        if _LISTS.match(req.path) or _LIST.match(req.path):
            return "lists"
        return "audiences" if _AUDIENCES.match(req.path) or _AUDIENCE.match(req.path) else "other"

    def _log_entry(self, req: Request, resp: Response):
        return PinterestRequest(req.method, req.path, req.notes.get("operation"), req.notes.get("n_records"),
                                resp.status)

    def _handle(self, req: Request) -> Response:
        try:
            if req.path == "/v5/oauth/token":
                return self._token(req)
            self._check_auth(req)
            if fault := self._pop("fault", self._scope(req)):
                raise self._fault(fault)
            return json_response(200, self._route(req))
        except PinterestError as e:
            return e.response()

    def _check_auth(self, req: Request) -> None:
        auth = req.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        with self._lock:
            expiry = self._tokens.get(token) if token else None
        if expiry is None or time.monotonic() >= expiry:
            raise PinterestError(401, 2, "Authentication failed.")

    def _fault(self, inj: dict) -> PinterestError:
        if inj["status"] == 429:
            headers = {"Retry-After": f"{inj['retry_after']:g}"} if inj["retry_after"] is not None else {}
            return PinterestError(429, 8, THROTTLE_MESSAGE, headers)
        return PinterestError(inj["status"], inj["status"], "Internal server error. Please try again later.")

    def _body(self, req: Request, allowed: set[str]) -> dict:
        if "json" not in req.headers.get("content-type", ""):
            raise _bad("Invalid request: the body must be JSON (Content-Type: application/json)")
        try:
            body = req.json()
        except ValueError:
            raise _bad("Invalid request: the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _bad("Invalid request: the body must be a JSON object")
        if unknown := sorted(set(body) - allowed):
            raise _bad(f"Invalid request: unknown field(s) {unknown}")
        return body

    def _route(self, req: Request) -> dict:
        m = _ACCOUNT_ONLY.match(req.path) or _LISTS.match(req.path) or _LIST.match(req.path) or \
            _AUDIENCES.match(req.path) or _AUDIENCE.match(req.path)
        if not m:
            raise PinterestError(404, 404, f"Not found: {req.path}")
        if _path_id(m.group(1), "ad_account_id") != self.ad_account_id:
            raise PinterestError(404, 2, "AdAccount not found.")
        if (lm := _LISTS.match(req.path)) and req.method == "GET":
            with self._lock:
                return self._page(req, [self._list_view(lid) for lid in self._lists])
        if lm and req.method == "POST":
            return self._create_list(req)
        if (lm := _LIST.match(req.path)) and req.method in ("GET", "PATCH"):
            lid = _path_id(lm.group(2), "customer_list_id")
            with self._lock:
                if lid not in self._lists:
                    raise PinterestError(404, 2, "Customer list not found.")  # [unverified] wording
                if req.method == "GET":
                    return self._list_view(lid)
            return self._update_list(req, lid)
        if _AUDIENCES.match(req.path) and req.method == "GET":
            if req.query.get("ownership_type", "OWNED") not in ("OWNED", "RECEIVED"):
                raise _bad("Invalid ad account audience parameters.")
            with self._lock:
                owned = req.query.get("ownership_type", "OWNED") == "OWNED"
                return self._page(req, [self._audience_view(aid) for aid in self._audiences] if owned else [])
        if _AUDIENCES.match(req.path) and req.method == "POST":
            return self._create_audience(req)
        if (am := _AUDIENCE.match(req.path)) and req.method == "GET":
            aid = _path_id(am.group(2), "audience_id")
            with self._lock:
                if aid not in self._audiences:
                    raise PinterestError(404, 2, "Audience not found.")
                return self._audience_view(aid)
        if _ACCOUNT_ONLY.match(req.path) and req.method == "GET":
            return {"id": self.ad_account_id, "name": "Test ad account", "currency": "USD", "country": "US"}
        raise PinterestError(405, 5, "Method not allowed")

    def _page(self, req: Request, items: list[dict]) -> dict:
        size = req.query.get("page_size", "25")
        if not size.isdigit():
            raise _bad(f"Parameter 'page_size' was not numeric (was {size})")
        if not 1 <= int(size) <= MAX_PAGE_SIZE:
            raise _bad(f"Parameter 'page_size' must be between 1 and {MAX_PAGE_SIZE}")
        order = req.query.get("order", "ASCENDING")
        if order not in ("ASCENDING", "DESCENDING"):
            raise _bad("Parameter 'order' must be ASCENDING or DESCENDING")
        if order == "DESCENDING":
            items = items[::-1]
        start = 0
        if bookmark := req.query.get("bookmark"):
            try:  # opaque to clients; here base64 of the offset
                start = int(base64.urlsafe_b64decode(bookmark.encode()).decode())
            except ValueError:
                raise _bad("Invalid bookmark") from None
        end = start + int(size)
        more = end < len(items)
        return {"items": items[start:end],
                "bookmark": base64.urlsafe_b64encode(str(end).encode()).decode() if more else None}

    # -- customer lists ---------------------------------------------------------------------
    def _new_id(self) -> str:
        with self._id_lock:
            return str(next(self._ids))

    def _list_view(self, lid: str) -> dict:
        cl = self._lists[lid]
        n = len(self._members[lid])
        return {**{k: v for k, v in cl.items() if k != "list_type"}, "ad_account_id": self.ad_account_id,
                "status": "READY" if n >= MIN_USABLE else "TOO_SMALL", "type": "customerlist", "exceptions": {}}

    def _refuse(self, records: list[str]) -> None:
        with self._lock:
            hit = sorted(self._refused.intersection(records))
        if hit:
            raise _bad(f"Invalid request: {len(hit)} invalid record(s)")  # [unverified] wording

    def _apply(self, lid: str, operation: str, records: list[str]) -> None:
        """Caller holds the lock. Counters grow for every record, duplicates and absent ones too."""
        cl, members = self._lists[lid], self._members[lid]
        if operation == "ADD":
            for r in records:
                usable = _HASH.fullmatch(r) or (cl["list_type"] == "EMAIL" and _EMAIL.fullmatch(r))
                if usable:
                    members.add(r)
                else:
                    self._unusable[lid].append(r)
            cl["num_uploaded_user_records"] += len(records)
        else:
            members.difference_update(records)
            cl["num_removed_user_records"] += len(records)
        cl["num_batches"] += 1
        cl["updated_time"] = int(time.time())

    def _create_list(self, req: Request) -> dict:
        body = self._body(req, {"name", "records", "list_type", "ad_account_id"})
        name, list_type = body.get("name"), body.get("list_type", "EMAIL")
        if not isinstance(name, str) or not name.strip():
            raise _bad("Invalid request: 'name' is a required property")
        if "records" not in body:
            raise _bad("Invalid request: 'records' is a required property")
        if list_type not in LIST_TYPES:
            raise _bad(f"Invalid request: 'list_type' must be one of {list(LIST_TYPES)}")
        records = _split(body["records"])
        req.notes.update(operation="CREATE", n_records=len(records))
        self._refuse(records)
        lid = self.create_customer_list(name, records, list_type)
        with self._lock:
            return self._list_view(lid)

    def _update_list(self, req: Request, lid: str) -> dict:
        body = self._body(req, {"operation_type", "records"})
        operation = body.get("operation_type")
        if operation not in ("ADD", "REMOVE"):
            raise _bad("Invalid request: 'operation_type' must be ADD or REMOVE")
        if "records" not in body:
            raise _bad("Invalid request: 'records' is a required property")
        records = _split(body["records"])
        req.notes.update(operation=operation, n_records=len(records))
        self._refuse(records)
        with self._lock:
            self._apply(lid, operation, records)
            return self._list_view(lid)

    # -- audiences --------------------------------------------------------------------------
    def _audience_view(self, aid: str) -> dict:
        a = self._audiences[aid]
        size = a["size"]
        if size == "count":
            size = len(self._members.get(a["rule"].get("customer_list_id"), ()))
        status = "INITIALIZING" if size is None else "READY" if size >= MIN_USABLE else "TOO_SMALL"
        return {**a, "ad_account_id": self.ad_account_id, "size": size, "status": status, "type": "audience",
                "created_by_company_name": None}

    def _create_audience(self, req: Request) -> dict:
        body = self._body(req, {"name", "audience_type", "rule", "description", "ad_account_id"})
        for field in ("name", "audience_type", "rule"):
            if field not in body:
                raise _bad(f"Invalid request: '{field}' is a required property")
        if body["audience_type"] not in AUDIENCE_TYPES:
            raise _bad(f"Invalid request: 'audience_type' must be one of {list(AUDIENCE_TYPES)}")
        if body["audience_type"] != "CUSTOMER_LIST":
            raise _bad("Invalid ad account audience parameters.")  # only customer list audiences here
        rule = body["rule"]
        lid = rule.get("customer_list_id") if isinstance(rule, dict) else None
        if not isinstance(lid, str) or not _DIGITS.fullmatch(lid):
            raise _bad("Invalid ad account audience parameters: rule.customer_list_id is required")
        with self._lock:
            if lid not in self._lists:
                raise _bad(f"Invalid ad account audience parameters: customer list {lid} not found")
            if self.refuse_small_audiences and len(self._members[lid]) < MIN_USABLE:
                raise _bad("Invalid ad account audience parameters: the customer list is too small")
        aid = self.create_audience(body["name"], lid, description=body.get("description") or "")
        with self._lock:
            return self._audience_view(aid)

    # -- OAuth --------------------------------------------------------------------------------
    def _token(self, req: Request) -> Response:
        if req.method != "POST":
            return json_response(405, {"code": 5, "message": "Method not allowed"})
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if req.headers.get("authorization", "") != f"Basic {expected}":
            return json_response(401, {"code": 2, "message": "Authentication failed."})
        form = req.form()
        if form.get("grant_type") != "refresh_token":
            return json_response(400, {"code": 1, "message": f"Invalid grant_type: {form.get('grant_type', '')}"})
        with self._lock:
            valid = self.refresh_token is not None and form.get("refresh_token") == self.refresh_token
        if not valid:  # [unverified] wording
            return json_response(400, {"code": 1, "message": "Invalid refresh token."})
        now = int(time.time())
        return json_response(200, {
            "access_token": self.issue_access_token(), "token_type": "bearer", "expires_in": self.token_lifetime,
            "scope": "ads:read,ads:write", "response_type": "refresh_token", "refresh_token": form["refresh_token"],
            "refresh_token_expires_in": 5_184_000, "refresh_token_expires_at": now + 5_184_000})
