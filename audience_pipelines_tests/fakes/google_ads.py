"""Stateful fake of the Google Ads API, Customer Match (destination-apis.md §0, §2).

OAuth token exchange, GAQL search over user lists and offline user data jobs,
userLists:mutate, and the offlineUserDataJobs create / addOperations / run flow. Staged
operations reach a list's members only when a run job is polled to SUCCESS, as on Google.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import secrets
import time
from collections import namedtuple
from urllib.parse import unquote

from ._server import FakeServer, Request, Response, json_response

# One per request, like MetaRequest.
GoogleAdsRequest = namedtuple("GoogleAdsRequest", "method path n_operations status")

# Which identifiers each list's upload key type accepts.
UPLOAD_KEYS = {
    "CONTACT_INFO": frozenset({"hashedEmail", "hashedPhoneNumber", "addressInfo"}),
    "CRM_ID": frozenset({"thirdPartyUserId"}),
    "MOBILE_ADVERTISING_ID": frozenset({"mobileId"}),
}
IDENTIFIERS = frozenset().union(*UPLOAD_KEYS.values())
HASHED = frozenset({"hashedEmail", "hashedPhoneNumber"})
ADDRESS_HASHED = frozenset({"hashedFirstName", "hashedLastName", "hashedStreetAddress"})
ADDRESS_PLAIN = frozenset({"countryCode", "postalCode", "city", "state"})
MAX_IDS_PER_USER_DATA = 20
MAX_IDS_PER_REQUEST = 100_000
CONSENT_VALUES = frozenset({"UNSPECIFIED", "UNKNOWN", "GRANTED", "DENIED"})

# Top-level body fields each method knows; anything else is a JSON parse error on Google.
BODY_FIELDS = {
    "search": {"query", "pageToken", "pageSize", "validateOnly", "returnTotalResultsCount",
               "summaryRowSetting", "searchSettings"},
    "userLists:mutate": {"operations", "partialFailure", "validateOnly", "responseContentType"},
    "jobs:create": {"job", "validateOnly", "enableMatchRateRangePreview"},
    "addOperations": {"operations", "enablePartialFailure", "enableWarnings", "validateOnly"},
    "run": {"validateOnly"},
}
# Fields a GAQL WHERE / ORDER BY may name (snake_case, as GAQL spells them).
WHERE_FIELDS = {
    "user_list": {f"user_list.{f}" for f in (
        "id name resource_name type description membership_status membership_life_span "
        "size_for_search size_for_display match_rate_percentage read_only access_reason "
        "eligible_for_search eligible_for_display crm_based_user_list.upload_key_type "
        "crm_based_user_list.data_source_type crm_based_user_list.app_id").split()},
    "offline_user_data_job": {f"offline_user_data_job.{f}" for f in (
        "id resource_name type status failure_reason "
        "customer_match_user_list_metadata.user_list").split()},
}

STATUS = {  # HTTP code -> (google.rpc status, top-level message)
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials. Expected OAuth 2 "
          "access token, login cookie or other valid authentication credential. See "
          "https://developers.google.com/identity/sign-in/web/devconsole-project."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    409: ("ABORTED", "The operation was aborted."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    500: ("INTERNAL", "Internal error encountered."),
    503: ("UNAVAILABLE", "The service is currently unavailable."),
    504: ("DEADLINE_EXCEEDED", "The request deadline was exceeded."),
}
MISSING_CREDENTIAL = ("Request is missing required authentication credential. Expected OAuth 2 "
                      "access token, login cookie or other valid authentication credential. See "
                      "https://developers.google.com/identity/sign-in/web/devconsole-project.")
MESSAGES = {
    "INVALID_SHA256_FORMAT": "The SHA256 encoded value is malformed.",
    "TOO_MANY_USER_IDENTIFIERS": "Maximum number of user identifiers allowed per request is "
                                 "100,000 and per operation is 20.",
    "MISSING_USER_IDENTIFIER": "The user identifier is missing valid data.",
    "INCOMPATIBLE_UPLOAD_KEY_TYPE": "Upload data is not compatible with the upload key type of "
                                    "the associated user list.",
    "INVALID_MOBILE_ID_FORMAT": "The mobile ID is malformed.",
    "INVALID_COUNTRY_CODE": "The country code is invalid.",
    "INVALID_OPERATION_ORDER": "When a remove-all operation is provided, it has to be the first "
                               "operation of the operation list.",
    "JOB_ALREADY_STARTED": "Once the upload job is started, new operations cannot be added.",
    "INVALID_USER_LIST_ID": "The user list ID provided for the job is invalid.",
    "NAME_ALREADY_USED": "Name is already being used for another user list for the account.",
}

_HEX64 = re.compile(r"[0-9a-f]{64}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_SEARCH = re.compile(r"^/customers/([^/]+)/googleAds:search$")
_UL_MUTATE = re.compile(r"^/customers/([^/]+)/userLists:mutate$")
_JOB_CREATE = re.compile(r"^/customers/([^/]+)/offlineUserDataJobs:create$")
_JOB_ACTION = re.compile(r"^/customers/([^/]+)/offlineUserDataJobs/([^/:]+):(addOperations|run)$")
_TOKEN = re.compile(r"""\s*(?:(?P<str>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")"""
                    r"""|(?P<num>-?\d+(?:\.\d+)?)(?![\w.])|(?P<op>!=|>=|<=|=|>|<|\(|\)|,)"""
                    r"""|(?P<word>[A-Za-z_][A-Za-z0-9_.]*))""")


def _camel(name: str) -> str:
    return re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), name)


def _snake(name: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), name)


