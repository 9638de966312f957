"""OAuth2 refresh-token exchange, shared by destinations whose access tokens expire.

The refresh token is exchanged for an access token at first use, again shortly before it
expires, and again after the API refused it (`invalidate()`). A refused exchange names the
setting to fix; the secrets themselves never appear in what is raised.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx

from audience_pipelines.contract import CredentialsError, TerminalError
from audience_pipelines.destinations.http import HttpClient

# Renew an access token this long before the platform says it expires.
TOKEN_MARGIN_S = 60.0


class Redactor:
    """Takes every secret a client holds out of text it is about to show."""

    def __init__(self, *secrets: Redactor | Callable[[], str | None] | str | None):
        # Another Redactor's secrets are taken in (a client redacts what its token holder holds).
        self._secrets = [s for secret in secrets
                         for s in (secret._secrets if isinstance(secret, Redactor) else [secret])]

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            value = secret() if callable(secret) else secret
            if value:
                text = text.replace(value, "[redacted]")
        return text


class RefreshingToken:
    """An access token from `token_url`, exchanged for `refresh_token` when needed.

    `client_id`/`client_secret` go in the form, or as HTTP Basic auth with `basic_auth=True`
    (Reddit). `settings` names the settings to blame in errors: keys "refresh_token" and "client".
    """

    def __init__(self, *, name: str, token_url: str, refresh_token: str, client_id: str,
                 client_secret: str | None, extra_form: dict[str, str] | None = None, basic_auth: bool = False,
                 settings: dict[str, str] | None = None, endpoint: str = "the token endpoint",
                 headers: dict[str, str] | None = None, timeout_s: float = 30.0,
                 sleep=time.sleep, clock=time.monotonic):
        self.name, self.token_url = name, token_url
        self._refresh_token, self._client_id, self._client_secret = refresh_token, client_id, client_secret
        self._extra_form, self._basic_auth = extra_form or {}, basic_auth
        self._settings = {"refresh_token": "refresh_token", "client": "client_id/client_secret", **(settings or {})}
        self.endpoint = endpoint
        self._access_token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self.clock = clock
        self.redact = Redactor(refresh_token, client_secret, lambda: self._access_token)
        # The token endpoint is a full URL of its own; HttpClient never shows it in messages.
        self.http = HttpClient("", timeout_s=timeout_s, headers=headers, describe_error=self._describe,
                               name=f"{name} token endpoint", sleep=sleep, clock=clock)

    @property
    def current(self) -> str | None:
        """The access token last obtained (for redaction), without exchanging."""
        return self._access_token

    def get(self) -> str:
        with self._lock:
            if self._access_token is None or self.clock() >= self._expires_at:
                self._exchange()
            return self._access_token

    def invalidate(self) -> None:
        """The API refused the access token: the next `get()` exchanges again."""
        with self._lock:
            self._access_token = None

    def _describe(self, response: httpx.Response) -> str | None:
        try:
            body = response.json()
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        if "error" in body:
            return self.redact(f"{body.get('error')}: {body.get('error_description', '')}")
        if "message" in body:  # some platforms (Pinterest) answer {"code", "message"}
            return self.redact(f"code {body.get('code')}: {body.get('message')}")
        return None

    def _exchange(self) -> None:
        form = {"grant_type": "refresh_token", "refresh_token": self._refresh_token, **self._extra_form}
        auth = None
        if self._basic_auth:
            auth = (self._client_id, self._client_secret or "")
        else:
            form["client_id"] = self._client_id
            if self._client_secret:
                form["client_secret"] = self._client_secret
        response = self.http.request("POST", self.token_url, data=form, auth=auth)
        if response.status_code >= 400:
            described = self._describe(response) or f"HTTP {response.status_code}"
            try:
                error = response.json().get("error")
            except (ValueError, AttributeError):
                error = None
            if error == "invalid_grant":
                setting = self._settings["refresh_token"]
            elif error == "invalid_client_id":  # Salesforce's own code for an unknown consumer key
                setting = "client_id"
            elif error in ("invalid_client", "unauthorized_client") or response.status_code == 401:
                setting = self._settings["client"]
            else:
                raise TerminalError(f"{self.name}: {self.endpoint} refused the exchange: {described}",
                                    status=response.status_code)
            raise CredentialsError(f"{self.name}: the setting '{setting}' was refused by {self.endpoint} "
                                   f"({described})", status=response.status_code)
        try:
            body = response.json()
            token = str(body["access_token"])
        except (ValueError, KeyError, TypeError):
            raise TerminalError(f"{self.name}: {self.endpoint} answered without an access_token "
                                f"(HTTP {response.status_code})", status=response.status_code) from None
        self._access_token = token
        lifetime = float(body.get("expires_in") or 3600)
        self._expires_at = self.clock() + max(0.0, lifetime - TOKEN_MARGIN_S)

    def close(self) -> None:
        self.http.close()
