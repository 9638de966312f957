"""OAuth 1.0a request signing, HMAC-SHA1 (RFC 5849 section 3), as the X Ads API requires.

The signature covers the method, the base URL (scheme and host lowercased, default port left out,
no query), the `oauth_*` parameters, the query parameters and, for form bodies only, the body's
parameters. A JSON body is not part of the signature. `OAuth1` is an `httpx.Auth`, so every
attempt of a retried request is signed afresh with a new nonce and timestamp.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from urllib.parse import parse_qsl, quote

import httpx

FORM = "application/x-www-form-urlencoded"


def percent_encode(value: str) -> str:
    """RFC 3986 unreserved characters kept, everything else %XX of its UTF-8 bytes (RFC 5849 3.6)."""
    return quote(value, safe="-._~")


def base_url(url: httpx.URL) -> str:
    """RFC 5849 3.4.1.2: scheme://host[:port]/path, no query, the path as sent."""
    scheme, host = url.scheme.lower(), url.host.lower()
    port = f":{url.port}" if url.port is not None and (scheme, url.port) not in (("http", 80), ("https", 443)) else ""
    path = url.raw_path.split(b"?", 1)[0].decode("ascii") or "/"
    return f"{scheme}://{host}{port}{path}"


def base_string(method: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """METHOD&enc(url)&enc(sorted, encoded k=v pairs joined by &) (RFC 5849 3.4.1)."""
    pairs = sorted((percent_encode(k), percent_encode(v)) for k, v in params)
    normalized = "&".join(f"{k}={v}" for k, v in pairs)
    return "&".join((method.upper(), percent_encode(url), percent_encode(normalized)))


def signature(base: str, consumer_secret: str, token_secret: str) -> str:
    key = f"{percent_encode(consumer_secret)}&{percent_encode(token_secret)}"
    digest = hmac.new(key.encode(), base.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class OAuth1(httpx.Auth):
    """Signs each request with the consumer key and the user's access token."""

    requires_request_body = True  # a form body is part of the signature

    def __init__(self, consumer_key: str, consumer_secret: str, token: str, token_secret: str, *,
                 nonce: Callable[[], str] = lambda: secrets.token_hex(16),
                 clock: Callable[[], float] = time.time):
        self.consumer_key, self.token = consumer_key, token
        self._consumer_secret, self._token_secret = consumer_secret, token_secret
        self._nonce, self._clock = nonce, clock

    def header(self, method: str, url: httpx.URL, body_params: Iterable[tuple[str, str]] = ()) -> str:
        oauth = {
            "oauth_consumer_key": self.consumer_key,
            "oauth_nonce": self._nonce(),
            "oauth_signature_method": "HMAC-SHA1",
            "oauth_timestamp": str(int(self._clock())),
            "oauth_token": self.token,
            "oauth_version": "1.0",
        }
        params = [*oauth.items(), *url.params.multi_items(), *body_params]
        oauth["oauth_signature"] = signature(base_string(method, base_url(url), params),
                                             self._consumer_secret, self._token_secret)
        return "OAuth " + ", ".join(f'{percent_encode(k)}="{percent_encode(v)}"' for k, v in sorted(oauth.items()))

    def auth_flow(self, request: httpx.Request):
        body = ()
        if request.headers.get("content-type", "").split(";")[0].strip().lower() == FORM:
            body = parse_qsl(request.content.decode("utf-8"), keep_blank_values=True)
        request.headers["Authorization"] = self.header(request.method, request.url, body)
        yield request
