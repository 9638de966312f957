"""The `snapchat_ads` client: Snap customer-list (FIRST_PARTY) segments.

Members are added with POST and removed with DELETE on `/segments/{id}/users`, one schema per
request (`EMAIL_SHA256`, `PHONE_SHA256`, `MOBILE_AD_ID_SHA256`), duplicates removed, at most
100,000 identifiers a request. A batch whose rows carry several kinds becomes one request per
schema; a row counts as applied only when every request carrying its values said SUCCESS. Snap
names no rows: a request it refuses fails as a whole.

Auth is OAuth2: the refresh token is exchanged for an access token, renewed before it expires
and once after a 401. Snap throttles with HTTP 429 (no Retry-After documented), retried with
backoff like 5xx by the shared HTTP layer. HTTP 403 with E3002 ("Caller does not have
permission") is terminal.

Assumptions where the reference is [unverified] or silent:
- A users request refused with HTTP 400 was refused because of some identifiers in it: it is
  raised as `RowsRefused`, so the engine sends halves again and rejects only the rows to blame.
  An answer that is not an error yet does not say SUCCESS fails the rows it carried.
- The segment list is read without `limit` (its bounds are unverified), following
  `paging.next_link`; only its query is reused, so the token never goes to another host.
- Creating a segment is not retried blindly (a lost answer would create a second one): after a
  failed attempt the segment is looked up by name before trying again.
"""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qsl, urlsplit

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from audience_pipelines.contract import (
    AudienceStats, BatchContext, BatchResult, CredentialsError, Destination, DestinationError, MatchListSession,
    RowsRefused, Session, SessionContext, TerminalError,
)
from audience_pipelines.destinations.http import HttpClient, json_object
from audience_pipelines.destinations.oauth import RefreshingToken
from audience_pipelines.destinations.snapchat_ads import MAX_IDENTIFIERS, SnapchatAds, SnapchatSettings
from audience_pipelines.identifiers.snapchat import SNAP_SCHEMAS, to_snap

DESCRIPTION = "Managed by audience_pipelines"
MAX_NAME = 375
PERMISSION_CODE = "E3002"
SCHEMAS = frozenset(SNAP_SCHEMAS.values())
_ID = re.compile(r"^[A-Za-z0-9_-]+$")


def _success(status) -> bool:
    # Snap's examples write it both "success" and "SUCCESS".
    return str(status or "").upper() == "SUCCESS"


