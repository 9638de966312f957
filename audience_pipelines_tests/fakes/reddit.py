"""Stateful fake of the Reddit Ads API v3 custom audiences (destination-apis.md Part 2 §3).

Serves the token endpoint (`POST /api/v1/access_token`, HTTP Basic client credentials, form
`grant_type=refresh_token`) and, under `/api/v3`: the audience list of an ad account (paged small
through `pagination.next_url`), create, get and delete one audience, and
`PATCH /custom_audiences/{id}/users`, which answers 204 with no body.

Like Reddit it refuses a request whose User-Agent is not `<platform>:<app id>:<version> (by
/u/<username>)` (403), a token without the adsread (reads) or adsedit (writes) scope (403), more
than 2,500 `user_data` rows, and it accepts rows with fewer or more values than `column_order`
(it pairs what lines up). Values must be 64 lowercase hex; a refused value names its place in
`fields` (Reddit's wording for per-value errors is [unverified]). Errors have the form
`{"error":{"code","message","fields":[{field,message}]}}`, `fields` on 400 only.

A member is a frozenset of (column, hash) pairs; a REMOVE row takes out every member that shares
one of its values (Reddit matches a person on either identifier).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import secrets
import time
from collections import namedtuple
from urllib.parse import urlencode

from ._server import FakeServer, Request, Response, json_response

COLUMNS = frozenset({"EMAIL_SHA256", "MAID_SHA256"})
MAX_ROWS = 2_500
MAX_PAGE_SIZE = 1_000
RedditRequest = namedtuple("RedditRequest", "method path action n_rows status")

_HEX64 = re.compile(r"[0-9a-f]{64}")
_USER_AGENT = re.compile(r"^[^\s:]+:[^\s:]+:[^\s:]+ \(by /u/[A-Za-z0-9_-]{3,20}\)$")
_PREFIX = "/api/v3"
_LIST = re.compile(r"^/ad_accounts/([^/]+)/custom_audiences$")
_ONE = re.compile(r"^/custom_audiences/([^/]+)$")
_USERS = re.compile(r"^/custom_audiences/([^/]+)/users$")


class ApiError(Exception):
    def __init__(self, status: int, message: str, fields=None, headers=None, reason=None):
        super().__init__(message)
        self.status, self.message, self.fields = status, message, fields
        self.headers, self.reason = headers or {}, reason

    def response(self) -> Response:
        err = {"code": self.status, "message": self.message}
        if self.reason:
            err["reason"] = self.reason
        if self.fields is not None:
            err["fields"] = [{"field": f, "message": m} for f, m in self.fields]
        return json_response(self.status, {"error": err}, self.headers)


def _bad(field: str, message: str) -> ApiError:
    return ApiError(400, "Invalid request", fields=[(field, message)])


class FakeReddit(FakeServer):
    def __init__(self, client_id="reddit-client-id", client_secret="reddit-client-secret",
                 refresh_token="reddit-refresh-token", ad_account_id="a2_fake123", *, page_size=2,
                 token_lifetime=3600, scopes="adsread adsedit"):
        super().__init__()
        self.client_id, self.client_secret, self.refresh_token = client_id, client_secret, refresh_token
        self.ad_account_id = ad_account_id
        self.page_size = page_size  # the most a list page holds, whatever page_size asks
        self.token_lifetime = token_lifetime
        self.scopes = scopes  # granted to tokens issued from now on
        self.unauthorized_as_text = False  # 401 as the plain string "Authorization Required"
        self._tokens: dict[str, tuple[float, frozenset]] = {}  # access token -> (monotonic expiry, scopes)
        self._audiences: dict[str, dict] = {}  # insertion order = creation order = list order
        self._members: dict[str, set[frozenset]] = {}
        self._sizes: dict[str, tuple] = {}
        self._rejected: set[str] = set()
        self._ids = itertools.count(1)

    # -- inspection and seeding -------------------------------------------
    @property
    def url(self) -> str:
        return self.origin + _PREFIX

    @property
    def token_url(self) -> str:
        return f"{self.origin}/api/v1/access_token"

    @property
    def audiences(self) -> dict[str, dict]:
        with self._lock:
            return {aid: self._view(aid) for aid in self._audiences}

    def members(self, audience_id) -> set[frozenset]:
        """Set of frozenset({(COLUMN, hash), ...}), one per row added and not removed."""
        with self._lock:
            return set(self._members[str(audience_id)])

    def member_values(self, audience_id, column: str) -> set[str]:
        return {v for row in self.members(audience_id) for c, v in row if c == column}

    def audience_id_by_name(self, name: str) -> str | None:
        with self._lock:
            ids = [aid for aid, a in self._audiences.items() if a["name"] == name]
        if len(ids) > 1:  # duplicate creation is usually the client bug under test
            raise LookupError(f"{len(ids)} audiences are named {name!r}: {ids}")
        return ids[0] if ids else None

    def create_audience(self, name: str, type: str = "CUSTOMER_LIST") -> str:  # noqa: A002
        """Seed an audience directly (no HTTP); returns its id."""
        with self._lock:
            aid = f"t2_ca{next(self._ids):06d}"
            now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
            self._audiences[aid] = {"id": aid, "name": name, "type": type, "status": "VALID",
                                    "ad_account_id": self.ad_account_id, "created_at": now, "modified_at": now}
            self._members[aid] = set()
            return aid

    def set_size(self, audience_id, lower, upper=None) -> None:
        """What the audience reports as size_range_lower/upper (default: its member count)."""
        with self._lock:
            self._sizes[str(audience_id)] = (lower, upper)

    # -- injections -------------------------------------------------------
    # Faults hit the next authenticated API request in scope: "users" (the members PATCH, the
    # default), "audiences" (list, create, get), or "all". Delays, resets and lost answers (base
    # class) hit before auth; scope "token" is the token endpoint.
    def inject_throttle(self, times=1, scope="users", retry_after=None, reset=None) -> None:
        """HTTP 429 with X-Ratelimit-Remaining 0; Retry-After and X-Ratelimit-Reset when given."""
        self._push("fault", times, scope, status=429, retry_after=retry_after, reset=reset)

    def inject_server_error(self, times=1, status=500, scope="users") -> None:
        if status < 500:
            raise ValueError("a server error is 5xx")
        self._push("fault", times, scope, status=status)

    def inject_delay(self, seconds: float, times=1, scope="users") -> None:
        self._push("delay", times, scope, seconds=seconds)

    def reject_values(self, values) -> None:
        """Persistent: a PATCH carrying one of these values is refused whole (400 naming the value's place)."""
        with self._lock:
            self._rejected.update(values)

    def clear_rejected_values(self) -> None:
        with self._lock:
            self._rejected.clear()

    def expire_access_tokens(self) -> None:
        """Every access token issued so far now gets 401."""
        with self._lock:
            self._tokens = {t: (0.0, s) for t, (_, s) in self._tokens.items()}

    def revoke_refresh_token(self) -> None:
        """Token exchanges now fail with invalid_grant (issued access tokens keep working)."""
        with self._lock:
            self.refresh_token = None

    # -- HTTP -------------------------------------------------------------
    def _scope(self, req: Request) -> str:
        if req.path == "/api/v1/access_token":
            return "token"
        return "users" if req.path.endswith("/users") else "audiences"

    def _log_entry(self, req: Request, resp: Response):
        return RedditRequest(req.method, req.path, req.notes.get("action"), req.notes.get("n_rows"), resp.status)

    def _handle(self, req: Request) -> Response:
        if req.path == "/api/v1/access_token":
            return self._token(req)
        try:
            answer = self._api(req)
        except ApiError as e:
            if e.status == 401 and self.unauthorized_as_text:
                return Response(401, b"Authorization Required", {"Content-Type": "text/plain"})
            return e.response()
        if answer is None:
            return Response(204)
        return json_response(200, answer)

    def _check_user_agent(self, req: Request) -> bool:
        return bool(_USER_AGENT.match(req.headers.get("user-agent", "")))

    def _token(self, req: Request) -> Response:
        if not self._check_user_agent(req):
            return json_response(403, {"message": "Forbidden", "error": 403})
        if req.method != "POST":
            return json_response(405, {"message": "Method Not Allowed", "error": 405})
        auth = req.headers.get("authorization", "")
        try:
            user, _, password = base64.b64decode(auth[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = None
        if not auth.lower().startswith("basic ") or (user, password) != (self.client_id, self.client_secret):
            return json_response(401, {"message": "Unauthorized", "error": 401})
        form = req.form()
        if form.get("grant_type") != "refresh_token":
            return json_response(400, {"error": "unsupported_grant_type"})
        with self._lock:
            expected = self.refresh_token
            if expected is None or form.get("refresh_token") != expected:
                return json_response(400, {"error": "invalid_grant"})
            token = "eyJfake." + secrets.token_urlsafe(24)
            self._tokens[token] = (time.monotonic() + self.token_lifetime, frozenset(self.scopes.split()))
        return json_response(200, {"access_token": token, "token_type": "bearer",
                                   "expires_in": self.token_lifetime, "scope": self.scopes})

    def _check_auth(self, req: Request) -> None:
        if not self._check_user_agent(req):
            raise ApiError(403, "Forbidden: requests must send a unique User-Agent "
                                "('<platform>:<app id>:<version> (by /u/<username>)')")
        auth = req.headers.get("authorization", "")
        with self._lock:
            expiry, scopes = self._tokens.get(auth[7:].strip(), (None, frozenset()))
        if not auth.lower().startswith("bearer ") or expiry is None or expiry <= time.monotonic():
            raise ApiError(401, "Authorization Required", reason="UNAUTHORIZED")
        need = "adsread" if req.method == "GET" else "adsedit"
        if need not in scopes:
            raise ApiError(403, f"Forbidden: the token lacks the {need} scope")

    def _fault(self, inj: dict) -> ApiError:
        if inj["status"] == 429:
            headers = {"X-Ratelimit-Remaining": "0"}
            if inj.get("retry_after") is not None:
                headers["Retry-After"] = str(inj["retry_after"])
            if inj.get("reset") is not None:
                headers["X-Ratelimit-Reset"] = str(inj["reset"])
            return ApiError(429, "Too Many Requests", headers=headers)
        return ApiError(inj["status"], "Internal Server Error")

    def _body(self, req: Request) -> dict:
        try:
            body = json.loads(req.body.decode("utf-8")) if req.body.strip() else None
        except (UnicodeDecodeError, ValueError):
            raise _bad("body", "invalid JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            raise _bad("data", "required object")
        return body["data"]

    def _api(self, req: Request) -> dict | None:
        if not req.path.startswith(_PREFIX + "/"):
            raise ApiError(404, "Not Found")
        route = req.path[len(_PREFIX):]
        self._check_auth(req)
        if fault := self._pop("fault", self._scope(req)):
            raise self._fault(fault)
        if m := _LIST.match(route):
            if m.group(1) != self.ad_account_id:
                raise ApiError(404, "Ad account not found")
            if req.method == "GET":
                return self._list(req)
            if req.method == "POST":
                return self._create(self._body(req))
        elif m := _USERS.match(route):
            if req.method == "PATCH":
                return self._users(req, self._audience(m.group(1)))
        elif m := _ONE.match(route):
            aid = self._audience(m.group(1))
            if req.method == "GET":
                with self._lock:
                    return {"data": self._view(aid)}
            if req.method == "DELETE":
                with self._lock:
                    del self._audiences[aid], self._members[aid]
                return None
        raise ApiError(405 if (_LIST.match(route) or _USERS.match(route) or _ONE.match(route)) else 404,
                       f"{req.method} {route} is not served")

    def _audience(self, aid: str) -> str:
        with self._lock:
            if aid not in self._audiences:
                raise ApiError(404, f"Custom audience {aid} not found")
        return aid

    def _view(self, aid: str) -> dict:
        n = len(self._members[aid])
        lower, upper = self._sizes.get(aid, (n, n))
        return {**self._audiences[aid], "size_range_lower": lower, "size_range_upper": upper}

    def _list(self, req: Request) -> dict:
        try:
            asked = int(req.query.get("page_size", 25))
        except ValueError:
            asked = -1
        if not 1 <= asked <= MAX_PAGE_SIZE:
            raise _bad("page_size", f"must be an integer from 1 to {MAX_PAGE_SIZE}")
        size = min(asked, self.page_size)
        token = req.query.get("page.token")
        try:
            start = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
        except (ValueError, binascii.Error):
            raise _bad("page.token", "invalid page token") from None
        with self._lock:
            ids = list(self._audiences)
            data = [self._view(aid) for aid in ids[start:start + size]]
        next_url = None
        if start + size < len(ids):
            query = {**req.query, "page.token": base64.urlsafe_b64encode(str(start + size).encode()).decode()}
            next_url = f"{self.origin}{req.path}?{urlencode(query)}"
        return {"data": data, "pagination": {"next_url": next_url}}

    def _create(self, data: dict) -> dict:
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _bad("data.name", "required")
        if data.get("type") != "CUSTOMER_LIST":
            raise _bad("data.type", "must be CUSTOMER_LIST (the only type this fake creates)")
        aid = self.create_audience(name)
        with self._lock:
            return {"data": self._view(aid)}

    def _users(self, req: Request, aid: str) -> None:
        data = self._body(req)
        action = data.get("action_type")
        req.notes["action"] = action
        if action not in ("ADD", "REMOVE"):
            raise _bad("data.action_type", "must be ADD or REMOVE")
        columns = data.get("column_order")
        if not isinstance(columns, list) or not columns or any(c not in COLUMNS for c in columns) \
                or len(set(columns)) != len(columns):
            raise _bad("data.column_order", f"a non-empty list of distinct values from {sorted(COLUMNS)}")
        rows = data.get("user_data")
        if not isinstance(rows, list) or not rows:
            raise _bad("data.user_data", "required non-empty list")
        req.notes["n_rows"] = len(rows)
        if len(rows) > MAX_ROWS:
            raise _bad("data.user_data", f"Limited to {MAX_ROWS:,} user_data entries per request")
        with self._lock:
            rejected = set(self._rejected)
        members, errors = [], []
        for i, row in enumerate(rows):
            if not isinstance(row, list) or not all(isinstance(v, str) for v in row):
                raise _bad(f"data.user_data[{i}]", "must be a list of strings")
            # Reddit does not check that a row has one value per column: what lines up is taken.
            pairs = frozenset((c, v) for c, v in zip(columns, row) if v)
            for j, v in enumerate(row[:len(columns)]):
                if v and not _HEX64.fullmatch(v):
                    errors.append((f"data.user_data[{i}][{j}]", "must be a SHA-256 hash (64 lowercase hex characters)"))
                elif v in rejected:
                    errors.append((f"data.user_data[{i}][{j}]", "invalid value"))
            if pairs:
                members.append(pairs)
        if errors:
            raise ApiError(400, "Invalid request", fields=errors)
        with self._lock:
            held = self._members[aid]
            if action == "ADD":
                held.update(members)
            else:
                gone = {pair for row in members for pair in row}
                held -= {m for m in held if m & gone}
        return None
