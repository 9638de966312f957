"""The `tiktok_ads` client: TikTok custom audiences filled through the segment API.

Members are added and removed with `POST /segment/mapping/` (action "add" or "delete"): `id_schema`
names the id schemas the batch carries, and each row is an array lined up with it, a missing id
sent as `{}` and a present one as `{"id": <sha256>, "audience_ids": [<audience>]}`. Audiences are
listed (`/dmp/custom_audience/list/`, 100 a page), read (`/dmp/custom_audience/get/`, whose
`cover_num` is taken as the audience size [unverified]) and created (`/segment/audience/`).

Every answer is HTTP 200 with TikTok's envelope `{"code", "message", "request_id", "data"}`;
a refusal is a non-zero `code`. Codes 40100 (rate limit [unverified]), 40200, 50000-59999 and
"system busy" are retried with backoff; 40104/40105 mean the access token was refused; 40001,
40002 and 40007 (no permission, refused parameters, no such object) end the run. TikTok does not
report per-row results: a batch is applied whole or refused whole.
"""

from __future__ import annotations

import json
import time

import httpx
import pyarrow as pa

from audience_pipelines.contract import (
    AudienceStats, BatchContext, BatchResult, CredentialsError, Destination, DestinationError, MatchListSession,
    Session, SessionContext, TerminalError, sent_columns,
)
from audience_pipelines.destinations.http import HttpClient
from audience_pipelines.destinations.oauth import Redactor
from audience_pipelines.destinations.tiktok_ads import TikTokAds, TikTokAdsSettings
from audience_pipelines.identifiers.tiktok import TIKTOK_SCHEMAS, to_tiktok

LIST = "dmp/custom_audience/list/"
GET = "dmp/custom_audience/get/"
CREATE = "segment/audience/"
MAPPING = "segment/mapping/"
PAGE_SIZE = 100

THROTTLE_CODES = frozenset({40100, 40200})
CREDENTIAL_CODES = frozenset({40104, 40105})
# No retry or later batch escapes these: no permission on the advertiser, parameters refused,
# an object (the audience) that does not exist.
TERMINAL_CODES = frozenset({40001, 40002, 40007})