class SnapchatAdsDestination(Destination[SnapchatSettings]):
    destination_type = SnapchatAds

    def __init__(self, settings: SnapchatSettings, sleep=time.sleep, clock=time.monotonic):
        super().__init__(settings)
        self.sleep = sleep
        self.oauth = RefreshingToken(
            name="snapchat_ads", token_url=settings.token_url, refresh_token=settings.refresh_token.value(),
            client_id=settings.client_id, client_secret=settings.client_secret.value(),
            endpoint="Snap's token endpoint", timeout_s=settings.timeout_s, sleep=sleep, clock=clock)
        self._redact = self.oauth.redact
        base = settings.base_url.rstrip("/") + "/"
        common = {"timeout_s": settings.timeout_s, "describe_error": self._describe, "name": "snapchat_ads",
                  "sleep": sleep, "clock": clock}
        self.http = HttpClient(base, **common)

    # -- calls -------------------------------------------------------------------------------
    def _describe(self, response: httpx.Response) -> str | None:
        """Snap's error code and message: the status alone does not say why."""
        body = json_object(response)
        text = body.get("debug_message") or body.get("display_message")
        if not text and not body.get("error_code"):
            return None
        code = body.get("error_code")
        out = f"Snap {code}: {text}" if code else f"Snap: {text}"
        if body.get("request_id"):
            out += f" (request_id {body['request_id']})"
        return self._redact(out)

    def _call(self, method: str, path: str, *, params: dict | None = None, json: dict | None = None) -> dict:
        """One API call; an access token Snap refuses (401) is renewed once."""
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {self.oauth.get()}"}
            response = self.http.request(method, path, params=params, json=json, headers=headers)
            if response.status_code == 401 and attempt == 1:
                self.oauth.invalidate()
                continue
            if response.status_code >= 400:
                raise self._error(method, path, response)
            return json_object(response)
        raise AssertionError("unreachable")

    def _error(self, method: str, path: str, response: httpx.Response) -> DestinationError:
        status = response.status_code
        described = self._describe(response) or self._redact(response.text[:200]) or "no details"
        message = f"HTTP {status} on {method} {path}: {described}"
        if status == 401:
            return CredentialsError(f"snapchat_ads: the access token from the setting 'refresh_token' was refused: "
                                    f"{message}", status=status)
        if status == 403:
            why = ("the credentials may not act on ad account " if json_object(response).get("error_code") == PERMISSION_CODE
                   else "access refused for ad account ")
            return TerminalError(f"snapchat_ads: {why}{self.settings.ad_account_id} (check 'ad_account_id' and the "
                                 f"user's role on it): {message}", status=status)
        if status == 404:
            return TerminalError(f"snapchat_ads: {message}", status=status)
        return DestinationError(f"snapchat_ads: {message}", status=status)

    def _segments_path(self) -> str:
        return f"adaccounts/{self.settings.ad_account_id}/segments"

    # -- identifiers -------------------------------------------------------------------------
    def identifier_column(self, kind: str) -> str:
        return SNAP_SCHEMAS[kind]

    def transform_identifier(self, kind: str, canonical: pa.Array) -> pa.Array:
        return to_snap(kind, canonical)

    # -- audiences ---------------------------------------------------------------------------
    def check_access(self) -> None:
        # The exchange and the first page of the account's segments: bad credentials or a wrong
        # ad account fail before anything is created or sent.
        self.oauth.get()
        self._call("GET", self._segments_path())

    def _usable(self, segment: dict) -> None:
        source = segment.get("source_type")
        if source and source != "FIRST_PARTY":
            raise TerminalError(f"snapchat_ads: segment {segment.get('id')} ('{segment.get('name')}') is a {source} "
                                "segment, not a customer list (FIRST_PARTY)")

    def _segment(self, segment_id: str) -> dict:
        if not _ID.match(str(segment_id)):
            raise TerminalError(f"snapchat_ads: '{segment_id}' is not a Snap segment id")
        try:
            body = self._call("GET", f"segments/{segment_id}")
        except DestinationError as exc:
            if isinstance(exc, CredentialsError) or exc.status not in (400, 403, 404):
                raise
            raise TerminalError(f"snapchat_ads: segment {segment_id} does not exist or may not be used by these "
                                f"credentials: {exc}", status=exc.status) from exc
        for entry in body.get("segments") or []:
            segment = entry.get("segment") if isinstance(entry, dict) else None
            if isinstance(segment, dict) and str(segment.get("id")) == str(segment_id):
                return segment
        raise TerminalError(f"snapchat_ads: segment {segment_id} does not exist")

    def check_audience(self, audience_id: str) -> None:
        segment = self._segment(audience_id)
        account = segment.get("ad_account_id")
        if account and account != self.settings.ad_account_id:
            raise TerminalError(f"snapchat_ads: segment {audience_id} belongs to ad account {account}, not "
                                f"{self.settings.ad_account_id}")
        self._usable(segment)

    def find_audience(self, name: str) -> str | None:
        params: dict | None = None
        seen = set()
        while True:
            page = self._call("GET", self._segments_path(), params=params)
            for entry in page.get("segments") or []:
                segment = entry.get("segment") if isinstance(entry, dict) else None
                if isinstance(segment, dict) and segment.get("name") == name:
                    self._usable(segment)
                    return str(segment["id"])
            link = (page.get("paging") or {}).get("next_link")
            params = dict(parse_qsl(urlsplit(link).query)) if link else None
            key = tuple(sorted(params.items())) if params else None
            if not params or key in seen:  # no next page (or one already read)
                return None
            seen.add(key)

    def create_audience(self, name: str) -> str:
        if len(name) > MAX_NAME:
            raise TerminalError(f"snapchat_ads: a segment name has at most {MAX_NAME} characters; '{name[:40]}…' "
                                f"has {len(name)}")
        body = {"segments": [{
            "name": name, "description": DESCRIPTION, "source_type": "FIRST_PARTY",
            "retention_in_days": self.settings.retention_in_days, "ad_account_id": self.settings.ad_account_id}]}
        with self.http.once():  # a lost answer is looked up by name next run, never sent twice
            answer = self._call("POST", self._segments_path(), json=body)
        entries = answer.get("segments") or []
        segment = entries[0].get("segment") if entries and isinstance(entries[0], dict) else None
        if not (segment and segment.get("id") and _success(entries[0].get("sub_request_status"))):
            raise TerminalError(f"snapchat_ads: Snap did not confirm creating segment '{name}': "
                                f"{self._redact(str(answer)[:300])}")
        return str(segment["id"])

    def audience_stats(self, audience_id: str) -> AudienceStats | None:
        size = self._segment(audience_id).get("approximate_number_users")
        return AudienceStats(size=int(size)) if size is not None else None

    def open_session(self, ctx: SessionContext) -> Session:
        return _SegmentSession(self, ctx.audience_id)

    def upload(self, method: str, segment_id: str, schema: str, values: list[str]) -> int:
        """Add (POST) or remove (DELETE) one schema's values; Snap's number_uploaded_users.

        Raises RowsRefused when Snap refuses the request (HTTP 400), DestinationError when its
        answer does not say SUCCESS.
        """
        entry: dict = {"schema": [schema], "data": [[v] for v in values]}
        if method == "DELETE":
            entry["id"] = segment_id  # as RudderStack sends it; Segment's client leaves it out
        path = f"segments/{segment_id}/users"
        try:
            answer = self._call(method, path, json={"users": [entry]})
        except DestinationError as exc:
            if exc.status == 400 and not exc.fatal:
                raise RowsRefused(f"Snap refused the {schema} request: {exc}", status=400) from exc
            raise
        users = [u for u in answer.get("users") or [] if isinstance(u, dict)]
        if not (_success(answer.get("request_status")) and users
                and all(_success(u.get("sub_request_status")) for u in users)):
            statuses = [answer.get("request_status"), *(u.get("sub_request_status") for u in users)]
            said = "/".join(str(s) for s in statuses)
            detail = " ".join(str(u.get("debug_message") or "") for u in users).strip()
            what = "removal" if method == "DELETE" else "upload"
            raise DestinationError(self._redact(
                f"snapchat_ads: Snap did not confirm the {schema} {what} on segment {segment_id} (status {said})"
                + (f": {detail[:200]}" if detail else "")), status=200)
        counts = [(u.get("user") or {}).get("number_uploaded_users") for u in users]
        return sum(int(n) for n in counts if isinstance(n, int) or (isinstance(n, str) and n.isdigit()))

    def close(self) -> None:
        self.http.close()
        self.oauth.close()


