"""Stateful fake of Microsoft Advertising Customer Match lists, Campaign Management REST v13
(destination-apis.md Part 2 §4), plus the Microsoft identity platform token endpoint.

POST /Audiences/QueryByIds, POST /Audiences and POST /CustomerListUserData/Apply under
/CampaignManagement/v13, with the headers Authorization, DeveloperToken, CustomerId and
CustomerAccountId checked on every call. Faults come in Microsoft's envelopes: AdApiFaultDetail
(`Errors`) for authentication and throttling, ApiFaultDetail (`OperationErrors`) for a refused
operation, and `PartialErrors` with an `Index` into the items for per-item refusals.

Choices where the reference is silent [unverified]: CallRateExceeded (117) comes with HTTP 429
(`inject_call_rate_exceeded(status=...)` gives 400 or 500 instead); 105 and 109 with 401; 106 with
403; operation errors with 400. Long ids are written as JSON strings, as the docs' templates show
(`ids_as_strings=False` writes numbers); both are accepted in requests. A list's SearchSize is nil
until its first Apply, then its member count (`set_size` overrides it).
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import time
from collections import namedtuple

from ._server import FakeServer, Request, Response, json_response

# One per request: route is token / query / create / apply / other.
MicrosoftAdsRequest = namedtuple("MicrosoftAdsRequest", "method path route n_items accept_terms status")

API_PREFIX = "/CampaignManagement/v13"
TOKEN_PATH = "/common/oauth2/v2.0/token"
ADS_SCOPE = "https://ads.microsoft.com/msads.manage"
MAX_ITEMS = 1000
MAX_IDS = 100
MAX_AUDIENCES = 100
ACTIONS = frozenset({"Add", "Remove", "Replace"})
SUB_TYPES = {"Email": None, "CRM": "Not currently supported", "Phone": "Not currently supported"}

MESSAGES = {
    0: ("InternalError", "An internal error has occurred."),
    100: ("NullRequest", "The request message is null."),
    105: ("InvalidCredentials", "Authentication failed. Either supplied credentials are invalid or the account is "
                                "inactive."),
    106: ("UserIsNotAuthorized", "The user is not authorized to perform this action."),
    109: ("AuthenticationTokenExpired", "Authentication token expired. Please renew it or obtain a new token."),
    116: ("RequestMissingHeaders", "One or more required header elements are missing from the request."),
    117: ("CallRateExceeded", "You have exceeded the number of calls that you are allowed to make in a minute. "
                             "Please reduce the number of calls that you make per minute."),
    4835: ("InvalidAudienceId", "The audience ID is invalid."),
    4838: ("InvalidAudienceName", "The audience name is invalid."),
    4841: ("InvalidAudienceDescription", "Audience description is invalid."),
    4842: ("InvalidAudienceMembershipDuration", "Audience membership duration is invalid."),
    4843: ("AudienceParentIdDoesNotMatchScope", "Audience parent id does not match the scope."),
    4844: ("AudiencesArrayShouldNotBeNullOrEmpty", "Audiences are required."),
    4845: ("AudienceIsNull", "Audience cannot be null."),
    4847: ("AudienceIdIsNotNull", "Audience id must be null."),
    4848: ("InvalidAudienceParentId", "Audience parent id is invalid or not specified."),
    4849: ("InvalidAudienceScope", "Audience scope is invalid or not specified."),
    4850: ("AudiencesArrayExceedsLimit", "Audiences array exceeds the limit size."),
    4852: ("AudienceIdsArrayExceedsLimit", "Audience ids array exceeds the limit size."),
    4853: ("DuplicateAudienceName", "Audience name is duplicate."),
    4859: ("InvalidAudienceType", "Audience Type is invalid."),
    4861: ("AudienceIdDoNotMatchAudienceType", "Audience Id do not match audience type."),
    6999: ("CampaignServiceBatchLimitExceeded", "The maximum number of items per request would be exceeded."),
    8000: ("InvalidCustomerListId", "Invalid CustomerList Id"),
    8001: ("InvalidCustomerListActionType", "The Customer List Action Type can only be Add, Replace, or Delete."),
    8002: ("CustomerListItemSubTypeNotSupported", "The Customer List Item sub type is not supported."),
    8003: ("CustomerListTermsAndConditionsNotAccepted", "The Customer Match 'Terms And Conditions' are not yet "
                                                        "Accepted in the Microsoft Advertising web UI."),
    8004: ("EmailMustBeHashed", "Email address can't be in plain text and must be hashed."),
    8006: ("EitherEmailOrCRMIDShouldBeProvided", "Either email address or CRM Id should be provided."),
}

_HEX64 = re.compile(r"[0-9a-f]{64}")
_LONG = re.compile(r"-?\d{1,19}")


def batch_error(code: int, index: int | None = None, message: str | None = None, field_path=None) -> dict:
    """A BatchError (or OperationError, without an index) as the REST API writes it."""
    name, text = MESSAGES[code]
    error = {"Code": code, "Details": None, "ErrorCode": name, "Message": message or text}
    if index is not None:
        error |= {"FieldPath": field_path, "ForwardCompatibilityMap": None, "Index": index, "Type": "BatchError"}
    return error


class Fault(Exception):
    """A whole-request fault: `errors` under `Errors` (AdApiFaultDetail) or `OperationErrors` (ApiFaultDetail)."""

    def __init__(self, status: int, errors: list[dict], kind: str = "ApiFaultDetail"):
        super().__init__(errors[0]["Message"] if errors else "fault")
        self.status, self.errors, self.kind = status, errors, kind


def _operation(code: int, message: str | None = None, status: int = 400) -> Fault:
    return Fault(status, [batch_error(code, message=message)])


def _auth(code: int, status: int = 401) -> Fault:
    return Fault(status, [batch_error(code)], "AdApiFaultDetail")


def _shape(message: str) -> Fault:
    # A body the service cannot read arrives as a null request.
    return _operation(100, f"The request message is null. (fake: {message})")


def _long(value, where: str) -> str:
    """A long as JSON writes it: a number or a digit string."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not _LONG.fullmatch(str(value).strip()):
        raise _shape(f"{where} must be a long (a number or a digit string), got {value!r}")
    return str(int(str(value).strip()))