def _envelope(response: httpx.Response) -> dict | None:
    """TikTok's `{"code", "message", "request_id", "data"}`, or None when the body is not one."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) and isinstance(body.get("code"), int) else None


def _transient(code: int, message: str) -> bool:
    return code in THROTTLE_CODES or 50000 <= code < 60000 or "system busy" in message.lower()


def throttle_delay(response: httpx.Response) -> float | None:
    """-1 (back off with jitter) when TikTok's envelope says throttled or busy, else None.

    TikTok throttles with HTTP 200 and a code; HTTP 429 and 5xx are retried by HttpClient itself.
    """
    body = _envelope(response)
    if body is None or body["code"] == 0:
        return None
    return -1.0 if _transient(body["code"], str(body.get("message") or "")) else None


class TikTokAdsDestination(Destination[TikTokAdsSettings]):
    destination_type = TikTokAds

    def __init__(self, settings: TikTokAdsSettings, sleep=time.sleep, clock=time.monotonic):
        super().__init__(settings)
        token = settings.access_token.value()
        self._redact = Redactor(token)
        self.http = HttpClient(settings.base_url.rstrip("/") + "/", timeout_s=settings.timeout_s,
                               headers={"Access-Token": token}, throttle_delay=throttle_delay,
                               describe_error=self._describe, name="tiktok_ads", sleep=sleep, clock=clock)

    # -- calls -------------------------------------------------------------------------------
    def _describe(self, response: httpx.Response) -> str | None:
        """TikTok's code and message: the HTTP status (200 for most errors) does not say why."""
        body = _envelope(response)
        if body is None:
            return None
        text = f"TikTok code {body['code']}: {body.get('message') or ''}".rstrip(": ")
        if body.get("request_id"):
            text += f" (request_id {body['request_id']})"
        return self._redact(text)

    def _call(self, method: str, path: str, *, params: dict | None = None, json_body: dict | None = None) -> dict:
        """The `data` of a successful answer; otherwise an error by kind."""
        response = self.http.request(method, path, params=params, json=json_body)
        body = _envelope(response)
        where = f"{method} {path}"
        status = response.status_code
        if body is None or (body["code"] == 0 and status >= 400):  # no envelope (a gateway's page): the status says
            shown = self._describe(response) or self._redact(response.text[:200]) or "no TikTok envelope"
            message = f"HTTP {status} on {where}: {shown}"
            if status == 401:
                raise CredentialsError(f"tiktok_ads: the setting 'access_token' was refused: {message}", status=401)
            raise DestinationError(f"tiktok_ads: {message}", status=status)
        code = body["code"]
        if code == 0:
            data = body.get("data")
            return data if isinstance(data, dict) else {}
        message = f"{where}: {self._describe(response)}"
        if code in CREDENTIAL_CODES:
            raise CredentialsError(f"tiktok_ads: the setting 'access_token' was refused: {message}")
        if code == 40001:
            raise TerminalError(f"tiktok_ads: the access token may not act on advertiser {self.settings.advertiser_id} "
                                f"(check the setting 'advertiser_id' and the token's permissions): {message}")
        if code in TERMINAL_CODES:
            raise TerminalError(f"tiktok_ads: {message}")
        raise DestinationError(f"tiktok_ads: TikTok refused the request: {message}")

    # -- identifiers -------------------------------------------------------------------------
    def identifier_column(self, kind: str) -> str:
        return TIKTOK_SCHEMAS.get(kind) or self.settings.device_id_type

    def transform_identifier(self, kind: str, canonical: pa.Array) -> pa.Array:
        return to_tiktok(kind, canonical)

    # -- audiences ---------------------------------------------------------------------------
    def _advertiser(self) -> dict:
        return {"advertiser_id": self.settings.advertiser_id}

    def check_access(self) -> None:
        # A one-row listing: a refused token or advertiser fails before anything is created or sent.
        self._call("GET", LIST, params={**self._advertiser(), "page": 1, "page_size": 1})

    def find_audience(self, name: str) -> str | None:
        page, total = 1, 1
        while page <= total:
            data = self._call("GET", LIST, params={**self._advertiser(), "page": page, "page_size": PAGE_SIZE})
            for audience in data.get("list") or []:
                if audience.get("name") == name:
                    return str(audience["audience_id"])
            total = int((data.get("page_info") or {}).get("total_page") or 1)
            page += 1
        return None

    def create_audience(self, name: str) -> str:
        with self.http.once():  # a lost answer is looked up by name next run, never sent twice
            data = self._call("POST", CREATE, json_body={
                "custom_audience_name": name, **self._advertiser(), "id_type": self.settings.id_type,
                "action": "create"})
        if not data.get("audience_id"):
            raise DestinationError(f"tiktok_ads: creating audience '{name}' answered without an audience_id")
        return str(data["audience_id"])

    def _details(self, audience_id: str) -> dict:
        """The audience's `audience_details`; TerminalError when the advertiser has no such audience."""
        missing = f"tiktok_ads: audience {audience_id} does not exist in advertiser {self.settings.advertiser_id}"
        try:
            data = self._call("GET", GET, params={**self._advertiser(),
                                                  "custom_audience_ids": json.dumps([str(audience_id)])})
        except CredentialsError:
            raise
        except TerminalError as exc:
            raise TerminalError(f"{missing} (or is not accessible): {exc}") from exc
        for item in data.get("list") or []:
            details = item.get("audience_details") or {}
            if str(details.get("audience_id")) == str(audience_id):
                return details
        raise TerminalError(missing)

    def check_audience(self, audience_id: str) -> None:
        self._details(audience_id)

    def audience_stats(self, audience_id: str) -> AudienceStats | None:
        # [unverified] cover_num is the audience's matched size; TikTok gives no match rate.
        cover = self._details(audience_id).get("cover_num")
        return AudienceStats(size=int(cover)) if cover is not None else None

    # -- members -----------------------------------------------------------------------------
    def open_session(self, ctx: SessionContext) -> Session:
        return _MappingSession(self, ctx.audience_id)

    def mapping(self, action: str, audience_id: str, rows: pa.Table) -> None:
        """Add or delete the rows' ids; returns only when TikTok applied the whole batch."""
        schema = [c for c in sent_columns(rows) if rows[c].null_count < rows.num_rows]
        if not schema:
            return
        audiences = [str(audience_id)]
        batch = [[{"id": v, "audience_ids": audiences} if v else {} for v in values]
                 for values in zip(*(rows[c].to_pylist() for c in schema)) if any(values)]
        self._call("POST", MAPPING, json_body={"advertiser_ids": [self.settings.advertiser_id], "action": action,
                                               "id_schema": schema, "batch_data": batch})

    def close(self) -> None:
        self.http.close()


class _MappingSession(MatchListSession):
    """One mapping request per batch; TikTok applies it whole or refuses it whole."""

    def add(self, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        self.destination.mapping("add", self.audience_id, rows)
        return BatchResult()

    def remove(self, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        self.destination.mapping("delete", self.audience_id, rows)
        return BatchResult()
