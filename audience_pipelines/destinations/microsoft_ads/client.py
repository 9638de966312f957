"""The `microsoft_ads` client: Customer Match lists through the Campaign Management REST API v13.

Every call is a POST with the headers Authorization (an OAuth access token from the refresh token),
DeveloperToken, CustomerId and CustomerAccountId. Lists are found with `Audiences/QueryByIds` (no ids:
every customer list of the account, matched by name), created with `Audiences`, and filled with
`CustomerListUserData/Apply` (Add / Remove, at most 1,000 SHA-256 hashed emails). Apply answers 200
with `PartialErrors`, each `Index` pointing into the items sent, so refusals map back to rows.

Whole-request faults come as `AdApiFaultDetail` (`Errors`) or `ApiFaultDetail` (`OperationErrors`,
`BatchErrors`); codes may also arrive only by name (`ErrorCode`), so both are read. An expired
access token (401, code 109) is renewed once. Throttling is code 117 CallRateExceeded, to be
retried after 60 s; the HTTP status it comes with over REST is not documented [unverified], so the
code is honoured whatever the status (the fake sends it with 429).

Assumption: with `scope` Customer the list's ParentId is the customer id (the Audience docs say
so); with Account it is the account id.
"""

from __future__ import annotations

import re
import time

import httpx
import pyarrow as pa

from audience_pipelines.contract import (
    AudienceStats, BatchContext, BatchResult, CredentialsError, Destination, DestinationError, MatchListSession,
    Session, SessionContext, TerminalError,
)
from audience_pipelines.destinations.http import HttpClient
from audience_pipelines.destinations.microsoft_ads import (
    MAX_ITEMS, OAUTH_SCOPE, MicrosoftAds, MicrosoftAdsSettings,
)
from audience_pipelines.destinations.oauth import Redactor, RefreshingToken
from audience_pipelines.identifiers.hashing import hash_shaped

DESCRIPTION = "Managed by audience_pipelines"
COLUMN = "Email"  # the sent column, named after CustomerListItemSubType

INTERNAL_ERROR = 0
INVALID_CREDENTIALS = 105
NOT_AUTHORIZED = 106
TOKEN_EXPIRED = 109
MISSING_HEADERS = 116
CALL_RATE_EXCEEDED = 117
DUPLICATE_AUDIENCE_NAME = 4853
TERMS_NOT_ACCEPTED = 8003
# Codes by name, for errors that carry only `ErrorCode`.
CODES = {"InternalError": 0, "InvalidCredentials": 105, "UserIsNotAuthorized": 106,
         "AuthenticationTokenExpired": 109, "RequestMissingHeaders": 116, "CallRateExceeded": 117,
         "InvalidAccount": 208, "CampaignServiceInvalidAccountId": 1102, "CampaignServiceInvalidCustomerId": 1490,
         "InvalidAudienceId": 4835, "DuplicateAudienceName": 4853, "AudienceIdDoNotMatchAudienceType": 4861,
         "InvalidCustomerListId": 8000, "InvalidCustomerListActionType": 8001,
         "CustomerListItemSubTypeNotSupported": 8002, "CustomerListTermsAndConditionsNotAccepted": 8003}
ACCOUNT_CODES = frozenset({208, 1102, 1490})
# The audience is not a customer list of this account, or the request can never work: no retry helps.
AUDIENCE_CODES = frozenset({4835, 4861, 8000})
REQUEST_CODES = frozenset({MISSING_HEADERS, 8001, 8002})
_LONG = re.compile(r"-?[0-9]+")


def _errors(body) -> list[dict]:
    """Every error object of a fault or an answer, whatever its envelope."""
    if not isinstance(body, dict):
        return []
    return [e for key in ("Errors", "OperationErrors", "BatchErrors", "PartialErrors")
            for e in (body.get(key) or []) if isinstance(e, dict)]


def _response_errors(response: httpx.Response) -> list[dict]:
    try:
        return _errors(response.json())
    except ValueError:
        return []


def _code(error: dict) -> int | None:
    try:
        return int(error.get("Code"))
    except (TypeError, ValueError):
        return CODES.get(str(error.get("ErrorCode")))


def _codes(errors: list[dict]) -> set[int | None]:
    return {_code(e) for e in errors}


def _text(errors: list[dict], limit: int = 3) -> str:
    parts = [f"{e.get('ErrorCode') or 'error'} ({_code(e)}): {e.get('Message') or e.get('Details') or ''}".strip()
             for e in errors[:limit]]
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(parts) + more


def throttle_delay(response: httpx.Response) -> float | None:
    """60 s on CallRateExceeded (Microsoft's sliding one-minute window), backoff on InternalError, else None."""
    if response.status_code < 400:
        return None
    codes = _codes(_response_errors(response))
    if CALL_RATE_EXCEEDED in codes:
        return 60.0
    if INTERNAL_ERROR in codes:
        return -1.0  # back off with jitter, whatever the status
    return None  # 5xx without a body the shared client retries by status


