"""The `linkedin_ads` client: LinkedIn Matched Audiences through DMP segments.

Segments are listed with the `account` finder (`GET /dmpSegments?q=account`, paged with start and
count; the account URN URL-encoded, as Rest.li 2.0 wants) and created with `POST /dmpSegments`
(type USER, sourcePlatform API); the new id is read from the `x-restli-id` header or the body.
LinkedIn asks for a wait of about 5 seconds after creating a segment before users are added, and
may answer 404 on /users until then, so a 404 shortly after this client created the segment is
retried for a bounded time (creation_retry_s).

Members are added and removed with `POST /dmpSegments/{id}/users` (`X-RestLi-Method: BATCH_CREATE`),
one element per row carrying its `userIds` (SHA256_EMAIL, GOOGLE_AID) and the plain-text extras.
LinkedIn answers with one status per element, in order; an element outside 2xx is that row's
rejection. Adding a member twice or removing an absent one is answered 201, so a resend is harmless.
Throttles are HTTP 429 with no Retry-After documented: the shared client backs off with jitter.
"""

from __future__ import annotations

import time
from urllib.parse import quote

import httpx
import pyarrow as pa

from audience_pipelines.contract import (
    AudienceStats, BatchContext, BatchResult, CredentialsError, Destination, DestinationError, MatchListSession,
    Session, SessionContext, TerminalError, sent_columns,
)
from audience_pipelines.destinations.http import HttpClient, json_object
from audience_pipelines.destinations.linkedin_ads import LinkedInAds, LinkedInSettings
from audience_pipelines.destinations.oauth import Redactor, RefreshingToken
from audience_pipelines.identifiers.linkedin import ID_TYPES, LINKEDIN_FIELDS, to_linkedin

PAGE = 100  # segments per page of the account finder
SEGMENT_URN = "urn:li:dmpSegment:"
NO_USER_ID = "no email or device id left to send (first_name, last_name and country go only beside one)"


def _element_reason(entry) -> str:
    if not isinstance(entry, dict):
        return "LinkedIn returned no status for this element; not applied"
    message = entry.get("message") or (entry.get("error") or {}).get("message") or "no message"
    return f"LinkedIn element status {entry.get('status')}: {message}"


def _ok(entry) -> bool:
    status = entry.get("status") if isinstance(entry, dict) else None
    return isinstance(status, int) and 200 <= status < 300