class _SegmentSession(MatchListSession):
    """Each batch is sent right away: one request per schema and method."""

    def _apply(self, method: str, rows: pa.Table) -> BatchResult:
        failed: dict[str, str] = {}
        requests = uploaded = 0
        for schema in [c for c in rows.column_names if c in SCHEMAS]:
            values = pc.unique(rows[schema].drop_null()).to_pylist()  # no duplicates within a request
            # The engine's batches stay under the limit; a longer call is split all the same.
            for lo in range(0, len(values), MAX_IDENTIFIERS):
                try:
                    part = values[lo:lo + MAX_IDENTIFIERS]
                    uploaded += self.destination.upload(method, self.audience_id, schema, part)
                    requests += 1
                except RowsRefused:
                    raise  # some rows are to blame: the engine sends halves again
                except DestinationError as exc:
                    if exc.fatal:
                        raise
                    failed.setdefault(schema, str(exc))
        rejected: dict[int, str] = {}
        for schema, reason in failed.items():
            # Every row whose value rode in a failed request is not (wholly) applied.
            for i in np.flatnonzero(np.asarray(rows[schema].is_valid(), dtype=bool)):
                rejected.setdefault(int(i), reason)
        return BatchResult(rejected=rejected, stats={"snap_requests": requests, "number_uploaded_users": uploaded})

    def add(self, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        return self._apply("POST", rows)

    def remove(self, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        return self._apply("DELETE", rows)