def _long(value) -> str | None:
    """A long id as Microsoft may write it: a JSON number or a string."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    return text if _LONG.fullmatch(text) else None


class MicrosoftAdsDestination(Destination[MicrosoftAdsSettings]):
    destination_type = MicrosoftAds

    def __init__(self, settings: MicrosoftAdsSettings, sleep=time.sleep, clock=time.monotonic):
        super().__init__(settings)
        self._developer_token = settings.developer_token.value()
        self.oauth = RefreshingToken(
            name="microsoft_ads", token_url=settings.token_url, refresh_token=settings.refresh_token.value(),
            client_id=settings.client_id,
            client_secret=settings.client_secret.value() if settings.client_secret else None,
            extra_form={"scope": OAUTH_SCOPE}, endpoint="Microsoft's token endpoint", timeout_s=settings.timeout_s,
            sleep=sleep, clock=clock)
        self._redact = Redactor(self._developer_token, self.oauth.redact)
        headers = {"CustomerId": settings.customer_id, "CustomerAccountId": settings.account_id}
        self.http = HttpClient(settings.base_url.rstrip("/") + "/", timeout_s=settings.timeout_s, headers=headers,
                               throttle_delay=throttle_delay, describe_error=self._describe, name="microsoft_ads",
                               sleep=sleep, clock=clock)

    # -- errors ------------------------------------------------------------------------------
    def _describe(self, response: httpx.Response) -> str | None:
        try:
            body = response.json()
        except ValueError:
            return None
        errors = _errors(body)
        if not errors:
            return None
        tracking = body.get("TrackingId") or response.headers.get("TrackingId")
        text = f"Microsoft Advertising {_text(errors)}" + (f" (TrackingId {tracking})" if tracking else "")
        return self._redact(text)

    def _terms(self, detail: str) -> TerminalError:
        if self.settings.accept_customer_match_terms:
            # Already sent with uploads: Microsoft takes it only there, so a list must exist first.
            todo = ("accept_customer_match_terms is set, but Microsoft takes that acceptance only with a member "
                    "upload to an existing customer list: accept the terms in the Microsoft Advertising UI "
                    "(Tools > Audiences > Customer Match), or target an existing customer list by id")
        else:
            todo = ("accept the Customer Match terms in the Microsoft Advertising UI (Tools > Audiences > "
                    "Customer Match), or set `accept_customer_match_terms: true` on this destination to accept "
                    "them through the API")
        return TerminalError(f"microsoft_ads: account {self.settings.account_id} has not accepted Microsoft's "
                             f"Customer Match terms ({detail}); {todo}")

    def _error(self, errors: list[dict], status: int | None, message: str) -> DestinationError:
        """The error for a refused request (or for answer errors no item index points at)."""
        codes = _codes(errors)
        s = self.settings
        if TERMS_NOT_ACCEPTED in codes:
            return self._terms(message)
        if INVALID_CREDENTIALS in codes:
            return CredentialsError(f"microsoft_ads: the setting 'developer_token' or the access token from the "
                                    f"setting 'refresh_token' was refused (or the account is inactive): {message}",
                                    status=status)
        if NOT_AUTHORIZED in codes or codes & ACCOUNT_CODES:
            return TerminalError(f"microsoft_ads: the credentials may not act on customer {s.customer_id} / account "
                                 f"{s.account_id}: check the settings 'customer_id' (the manager account) and "
                                 f"'account_id' (the ad account, not its number): {message}", status=status)
        if TOKEN_EXPIRED in codes or status == 401:
            return CredentialsError(f"microsoft_ads: the access token from the setting 'refresh_token' was refused: "
                                    f"{message}", status=status)
        if codes & (AUDIENCE_CODES | REQUEST_CODES):
            return TerminalError(f"microsoft_ads: {message}", status=status)
        return DestinationError(f"microsoft_ads: {message}", status=status)

    # -- calls -------------------------------------------------------------------------------
    def _call(self, path: str, body: dict) -> dict:
        """POST to the API; errors by kind. An expired access token is renewed once."""
        for attempt in (1, 2):
            response = self.http.request("POST", path, json=body,
                                         headers={"Authorization": f"Bearer {self.oauth.get()}",
                                                  "DeveloperToken": self._developer_token})
            if response.status_code < 400:
                try:
                    answer = response.json() if response.content else {}
                except ValueError:
                    raise DestinationError(f"microsoft_ads: POST {path} answered HTTP {response.status_code} "
                                           "with a body that is not JSON") from None
                return answer if isinstance(answer, dict) else {}
            errors = _response_errors(response)
            if attempt == 1 and TOKEN_EXPIRED in _codes(errors):
                self.oauth.invalidate()
                continue
            described = self._describe(response) or self._redact(response.text[:200])
            raise self._error(errors, response.status_code,
                              f"HTTP {response.status_code} on POST {path}: {described}")
        raise AssertionError("unreachable")

    def _query(self, ids: list[str] | None) -> dict:
        return self._call("Audiences/QueryByIds", {"AudienceIds": ids, "Type": "CustomerList"})

    # -- identifiers -------------------------------------------------------------------------
    def identifier_column(self, kind: str) -> str:
        return COLUMN

    def transform_identifier(self, kind: str, canonical: pa.Array) -> pa.Array:
        # Canonical emails are trimmed and lowercased already; the shape does it again for safety.
        return hash_shaped(canonical)

    # -- audiences ---------------------------------------------------------------------------
    def check_access(self) -> None:
        self._query(None)  # the token exchange and one read: bad credentials fail before anything is sent

    def find_audience(self, name: str) -> str | None:
        for audience in self._query(None).get("Audiences") or []:
            if isinstance(audience, dict) and audience.get("Name") == name \
                    and audience.get("Type", "CustomerList") == "CustomerList":
                return _long(audience.get("Id"))
        return None

    def _audience(self, audience_id: str) -> dict:
        if _long(audience_id) is None:
            raise TerminalError(f"microsoft_ads: audience id '{audience_id}' is not a number")
        answer = self._query([audience_id])
        audiences = answer.get("Audiences") or [None]
        if not isinstance(audiences[0], dict):
            why = _text(_errors(answer)) or "not returned"
            raise TerminalError(f"microsoft_ads: customer list {audience_id} does not exist in account "
                                f"{self.settings.account_id} ({why})")
        return audiences[0]

    def check_audience(self, audience_id: str) -> None:
        self._audience(audience_id)

    def create_audience(self, name: str) -> str:
        s = self.settings
        audience = {"Name": name, "Type": "CustomerList", "Description": DESCRIPTION,
                    "MembershipDuration": s.membership_duration_days,
                    "ParentId": s.account_id if s.scope == "Account" else s.customer_id, "Scope": s.scope}
        with self.http.once():  # a lost answer is looked up by name next run, never sent twice
            answer = self._call("Audiences", {"Audiences": [audience]})
        ids = answer.get("AudienceIds") or [None]
        created = _long(ids[0])
        if created is not None:
            return created
        errors = _errors(answer)
        codes = _codes(errors)
        if TERMS_NOT_ACCEPTED in codes:
            raise self._terms(_text(errors))
        if DUPLICATE_AUDIENCE_NAME in codes:
            # Created elsewhere since the lookup: use it when it is a customer list.
            found = self.find_audience(name)
            if found is not None:
                return found
        raise TerminalError(f"microsoft_ads: customer list '{name}' was not created: "
                            f"{_text(errors) or 'no id and no error returned'}")

    def audience_stats(self, audience_id: str) -> AudienceStats | None:
        audience = self._audience(audience_id)
        # Both sizes stay nil for up to 48 hours after an upload.
        size = _long(audience.get("SearchSize")) or _long(audience.get("AudienceNetworkSize"))
        return AudienceStats(size=int(size) if size is not None else None)

    # -- members -----------------------------------------------------------------------------
    def open_session(self, ctx: SessionContext) -> Session:
        return _ApplySession(self, ctx.audience_id)

    def apply(self, action: str, audience_id: str, rows: pa.Table) -> BatchResult:
        """Add or Remove the rows' hashed emails; per-item errors come back as rejected rows."""
        values = rows[COLUMN].to_pylist()
        positions: dict[str, list[int]] = {}  # each distinct item once; duplicates share its answer
        for i, value in enumerate(values):
            if value:
                positions.setdefault(value, []).append(i)
        items = list(positions)
        if not items:
            return BatchResult()
        if len(items) > MAX_ITEMS:
            raise DestinationError(f"microsoft_ads: {len(items)} items in one call; Microsoft takes {MAX_ITEMS}")
        data = {"ActionType": action, "AudienceId": audience_id, "CustomerListItemSubType": "Email",
                "CustomerListItems": items}
        if self.settings.accept_customer_match_terms:
            data["AcceptCustomerMatchTerm"] = True
        errors = _errors(self._call("CustomerListUserData/Apply", {"CustomerListUserData": data}))
        if TERMS_NOT_ACCEPTED in _codes(errors):
            raise self._terms(_text(errors))
        rejected: dict[int, str] = {}
        unplaced = []
        for error in errors:
            index = _long(error.get("Index"))
            if index is not None and 0 <= int(index) < len(items):
                reason = f"Microsoft Advertising {_text([error])}"
                for i in positions[items[int(index)]]:
                    rejected.setdefault(i, reason)
            else:
                unplaced.append(error)
        result = BatchResult(rejected=rejected, stats={"items_sent": len(items)})
        if unplaced:
            if _codes(unplaced) & (AUDIENCE_CODES | REQUEST_CODES | ACCOUNT_CODES | {NOT_AUTHORIZED}):
                raise self._error(unplaced, 200, f"{action} refused: {_text(unplaced)}")
            # Errors pointing at no item: that many rows were not applied; the engine finds which.
            result.unapplied = len(unplaced)
            result.unapplied_reason = f"Microsoft Advertising did not apply the item: {_text(unplaced)}"[:500]
        return result

    def close(self) -> None:
        self.http.close()
        self.oauth.close()


class _ApplySession(MatchListSession):
    """Add and Remove calls per batch."""

    def add(self, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        return self.destination.apply("Add", self.audience_id, rows)

    def remove(self, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        return self.destination.apply("Remove", self.audience_id, rows)
