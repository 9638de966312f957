"""The `pinterest_ads` client: Pinterest customer lists through the Ads API v5.

Members are added and removed with `PATCH /ad_accounts/{id}/customer_lists/{list_id}`
`{"operation_type": "ADD"|"REMOVE", "records": "h1,h2,..."}`: one comma-separated string of
SHA-256 hashes (`identifiers.pinterest`). The answer is the list with its counters; there is no
per-record result, so a batch is applied whole or refused whole. A refused batch (HTTP 400 that
is not a throttle) is taken to be caused by some of its records [unverified: Pinterest does not
say]; it is raised as `RowsRefused`, so the engine sends halves again and only the rows to blame
fail. The CustomerList `exceptions` object is undocumented and not read.

Pinterest requires `records` when a list is created, but a list is created before any batch. It
is created holding one placeholder, the hash of an address under the reserved `.invalid` domain
(which no Pinterest account can have), and the placeholder is removed at once.

With `create_audience`, a list is wrapped in a CUSTOMER_LIST audience of the same name, looked up
by its rule's `customer_list_id` first so a rerun never makes a second. Pinterest wants 100 matched
accounts before an audience is usable; should it refuse to wrap a smaller list, the refusal is
logged and tried again once the run's members are in (when the size is read back) and by later
runs. The audience's `size` is the size read back.

Auth is a Bearer token, static or refreshed with OAuth2 (client credentials as HTTP Basic). A
throttle is HTTP 429 with `{"code": 8, ...}`, retried with backoff (Retry-After when given).
"""

from __future__ import annotations

import hashlib
import logging
import time

import httpx
import pyarrow as pa
import pyarrow.compute as pc

from audience_pipelines.contract import (
    AudienceStats, BatchContext, BatchResult, CredentialsError, Destination, DestinationError, MatchListSession,
    RowsRefused, Session, SessionContext, TerminalError, sent_columns,
)
from audience_pipelines.destinations.http import HttpClient, json_object
from audience_pipelines.destinations.oauth import Redactor, RefreshingToken
from audience_pipelines.destinations.pinterest_ads import PinterestAds, PinterestSettings
from audience_pipelines.identifiers.pinterest import to_pinterest

log = logging.getLogger(__name__)

THROTTLE_CODE = 8
PAGE_SIZE = 250
DESCRIPTION = "Managed by audience_pipelines"
# Created with the list (Pinterest needs a record) and removed at once; `.invalid` matches nobody.
PLACEHOLDER = hashlib.sha256(b"placeholder@audience-pipelines.invalid").hexdigest()


def throttle_delay(response: httpx.Response) -> float | None:
    """Pinterest throttles with 429 and code 8: wait Retry-After if given, else back off with jitter."""
    if response.status_code != 429 and json_object(response).get("code") != THROTTLE_CODE:
        return None
    retry_after = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(retry_after))
    except ValueError:
        return -1.0


def _path_id(value: str, what: str) -> str:
    text = str(value).strip()
    if not text.isdigit() or len(text) > 18:
        raise TerminalError(f"pinterest_ads: '{value}' is not a {what} id (digits, at most 18)")
    return text


