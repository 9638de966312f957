"""The `reddit_ads` client: Reddit Ads API v3 custom audiences.

Members are added and removed with `PATCH /custom_audiences/{id}/users`, at most 2,500 rows a
request, each row lined up with `column_order` (`EMAIL_SHA256`, `MAID_SHA256`), values hashed by
Reddit's rules (`identifiers.reddit`). Success is HTTP 204 with no body: no per-row result, no
counts, so a 204 accepts the whole batch. A 400 whose `fields` name rows of `user_data` refuses
the whole batch because of those rows: nothing was applied, and the engine finds the rows by
sending parts again (`RowsRefused`); the field names are not trusted as positions [unverified].

Auth is OAuth2: the refresh token is exchanged at Reddit's token endpoint with HTTP Basic
client credentials; an access token Reddit refuses (401) is renewed once. 403 means the token
lacks the adsread/adsedit scope, the account is not the user's, or the User-Agent was blocked.
429 and 5xx are retried by the shared HTTP layer (Retry-After, else `X-Ratelimit-Reset`).

[unverified] in the reference, assumed here: the list answers `{"data":[{id, name, type, ...}],
"pagination":{"next_url"}}`; an audience's size is `size_range_lower` (lower bound of a range);
`X-Ratelimit-Reset` is seconds until the limit resets.
"""

from __future__ import annotations

import re
import time
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import quote, unquote, urlsplit

import httpx
import pyarrow as pa

from audience_pipelines.contract import (
    AudienceStats, BatchContext, BatchResult, CredentialsError, Destination, DestinationError, MatchListSession,
    RowsRefused, Session, SessionContext, TerminalError, sent_columns,
)
from audience_pipelines.destinations.http import HttpClient, retry_after_seconds
from audience_pipelines.destinations.oauth import Redactor, RefreshingToken
from audience_pipelines.destinations.reddit_ads import RedditAds, RedditAdsSettings
from audience_pipelines.identifiers.reddit import REDDIT_COLUMNS, to_reddit

CUSTOMER_LIST = "CUSTOMER_LIST"
PAGE_SIZE = 100
# A 400 field naming a row of user_data ("data.user_data[3][0]"): rows were refused, not the request.
_ROW_FIELD = re.compile(r"user_data\[\d+\]")


def user_agent(settings: RedditAdsSettings) -> str:
    """Reddit's required form: `<platform>:<app id>:<version> (by /u/<username>)`."""
    try:
        ours = version("audience_pipelines")
    except PackageNotFoundError:
        ours = "0"
    return f"audience_pipelines:{settings.client_id}:{ours} (by /u/{settings.reddit_username})"


def _error(response: httpx.Response) -> dict:
    try:
        err = response.json().get("error")
    except (ValueError, AttributeError):
        return {}
    return err if isinstance(err, dict) else {}


def throttle_delay(response: httpx.Response) -> float | None:
    """Seconds to wait on a 429 (Retry-After, else X-Ratelimit-Reset; -1: back off with jitter)."""
    if response.status_code != 429:
        return None
    delay = retry_after_seconds(response)
    if delay is None:
        try:
            delay = max(0.0, float(response.headers.get("X-Ratelimit-Reset", "")))
        except ValueError:
            delay = -1.0
    return delay