def _normalize(obj):
    """Proto JSON accepts snake_case and camelCase names; keep camelCase internally."""
    if isinstance(obj, dict):
        return {_camel(k): _normalize(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_normalize(v) for v in obj]
    return obj


def _err(kind: str, code: str, message: str | None = None, path=None, details=None) -> dict:
    """One GoogleAdsError; `path` is a list of (field_name, index-or-None)."""
    e = {"errorCode": {kind: code}, "message": message or MESSAGES.get(code, code)}
    if path:
        e["location"] = {"fieldPathElements": [
            {"fieldName": f} if i is None else {"fieldName": f, "index": i} for f, i in path]}
    if details:
        e["details"] = details
    return e


def _operations(req: Request, body: dict) -> list:
    """A mutate request's operations, which Google requires to be a non-empty list."""
    ops = body.get("operations")
    if not isinstance(ops, list) or not ops:
        raise AdsError(400, [_err("requestError", "OPERATION_REQUIRED",
                                  "Mutate operation should have either create, update, or "
                                  "remove specified.", [("operations", None)])])
    req.notes["n_operations"] = len(ops)
    return ops


def _path_text(err: dict) -> str:
    elems = err.get("location", {}).get("fieldPathElements", [])
    return ".".join(e["fieldName"] + (f"[{e['index']}]" if "index" in e else "") for e in elems)


class AdsError(Exception):
    """A request-level failure; `errors` become the GoogleAdsFailure, `raw` replaces details."""

    def __init__(self, http: int, errors=(), *, message=None, raw=None, headers=None):
        super().__init__(message or STATUS[http][1])
        self.http, self.errors, self.raw = http, list(errors), raw
        self.message = message or STATUS[http][1]
        self.headers = headers or {}


def _bad_json(message: str, field: str = "") -> AdsError:
    # Body parse errors come from the API front end: google.rpc.BadRequest, no GoogleAdsFailure.
    text = f"Invalid JSON payload received. {message}"
    return AdsError(400, message=text, raw=[{"@type": "type.googleapis.com/google.rpc.BadRequest",
                                            "fieldViolations": [{"field": field,
                                                                 "description": text}]}])


def _query_error(code: str, message: str) -> AdsError:
    return AdsError(400, [_err("queryError", code, message)])


def _unknown_fields(obj: dict, known, where: str) -> None:
    for k in obj:
        if k not in known:
            at = f" at '{where}'" if where else ""
            raise _bad_json(f'Unknown name "{_snake(k)}"{at}: Cannot find field.', where)


class FakeGoogleAds(FakeServer):
    def __init__(self, client_id="test-client-id.apps.googleusercontent.com",
                 client_secret="test-client-secret", refresh_token="test-refresh-token",
                 developer_token="test-developer-token", customer_id="1234567890",
                 login_customer_id=None, api_version="v22", *, page_size=1000,
                 running_polls=1, match_rate=80, token_lifetime=3599,
                 max_identifiers_per_request=MAX_IDS_PER_REQUEST):
        super().__init__()
        self.client_id, self.client_secret = client_id, client_secret
        self.refresh_token, self.developer_token = refresh_token, developer_token
        self.customer_id = str(customer_id)
        self.login_customer_id = None if login_customer_id is None else str(login_customer_id)
        if not self.customer_id.isdigit() or not (self.login_customer_id or "0").isdigit():
            raise ValueError("customer ids are digits only, no hyphens")
        self.api_version = api_version
        self.page_size = page_size
        self.running_polls = running_polls  # searches that still show RUNNING after :run
        self.match_rate = match_rate
        self.token_lifetime = token_lifetime
        self.max_identifiers_per_request = max_identifiers_per_request
        self._tokens: dict[str, float] = {}  # access token -> monotonic expiry
        self._lists: dict[str, dict] = {}  # insertion order = creation order = search order
        self._members: dict[str, set[frozenset]] = {}
        self._jobs: dict[str, dict] = {}
        self._list_ids = itertools.count(9_100_000_001)
        self._job_ids = itertools.count(18_000_000_001)
        self._op_ids = itertools.count(1)
        self._rejected_values: set[str] = set()

    # -- inspection -------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{self.origin}/{self.api_version}"

    @property
    def token_url(self) -> str:
        return f"{self.origin}/token"

    @property
    def user_lists(self) -> dict[str, dict]:
        """user list id -> the userList object search returns."""
        with self._lock:
            return {lid: self._list_view(lid) for lid in self._lists}

    @property
    def jobs(self) -> dict[str, dict]:
        """job id -> {id, resource_name, user_list_id, status, failure_reason, n_operations,
        operations (staged, in order: (kind, frozenset | None)), consent}. Not a poll."""
        with self._lock:
            return {jid: {"id": jid, "resource_name": j["resource_name"],
                          "user_list_id": j["user_list_id"], "status": j["status"],
                          "failure_reason": j["failure_reason"],
                          "n_operations": len(j["operations"]),
                          "operations": list(j["operations"]), "consent": j["consent"]}
                    for jid, j in self._jobs.items()}

    def members(self, user_list_id) -> set[frozenset]:
        """Set of frozenset({(field, value), ...}), one per applied UserData.

        Fields are hashedEmail, hashedPhoneNumber, mobileId, thirdPartyUserId, and addressInfo
        whose value is a sorted tuple of (subfield, value) pairs.
        """
        with self._lock:
            return set(self._members[str(user_list_id)])

    def member_values(self, user_list_id, field: str) -> set:
        return {v for row in self.members(user_list_id) for f, v in row if f == field}

    def user_list_id_by_name(self, name: str) -> str | None:
        with self._lock:
            ids = [lid for lid, ul in self._lists.items() if ul["name"] == name]
        if len(ids) > 1:  # only possible by seeding; mutate refuses duplicate names
            raise LookupError(f"{len(ids)} user lists are named {name!r}: {ids}")
        return ids[0] if ids else None

    def user_list_resource_name(self, user_list_id) -> str:
        return f"customers/{self.customer_id}/userLists/{user_list_id}"

    def create_user_list(self, name: str, upload_key_type="CONTACT_INFO", *, description="",
                         membership_life_span=10000, app_id=None) -> str:
        """Seed a CRM_BASED list directly (no HTTP, no name check); returns its id."""
        if upload_key_type not in UPLOAD_KEYS:
            raise ValueError(f"upload_key_type must be one of {sorted(UPLOAD_KEYS)}")
        if upload_key_type == "MOBILE_ADVERTISING_ID" and app_id is None:
            app_id = "com.example.app"
        with self._lock:
            lid = str(next(self._list_ids))
            self._lists[lid] = {"name": name, "description": description,
                                "membershipLifeSpan": membership_life_span,
                                "uploadKeyType": upload_key_type, "appId": app_id,
                                "size": None, "matchRate": None}
            self._members[lid] = set()
            return lid

    def add_members(self, user_list_id, rows) -> None:
        """Seed members directly: each row a frozenset of pairs or a {field: value} dict."""
        with self._lock:
            self._members[str(user_list_id)].update(
                r if isinstance(r, frozenset) else frozenset(r.items()) for r in rows)

    def set_size(self, user_list_id, size_for_search=None, match_rate=None) -> None:
        """Override what search reports (None: back to member count / the default rate)."""
        with self._lock:
            ul = self._lists[str(user_list_id)]
            ul["size"], ul["matchRate"] = size_for_search, match_rate

    def issue_access_token(self) -> str:
        """A valid access token without the HTTP exchange."""
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = time.monotonic() + self.token_lifetime
        return token

    def finish_jobs(self) -> None:
        """Complete every RUNNING job now, as if it had been polled to the end."""
        with self._lock:
            for job in self._jobs.values():
                if job["status"] == "RUNNING":
                    self._complete(job)

    # -- injections -------------------------------------------------------
    # Faults (resource exhausted, concurrent modification, server error) share one FIFO queue,
    # consumed by the next authenticated API request in scope: "operations" (addOperations,
    # the default), "run", "search", "other" (mutate, job create) or "all". They never hit
    # the token endpoint. Delays, resets and lost answers (base class) hit before auth.
    def inject_resource_exhausted(self, times=1, scope="operations", retry_delay="1s",
                                  code="RESOURCE_EXHAUSTED", rate_scope="ACCOUNT",
                                  rate_name="Requests per service per method") -> None:
        """HTTP 429 RESOURCE_EXHAUSTED; `retry_delay` is a duration string or seconds."""
        if code not in ("RESOURCE_EXHAUSTED", "RESOURCE_TEMPORARILY_EXHAUSTED"):
            raise ValueError("code is RESOURCE_EXHAUSTED or RESOURCE_TEMPORARILY_EXHAUSTED")
        if not isinstance(retry_delay, str):
            retry_delay = f"{retry_delay:g}s"
        self._push("fault", times, scope, fault="quota", code=code, retry_delay=retry_delay,
                   rate_scope=rate_scope, rate_name=rate_name)

    def inject_concurrent_modification(self, times=1, scope="operations", status=400) -> None:
        """databaseError CONCURRENT_MODIFICATION. Default HTTP 400 INVALID_ARGUMENT, as the
        reference and RudderStack's recorded responses show; status=409 gives ABORTED."""
        if status not in (400, 409):
            raise ValueError("status is 400 (INVALID_ARGUMENT) or 409 (ABORTED)")
        self._push("fault", times, scope, fault="concurrent", status=status)

    def inject_server_error(self, times=1, status=500, scope="operations") -> None:
        """500 INTERNAL / 503 UNAVAILABLE / 504 DEADLINE_EXCEEDED with an internalError code."""
        if status not in (500, 503, 504):
            raise ValueError("status is 500, 503 or 504")
        self._push("fault", times, scope, fault="server", status=status)

    def inject_delay(self, seconds: float, times=1, scope="operations") -> None:
        self._push("delay", times, scope, seconds=seconds)

    def reject_values(self, values) -> None:
        """Persistent: an operation carrying one of these identifier values fails (fieldError INVALID_VALUE)."""
        with self._lock:
            self._rejected_values.update(values)

    def clear_rejected_values(self) -> None:
        with self._lock:
            self._rejected_values.clear()

    def fail_next_job(self, reason="UNKNOWN", times=1) -> None:
        """The next `times` jobs to be run end FAILED with this failure_reason, nothing applied."""
        self._push("fail_job", times, "run", reason=reason)

    def expire_access_tokens(self) -> None:
        """Every access token issued so far now gets 401 OAUTH_TOKEN_EXPIRED."""
        with self._lock:
            self._tokens = dict.fromkeys(self._tokens, 0.0)

    def revoke_refresh_token(self) -> None:
        """Token exchanges now fail with invalid_grant (issued access tokens keep working)."""
        with self._lock:
            self.refresh_token = None

    # -- HTTP -------------------------------------------------------------
    def _route_of(self, req: Request) -> str:
        path = unquote(req.path)
        prefix = f"/{self.api_version}/"
        return path[len(prefix) - 1:] if path.startswith(prefix) else path

    def _scope(self, req: Request) -> str:
        route = self._route_of(req)
        if route == "/token":
            return "token"
        if m := _JOB_ACTION.match(route):
            return "operations" if m.group(3) == "addOperations" else "run"
        return "search" if _SEARCH.match(route) else "other"

    def _log_entry(self, req: Request, resp: Response):
        return GoogleAdsRequest(req.method, req.path, req.notes.get("n_operations"), resp.status)

    def _handle(self, req: Request) -> Response:
        if unquote(req.path) == "/token":
            return self._token(req)
        request_id = secrets.token_urlsafe(16)
        try:
            return json_response(200, self._api(req), {"request-id": request_id})
        except AdsError as e:
            return self._error_response(e, request_id)

    def _failure(self, errors: list, request_id: str) -> dict:
        return {"@type": f"type.googleapis.com/google.ads.googleads.{self.api_version}.errors."
                         "GoogleAdsFailure", "errors": errors, "requestId": request_id}

    def _error_response(self, e: AdsError, request_id: str) -> Response:
        err = {"code": e.http, "message": e.message, "status": STATUS[e.http][0]}
        if e.raw is not None:
            err["details"] = e.raw
        elif e.errors:
            err["details"] = [self._failure(e.errors, request_id)]
        return json_response(e.http, {"error": err}, {"request-id": request_id, **e.headers})

    def _api(self, req: Request) -> dict:
        path = unquote(req.path)
        if not path.startswith(f"/{self.api_version}/"):
            raise AdsError(404, message=f"Version not served by this fake: {path}")
        route = self._route_of(req)
        for pattern, name in ((_SEARCH, "search"), (_UL_MUTATE, "userLists:mutate"),
                              (_JOB_CREATE, "jobs:create"), (_JOB_ACTION, None)):
            if m := pattern.match(route):
                break
        else:
            raise AdsError(404, message=f"Method not found: {route}")
        if req.method != "POST":
            raise AdsError(404, message=f"{req.method} {route}: only POST is served")
        name = name or m.group(3)
        self._check_auth(req, m.group(1))
        if fault := self._pop("fault", self._scope(req)):
            raise self._fault(fault)
        body = self._body(req, name)
        if name == "search":
            return self._search(body)
        if name == "userLists:mutate":
            return self._mutate_lists(req, body)
        if name == "jobs:create":
            return self._create_job(body)
        if name == "addOperations":
            return self._add_operations(req, m.group(2), body)
        return self._run(m.group(2), body)

    def _check_auth(self, req: Request, cid: str) -> None:
        auth = req.headers.get("authorization", "")
        if not auth:
            raise AdsError(401, [_err("authenticationError", "OAUTH_TOKEN_HEADER_INVALID",
                                      "OAuth token HTTP header is malformed.")],
                           message=MISSING_CREDENTIAL)
        if not auth.lower().startswith("bearer "):
            raise AdsError(401, [_err("authenticationError", "OAUTH_TOKEN_HEADER_INVALID",
                                      "OAuth token HTTP header is malformed.")])
        with self._lock:
            expiry = self._tokens.get(auth[7:].strip())
        if expiry is None:
            raise AdsError(401, [_err("authenticationError", "OAUTH_TOKEN_INVALID",
                                      "OAuth token in the header is not valid.")])
        if expiry <= time.monotonic():
            raise AdsError(401, [_err("authenticationError", "OAUTH_TOKEN_EXPIRED",
                                      "OAuth token in the header has expired.")])
        dev = req.headers.get("developer-token")
        if not dev:
            raise AdsError(400, [_err("requestError", "DEVELOPER_TOKEN_PARAMETER_MISSING",
                                      "The developer-token parameter is required for all "
                                      "requests.")])
        if dev != self.developer_token:
            raise AdsError(401, [_err("authenticationError", "DEVELOPER_TOKEN_INVALID",
                                      "The developer token is not valid.")])
        if not cid.isdigit():
            raise AdsError(400, [_err("requestError", "INVALID_CUSTOMER_ID",
                                      "Customer ID is invalid.")])
        login = req.headers.get("login-customer-id")
        login_ok = (login == self.login_customer_id if self.login_customer_id is not None
                    else login in (None, self.customer_id))
        if cid != self.customer_id or not login_ok:
            raise AdsError(403, [_err(
                "authorizationError", "USER_PERMISSION_DENIED",
                "User doesn't have permission to access customer. Note: If you're accessing a "
                "client customer, the manager's customer id must be set in the "
                "'login-customer-id' header. See https://developers.google.com/google-ads/api/"
                "docs/concepts/call-structure#cid")])

    def _fault(self, inj: dict) -> AdsError:
        if inj["fault"] == "quota":
            details = {"quotaErrorDetails": {"rateScope": inj["rate_scope"],
                                             "rateName": inj["rate_name"],
                                             "retryDelay": inj["retry_delay"]}}
            text = ("Too many requests. Retry in " + inj["retry_delay"].removesuffix("s")
                    + " seconds.")
            return AdsError(429, [_err("quotaError", inj["code"], text, details=details)])
        if inj["fault"] == "concurrent":
            return AdsError(inj["status"], [_err(
                "databaseError", "CONCURRENT_MODIFICATION", "Multiple requests were attempting "
                "to modify the same resource at once. Retry the request.")])
        code = {500: "INTERNAL_ERROR", 503: "TRANSIENT_ERROR", 504: "DEADLINE_EXCEEDED"}
        return AdsError(inj["status"], [_err("internalError", code[inj["status"]],
                                             "An internal error has occurred.")])

    def _body(self, req: Request, name: str) -> dict:
        try:
            body = json.loads(req.body.decode("utf-8")) if req.body.strip() else {}
        except (UnicodeDecodeError, ValueError):
            raise _bad_json("Unexpected token.") from None
        if not isinstance(body, dict):
            raise _bad_json("Root element must be a message.")
        body = _normalize(body)
        _unknown_fields(body, BODY_FIELDS[name], "")
        return body

    # -- OAuth ------------------------------------------------------------
    def _token(self, req: Request) -> Response:
        if req.method != "POST":
            return json_response(405, {"error": "invalid_request",
                                       "error_description": "Method not allowed"})
        ctype = req.headers.get("content-type", "")
        try:
            params = req.json() if "json" in ctype else req.form()
        except ValueError:
            params = {}
        if not isinstance(params, dict):
            params = {}
        grant = params.get("grant_type")
        if grant != "refresh_token":
            return json_response(400, {"error": "unsupported_grant_type",
                                       "error_description": f"Invalid grant_type: {grant or ''}"})
        if not params.get("client_id"):
            return json_response(400, {"error": "invalid_request",
                                       "error_description": "Could not determine client ID "
                                                            "from request."})
        # Google answers an unknown client or a wrong secret with 401 invalid_client.
        if params["client_id"] != self.client_id:
            return json_response(401, {"error": "invalid_client",
                                       "error_description": "The OAuth client was not found."})
        if params.get("client_secret") != self.client_secret:
            return json_response(401, {"error": "invalid_client",
                                       "error_description": "Unauthorized"})
        with self._lock:
            expected = self.refresh_token
        ok = expected is not None and params.get("refresh_token") == expected
        if not ok:
            return json_response(400, {"error": "invalid_grant",
                                       "error_description": "Token has been expired or revoked."})
        return json_response(200, {"access_token": self.issue_access_token(),
                                   "expires_in": self.token_lifetime,
                                   "scope": "https://www.googleapis.com/auth/adwords",
                                   "token_type": "Bearer"})

    # -- user lists -------------------------------------------------------
    def _list_view(self, lid: str) -> dict:
        ul = self._lists[lid]
        size = len(self._members[lid]) if ul["size"] is None else ul["size"]
        crm = {"uploadKeyType": ul["uploadKeyType"], "dataSourceType": "FIRST_PARTY"}
        if ul["appId"]:
            crm["appId"] = ul["appId"]
        # int64 fields are JSON strings in proto JSON, int32 ones are numbers.
        return {"resourceName": self.user_list_resource_name(lid), "id": lid, "name": ul["name"],
                "description": ul["description"], "type": "CRM_BASED",
                "membershipStatus": "OPEN", "readOnly": False, "accessReason": "OWNED",
                "membershipLifeSpan": str(ul["membershipLifeSpan"]),
                "sizeForSearch": str(size), "sizeForDisplay": str(size),
                "matchRatePercentage": self.match_rate if ul["matchRate"] is None
                else ul["matchRate"],
                "eligibleForSearch": True, "eligibleForDisplay": True,
                "crmBasedUserList": crm}

    def _mutate_lists(self, req: Request, body: dict) -> dict:
        ops = _operations(req, body)
        with self._lock:
            taken = {ul["name"] for ul in self._lists.values()}
            results, errors = [], []
            for i, op in enumerate(ops):
                errs, create = self._check_list_op(i, op, taken)
                errors += errs
                results.append(None if errs else create)
                if not errs:
                    taken.add(create["name"])
            if errors and not body.get("partialFailure"):
                raise AdsError(400, errors)
            if body.get("validateOnly"):
                return {}
            out = []
            for create in results:
                if create is None:
                    out.append({})  # a failed operation keeps its slot, empty
                    continue
                crm = create["crmBasedUserList"]
                lid = self.create_user_list(
                    create["name"], crm.get("uploadKeyType", "CONTACT_INFO"),
                    description=create.get("description", ""),
                    membership_life_span=int(create.get("membershipLifeSpan", 10000)),
                    app_id=crm.get("appId"))
                out.append({"resourceName": self.user_list_resource_name(lid)})
        resp = {"results": out}
        if errors:
            resp["partialFailureError"] = self._partial(errors)
        return resp

    def _check_list_op(self, i: int, op, taken: set) -> tuple[list, dict | None]:
        at = [("operations", i)]
        if not isinstance(op, dict) or not op:
            return [_err("requestError", "OPERATION_REQUIRED", None, at)], None
        if "create" not in op:  # update/remove exist on Google; this fake only creates
            return [_err("userListError", "USER_LIST_MUTATE_NOT_SUPPORTED",
                         f"fake: only create is supported, got {sorted(op)}", at)], None
        create = op["create"]
        if not isinstance(create, dict):
            raise _bad_json("Expected a message for create.", f"operations[{i}].create")
        at = at + [("create", None)]
        name = create.get("name")
        if not isinstance(name, str) or not name.strip():
            return [_err("userListError", "INVALID_NAME", "User list name is empty or invalid.",
                         at + [("name", None)])], None
        crm = create.get("crmBasedUserList")
        if not isinstance(crm, dict):
            return [_err("userListError", "CONCRETE_TYPE_REQUIRED",
                         "Concrete type of user list is required.", at)], None
        key_type = crm.get("uploadKeyType", "CONTACT_INFO")
        if key_type not in UPLOAD_KEYS:
            raise _bad_json(f'Invalid value at \'operations[{i}].create.crm_based_user_list.'
                            f'upload_key_type\', "{key_type}"',
                            f"operations[{i}].create.crm_based_user_list.upload_key_type")
        crm_at = at + [("crm_based_user_list", None)]
        if key_type == "MOBILE_ADVERTISING_ID" and not crm.get("appId"):
            return [_err("userListError", "APP_ID_NOT_SET", "crm_based_user_list.app_id field "
                         "must be set when upload_key_type is MOBILE_ADVERTISING_ID.",
                         crm_at + [("app_id", None)])], None
        if key_type != "MOBILE_ADVERTISING_ID" and crm.get("appId"):
            return [_err("userListError", "APP_ID_NOT_ALLOWED", "crm_based_user_list.app_id "
                         "field can only be set when upload_key_type is MOBILE_ADVERTISING_ID.",
                         crm_at + [("app_id", None)])], None
        span = create.get("membershipLifeSpan", 10000)
        try:
            span = int(span)
        except (TypeError, ValueError):
            raise _bad_json(f"Invalid value at 'operations[{i}].create.membership_life_span'",
                            f"operations[{i}].create.membership_life_span") from None
        if not (0 <= span <= 540 or span == 10000):
            return [_err("rangeError", "TOO_HIGH" if span > 540 else "TOO_LOW",
                         "Too high." if span > 540 else "Too low.",
                         at + [("membership_life_span", None)])], None
        if name in taken:
            return [_err("userListError", "NAME_ALREADY_USED", None, at + [("name", None)])], None
        return [], create

    # -- offline user data jobs ---------------------------------------------
    def _job_view(self, job: dict) -> dict:
        view = {"resourceName": job["resource_name"], "id": job["id"],
                "type": "CUSTOMER_MATCH_USER_LIST", "status": job["status"],
                "customerMatchUserListMetadata": {
                    "userList": self.user_list_resource_name(job["user_list_id"])}}
        if job["consent"] is not None:
            view["customerMatchUserListMetadata"]["consent"] = job["consent"]
        if job["failure_reason"]:  # proto JSON leaves out unset enums
            view["failureReason"] = job["failure_reason"]
        return view

    def _create_job(self, body: dict) -> dict:
        job = body.get("job")
        if not isinstance(job, dict):
            raise AdsError(400, [_err("fieldError", "REQUIRED", "The required field was not "
                                      "present.", [("job", None)])])
        if job.get("type") != "CUSTOMER_MATCH_USER_LIST":
            raise AdsError(400, [_err("fieldError", "INVALID_VALUE",
                                      f"fake: only CUSTOMER_MATCH_USER_LIST jobs, got "
                                      f"{job.get('type')!r}", [("job", None), ("type", None)])])
        meta = job.get("customerMatchUserListMetadata")
        at = [("job", None), ("customer_match_user_list_metadata", None)]
        if not isinstance(meta, dict) or not meta.get("userList"):
            raise AdsError(400, [_err("fieldError", "REQUIRED", "The required field was not "
                                      "present.", at + [("user_list", None)])])
        m = re.fullmatch(r"customers/(\d+)/userLists/(\d+)", str(meta["userList"]))
        with self._lock:
            if not m or m.group(1) != self.customer_id or m.group(2) not in self._lists:
                raise AdsError(400, [_err("offlineUserDataJobError", "INVALID_USER_LIST_ID",
                                          None, at + [("user_list", None)])])
            consent = meta.get("consent")
            if consent is not None:
                if not isinstance(consent, dict):
                    raise _bad_json("Expected a message for consent.",
                                    "job.customer_match_user_list_metadata.consent")
                _unknown_fields(consent, {"adUserData", "adPersonalization"},
                                "job.customer_match_user_list_metadata.consent")
                for k, v in consent.items():
                    if v not in CONSENT_VALUES:
                        raise _bad_json(f'Invalid value at \'job.customer_match_user_list_'
                                        f'metadata.consent.{_snake(k)}\', "{v}"')
            if body.get("validateOnly"):
                return {}
            jid = str(next(self._job_ids))
            rn = f"customers/{self.customer_id}/offlineUserDataJobs/{jid}"
            self._jobs[jid] = {"id": jid, "resource_name": rn, "user_list_id": m.group(2),
                               "status": "PENDING", "failure_reason": None, "operations": [],
                               "consent": dict(consent) if consent is not None else None,
                               "polls_left": 0, "fail_reason": None}
        return {"resourceName": rn}

    def _job(self, jid: str) -> dict:
        if jid not in self._jobs:
            raise AdsError(400, [_err("requestError", "RESOURCE_NOT_FOUND",
                                      "Requested resource not found.",
                                      [("resource_name", None)])])
        return self._jobs[jid]

    def _add_operations(self, req: Request, jid: str, body: dict) -> dict:
        ops = _operations(req, body)
        with self._lock:
            job = self._job(jid)
            if job["status"] != "PENDING":
                raise AdsError(400, [_err("offlineUserDataJobError", "JOB_ALREADY_STARTED")])
            key_type = self._lists[job["user_list_id"]]["uploadKeyType"]
        n_ids = sum(len(op[k].get("userIdentifiers") or [])
                    for op in ops if isinstance(op, dict)
                    for k in ("create", "remove") if isinstance(op.get(k), dict)
                    and isinstance(op[k].get("userIdentifiers"), list))
        if n_ids > self.max_identifiers_per_request:
            raise AdsError(400, [_err("offlineUserDataJobError", "TOO_MANY_USER_IDENTIFIERS",
                                      None, [("operations", None)])])
        staged, errors = [], []
        for i, op in enumerate(ops):
            errs, item = self._check_job_op(i, op, key_type)
            errors += errs
            if not errs:
                staged.append(item)
        if errors and not body.get("enablePartialFailure"):
            raise AdsError(400, errors)  # all or nothing
        with self._lock:
            job = self._job(jid)
            if job["status"] != "PENDING":  # :run may have raced this request
                raise AdsError(400, [_err("offlineUserDataJobError", "JOB_ALREADY_STARTED")])
            if not body.get("validateOnly"):
                job["operations"].extend(staged)
        return {"partialFailureError": self._partial(errors)} if errors else {}

    def _partial(self, errors: list) -> dict:
        text = "; ".join(f"{e['message']}, at {_path_text(e)}" for e in errors)
        return {"code": 3, "message": text,
                "details": [self._failure(errors, secrets.token_urlsafe(16))]}

    def _check_job_op(self, i: int, op, key_type: str) -> tuple[list, tuple | None]:
        if not isinstance(op, dict):
            raise _bad_json("Expected a message.", f"operations[{i}]")
        set_ = [k for k in op if k in ("create", "remove", "removeAll")]
        _unknown_fields(op, {"create", "remove", "removeAll"}, f"operations[{i}]")
        if len(set_) > 1:
            raise _bad_json(f"Oneof field 'operation' is already set. Cannot set "
                            f"'{_snake(set_[1])}'", f"operations[{i}]")
        if not set_:
            return [_err("requestError", "OPERATION_REQUIRED", None, [("operations", i)])], None
        kind = set_[0]
        if kind == "removeAll":
            if op["removeAll"] is not True:
                raise _bad_json(f"Invalid value at 'operations[{i}].remove_all' (TYPE_BOOL)",
                                f"operations[{i}].remove_all")
            if i != 0:
                return [_err("offlineUserDataJobError", "INVALID_OPERATION_ORDER", None,
                             [("operations", i), ("remove_all", None)])], None
            return [], ("removeAll", None)
        data = op[kind]
        where = f"operations[{i}].{kind}"
        if not isinstance(data, dict):
            raise _bad_json("Expected a message.", where)
        _unknown_fields(data, {"userIdentifiers", "transactionAttribute", "userAttribute",
                               "consent"}, where)
        ids = data.get("userIdentifiers") or []
        if not isinstance(ids, list):
            raise _bad_json("Expected a list.", f"{where}.user_identifiers")
        at = [("operations", i), (kind, None)]
        if not ids:
            return [_err("offlineUserDataJobError", "MISSING_USER_IDENTIFIER", None,
                         at + [("user_identifiers", None)])], None
        if len(ids) > MAX_IDS_PER_USER_DATA:
            return [_err("offlineUserDataJobError", "TOO_MANY_USER_IDENTIFIERS", None,
                         at + [("user_identifiers", None)])], None
        errors, pairs = [], set()
        for j, ident in enumerate(ids):
            ident_where = f"{where}.user_identifiers[{j}]"
            if not isinstance(ident, dict):
                raise _bad_json("Expected a message.", ident_where)
            _unknown_fields(ident, IDENTIFIERS | {"userIdentifierSource"}, ident_where)
            fields = [f for f in ident if f in IDENTIFIERS]
            if len(fields) > 1:
                raise _bad_json(f"Oneof field 'identifier' is already set. Cannot set "
                                f"'{_snake(fields[1])}'", ident_where)
            id_at = at + [("user_identifiers", j)]
            if not fields:
                errors.append(_err("offlineUserDataJobError", "MISSING_USER_IDENTIFIER", None,
                                   id_at))
                continue
            field, value = fields[0], ident[fields[0]]
            id_at = id_at + [(_snake(field), None)]
            if field not in UPLOAD_KEYS[key_type]:
                errors.append(_err("offlineUserDataJobError", "INCOMPATIBLE_UPLOAD_KEY_TYPE",
                                   None, id_at))
                continue
            err, stored = self._check_identifier(field, value, id_at, ident_where)
            if err is None and isinstance(value, str) and value in self._rejected_values:
                err = _err("fieldError", "INVALID_VALUE", "The field's value is invalid.", id_at)
            if err:
                errors.append(err)
            else:
                pairs.add((field, stored))
        return (errors, None) if errors else ([], (kind, frozenset(pairs)))

    @staticmethod
    def _check_identifier(field: str, value, at: list, where: str):
        """(error or None, value to store)."""
        if field in HASHED:
            if not isinstance(value, str) or not _HEX64.fullmatch(value):
                return _err("offlineUserDataJobError", "INVALID_SHA256_FORMAT", None, at), None
            return None, value
        if field == "mobileId":
            if not isinstance(value, str) or not _UUID.fullmatch(value):
                return _err("offlineUserDataJobError", "INVALID_MOBILE_ID_FORMAT", None,
                            at), None
            return None, value
        if field == "thirdPartyUserId":
            if not isinstance(value, str) or not value:
                return _err("offlineUserDataJobError", "MISSING_USER_IDENTIFIER", None, at), None
            return None, value
        # addressInfo: names hashed, country and postal code plain (§0).
        if not isinstance(value, dict):
            raise _bad_json("Expected a message.", f"{where}.address_info")
        _unknown_fields(value, ADDRESS_HASHED | ADDRESS_PLAIN, f"{where}.address_info")
        for k in sorted(value):
            if k in ADDRESS_HASHED and not (isinstance(value[k], str)
                                            and _HEX64.fullmatch(value[k])):
                return _err("offlineUserDataJobError", "INVALID_SHA256_FORMAT", None,
                            at + [(_snake(k), None)]), None
        country = value.get("countryCode")
        if country is not None and not (isinstance(country, str)
                                        and re.fullmatch(r"[A-Za-z]{2}", country)):
            return _err("offlineUserDataJobError", "INVALID_COUNTRY_CODE", None,
                        at + [("country_code", None)]), None
        if not value:
            return _err("offlineUserDataJobError", "MISSING_USER_IDENTIFIER", None, at), None
        return None, tuple(sorted(value.items()))

    def _run(self, jid: str, body: dict) -> dict:
        with self._lock:
            job = self._job(jid)
            if job["status"] != "PENDING":
                raise AdsError(400, [_err("offlineUserDataJobError", "JOB_ALREADY_STARTED")])
            if body.get("validateOnly"):
                return {}
            fail = self._pop("fail_job", "run")
            job.update(status="RUNNING", polls_left=self.running_polls,
                       fail_reason=fail["reason"] if fail else None)
            return {"name": f"customers/{self.customer_id}/operations/{next(self._op_ids)}"}

    def _poll(self, job: dict) -> None:
        if job["status"] != "RUNNING":
            return
        if job["polls_left"] > 0:
            job["polls_left"] -= 1
        else:
            self._complete(job)

    def _complete(self, job: dict) -> None:
        if job["fail_reason"]:
            job.update(status="FAILED", failure_reason=job["fail_reason"])
            return
        members = self._members[job["user_list_id"]]
        for kind, row in job["operations"]:  # in the order they were added
            if kind == "create":
                members.add(row)
            elif kind == "removeAll":
                members.clear()
            else:  # a remove matches a member on any shared identifier value
                members.difference_update([m for m in members if m & row])
        job["status"] = "SUCCESS"

    # -- GAQL ---------------------------------------------------------------
    def _search(self, body: dict) -> dict:
        if "pageSize" in body:
            raise AdsError(400, [_err("requestError", "PAGE_SIZE_NOT_SUPPORTED",
                                      "Setting the page size is not supported, and will be "
                                      "unavailable in a future version.")])
        query = body.get("query")
        if not isinstance(query, str) or not query.strip():
            raise _query_error("UNEXPECTED_END_OF_QUERY", "Query is empty.")
        q = _parse_gaql(query)
        resource, key = q["from"], _camel(q["from"])
        with self._lock:
            if resource == "user_list":
                views = [self._list_view(lid) for lid in self._lists]
                rows = [v for v in views if _matches(_flat(v, resource), q["where"])]
            else:
                hits = [j for j in self._jobs.values()
                        if _matches(_flat(self._job_view(j), resource), q["where"])]
                for job in hits:  # each search that returns a running job counts as a poll
                    self._poll(job)
                rows = [self._job_view(j) for j in hits]
        for field, desc in reversed(q["order"]):
            rows.sort(key=lambda v, f=field: _sort_key(_flat(v, resource).get(f)), reverse=desc)
        if q["limit"] is not None:
            rows = rows[:q["limit"]]
        digest = hashlib.sha256(query.encode()).hexdigest()[:16]
        start = 0
        if token := body.get("pageToken"):
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()).decode())
                if state["q"] != digest:
                    raise ValueError
                start = int(state["o"])
            except (ValueError, KeyError, TypeError):
                raise AdsError(400, [_err("requestError", "INVALID_PAGE_TOKEN",
                                          "Next page token specified in user request is "
                                          "invalid.")]) from None
        page = rows[start:start + self.page_size]
        resp = {}
        if page:  # proto JSON leaves out an empty repeated field
            resp["results"] = [{key: v} for v in page]
        resp["fieldMask"] = ",".join(".".join(_camel(p) for p in f.split("."))
                                     for f in q["select"])
        if start + self.page_size < len(rows):
            resp["nextPageToken"] = base64.urlsafe_b64encode(
                json.dumps({"q": digest, "o": start + self.page_size}).encode()).decode()
        if body.get("returnTotalResultsCount"):
            resp["totalResultsCount"] = str(len(rows))
        return resp