def _known(obj: dict, known: set, where: str) -> None:
    for key in obj:
        if key not in known:
            raise _shape(f"unknown member '{key}' in {where}")


class FakeMicrosoftAds(FakeServer):
    def __init__(self, client_id="00000000-test-client", client_secret: str | None = "test-client-secret",
                 refresh_token="M.C1-test-refresh-token", developer_token="TEST-DEVELOPER-TOKEN",
                 customer_id="1000001", account_id="2000001", *, terms_accepted=True, terms_error="partial",
                 ids_as_strings=True, token_lifetime=3600):
        super().__init__()
        if terms_error not in ("partial", "operation"):
            raise ValueError("terms_error is 'partial' (200 PartialErrors) or 'operation' (400 OperationErrors)")
        self.client_id, self.client_secret = client_id, client_secret  # None: a public client
        self.refresh_token, self.developer_token = refresh_token, developer_token
        self.customer_id, self.account_id = str(customer_id), str(account_id)
        self.terms_accepted = terms_accepted
        self.terms_error = terms_error  # how Apply reports unaccepted terms
        self.ids_as_strings = ids_as_strings
        self.token_lifetime = token_lifetime
        self._tokens: dict[str, float] = {}  # access token -> monotonic expiry
        self._audiences: dict[str, dict] = {}  # insertion order = creation order = query order
        self._members: dict[str, set[str]] = {}
        self._rejected: dict[str, dict] = {}  # item -> {code, indexed}
        self._ids = itertools.count(824_000_000_001)

    # -- inspection and seeding -------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{self.origin}{API_PREFIX}"

    @property
    def token_url(self) -> str:
        return f"{self.origin}{TOKEN_PATH}"

    @property
    def audiences(self) -> dict[str, dict]:
        """audience id -> the Audience object QueryByIds returns."""
        with self._lock:
            return {aid: self._view(aid) for aid in self._audiences}

    def members(self, audience_id) -> set[str]:
        """The hashed emails a customer list holds."""
        with self._lock:
            return set(self._members[str(audience_id)])

    def audience_id_by_name(self, name: str) -> str | None:
        with self._lock:
            ids = [aid for aid, a in self._audiences.items() if a["Name"] == name]
        if len(ids) > 1:  # only possible by seeding; create refuses duplicate names
            raise LookupError(f"{len(ids)} audiences are named {name!r}: {ids}")
        return ids[0] if ids else None

    def create_audience(self, name: str, type: str = "CustomerList", *, scope="Account", description=None,
                        membership_duration=30) -> str:
        """Seed an audience directly (no HTTP, no name or terms check); returns its id."""
        with self._lock:
            aid = str(next(self._ids))
            self._audiences[aid] = {
                "Name": name, "Type": type, "Description": description, "MembershipDuration": membership_duration,
                "ParentId": self.account_id if scope == "Account" else self.customer_id, "Scope": scope,
                "applied": False, "size": None}
            self._members[aid] = set()
            return aid

    def add_members(self, audience_id, items) -> None:
        with self._lock:
            self._members[str(audience_id)].update(items)

    def set_size(self, audience_id, search_size=None, network_size=None) -> None:
        """Override SearchSize / AudienceNetworkSize (both None: back to the member count after an Apply)."""
        with self._lock:
            a = self._audiences[str(audience_id)]
            a["size"] = None if search_size is None and network_size is None else (search_size, network_size)

    def issue_access_token(self) -> str:
        token = "EwB-fake-" + secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = time.monotonic() + self.token_lifetime
        return token

    # -- injections -------------------------------------------------------------------
    # Faults share one FIFO queue, consumed by the next authenticated API request in scope:
    # "apply" (the default), "query", "create" or "all". Delays, resets and lost answers (base
    # class) hit before authentication; none of them hits the token endpoint unless scoped "token".
    def inject_call_rate_exceeded(self, times=1, scope="apply", status=429, kind="AdApiFaultDetail") -> None:
        """Code 117 CallRateExceeded, in an AdApiFaultDetail (or kind="ApiFaultDetail")."""
        if status not in (400, 429, 500, 503):
            raise ValueError("status is 400, 429, 500 or 503")
        self._push("fault", times, scope, code=117, status=status, envelope=kind)

    def inject_server_error(self, times=1, status=500, scope="apply") -> None:
        """500 with code 0 InternalError; 502/503/504 with an HTML page from the front end."""
        if status not in (500, 502, 503, 504):
            raise ValueError("status is 500, 502, 503 or 504")
        self._push("fault", times, scope, code=0, status=status, envelope="AdApiFaultDetail")

    def inject_delay(self, seconds: float, times=1, scope="apply") -> None:
        self._push("delay", times, scope, seconds=seconds)

    def reject_items(self, items, code=8004, indexed=True) -> None:
        """Persistent: an Apply item among these fails with `code` as a PartialError. `indexed=False`
        leaves its Index out of range (-1), so the error names no item."""
        with self._lock:
            for item in items:
                self._rejected[item] = {"code": code, "indexed": indexed}

    def clear_rejected(self) -> None:
        with self._lock:
            self._rejected.clear()

    def expire_access_tokens(self) -> None:
        """Every access token issued so far now gets 401 AuthenticationTokenExpired (109)."""
        with self._lock:
            self._tokens = dict.fromkeys(self._tokens, 0.0)

    def revoke_refresh_token(self) -> None:
        """Token exchanges now fail with invalid_grant (issued access tokens keep working)."""
        with self._lock:
            self.refresh_token = None

    # -- HTTP -------------------------------------------------------------------------
    def _route(self, req: Request) -> str:
        if req.path == TOKEN_PATH:
            return "token"
        return {f"{API_PREFIX}/Audiences/QueryByIds": "query", f"{API_PREFIX}/Audiences": "create",
                f"{API_PREFIX}/CustomerListUserData/Apply": "apply"}.get(req.path, "other")

    def _scope(self, req: Request) -> str:
        return self._route(req)

    def _log_entry(self, req: Request, resp: Response):
        return MicrosoftAdsRequest(req.method, req.path, self._route(req), req.notes.get("n_items"),
                                   req.notes.get("accept_terms"), resp.status)

    def _handle(self, req: Request) -> Response:
        route = self._route(req)
        if route == "token":
            return self._token(req)
        tracking = secrets.token_hex(16)
        headers = {"TrackingId": tracking}
        if route == "other":
            return Response(404, b"", headers)
        if req.method != "POST":
            return Response(405, b"", {**headers, "Allow": "POST"})
        try:
            self._check_headers(req)
            if fault := self._pop("fault", route):
                raise Fault(fault["status"], [batch_error(fault["code"])], fault["envelope"])
            body = self._body(req)
            with self._lock:
                answer = {"query": self._query, "create": self._create, "apply": self._apply}[route](req, body)
            return json_response(200, answer, headers)
        except Fault as f:
            if f.status in (502, 503, 504):
                return Response(f.status, b"<html><body>Service Unavailable</body></html>",
                                {**headers, "Content-Type": "text/html"})
            key = "Errors" if f.kind == "AdApiFaultDetail" else "OperationErrors"
            fault = {"TrackingId": tracking, "Type": f.kind, key: f.errors}
            if f.kind == "ApiFaultDetail":
                fault["BatchErrors"] = []
            return json_response(f.status, fault, headers)

    def _check_headers(self, req: Request) -> None:
        auth = req.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            raise _auth(105)
        with self._lock:
            expiry = self._tokens.get(auth[7:].strip())
        if expiry is None:
            raise _auth(105)
        if expiry <= time.monotonic():
            raise _auth(109)
        if not all(req.headers.get(h) for h in ("developertoken", "customerid", "customeraccountid")):
            raise _operation(116)
        if req.headers["developertoken"] != self.developer_token:
            raise _auth(105)
        if (req.headers["customerid"], req.headers["customeraccountid"]) != (self.customer_id, self.account_id):
            raise _auth(106, 403)

    def _body(self, req: Request) -> dict:
        try:
            body = json.loads(req.body.decode("utf-8")) if req.body.strip() else None
        except (UnicodeDecodeError, ValueError):
            raise _shape("the body is not JSON") from None
        if not isinstance(body, dict):
            raise _shape("the body is not a JSON object")
        return body

    def _id(self, aid: str):
        return aid if self.ids_as_strings else int(aid)

    def _view(self, aid: str) -> dict:
        a = self._audiences[aid]
        if a["size"] is not None:
            search, network = a["size"]
        else:
            search = network = len(self._members[aid]) if a["applied"] else None
        long = (lambda v: None if v is None else (str(v) if self.ids_as_strings else v))
        return {"AudienceNetworkSize": long(network), "CustomerShare": None, "Description": a["Description"],
                "ForwardCompatibilityMap": None, "Id": self._id(aid), "MembershipDuration": a["MembershipDuration"],
                "Name": a["Name"], "ParentId": self._id(a["ParentId"]), "Scope": a["Scope"],
                "SearchSize": long(search), "SupportedCampaignTypes": ["Search", "Shopping", "DynamicSearchAds"],
                "Type": a["Type"]}

    # -- operations -----------------------------------------------------------------------
    def _query(self, req: Request, body: dict) -> dict:
        _known(body, {"AudienceIds", "Type", "ReturnAdditionalFields"}, "GetAudiencesByIdsRequest")
        kind = body.get("Type")
        if not isinstance(kind, str) or not kind:
            raise _operation(4859)
        types = set(kind.replace(",", " ").split())
        ids = body.get("AudienceIds")
        if not ids:  # null or empty: every audience of those types the account can use
            return {"Audiences": [self._view(aid) for aid, a in self._audiences.items() if a["Type"] in types],
                    "PartialErrors": []}
        if not isinstance(ids, list):
            raise _shape("AudienceIds must be an array of longs")
        if len(ids) > MAX_IDS:
            raise _operation(4852)
        audiences, errors = [], []
        for i, raw in enumerate(ids):
            aid = _long(raw, f"AudienceIds[{i}]")
            if aid not in self._audiences:
                audiences.append(None)
                errors.append(batch_error(4835, i))
            elif self._audiences[aid]["Type"] not in types:
                audiences.append(None)
                errors.append(batch_error(4861, i))
            else:
                audiences.append(self._view(aid))
        return {"Audiences": audiences, "PartialErrors": errors}

    def _create(self, req: Request, body: dict) -> dict:
        _known(body, {"Audiences"}, "AddAudiencesRequest")
        audiences = body.get("Audiences")
        if not audiences:
            raise _operation(4844)
        if not isinstance(audiences, list):
            raise _shape("Audiences must be an array")
        if len(audiences) > MAX_AUDIENCES:
            raise _operation(4850)
        ids, errors = [], []
        for i, audience in enumerate(audiences):
            code = self._invalid_audience(audience)
            if code is None and audience["Type"] == "CustomerList" and not self.terms_accepted:
                code = 8003
            if code is None and any(a["Name"] == audience["Name"] for a in self._audiences.values()):
                code = 4853
            if code is not None:
                ids.append(None)
                errors.append(batch_error(code, i))
                continue
            aid = self.create_audience(audience["Name"], audience["Type"], scope=audience["Scope"],
                                       description=audience.get("Description"),
                                       membership_duration=audience.get("MembershipDuration", 30))
            ids.append(self._id(aid))
        return {"AudienceIds": ids, "PartialErrors": errors}

    def _invalid_audience(self, audience) -> int | None:
        if not isinstance(audience, dict):
            return 4845
        _known(audience, {"Name", "Type", "Description", "MembershipDuration", "ParentId", "Scope", "Id",
                          "ForwardCompatibilityMap", "CustomerShare", "AudienceNetworkSize", "SearchSize",
                          "SupportedCampaignTypes"}, "Audience")
        if audience.get("Id") is not None:
            return 4847
        name = audience.get("Name")
        if not isinstance(name, str) or not name.strip() or len(name) > 128:
            return 4838
        if audience.get("Type") != "CustomerList":  # the only kind this fake creates
            return 4859
        description = audience.get("Description")
        if description is not None and (not isinstance(description, str) or len(description) > 1024):
            return 4841
        duration = audience.get("MembershipDuration", 30)
        if isinstance(duration, bool) or not isinstance(duration, int) or not (1 <= duration <= 390 or duration == -1):
            return 4842
        scope = audience.get("Scope")
        if scope not in ("Account", "Customer"):
            return 4849
        if audience.get("ParentId") is None:
            return 4848
        parent = _long(audience["ParentId"], "Audience.ParentId")
        if parent != (self.account_id if scope == "Account" else self.customer_id):
            return 4843
        return None

    def _apply(self, req: Request, body: dict) -> dict:
        _known(body, {"CustomerListUserData"}, "ApplyCustomerListUserDataRequest")
        data = body.get("CustomerListUserData")
        if not isinstance(data, dict):
            raise _shape("CustomerListUserData is required")
        _known(data, {"AcceptCustomerMatchTerm", "ActionType", "AudienceId", "CustomerListItemSubType",
                      "CustomerListItems"}, "CustomerListUserData")
        accept = data.get("AcceptCustomerMatchTerm")
        if accept is not None and not isinstance(accept, bool):
            raise _shape("AcceptCustomerMatchTerm must be a boolean")
        items = data.get("CustomerListItems")
        req.notes["accept_terms"] = accept
        req.notes["n_items"] = len(items) if isinstance(items, list) else None
        action = data.get("ActionType")
        if action not in ACTIONS:
            raise _operation(8001)
        sub_type = data.get("CustomerListItemSubType")
        if sub_type not in SUB_TYPES or SUB_TYPES[sub_type]:
            raise _operation(8002)
        if data.get("AudienceId") is None:
            raise _operation(8000)
        aid = _long(data["AudienceId"], "CustomerListUserData.AudienceId")
        if aid not in self._audiences or self._audiences[aid]["Type"] != "CustomerList":
            raise _operation(8000)
        if accept is True:
            self.terms_accepted = True
        if accept is False or not self.terms_accepted:
            if self.terms_error == "operation":
                raise _operation(8003)
            return {"PartialErrors": [batch_error(8003, -1)]}
        if items is not None and not isinstance(items, list):
            raise _shape("CustomerListItems must be an array of strings")
        if not items:
            raise _operation(8006)
        if len(items) > MAX_ITEMS:
            raise _operation(6999)
        good, errors = [], []
        for i, item in enumerate(items):
            path = f"CustomerListItems[{i}]"
            if not isinstance(item, str) or not item:
                errors.append(batch_error(8006, i, field_path=path))
            elif not _HEX64.fullmatch(item):
                errors.append(batch_error(8004, i, field_path=path))
            elif item in self._rejected:
                rule = self._rejected[item]
                errors.append(batch_error(rule["code"], i if rule["indexed"] else -1, field_path=path))
            else:
                good.append(item)
        members = self._members[aid]
        if action == "Add":
            members.update(good)
        elif action == "Remove":
            members.difference_update(good)
        else:
            members.clear()
            members.update(good)
        self._audiences[aid]["applied"] = True
        return {"PartialErrors": errors}

    # -- OAuth (Microsoft identity platform) ----------------------------------------------------
    def _token(self, req: Request) -> Response:
        def refuse(status, error, code, description):
            return json_response(status, {
                "error": error, "error_description": f"AADSTS{code}: {description} Trace ID: {secrets.token_hex(8)}",
                "error_codes": [code], "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
                "trace_id": secrets.token_hex(16), "correlation_id": secrets.token_hex(16)})

        if req.method != "POST":
            return refuse(400, "invalid_request", 900561, "The endpoint only accepts POST requests.")
        params = req.form()
        if params.get("grant_type") != "refresh_token":
            return refuse(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
        if not params.get("client_id"):
            return refuse(400, "invalid_request", 900144,
                          "The request body must contain the following parameter: 'client_id'.")
        if params["client_id"] != self.client_id:
            return refuse(400, "unauthorized_client", 700016,
                          f"Application with identifier '{params['client_id']}' was not found in the directory.")
        if ADS_SCOPE not in params.get("scope", "").split():
            return refuse(400, "invalid_scope", 70011, "The provided value for the input parameter 'scope' is not "
                                                       "valid.")
        secret = params.get("client_secret")
        if self.client_secret is None and secret:
            return refuse(401, "invalid_client", 700025, "Client is public so neither 'client_assertion' nor "
                                                         "'client_secret' should be presented.")
        if self.client_secret is not None and not secret:
            return refuse(401, "invalid_client", 7000218, "The request body must contain the following parameter: "
                                                          "'client_assertion' or 'client_secret'.")
        if self.client_secret is not None and secret != self.client_secret:
            return refuse(401, "invalid_client", 7000215, "Invalid client secret provided.")
        with self._lock:
            expected = self.refresh_token
        if expected is None or params.get("refresh_token") != expected:
            return refuse(400, "invalid_grant", 70000, "The provided value for the 'refresh_token' is not valid.")
        return json_response(200, {"token_type": "Bearer", "scope": f"{ADS_SCOPE} offline_access",
                                   "expires_in": self.token_lifetime, "ext_expires_in": self.token_lifetime,
                                   "access_token": self.issue_access_token(), "refresh_token": expected})