class RedditAdsDestination(Destination[RedditAdsSettings]):
    destination_type = RedditAds

    def __init__(self, settings: RedditAdsSettings, sleep=time.sleep, clock=time.monotonic):
        super().__init__(settings)
        self.user_agent = user_agent(settings)
        self.oauth = RefreshingToken(
            name="reddit_ads", token_url=settings.token_url, refresh_token=settings.refresh_token.value(),
            client_id=settings.client_id, client_secret=settings.client_secret.value(), basic_auth=True,
            endpoint="Reddit's token endpoint", timeout_s=settings.timeout_s, sleep=sleep, clock=clock,
            headers={"User-Agent": self.user_agent})  # Reddit's token endpoint refuses generic User-Agents too
        self._redact = Redactor(self.oauth.redact)
        self.base = settings.base_url.rstrip("/") + "/"
        self.http = HttpClient(self.base, timeout_s=settings.timeout_s, headers={"User-Agent": self.user_agent},
                               throttle_delay=throttle_delay, describe_error=self._describe, name="reddit_ads",
                               sleep=sleep, clock=clock)

    # -- calls -------------------------------------------------------------------------------
    def _describe(self, response: httpx.Response) -> str | None:
        """Reddit's error code, message and field errors (or the start of a non-JSON body)."""
        err = _error(response)
        if not err:
            text = response.text.strip()[:200]
            return self._redact(f"Reddit said: {text}") if text else None
        text = f"Reddit error {err.get('code', response.status_code)}"
        if err.get("message"):
            text += f": {err['message']}"
        fields = [f for f in err.get("fields") or [] if isinstance(f, dict)]
        if fields:
            text += " (" + "; ".join(f"{f.get('field')}: {f.get('message')}" for f in fields[:3])
            text += f" and {len(fields) - 3} more)" if len(fields) > 3 else ")"
        return self._redact(text)

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        """One API call; a refused access token is renewed once. Errors by kind."""
        for attempt in (1, 2):
            response = self.http.request(method, path, json=body,
                                         headers={"Authorization": f"Bearer {self.oauth.get()}"})
            if response.status_code == 401 and attempt == 1:
                self.oauth.invalidate()
                continue
            if response.status_code >= 400:
                raise self._failure(response, method, path)
            if response.status_code == 204 or not response.content:
                return {}  # the members PATCH answers 204 with no body
            try:
                answer = response.json()
            except ValueError:
                raise DestinationError(f"reddit_ads: HTTP {response.status_code} on {method} {_shown(path)} "
                                       "answered with a body that is not JSON", status=response.status_code) from None
            return answer if isinstance(answer, dict) else {}
        raise AssertionError("unreachable")

    def _failure(self, response: httpx.Response, method: str, path: str) -> DestinationError:
        status = response.status_code
        message = f"HTTP {status} on {method} {_shown(path)}: {self._describe(response) or 'no detail'}"
        if status == 401:
            return CredentialsError(f"reddit_ads: the access token from the setting 'refresh_token' was refused "
                                    f"twice ({message})", status=status)
        if status == 403:
            return TerminalError(
                f"reddit_ads: {message}. Reddit refuses a token without the adsread and adsedit scopes (grant both "
                f"to the setting 'refresh_token'), an ad account ('ad_account_id' {self.settings.ad_account_id}) "
                f"the user may not manage, and a blocked User-Agent ({self.user_agent!r})", status=status)
        if status == 404:
            if path.startswith("custom_audiences/"):
                audience = unquote(path.split("/")[1])
                return TerminalError(f"reddit_ads: custom audience {audience} does not exist or is not visible to "
                                     f"these credentials ({message})", status=status)
            return TerminalError(f"reddit_ads: ad account {self.settings.ad_account_id} not found; check the "
                                 f"setting 'ad_account_id' ({message})", status=status)
        fields = _error(response).get("fields") or []
        if status == 400 and path.endswith("/users") and any(
                _ROW_FIELD.search(str(f.get("field", ""))) for f in fields if isinstance(f, dict)):
            return RowsRefused(f"reddit_ads: {message}", status=status)
        return DestinationError(f"reddit_ads: {message}", status=status)

    # -- identifiers -------------------------------------------------------------------------
    def identifier_column(self, kind: str) -> str:
        return REDDIT_COLUMNS[kind]

    def transform_identifier(self, kind: str, canonical: pa.Array) -> pa.Array:
        return to_reddit(kind, canonical, self.settings.device_id_case)

    # -- audiences ---------------------------------------------------------------------------
    def _account_path(self) -> str:
        return f"ad_accounts/{quote(self.settings.ad_account_id, safe='')}/custom_audiences"

    @staticmethod
    def _audience_path(audience_id: str) -> str:
        return f"custom_audiences/{quote(str(audience_id).strip(), safe='')}"

    def check_access(self) -> None:
        # The exchange and a one-item list: bad credentials, scope or account fail before anything is sent.
        self._call("GET", f"{self._account_path()}?page_size=1")

    def _usable(self, audience: dict, label: str) -> None:
        kind = audience.get("type")
        if kind and kind != CUSTOMER_LIST:
            raise TerminalError(f"reddit_ads: custom audience {label} is a {kind} audience, not a {CUSTOMER_LIST}; "
                                "members can be added only to customer lists")

    def check_audience(self, audience_id: str) -> None:
        data = self._call("GET", self._audience_path(audience_id)).get("data") or {}
        self._usable(data, str(audience_id))

    def _pages(self):
        """Every audience of the ad account, following pagination.next_url."""
        path, seen = f"{self._account_path()}?page_size={PAGE_SIZE}", set()
        while path and path not in seen:  # a next_url pointing back ends the walk
            seen.add(path)
            page = self._call("GET", path)
            yield from (a for a in page.get("data") or [] if isinstance(a, dict))
            path = self._relative((page.get("pagination") or {}).get("next_url"))

    def _relative(self, next_url: str | None) -> str | None:
        """next_url as a path under base_url: the bearer token never goes to another host."""
        if not next_url:
            return None
        base, nxt = urlsplit(self.base), urlsplit(next_url)
        other_host = nxt.netloc and (nxt.scheme, nxt.netloc) != (base.scheme, base.netloc)
        if other_host or not nxt.path.startswith(base.path):
            raise DestinationError("reddit_ads: the audience list pointed its next page outside base_url; "
                                   "not followed (the access token goes only to base_url)")
        return nxt.path[len(base.path):] + (f"?{nxt.query}" if nxt.query else "")

    def find_audience(self, name: str) -> str | None:
        for audience in self._pages():
            if audience.get("name") == name:
                self._usable(audience, f"'{name}' ({audience.get('id')})")
                return str(audience["id"])
        return None

    def create_audience(self, name: str) -> str:
        with self.http.once():  # a lost answer is looked up by name next run, never sent twice
            created = self._call("POST", self._account_path(), {"data": {"name": name, "type": CUSTOMER_LIST}})
        audience_id = (created.get("data") or {}).get("id")
        if not audience_id:
            raise DestinationError(f"reddit_ads: creating custom audience '{name}' answered without data.id")
        return str(audience_id)

    def audience_stats(self, audience_id: str) -> AudienceStats | None:
        data = self._call("GET", self._audience_path(audience_id)).get("data") or {}
        lower = data.get("size_range_lower")
        if lower is None:
            return None
        return AudienceStats(size=int(lower))

    # -- members -----------------------------------------------------------------------------
    def open_session(self, ctx: SessionContext) -> Session:
        return _Session(self, ctx.audience_id)

    def patch_users(self, audience_id: str, action: str, rows: pa.Table) -> BatchResult:
        """ADD or REMOVE rows; a 204 is the whole answer, so every row sent is accepted."""
        if rows.num_rows == 0:
            return BatchResult()
        columns = [c for c in sent_columns(rows) if rows[c].null_count < rows.num_rows]
        if not columns:  # nothing to send (withdrawals whose values are all still in use)
            return BatchResult()
        values = zip(*(rows[c].to_pylist() for c in columns))
        user_data = [["" if v is None else v for v in row] for row in values]
        self._call("PATCH", f"{self._audience_path(audience_id)}/users",
                   {"data": {"action_type": action, "column_order": columns, "user_data": user_data}})
        return BatchResult()

    def close(self) -> None:
        self.http.close()
        self.oauth.close()


def _shown(path: str) -> str:
    return path.split("?", 1)[0]


class _Session(MatchListSession):
    """PATCH ADD / REMOVE per batch (204, no per-row answer)."""

    def add(self, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        return self.destination.patch_users(self.audience_id, "ADD", rows)

    def remove(self, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        return self.destination.patch_users(self.audience_id, "REMOVE", rows)
