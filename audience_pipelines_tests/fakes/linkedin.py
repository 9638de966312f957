"""Stateful fake of LinkedIn Matched Audiences, DMP segments (destination-apis.md §0, §3).

Serves `/rest/dmpSegments` (the `account` finder, create, get) and `/rest/dmpSegments/{id}/users`
(BATCH_CREATE), plus the OAuth refresh exchange at `/oauth/v2/accessToken`. Every API call must
carry a bearer token, `LinkedIn-Version: YYYYMM` and `X-Restli-Protocol-Version: 2.0.0`; /users
also `X-RestLi-Method: BATCH_CREATE`. A member is the set of its `userIds`; a REMOVE takes out
every member sharing one of its ids. Re-adding a member or removing an absent one is 201, as on
LinkedIn. Errors are Rest.li bodies: `{"status", "serviceErrorCode", "code", "message"}`.
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from collections import namedtuple
from urllib.parse import unquote

from ._server import FakeServer, Request, Response, json_response

LinkedInRequest = namedtuple("LinkedInRequest", "method path n_elements status")  # one per request

MAX_ELEMENTS = 5_000  # the limit the client assumes [unverified]; the fake enforces it
ID_TYPES = frozenset({"SHA256_EMAIL", "SHA512_EMAIL", "GOOGLE_AID"})
EXTRAS = frozenset({"firstName", "lastName", "title", "company", "country"})
SEGMENT_TYPES = frozenset({"USER", "COMPANY", "USER_LIST_UPLOAD", "COMPANY_LIST_UPLOAD"})
ACCOUNT_URN = "urn:li:sponsoredAccount:"
_HEX = {"SHA256_EMAIL": re.compile(r"[0-9a-f]{64}"), "SHA512_EMAIL": re.compile(r"[0-9a-f]{128}")}
_SEGMENTS = re.compile(r"^/rest/dmpSegments$")
_SEGMENT = re.compile(r"^/rest/dmpSegments/([^/]+)$")
_USERS = re.compile(r"^/rest/dmpSegments/([^/]+)/users$")


class RestliError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, service_code: int | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.service_code = status, message, code, service_code

    def response(self) -> Response:
        body = {"status": self.status, "message": self.message}
        if self.code:
            body["code"] = self.code
        if self.service_code is not None:
            body["serviceErrorCode"] = self.service_code
        return json_response(self.status, body, {"x-restli-protocol-version": "2.0.0"})


def _bad(message: str) -> RestliError:
    return RestliError(400, message, "ILLEGAL_ARGUMENT", 100)


def _not_found(sid: str) -> RestliError:
    return RestliError(404, f"DmpSegment {sid} does not exist", "NOT_FOUND")


class FakeLinkedIn(FakeServer):
    def __init__(self, access_token="test-token", ad_account_id="5123", *, client_id="test-client",
                 client_secret="test-client-secret", refresh_token="test-refresh-token",
                 max_elements=MAX_ELEMENTS, token_lifetime=5_183_999):
        super().__init__()
        self.access_token = access_token  # the member token a client is configured with
        self.ad_account_id = str(ad_account_id)
        self.client_id, self.client_secret, self.refresh_token = client_id, client_secret, refresh_token
        self.max_elements = max_elements
        self.token_lifetime = token_lifetime
        self.role = "CAMPAIGN_MANAGER"  # "VIEWER" may read but not write
        self.has_scope = True  # False: the token lacks rw_dmp_segments
        # Ids (SHA256_EMAIL / GOOGLE_AID values) LinkedIn matches to a member; None: every id.
        self.known_ids: set[str] | None = None
        # /users requests answered 404 for each segment created over HTTP (not ready yet).
        self.not_ready_requests = 0
        self._issued: dict[str, float] = {}  # access tokens from the exchange -> monotonic expiry
        self._segments: dict[str, dict] = {}  # insertion order = creation order = finder order
        self._members: dict[str, dict[frozenset, dict]] = {}  # segment id -> userIds -> extras
        self._not_ready: dict[str, int] = {}
        self._rejected_values: set[str] = set()
        self._ids = itertools.count(18_100_001)

    # -- inspection and seeding -------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{self.origin}/rest"

    @property
    def token_url(self) -> str:
        return f"{self.origin}/oauth/v2/accessToken"

    @property
    def account_urn(self) -> str:
        return f"{ACCOUNT_URN}{self.ad_account_id}"

    @property
    def segments(self) -> dict[str, dict]:
        with self._lock:
            return {sid: self._view(sid) for sid in self._segments}

    def segment_id_by_name(self, name: str) -> str | None:
        with self._lock:
            ids = [sid for sid, s in self._segments.items() if s["name"] == name]
        if len(ids) > 1:  # LinkedIn allows it; a client creating twice is the bug under test
            raise LookupError(f"{len(ids)} segments are named {name!r}: {ids}")
        return ids[0] if ids else None

    def members(self, sid) -> set[frozenset]:
        """Set of frozenset({(idType, idValue), ..., (extra field, value), ...}), one per member."""
        with self._lock:
            return {ids | frozenset(extras.items()) for ids, extras in self._members[str(sid)].items()}

    def member_ids(self, sid) -> set[frozenset]:
        """Set of frozenset({(idType, idValue), ...}): the userIds of each member."""
        with self._lock:
            return set(self._members[str(sid)])

    def create_segment(self, name: str, *, type="USER", account: str | None = None) -> str:
        """Seed a segment directly (no HTTP, ready at once); returns its id."""
        with self._lock:
            sid = str(next(self._ids))
            self._segments[sid] = {
                "id": int(sid), "name": name, "type": type, "account": account or self.account_urn,
                "accessPolicy": "PRIVATE", "sourcePlatform": "API", "sourceSegmentId": name,
                "destinations": [{"destination": "LINKEDIN", "status": "BUILDING"}], "status": "ACTIVE",
                "created": int(time.time() * 1000)}
            self._members[sid] = {}
            return sid

    def issue_access_token(self) -> str:
        token = "AQX-fake-" + secrets.token_urlsafe(24)
        with self._lock:
            self._issued[token] = time.monotonic() + self.token_lifetime
        return token

    # -- injections --------------------------------------------------------------------------
    # Scopes: "users" (/users, the default), "segments" (the other API calls), "token", "all".
    def inject_throttle(self, times=1, scope="users") -> None:
        """HTTP 429, no Retry-After (none is documented)."""
        self._push("fault", times, scope, status=429)

    def inject_server_error(self, times=1, status=500, scope="users") -> None:
        if status not in (500, 502, 503, 504):
            raise ValueError("status is 500, 502, 503 or 504")
        self._push("fault", times, scope, status=status)

    def inject_delay(self, seconds: float, times=1, scope="users") -> None:
        self._push("delay", times, scope, seconds=seconds)

    def reject_values(self, values) -> None:
        """Persistent: an element carrying one of these idValues gets status 400."""
        with self._lock:
            self._rejected_values.update(values)

    def clear_rejected_values(self) -> None:
        with self._lock:
            self._rejected_values.clear()

    def revoke_tokens(self) -> None:
        """Every access token (configured and issued) is refused from now on."""
        with self._lock:
            self.access_token = None
            self._issued.clear()

    def expire_access_tokens(self) -> None:
        """Issued access tokens now get 401 EXPIRED_ACCESS_TOKEN (the refresh token still works)."""
        with self._lock:
            self._issued = dict.fromkeys(self._issued, 0.0)

    # -- HTTP ---------------------------------------------------------------------------------
    def _scope(self, req: Request) -> str:
        path = unquote(req.path)
        if path == "/oauth/v2/accessToken":
            return "token"
        return "users" if _USERS.match(path) else "segments"

    def _log_entry(self, req: Request, resp: Response):
        return LinkedInRequest(req.method, req.path, req.notes.get("n_elements"), resp.status)

    def _handle(self, req: Request) -> Response:
        if unquote(req.path) == "/oauth/v2/accessToken":
            return self._exchange(req)
        try:
            return self._api(req)
        except RestliError as e:
            return e.response()

    def _exchange(self, req: Request) -> Response:
        if req.method != "POST":
            return json_response(405, {"error": "invalid_request", "error_description": "POST only"})
        if fault := self._pop("fault", "token"):
            return json_response(fault["status"], {"error": "server_error",
                                                   "error_description": "temporarily unavailable"})
        form = req.form()
        if form.get("grant_type") != "refresh_token":
            return json_response(400, {"error": "unsupported_grant_type",
                                       "error_description": "grant_type must be refresh_token"})
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return json_response(401, {"error": "invalid_client", "error_description": "Client authentication failed"})
        if self.refresh_token is None or form.get("refresh_token") != self.refresh_token:
            return json_response(400, {"error": "invalid_grant",
                                       "error_description": "The provided authorization grant or refresh token is "
                                                            "invalid, expired or revoked"})
        return json_response(200, {"access_token": self.issue_access_token(), "expires_in": self.token_lifetime,
                                   "refresh_token": self.refresh_token, "refresh_token_expires_in": 31_535_999})

    def _check_headers(self, req: Request) -> None:
        auth = req.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        with self._lock:
            expiry = self._issued.get(token) if token else None
            valid = token is not None and (token == self.access_token or expiry is not None)
        if not valid:
            raise RestliError(401, "Invalid access token", "INVALID_ACCESS_TOKEN", 65600)
        if expiry is not None and expiry <= time.monotonic():
            raise RestliError(401, "The token used in the request has expired", "EXPIRED_ACCESS_TOKEN", 65601)
        version = req.headers.get("linkedin-version")
        if not version:
            raise RestliError(400, "A version must be present. Please specify a version by adding the "
                                   "LinkedIn-Version header.", "VERSION_MISSING")
        if not re.fullmatch(r"20\d\d(0[1-9]|1[0-2])", version):
            raise RestliError(400, f"Invalid version format: {version}", "INVALID_VERSION")
        if req.headers.get("x-restli-protocol-version") != "2.0.0":
            raise _bad("This resource requires Rest.li protocol version 2.0.0 (X-Restli-Protocol-Version)")
        if not self.has_scope:
            raise RestliError(403, f"Not enough permissions to access: dmpSegments.{req.method}."
                                   f"{version}01", "ACCESS_DENIED", 100)

    def _check_write(self, req: Request, account: str) -> None:
        if account != self.account_urn:
            raise RestliError(403, f"Member does not have access to account {account}", "ACCESS_DENIED", 100)
        if self.role == "VIEWER":
            raise RestliError(403, "Not enough permissions to access: dmpSegments.CREATE (role VIEWER on "
                                   f"{account})", "ACCESS_DENIED", 100)

    def _api(self, req: Request) -> Response:
        path = unquote(req.path)
        if not path.startswith("/rest/"):
            raise RestliError(404, f"No resource found for {path}", "NOT_FOUND")
        self._check_headers(req)
        if fault := self._pop("fault", self._scope(req)):
            message = ("Resource level throttle MEMBER MINUTE limit for calls to this resource is reached."
                       if fault["status"] == 429 else "Internal Server Error")
            raise RestliError(fault["status"], message, "TOO_MANY_REQUESTS" if fault["status"] == 429 else None)
        if _SEGMENTS.match(path):
            if req.method == "GET":
                return json_response(200, self._find(req))
            if req.method == "POST":
                return self._create(req)
        elif m := _USERS.match(path):
            if req.method == "POST":
                return json_response(200, self._users(req, m.group(1)))
        elif (m := _SEGMENT.match(path)) and req.method == "GET":
            with self._lock:
                if m.group(1) not in self._segments or self._segments[m.group(1)]["account"] != self.account_urn:
                    raise _not_found(m.group(1))
                return json_response(200, self._view(m.group(1)))
        raise RestliError(405, f"{req.method} is not allowed on {path}", "METHOD_NOT_ALLOWED")

    def _view(self, sid: str) -> dict:
        members = self._members[sid]
        known = self.known_ids
        matched = sum(1 for ids in members if known is None or any(v in known for _, v in ids))
        return {**self._segments[sid], "audienceSize": len(members), "matchedCount": matched,
                "lastModified": int(time.time() * 1000)}

    def _find(self, req: Request) -> dict:
        q = req.query
        if q.get("q") != "account":
            raise _bad(f"Unknown finder: {q.get('q')!r}; dmpSegments supports q=account")
        account = q.get("account")
        if not account:
            raise _bad("Missing required parameter: account")
        if account != self.account_urn:
            raise RestliError(403, f"Member does not have access to account {account}", "ACCESS_DENIED", 100)
        try:
            start, count = int(q.get("start", 0)), int(q.get("count", 10))
        except ValueError:
            raise _bad("start and count must be integers") from None
        if start < 0 or count < 0:
            raise _bad("start and count must not be negative")
        with self._lock:
            ids = [sid for sid, s in self._segments.items() if s["account"] == account
                   and (not q.get("sourceSegmentId") or s["sourceSegmentId"] == q["sourceSegmentId"])
                   and (not q.get("sourcePlatform") or s["sourcePlatform"] == q["sourcePlatform"])]
            elements = [self._view(sid) for sid in ids[start:start + count]]
        return {"elements": elements, "paging": {"start": start, "count": count, "total": len(ids), "links": []}}

    def _create(self, req: Request) -> Response:
        body = _json(req)
        for key in ("name", "account", "type", "accessPolicy", "sourcePlatform", "destinations"):
            if not body.get(key):
                raise _bad(f"Field /{key} is required")
        unknown = set(body) - {"name", "account", "type", "accessPolicy", "sourcePlatform", "sourceSegmentId",
                               "destinations", "description"}
        if unknown:
            raise _bad(f"Unrecognized field(s) {sorted(unknown)}")
        if body["type"] not in SEGMENT_TYPES:
            raise _bad(f"Invalid value for field /type: {body['type']}")
        if body["accessPolicy"] not in ("PRIVATE", "PUBLIC"):
            raise _bad(f"Invalid value for field /accessPolicy: {body['accessPolicy']}")
        destinations = body["destinations"]
        if not isinstance(destinations, list) or any(not isinstance(d, dict) or d.get("destination") != "LINKEDIN"
                                                     for d in destinations):
            raise _bad("Field /destinations must be a list of {\"destination\": \"LINKEDIN\"}")
        self._check_write(req, body["account"])
        sid = self.create_segment(body["name"], type=body["type"], account=body["account"])
        with self._lock:
            self._segments[sid].update(sourcePlatform=body["sourcePlatform"],
                                       sourceSegmentId=body.get("sourceSegmentId", ""),
                                       accessPolicy=body["accessPolicy"])
            self._not_ready[sid] = self.not_ready_requests
            view = self._view(sid)
        # Rest.li names a created entity in x-restli-id; some clients read the body: both are given.
        return json_response(201, view, {"x-restli-id": sid, "Location": f"/dmpSegments/{sid}"})

    def _users(self, req: Request, sid: str) -> dict:
        if req.headers.get("x-restli-method", "").upper() != "BATCH_CREATE":
            raise _bad("POST on dmpSegments/{id}/users needs X-RestLi-Method: BATCH_CREATE")
        with self._lock:
            segment = self._segments.get(sid)
            if segment is None or segment["account"] != self.account_urn:
                raise _not_found(sid)
            if self._not_ready.get(sid):
                self._not_ready[sid] -= 1
                raise _not_found(sid)
            if segment["type"] != "USER":
                raise _bad(f"DmpSegment {sid} is of type {segment['type']}; users can only be added to USER "
                           "segments")
            self._check_write(req, segment["account"])
            rejected = set(self._rejected_values)
        elements = _json(req).get("elements")
        if not isinstance(elements, list) or not elements:
            raise _bad("Field /elements is required and must be a non-empty array")
        req.notes["n_elements"] = len(elements)
        if len(elements) > self.max_elements:
            raise _bad(f"Too many elements: {len(elements)} (at most {self.max_elements} per request)")
        parsed = [_element(i, e) for i, e in enumerate(elements)]
        statuses = []
        with self._lock:
            members = self._members[sid]
            for action, ids, extras in parsed:
                problem = _problem(ids, rejected)
                if problem:
                    statuses.append({"status": 400, "message": problem})
                    continue
                if action == "ADD":
                    members[ids] = extras
                else:  # every member sharing one of these ids leaves
                    for held in [h for h in members if h & ids]:
                        del members[held]
                statuses.append({"status": 201})
            segment["destinations"] = [{**d, "status": "READY"} for d in segment["destinations"]]
        return {"elements": statuses}


def _json(req: Request) -> dict:
    if "json" not in req.headers.get("content-type", ""):
        raise RestliError(415, "Unsupported Media Type: send application/json", "UNSUPPORTED_MEDIA_TYPE")
    try:
        body = req.json()
    except ValueError:
        raise _bad("Could not parse the request body as JSON") from None
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object")
    return body


def _element(i: int, element) -> tuple[str, frozenset, dict]:
    """Schema checks (a whole-request 400, as Rest.li validates before any element is applied)."""
    if not isinstance(element, dict):
        raise _bad(f"/elements/{i} must be an object")
    unknown = set(element) - {"action", "userIds", "userId"} - EXTRAS
    if unknown:
        raise _bad(f"/elements/{i}: unrecognized field(s) {sorted(unknown)}")
    if element.get("action") not in ("ADD", "REMOVE"):
        raise _bad(f"/elements/{i}/action must be ADD or REMOVE, got {element.get('action')!r}")
    user_ids = element.get("userIds", [element["userId"]] if "userId" in element else [])
    if not isinstance(user_ids, list):
        raise _bad(f"/elements/{i}/userIds must be an array")
    pairs = []
    for j, uid in enumerate(user_ids):
        if not isinstance(uid, dict) or uid.get("idType") not in ID_TYPES or not isinstance(uid.get("idValue"), str):
            raise _bad(f"/elements/{i}/userIds/{j} must be {{idType: one of {sorted(ID_TYPES)}, idValue: string}}")
        pairs.append((uid["idType"], uid["idValue"]))
    extras = {k: v for k, v in element.items() if k in EXTRAS}
    if any(not isinstance(v, str) for v in extras.values()):
        raise _bad(f"/elements/{i}: {sorted(EXTRAS)} are strings")
    return element["action"], frozenset(pairs), extras


def _problem(ids: frozenset, rejected: set[str]) -> str | None:
    """Per-element refusals: answered in the element's status, the rest of the batch applies."""
    if not ids:
        return "At least one userId is required"
    for id_type, value in ids:
        if id_type in _HEX and not _HEX[id_type].fullmatch(value):
            return f"Invalid {id_type} idValue: expected lowercase hex of a {id_type[:6]} hash"
        if value in rejected:
            return f"Invalid idValue for idType {id_type}"
    return None
