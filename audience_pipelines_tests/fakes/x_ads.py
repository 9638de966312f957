"""Stateful fake of the X (Twitter) Ads API v12 custom audiences (destination-apis.md Part 2, section 5).

Every request must carry an OAuth 1.0a HMAC-SHA1 signature made with this fake's consumer and token
secrets (checked here with its own small implementation, nonces not reused), else 401
UNAUTHORIZED_ACCESS. Audiences are listed (`q` prefix, cursor paging), created (name and
description as query parameters, names unique), read and deleted; members change through the
`/users` endpoint, whose JSON array of operations is checked like X does (at most 2,500
operations, 5,000,000 bytes, hashed keys as 64 lowercase hex) and applied or refused as a whole.
Item-level errors come back under `operation_errors`, one list per operation, each error's
`parameter` naming the user (`params.users[3].email`) [unverified shape]. A Delete takes out every
held user sharing any identifier with it, as X matches a person on any of them.

`audience_size` is the member count: at once (`auto_process=True`) or as of the last
`process()` call, null before it (X processes audiences in batches hours apart).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import re
import time
from collections import namedtuple
from urllib.parse import parse_qsl, quote, unquote

from ._server import FakeServer, Request, Response, json_response

# One per request; `operation` is a users call's operation types ("Update", "Delete,Update").
XRequest = namedtuple("XRequest", "method path query operation n_users n_bytes status")

USER_KEYS = frozenset({"email", "twitter_id", "handle", "device_id", "phone_number", "partner_user_id"})
UNHASHED = frozenset({"partner_user_id"})
OPERATION_TYPES = frozenset({"Update", "Delete"})
MAX_OPERATIONS = 2_500
MAX_BODY_BYTES = 5_000_000
MAX_SKEW_S = 300
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$")
_ACCOUNT = re.compile(r"^/accounts/([^/]+)$")
_AUDIENCES = re.compile(r"^/accounts/([^/]+)/custom_audiences$")
_AUDIENCE = re.compile(r"^/accounts/([^/]+)/custom_audiences/([^/]+)$")
_USERS = re.compile(r"^/accounts/([^/]+)/custom_audiences/([^/]+)/users$")


def _enc(value: str) -> str:
    return quote(value, safe="-._~")


class XError(Exception):
    """A request-level error: `{"errors": [{code, message, parameter?}], "request": {...}}`."""

    def __init__(self, status: int, code: str, message: str, parameter: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.parameter = status, code, message, parameter
        self.headers = headers or {}

    def response(self, params: dict) -> Response:
        err = {"code": self.code, "message": self.message}
        if self.parameter:
            err["parameter"] = self.parameter
        return json_response(self.status, {"errors": [err], "request": {"params": params}}, self.headers)


class _OperationErrors(Exception):
    def __init__(self, per_operation: list[list[dict]]):
        super().__init__("operation errors")
        self.per_operation = per_operation


def _unauthorized() -> XError:
    return XError(401, "UNAUTHORIZED_ACCESS", "This request is not properly authenticated")


def _invalid(message: str, parameter: str | None = None) -> XError:
    return XError(400, "INVALID_PARAMETER", message, parameter)


def _not_found(code: str = "NOT_FOUND", what: str = "resource") -> XError:
    return XError(404, code, f"The requested {what} was not found")


def _n_users(op) -> int:
    params = op.get("params") if isinstance(op, dict) else None
    users = params.get("users") if isinstance(params, dict) else None
    return len(users) if isinstance(users, list) else 0


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def _offset(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        return int(text.removeprefix("o:")) if text.startswith("o:") else -1
    except ValueError:
        return -1


class FakeXAds(FakeServer):
    def __init__(self, *, consumer_key="xads-consumer-key", consumer_secret="xads-consumer-s3cret",
                 access_token="1234567890-xadsAccessToken", access_token_secret="xads-token-s3cret",
                 account_id="18ce54d4x5t", api_version="12", auto_process=True):
        super().__init__()
        self.consumer_key, self.consumer_secret = consumer_key, consumer_secret
        self.access_token, self.access_token_secret = access_token, access_token_secret
        self.account_id, self.api_version = account_id, str(api_version)
        self.auto_process = auto_process
        self._audiences: dict[str, dict] = {}  # insertion order = creation order = list order
        self._members: dict[str, set[frozenset]] = {}
        self._index: dict[str, dict[tuple, set[frozenset]]] = {}  # (key, value) -> users holding it
        self._processed: dict[str, int | None] = {}  # size as of the last process() (auto_process off)
        self._ids = itertools.count(1_500_000)
        self._nonces: set[tuple[str, str]] = set()
        self._rejected: dict[str, bool] = {}  # value -> whether the error names the user
        self.revoked = False

    # -- inspection and seeding ---------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.origin

    @property
    def audiences(self) -> dict[str, dict]:
        with self._lock:
            return {aid: self._view(aid) for aid in self._audiences}

    def members(self, audience_id: str) -> set[frozenset]:
        """Users held: each a frozenset of (key, value) pairs, one pair per array element sent."""
        with self._lock:
            return set(self._members[str(audience_id)])

    def audience_id_by_name(self, name: str) -> str | None:
        with self._lock:
            ids = [aid for aid, a in self._audiences.items() if a["name"] == name and not a["deleted"]]
        if len(ids) > 1:  # duplicate creation is usually the client bug under test
            raise LookupError(f"{len(ids)} audiences are named {name!r}: {ids}")
        return ids[0] if ids else None

    def create_audience(self, name: str, *, description=None, audience_type="CRM",
                        permission_level="READ_WRITE", owner_account_id=None) -> str:
        """Seed an audience directly (no HTTP); returns its id."""
        with self._lock:
            aid = self._new_id()
            self._audiences[aid] = {
                "id": aid, "name": name, "description": description, "audience_type": audience_type,
                "permission_level": permission_level, "owner_account_id": owner_account_id or self.account_id,
                "partner_source": "OTHER", "deleted": False, "created_at": self._now(), "updated_at": self._now()}
            self._members[aid] = set()
            self._processed[aid] = None
            return aid

    def delete_audience(self, audience_id: str) -> None:
        with self._lock:
            self._audiences[str(audience_id)]["deleted"] = True

    def process(self, audience_id: str | None = None) -> None:
        """X's batch processing ran: `audience_size` becomes the member count as of now."""
        with self._lock:
            for aid in [str(audience_id)] if audience_id else list(self._audiences):
                self._processed[aid] = len(self._members[aid])

    def revoke(self) -> None:
        """The user revoked the app: every later request is 401 UNAUTHORIZED_ACCESS."""
        self.revoked = True

    # -- injections ------------------------------------------------------------------------------
    # Faults share one FIFO queue; each use hits the next authenticated request in scope:
    # "users" (POST .../users, the default), "other" or "all". Delays hit before auth.
    def inject_throttle(self, times=1, scope="users", reset_in: float = 1, header="x-account-rate-limit") -> None:
        """HTTP 429 TOO_MANY_REQUESTS with `{header}-reset` = now + reset_in (epoch seconds)."""
        self._push("fault", times, scope, status=429, header=header, reset_in=reset_in)

    def inject_server_error(self, times=1, status=503, scope="users", retry_after: float | None = None) -> None:
        self._push("fault", times, scope, status=status, retry_after=retry_after)

    def inject_delay(self, seconds: float, times=1, scope="users") -> None:
        self._push("delay", times, scope, seconds=seconds)

    def inject_miscount(self, times=1) -> None:
        """The next users calls apply all but their last user and say so in success_count."""
        self._push("miscount", times, "users")

    def reject_values(self, values, *, name_users: bool = True) -> None:
        """Persistent: an operation holding one of these values is refused (the whole request with it).

        `name_users`: the error's `parameter` names the user (`params.users[3].email`); otherwise
        only the operation (`params.users`).
        """
        with self._lock:
            self._rejected.update(dict.fromkeys(values, name_users))

    def clear_rejected_values(self) -> None:
        with self._lock:
            self._rejected.clear()

    # -- HTTP ------------------------------------------------------------------------------------
    def _route_of(self, req: Request) -> str:
        prefix = f"/{self.api_version}"
        return req.path[len(prefix):] if req.path.startswith(prefix + "/") else req.path

    def _scope(self, req: Request) -> str:
        return "users" if _USERS.match(self._route_of(req)) and req.method == "POST" else "other"

    def _log_entry(self, req: Request, resp: Response):
        return XRequest(req.method, req.path, dict(req.query), req.notes.get("operation"), req.notes.get("n_users"),
                        len(req.body), resp.status)

    def _handle(self, req: Request) -> Response:
        params = {"account_id": self.account_id}
        headers = {"x-current-api-version": self.api_version}
        try:
            self._check_auth(req)
            if fault := self._pop("fault", self._scope(req)):
                raise self._fault(fault)
            resp = json_response(200, self._route(req, params))
        except XError as e:
            resp = e.response(params)
        except _OperationErrors as e:
            resp = json_response(400, {"operation_errors": e.per_operation, "request": {"params": params}})
        resp.headers.update(headers)
        return resp

    def _check_auth(self, req: Request) -> None:
        if self.revoked:
            raise _unauthorized()
        auth = req.headers.get("authorization", "")
        if not auth.startswith("OAuth "):
            raise _unauthorized()
        oauth = {k: unquote(v) for k, v in re.findall(r'([A-Za-z_]+)="([^"]*)"', auth[6:])}
        required = ("oauth_consumer_key", "oauth_nonce", "oauth_signature", "oauth_signature_method",
                    "oauth_timestamp", "oauth_token")
        if any(k not in oauth for k in required) or oauth["oauth_signature_method"] != "HMAC-SHA1" \
                or oauth.get("oauth_version", "1.0") != "1.0":
            raise _unauthorized()
        if oauth["oauth_consumer_key"] != self.consumer_key or oauth["oauth_token"] != self.access_token:
            raise _unauthorized()
        try:
            if abs(int(oauth["oauth_timestamp"]) - time.time()) > MAX_SKEW_S:
                raise _unauthorized()
        except ValueError:
            raise _unauthorized() from None
        params = [(k, v) for k, v in oauth.items() if k != "oauth_signature"] + list(req.query.items())
        if req.headers.get("content-type", "").split(";")[0].strip() == "application/x-www-form-urlencoded":
            params += parse_qsl(req.body.decode("utf-8"), keep_blank_values=True)
        normalized = "&".join(f"{k}={v}" for k, v in sorted((_enc(k), _enc(v)) for k, v in params))
        base = "&".join((req.method, _enc(self.origin + req.path), _enc(normalized)))
        key = f"{_enc(self.consumer_secret)}&{_enc(self.access_token_secret)}".encode()
        expected = base64.b64encode(hmac.new(key, base.encode(), hashlib.sha1).digest()).decode()
        if not hmac.compare_digest(expected, oauth["oauth_signature"]):
            raise _unauthorized()
        with self._lock:
            seen = (oauth["oauth_nonce"], oauth["oauth_timestamp"])
            if seen in self._nonces:  # a replayed request
                raise _unauthorized()
            self._nonces.add(seen)

    def _fault(self, inj: dict) -> XError:
        status = inj["status"]
        if status == 429:
            prefix, reset = inj["header"], int(time.time() + inj["reset_in"])
            headers = {f"{prefix}-limit": "1500", f"{prefix}-remaining": "0", f"{prefix}-reset": str(reset)}
            return XError(429, "TOO_MANY_REQUESTS", "Rate limit exceeded", headers=headers)
        headers = {"retry-after": str(inj["retry_after"])} if inj.get("retry_after") is not None else {}
        if status == 503:
            return XError(503, "SERVICE_UNAVAILABLE", "Service unavailable due to request timeout; please try "
                          "the request again later", headers=headers)
        return XError(status, "INTERNAL_ERROR", "An internal error occurred.", headers=headers)

    def _route(self, req: Request, params: dict) -> dict:
        if not req.path.startswith(f"/{self.api_version}/"):
            raise _not_found(what="API version or path")
        route = self._route_of(req)
        for pattern in (_ACCOUNT, _AUDIENCES, _AUDIENCE, _USERS):
            if (m := pattern.match(route)) and m.group(1) != self.account_id:
                raise _not_found("NOT_FOUND", "account")
        if _ACCOUNT.match(route) and req.method == "GET":
            return {"request": {"params": params},
                    "data": {"id": self.account_id, "name": "Test account", "approval_status": "ACCEPTED",
                             "deleted": False}}
        if _AUDIENCES.match(route):
            if req.method == "GET":
                return self._list(req, params)
            if req.method == "POST":
                return self._create(req, params)
        if (m := _AUDIENCE.match(route)) and req.method in ("GET", "DELETE"):
            params["custom_audience_id"] = m.group(2)
            with self._lock:
                audience = self._audiences.get(m.group(2))
                deleted_ok = req.query.get("with_deleted") == "true"
                if audience is None or (audience["deleted"] and not deleted_ok and req.method == "GET"):
                    raise _not_found(what="custom audience")
                if req.method == "DELETE":
                    audience["deleted"] = True
                return {"request": {"params": params}, "data": self._view(m.group(2))}
        if (m := _USERS.match(route)) and req.method == "POST":
            params["custom_audience_id"] = m.group(2)
            return self._users(req, params, m.group(2))
        raise _not_found(what=f"endpoint {req.method} {req.path}")

    def _view(self, aid: str) -> dict:
        size = len(self._members[aid]) if self.auto_process else self._processed[aid]
        reasons = ["PROCESSING"] if size is None else (["TOO_SMALL"] if size < 100 else [])
        audience = self._audiences[aid]
        return {**audience, "audience_size": size, "targetable": not reasons,
                "targetable_types": [audience["audience_type"], f"EXCLUDED_{audience['audience_type']}"],
                "reasons_not_targetable": reasons}

    def _list(self, req: Request, params: dict) -> dict:
        q = req.query
        count = q.get("count", "200")
        if not count.isdigit() or not 1 <= int(count) <= 1000:
            raise _invalid("count must be an integer between 1 and 1000", "count")
        if "q" in q and not 1 <= len(q["q"]) <= 255:
            raise _invalid("q must be between 1 and 255 characters", "q")
        if "cursor" in q and q.get("with_total_count") == "true":
            raise _invalid("with_total_count and cursor are exclusive", "with_total_count")
        scope = q.get("permission_scope", "OWNER")
        if scope not in ("OWNER", "SHARED"):
            raise _invalid("permission_scope must be one of OWNER, SHARED", "permission_scope")
        start = _offset(q["cursor"]) if "cursor" in q else 0
        if start < 0:
            raise _invalid("Invalid cursor", "cursor")
        ids_filter = set(q["custom_audience_ids"].split(",")) if q.get("custom_audience_ids") else None
        with self._lock:
            matching = [
                aid for aid, a in self._audiences.items()
                if (not a["deleted"] or q.get("with_deleted") == "true")
                and (a["owner_account_id"] == self.account_id) == (scope == "OWNER")
                and ("q" not in q or a["name"].lower().startswith(q["q"].lower()))
                and (ids_filter is None or aid in ids_filter)]
            page = matching[start:start + int(count)]
            data = [self._view(aid) for aid in page]
        more = start + int(count) < len(matching)
        params.update({k: v for k, v in q.items()})
        return {"request": {"params": params}, "next_cursor": _cursor(start + int(count)) if more else None,
                "data": data}

    def _create(self, req: Request, params: dict) -> dict:
        name = req.query.get("name")
        if not name:  # a name sent in a body is not where X reads it
            raise XError(400, "MISSING_PARAMETER", '"name" is a required parameter', "name")
        with self._lock:
            if any(a["name"] == name and not a["deleted"] for a in self._audiences.values()):
                raise _invalid("Custom audience name must be unique", "name")
            aid = self.create_audience(name, description=req.query.get("description"))
            params["name"] = name
            return {"request": {"params": params}, "data": self._view(aid)}

    def _users(self, req: Request, params: dict, aid: str) -> dict:
        with self._lock:
            audience = self._audiences.get(aid)
            if audience is None or audience["deleted"]:
                raise _not_found("TAILORED_AUDIENCE_NOT_FOUND", "custom audience")
            if audience["permission_level"] != "READ_WRITE":
                raise XError(403, "UNAUTHORIZED_ACCESS", "The account may not modify this custom audience")
            if audience["audience_type"] != "CRM":
                raise _invalid(f"Users cannot be added to a {audience['audience_type']} audience")
            rejected = dict(self._rejected)
        if req.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise _invalid("Content-Type must be application/json")
        if len(req.body) > MAX_BODY_BYTES:
            raise _invalid(f"Request body exceeds the maximum of {MAX_BODY_BYTES} bytes")
        try:
            operations = json.loads(req.body.decode("utf-8"))
        except ValueError:
            raise _invalid("Request body must be a JSON array of operations") from None
        if not isinstance(operations, list) or not operations:
            raise XError(400, "MISSING_PARAMETER", "The request body must be a non-empty JSON array of operations")
        if len(operations) > MAX_OPERATIONS:
            raise _invalid(f"The maximum batch size of {MAX_OPERATIONS} operations was exceeded")
        req.notes["operation"] = ",".join(str(op.get("operation_type")) if isinstance(op, dict) else "?"
                                          for op in operations)
        per_operation = [self._check_operation(op, rejected) for op in operations]
        req.notes["n_users"] = sum(_n_users(op) for op in operations)
        if any(per_operation):  # batches fail or succeed as a whole
            raise _OperationErrors(per_operation)
        users = [u for op in operations for u in op["params"]["users"]]
        short = 1 if self._pop("miscount", "users") else 0
        with self._lock:
            left = len(users) - short
            for op in operations:
                for user in op["params"]["users"]:
                    if left <= 0:
                        break
                    left -= 1
                    self._apply(aid, op["operation_type"], user)
            audience["updated_at"] = self._now()
        return {"request": {"params": params}, "data": {"success_count": len(users) - short,
                                                         "total_count": len(users)}}

    @staticmethod
    def _check_operation(op, rejected: dict[str, bool]) -> list[dict]:
        """The item-level errors of one operation object (empty: it is valid)."""
        if not isinstance(op, dict):
            return [{"code": "INVALID_PARAMETER", "message": "operation must be a JSON object"}]
        if op.get("operation_type") not in OPERATION_TYPES:
            return [{"code": "INVALID_PARAMETER", "parameter": "operation_type",
                     "message": "operation_type must be one of Update, Delete"}]
        p = op.get("params")
        if not isinstance(p, dict) or not isinstance(p.get("users"), list) or not p["users"]:
            return [{"code": "MISSING_PARAMETER", "parameter": "params.users",
                     "message": '"users" is a required parameter'}]
        errors = []
        for name in ("effective_at", "expires_at"):
            if name in p and not (isinstance(p[name], str) and _ISO.match(p[name])):
                errors.append({"code": "INVALID_PARAMETER", "parameter": f"params.{name}",
                               "message": f"{name} must be an ISO 8601 timestamp"})
        for i, user in enumerate(p["users"]):
            at = f"params.users[{i}]"
            if not isinstance(user, dict) or not user:
                errors.append({"code": "MISSING_PARAMETER", "parameter": at,
                               "message": "each user needs at least one identifier"})
                continue
            for key, values in user.items():
                if key not in USER_KEYS:
                    errors.append({"code": "INVALID_PARAMETER", "parameter": f"{at}.{key}",
                                   "message": f"unknown user key {key}; expected one of {sorted(USER_KEYS)}"})
                elif not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
                    errors.append({"code": "INVALID_PARAMETER", "parameter": f"{at}.{key}",
                                   "message": f"{key} must be a non-empty array of strings"})
                elif key not in UNHASHED and not all(_HEX64.match(v) for v in values):
                    errors.append({"code": "INVALID_PARAMETER", "parameter": f"{at}.{key}",
                                   "message": f"{key} must be SHA-256 hashed, in lowercase hex"})
                elif hit := [v for v in values if v in rejected]:
                    errors.append({"code": "INVALID_PARAMETER",
                                   "parameter": f"{at}.{key}" if rejected[hit[0]] else "params.users",
                                   "message": "the user data could not be processed"})
        return errors

    def _apply(self, aid: str, operation_type: str, user: dict) -> None:
        pairs = frozenset((k, v) for k, values in user.items() for v in values)
        members, index = self._members[aid], self._index.setdefault(aid, {})
        if operation_type == "Update":
            members.add(pairs)
            for pair in pairs:
                index.setdefault(pair, set()).add(pairs)
            return
        # X matches a person on any identifier: every user holding one of these leaves.
        for held in {h for pair in pairs for h in index.get(pair, ())}:
            members.discard(held)
            for pair in held:
                index[pair].discard(held)

    def _new_id(self) -> str:
        n, digits = next(self._ids), "0123456789abcdefghijklmnopqrstuvwxyz"
        out = ""
        while n:
            n, r = divmod(n, 36)
            out = digits[r] + out
        return out

    @staticmethod
    def _now() -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