class LinkedInAdsDestination(Destination[LinkedInSettings]):
    destination_type = LinkedInAds

    def __init__(self, settings: LinkedInSettings, sleep=time.sleep, clock=time.monotonic):
        super().__init__(settings)
        self.sleep, self.clock = sleep, clock
        self.oauth: RefreshingToken | None = None
        self._token: str | None = None
        if settings.refresh_token is not None:
            self.oauth = RefreshingToken(
                name="linkedin_ads", token_url=settings.token_url, refresh_token=settings.refresh_token.value(),
                client_id=settings.client_id, client_secret=settings.client_secret.value(),
                endpoint="LinkedIn's token endpoint", timeout_s=settings.timeout_s, sleep=sleep, clock=clock)
        else:
            self._token = settings.access_token.value()
        self._redact = Redactor(self._token, self.oauth.redact if self.oauth else None)
        headers = {"LinkedIn-Version": settings.linkedin_version, "X-Restli-Protocol-Version": "2.0.0"}
        self.http = HttpClient(settings.base_url.rstrip("/") + "/", timeout_s=settings.timeout_s, headers=headers,
                               describe_error=self._describe, name="linkedin_ads", sleep=sleep, clock=clock)
        self._created: dict[str, float] = {}  # segment id -> clock() when this client created it

    # -- calls -------------------------------------------------------------------------------
    def _describe(self, response: httpx.Response) -> str | None:
        err = json_object(response)
        if not err.get("message"):
            return None
        code = err.get("code") or err.get("serviceErrorCode")
        return self._redact(f"LinkedIn {code}: {err['message']}" if code else f"LinkedIn: {err['message']}")

    def _call(self, method: str, path: str, *, allow: tuple[int, ...] = (), **kwargs) -> httpx.Response:
        """A response under 400 (or in `allow`); else an error by kind. A refreshed token is renewed once."""
        headers = kwargs.pop("headers", {})
        for attempt in (1, 2):
            token = self.oauth.get() if self.oauth else self._token
            response = self.http.request(method, path, headers={"Authorization": f"Bearer {token}", **headers},
                                         **kwargs)
            if response.status_code == 401 and self.oauth and attempt == 1:
                self.oauth.invalidate()
                continue
            break
        status = response.status_code
        if status < 400 or status in allow:
            return response
        described = self._describe(response) or self._redact(response.text[:200]) or "no body"
        message = f"HTTP {status} on {method} {path.split('?')[0]}: {described}"
        if status == 401:
            setting = "refresh_token" if self.oauth else "access_token"
            raise CredentialsError(f"linkedin_ads: the setting '{setting}' was refused: {message}", status=status)
        if status == 403:
            raise TerminalError(
                f"linkedin_ads: {message}. The member whose token this is needs a role other than VIEWER on ad "
                f"account {self.settings.ad_account_id}, and the app the rw_dmp_segments scope (Audiences program)",
                status=status)
        if status == 404:
            raise TerminalError(f"linkedin_ads: {message}", status=status)
        raise DestinationError(f"linkedin_ads: {message}", status=status)

    def _segment_id(self, audience_id: str) -> str:
        text = str(audience_id).strip().removeprefix(SEGMENT_URN)
        if not text.isdigit():
            raise TerminalError(f"linkedin_ads: '{audience_id}' is not a DMP segment id (digits, or "
                                f"{SEGMENT_URN}<id>)")
        return text

    def _finder(self, start: int, count: int) -> str:
        # Rest.li 2.0: a URN in a query parameter is URL-encoded (its colons included).
        return f"dmpSegments?q=account&account={quote(self.account(), safe='')}&start={start}&count={count}"

    # -- identifiers -------------------------------------------------------------------------
    def identifier_column(self, kind: str) -> str:
        return LINKEDIN_FIELDS[kind]

    def transform_identifier(self, kind: str, canonical: pa.Array) -> pa.Array:
        return to_linkedin(kind, canonical)

    # -- audiences ---------------------------------------------------------------------------
    def check_access(self) -> None:
        self._call("GET", self._finder(0, 1))

    def _usable(self, segment: dict) -> None:
        kind = segment.get("type", "USER")
        if kind != self.settings.segment_type:
            raise TerminalError(f"linkedin_ads: DMP segment {segment.get('id')} ('{segment.get('name')}') is a "
                                f"{kind} segment; members can be streamed only to {self.settings.segment_type} "
                                "segments")

    def check_audience(self, audience_id: str) -> None:
        sid = self._segment_id(audience_id)
        response = self._call("GET", f"dmpSegments/{sid}", allow=(404,))
        segment = json_object(response)
        if response.status_code == 404 or segment.get("account", self.account()) != self.account():
            raise TerminalError(f"linkedin_ads: DMP segment {audience_id} does not exist in ad account "
                                f"{self.settings.ad_account_id}", status=response.status_code)
        self._usable(segment)

    def find_audience(self, name: str) -> str | None:
        start, other = 0, None
        while True:
            body = json_object(self._call("GET", self._finder(start, PAGE)))
            elements = body.get("elements") or []
            for segment in elements:
                if segment.get("name") != name:
                    continue
                if segment.get("type", "USER") == self.settings.segment_type:
                    return str(segment["id"])
                other = segment
            start += len(elements)
            total = (body.get("paging") or {}).get("total")
            if not elements or (start >= total if isinstance(total, int) else len(elements) < PAGE):
                break
        if other is not None:
            self._usable(other)  # raises: the name is taken by a segment of another type
        return None

    def create_audience(self, name: str) -> str:
        body = {"name": name, "account": self.account(), "type": self.settings.segment_type,
                "accessPolicy": "PRIVATE", "sourcePlatform": "API", "sourceSegmentId": name,
                "destinations": [{"destination": "LINKEDIN"}]}
        with self.http.once():  # a lost answer is looked up by name next run, never sent twice
            response = self._call("POST", "dmpSegments", json=body)
        sid = response.headers.get("x-restli-id") or json_object(response).get("id")
        if sid is None:
            raise TerminalError("linkedin_ads: LinkedIn created the DMP segment but named no id (no x-restli-id "
                                "header, no id in the body)")
        sid = self._segment_id(str(sid))
        self._created[sid] = self.clock()
        return sid

    def audience_stats(self, audience_id: str) -> AudienceStats | None:
        segment = json_object(self._call("GET", f"dmpSegments/{self._segment_id(audience_id)}"))
        size, matched = segment.get("audienceSize"), segment.get("matchedCount")
        if size is None and matched is None:
            return None
        rate = min(1.0, matched / size) if matched is not None and size else None
        return AudienceStats(size=int(matched if matched is not None else size), match_rate=rate)

    # -- members -----------------------------------------------------------------------------
    def open_session(self, ctx: SessionContext) -> Session:
        return _UsersSession(self, self._segment_id(ctx.audience_id))

    def _users(self, sid: str, elements: list[dict]) -> list:
        """POST elements to a segment's /users; LinkedIn's per-element statuses."""
        created = self._created.get(sid)
        tries = 1
        interval = max(1.0, self.settings.creation_wait_s)
        if created is not None:  # a segment this client just created: wait, then allow 404s for a while
            left = self.settings.creation_wait_s - (self.clock() - created)
            if left > 0:
                self.sleep(left)
            tries += int(self.settings.creation_retry_s // interval)
        for attempt in range(tries):
            response = self._call("POST", f"dmpSegments/{sid}/users", allow=(404,), json={"elements": elements},
                                  headers={"X-RestLi-Method": "BATCH_CREATE"})
            if response.status_code != 404:
                self._created.pop(sid, None)  # it exists: a later 404 means it is gone
                statuses = json_object(response).get("elements")
                if not isinstance(statuses, list):
                    raise DestinationError(f"linkedin_ads: HTTP {response.status_code} on POST dmpSegments/{sid}/users "
                                           "answered without per-element statuses; nothing is taken as applied")
                return statuses
            if attempt + 1 < tries:
                self.sleep(interval)
        raise TerminalError(f"linkedin_ads: DMP segment {sid} does not exist in ad account "
                            f"{self.settings.ad_account_id} (HTTP 404 on POST dmpSegments/{sid}/users"
                            + (f" for {self.settings.creation_retry_s:g} s after it was created)" if created else ")"),
                            status=404)

    def _apply(self, sid: str, action: str, rows: pa.Table) -> BatchResult:
        """ADD or REMOVE rows, in requests of at most batch_size elements; rejections by row position."""
        cols = {c: rows[c].to_pylist() for c in sent_columns(rows)}
        ids = [c for c in cols if c in ID_TYPES]
        extras = [c for c in cols if c not in ID_TYPES] if action == "ADD" else []
        rejected: dict[int, str] = {}
        elements, positions = [], []
        for i in range(rows.num_rows):
            user_ids = [{"idType": c, "idValue": cols[c][i]} for c in ids if cols[c][i]]
            if not user_ids:
                if action == "ADD":  # a withdrawal with no id has nothing to take out
                    rejected[i] = NO_USER_ID
                continue
            element = {"action": action, "userIds": user_ids}
            element.update({c: cols[c][i] for c in extras if cols[c][i]})
            elements.append(element)
            positions.append(i)
        size = self.settings.batch_size
        for lo in range(0, len(elements), size):
            statuses = self._users(sid, elements[lo:lo + size])
            for j, pos in enumerate(positions[lo:lo + size]):
                entry = statuses[j] if j < len(statuses) else None
                if not _ok(entry):
                    rejected[pos] = _element_reason(entry)
        return BatchResult(rejected=rejected)

    def close(self) -> None:
        self.http.close()
        if self.oauth:
            self.oauth.close()


class _UsersSession(MatchListSession):
    """Every batch answered at once: ADD and REMOVE elements on the segment's /users."""

    def add(self, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        return self.destination._apply(self.audience_id, "ADD", rows)

    def remove(self, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        return self.destination._apply(self.audience_id, "REMOVE", rows)