# -- GAQL helpers (module level: pure functions) ---------------------------------------
def _tokens(query: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(query):
        if not query[pos:].strip():
            break
        m = _TOKEN.match(query, pos)
        if not m:
            rest = query[pos:].lstrip()
            if rest[:1] in "'\"":
                raise _query_error("STRING_NOT_TERMINATED", "A string is not terminated.")
            raise _query_error("BAD_SYMBOL", f"Bad symbol near: {rest[:20]!r}")
        kind = m.lastgroup
        text = m.group(kind)
        if kind == "str":
            text = re.sub(r"\\(.)", r"\1", text[1:-1])
        out.append((kind, text))
        pos = m.end()
    return out


def _parse_gaql(query: str) -> dict:
    toks = _tokens(query)
    pos = 0

    def peek_kw():
        return toks[pos][1].upper() if pos < len(toks) and toks[pos][0] == "word" else None

    def take(kind=None):
        nonlocal pos
        if pos >= len(toks):
            raise _query_error("UNEXPECTED_END_OF_QUERY", "Query ended unexpectedly.")
        tok = toks[pos]
        if kind and tok[0] != kind:
            raise _query_error("UNEXPECTED_INPUT", f"Unexpected input {tok[1]!r}.")
        pos += 1
        return tok

    def value():
        tok = take()
        if tok[0] == "op":
            raise _query_error("BAD_VALUE", f"Expected a value, got {tok[1]!r}.")
        return tok[1]

    def field_list():
        fields = [take("word")[1]]
        while pos < len(toks) and toks[pos] == ("op", ","):
            take()
            fields.append(take("word")[1])
        return fields

    if peek_kw() != "SELECT":
        raise _query_error("EXPECTED_SELECT", "Expected SELECT.")
    take()
    select = field_list()
    if peek_kw() != "FROM":
        raise _query_error("EXPECTED_FROM", "Expected FROM.")
    take()
    resource = take("word")[1]
    if resource not in WHERE_FIELDS:
        raise _query_error("BAD_RESOURCE_TYPE_IN_FROM_CLAUSE",
                           f"fake: FROM {resource} is not supported (user_list, "
                           "offline_user_data_job).")
    for f in select:
        if f.split(".")[0] == f or f.split(".")[0] not in ("customer", resource):
            raise _query_error("PROHIBITED_RESOURCE_TYPE_IN_SELECT_CLAUSE",
                               f"Field {f!r} cannot be selected FROM {resource}.")
    where, order, limit = [], [], None
    if peek_kw() == "WHERE":
        take()
        while True:
            field = take("word")[1]
            if field not in WHERE_FIELDS[resource]:
                raise _query_error("UNRECOGNIZED_FIELD",
                                   f"fake: cannot filter on {field!r} FROM {resource}.")
            op = take()
            neg = op[0] == "word" and op[1].upper() == "NOT"
            if neg:
                op = take()
            if op[0] == "word" and op[1].upper() in ("IN", "LIKE"):
                opname = ("NOT " if neg else "") + op[1].upper()
            elif op[0] == "op" and op[1] in ("=", "!=") and not neg:
                opname = op[1]
            else:
                raise _query_error("BAD_OPERATOR", f"Unsupported operator {op[1]!r}.")
            if opname.endswith("IN"):
                if toks[pos:pos + 1] != [("op", "(")]:
                    raise _query_error("EXPECTED_LIST", "Expected a list in parentheses.")
                take()
                if toks[pos:pos + 1] == [("op", ")")]:
                    raise _query_error("PROHIBITED_EMPTY_LIST_IN_CONDITION", "Empty IN list.")
                values = [value()]
                while toks[pos:pos + 1] == [("op", ",")]:
                    take()
                    values.append(value())
                if take() != ("op", ")"):
                    raise _query_error("EXPECTED_LIST", "Expected ')'.")
            else:
                values = [value()]
            where.append((field, opname, values))
            if peek_kw() != "AND":
                break
            take()
    if peek_kw() == "ORDER":
        take()
        if peek_kw() != "BY":
            raise _query_error("EXPECTED_BY", "Expected BY after ORDER.")
        take()
        while True:
            field = take("word")[1]
            if field not in WHERE_FIELDS[resource]:
                raise _query_error("UNRECOGNIZED_FIELD",
                                   f"fake: cannot order by {field!r} FROM {resource}.")
            desc = False
            if peek_kw() in ("ASC", "DESC"):
                desc = take()[1].upper() == "DESC"
            order.append((field, desc))
            if toks[pos:pos + 1] != [("op", ",")]:
                break
            take()
    if peek_kw() == "LIMIT":
        take()
        tok = take()
        if tok[0] != "num" or not tok[1].isdigit() or int(tok[1]) < 1:
            raise _query_error("BAD_LIMIT_VALUE", "Bad LIMIT value.")
        limit = int(tok[1])
    if pos != len(toks):
        raise _query_error("UNEXPECTED_INPUT", f"Unexpected input {toks[pos][1]!r}.")
    return {"select": select, "from": resource, "where": where, "order": order, "limit": limit}


def _flat(view: dict, resource: str) -> dict:
    """{'user_list.crm_based_user_list.upload_key_type': 'CONTACT_INFO', ...} as strings."""
    out = {}

    def walk(prefix, obj):
        for k, v in obj.items():
            name = f"{prefix}.{_snake(k)}"
            if isinstance(v, dict):
                walk(name, v)
            else:
                out[name] = str(v).lower() if isinstance(v, bool) else str(v)

    walk(resource, view)
    if resource == "offline_user_data_job":  # unset enums are absent from the view
        out.setdefault(f"{resource}.failure_reason", "UNSPECIFIED")
    return out


def _matches(row: dict, where: list) -> bool:
    for field, op, values in where:
        have = row.get(field)
        # Booleans are flattened to "true"/"false"; GAQL writes them in any case.
        values = [v.lower() if v.lower() in ("true", "false") else v for v in values]
        if op == "=":
            ok = have == values[0]
        elif op == "!=":
            ok = have != values[0]
        elif op in ("IN", "NOT IN"):
            ok = (have in values) == (op == "IN")
        else:  # LIKE with % and _ wildcards
            pattern = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c)
                              for c in values[0])
            ok = (have is not None and re.fullmatch(pattern, have, re.S) is not None) == (
                op == "LIKE")
        if not ok:
            return False
    return True


def _sort_key(value):
    if value is not None and re.fullmatch(r"-?\d+", value):
        return (0, int(value), "")
    return (1, 0, value or "")