class PinterestAdsDestination(Destination[PinterestSettings]):
    destination_type = PinterestAds

    def __init__(self, settings: PinterestSettings, sleep=time.sleep, clock=time.monotonic):
        super().__init__(settings)
        self.oauth: RefreshingToken | None = None
        self._static: str | None = None
        if settings.refresh_token is not None:
            self.oauth = RefreshingToken(
                name="pinterest_ads", token_url=settings.token_url, refresh_token=settings.refresh_token.value(),
                client_id=settings.client_id, client_secret=settings.client_secret.value(), basic_auth=True,
                endpoint="Pinterest's token endpoint", timeout_s=settings.timeout_s, sleep=sleep, clock=clock)
        else:
            self._static = settings.access_token.value()
        self._redact = Redactor(self._static, self.oauth.redact if self.oauth else None)
        self.http = HttpClient(settings.base_url.rstrip("/") + "/", timeout_s=settings.timeout_s,
                               throttle_delay=throttle_delay, describe_error=self._describe,
                               name="pinterest_ads", sleep=sleep, clock=clock)
        self._account = f"ad_accounts/{settings.ad_account_id}"
        self._wrapped: set[str] = set()  # lists known to have their audience, this client's lifetime

    # -- calls -------------------------------------------------------------------------------
    def _describe(self, response: httpx.Response) -> str | None:
        body = json_object(response)
        if "code" not in body and "message" not in body:
            return None
        return self._redact(f"Pinterest error code {body.get('code')}: {body.get('message', '')}")

    def _token(self) -> str:
        if self.oauth is None:
            return self._static
        try:
            return self.oauth.get()
        except CredentialsError:
            raise
        except TerminalError as exc:
            # Pinterest words a refused exchange {"code", "message"}, not as an OAuth error.
            if exc.status in (400, 401, 403):
                raise CredentialsError(f"pinterest_ads: the setting 'refresh_token' (with 'client_id' and "
                                       f"'client_secret') was refused: {exc}", status=exc.status) from None
            raise

    def _call(self, method: str, path: str, **kwargs) -> dict:
        """One API call; errors by kind. A refreshed access token the API refuses is renewed once."""
        for attempt in (1, 2):
            response = self.http.request(method, path, headers={"Authorization": f"Bearer {self._token()}"},
                                         **kwargs)
            if response.status_code < 400:
                return response.json() if response.content else {}
            if response.status_code == 401 and self.oauth is not None and attempt == 1:
                self.oauth.invalidate()
                continue
            raise self._error(method, path, response)
        raise AssertionError("unreachable")

    def _error(self, method: str, path: str, response: httpx.Response) -> DestinationError:
        status = response.status_code
        described = self._describe(response) or self._redact(response.text[:200]) or "no body"
        message = f"HTTP {status} on {method} {path}: {described}"
        token = "access_token" if self.oauth is None else "refresh_token"
        if status == 401:
            return CredentialsError(f"pinterest_ads: the access token from the setting '{token}' was refused: "
                                    f"{message}", status=status)
        if status == 403:
            return CredentialsError(
                f"pinterest_ads: the token from the setting '{token}' may not act on ad account "
                f"{self.settings.ad_account_id} (it needs the scopes ads:read and ads:write, and access to "
                f"the account named by 'ad_account_id'): {message}", status=status)
        if status == 404 and "AdAccount" in described:
            return TerminalError(f"pinterest_ads: ad account {self.settings.ad_account_id} (the setting "
                                 f"'ad_account_id') was not found: {message}", status=status)
        if status == 404:
            return TerminalError(message, status=status)
        return DestinationError(message, status=status)

    def _pages(self, path: str):
        """Every item of a bookmark-paged listing."""
        params = {"page_size": str(PAGE_SIZE), "order": "ASCENDING"}
        while True:
            page = self._call("GET", path, params=params)
            yield from page.get("items") or []
            bookmark = page.get("bookmark")
            if not bookmark:
                return
            params = {**params, "bookmark": bookmark}

    # -- identifiers -------------------------------------------------------------------------
    def identifier_column(self, kind: str) -> str:
        return self.settings.list_type

    def transform_identifier(self, kind: str, canonical: pa.Array) -> pa.Array:
        return to_pinterest(kind, canonical)

    # -- audiences ---------------------------------------------------------------------------
    def check_access(self) -> None:
        # One cheap listing: a refused token or a wrong ad account fails before anything is sent.
        self._call("GET", f"{self._account}/customer_lists", params={"page_size": "1"})

    def check_audience(self, audience_id: str) -> None:
        list_id = _path_id(audience_id, "customer list")
        try:
            found = self._call("GET", f"{self._account}/customer_lists/{list_id}")
        except TerminalError as exc:
            if exc.status != 404 or "'ad_account_id'" in str(exc):
                raise
            raise TerminalError(f"pinterest_ads: customer list {list_id} does not exist in ad account "
                                f"{self.settings.ad_account_id}: {exc}", status=exc.status) from None
        self._ensure_audience(list_id, str(found.get("name") or list_id))

    def find_audience(self, name: str) -> str | None:
        for item in self._pages(f"{self._account}/customer_lists"):
            if item.get("name") == name:
                list_id = str(item["id"])
                # A create whose answer was lost may have left its placeholder in; removing none is harmless.
                self._patch(list_id, "REMOVE", [PLACEHOLDER])
                self._ensure_audience(list_id, name)
                return list_id
        return None

    def create_audience(self, name: str) -> str:
        with self.http.once():  # a lost answer is looked up by name next run, never sent twice
            created = self._call("POST", f"{self._account}/customer_lists", json={
                "name": name, "records": PLACEHOLDER, "list_type": self.settings.list_type})
        list_id = str(created["id"])
        self._patch(list_id, "REMOVE", [PLACEHOLDER])
        self._ensure_audience(list_id, name)
        return list_id

    def _wrapping_audience(self, list_id: str) -> dict | None:
        for audience in self._pages(f"{self._account}/audiences"):
            rule = audience.get("rule") or {}
            if audience.get("audience_type") == "CUSTOMER_LIST" and str(rule.get("customer_list_id")) == list_id:
                return audience
        return None

    def _ensure_audience(self, list_id: str, name: str | None = None, fresh: bool = False) -> dict | None:
        """The CUSTOMER_LIST audience wrapping the list, created (with `create_audience`) if none does."""
        if not fresh and (not self.settings.create_audience or list_id in self._wrapped):
            return None
        audience = self._wrapping_audience(list_id)
        if audience is None and self.settings.create_audience:
            if name is None:
                name = str(self._call("GET", f"{self._account}/customer_lists/{list_id}").get("name") or list_id)
            body = {"name": name, "audience_type": "CUSTOMER_LIST", "rule": {"customer_list_id": list_id},
                    "description": DESCRIPTION}
            try:
                audience = self._call("POST", f"{self._account}/audiences", json=body)
            except DestinationError as exc:
                if exc.fatal or exc.status != 400:
                    raise
                # Members can still go to the list; the run's end and later runs try again.
                log.warning("pinterest_ads: customer list %s could not be made an audience yet: %s", list_id, exc)
                return None
        if audience is not None:
            self._wrapped.add(list_id)
        return audience

    def audience_stats(self, audience_id: str) -> AudienceStats | None:
        # Read fresh; a list too small to wrap before this run's adds may be wrapped now.
        audience = self._ensure_audience(_path_id(audience_id, "customer list"), fresh=True)
        if audience is None:
            return None
        size = audience.get("size")
        return AudienceStats(size=int(size) if size is not None else None)

    # -- members -------------------------------------------------------------------------------
    def _patch(self, list_id: str, operation: str, records: list[str]) -> dict:
        body = {"operation_type": operation, "records": ",".join(records)}
        try:
            return self._call("PATCH", f"{self._account}/customer_lists/{list_id}", json=body)
        except DestinationError as exc:
            if exc.status == 400 and not exc.fatal:
                # The request's shape is fixed, so a refusal is laid at the records' door.
                raise RowsRefused(f"Pinterest refused the batch: {exc}", status=400) from None
            raise

    def _send(self, list_id: str, operation: str, rows: pa.Table) -> BatchResult:
        cols = sent_columns(rows)
        values = rows[cols[0]].combine_chunks() if cols else pa.nulls(rows.num_rows, pa.string())
        missing = pc.is_null(values).to_pylist()
        result = BatchResult(rejected={i: "no identifier to send" for i, m in enumerate(missing) if m})
        records = values.drop_null().to_pylist()
        if records:
            self._patch(list_id, operation, records)
            result.stats = {f"records_{'added' if operation == 'ADD' else 'removed'}": len(records)}
        return result

    def open_session(self, ctx: SessionContext) -> Session:
        return _ListSession(self, _path_id(ctx.audience_id, "customer list"))

    def close(self) -> None:
        self.http.close()
        if self.oauth is not None:
            self.oauth.close()


class _ListSession(MatchListSession):
    """ADD and REMOVE on one customer list; each batch is applied whole or refused whole."""

    def add(self, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        return self.destination._send(self.audience_id, "ADD", rows)

    def remove(self, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        return self.destination._send(self.audience_id, "REMOVE", rows)
