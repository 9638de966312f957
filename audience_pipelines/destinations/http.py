"""Shared HTTP transport policy: timeouts, retries with backoff and jitter, throttles.

Destinations say how their platform signals a throttle (`throttle_delay`) and
what its error bodies mean (`describe_error`); this module decides when and how
long to wait. A throttle holds back every request to the same host in the process
(batches in flight together, other syncs), not only the one that met it. Secrets travel in headers, never in URLs, so nothing here can leak
them into an error message; a `describe_error` must not return them either.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import orjson

from audience_pipelines.contract import DestinationError

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 60.0

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2^attempt)]."""
        return random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2 ** attempt))


def encode_json(obj) -> bytes:
    """Compact UTF-8 JSON, the bytes httpx's own `json=` would send (orjson, about 20x faster)."""
    try:
        return orjson.dumps(obj)
    except TypeError:  # what orjson leaves out (integers past 64 bits, non-string keys)
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def json_object(response: httpx.Response) -> dict:
    """The answer's JSON object, or {} when it is not one (an HTML error page, an empty 204)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class _Pause:
    """Until when requests to one host wait: a throttle met by one request holds back the others."""

    def __init__(self) -> None:
        self.until = 0.0
        self.by: tuple[int, int] | None = None  # the client and thread that met the throttle, and sleep it out
        self.lock = threading.Lock()

    def extend(self, until: float, by: tuple[int, int]) -> None:
        with self.lock:
            if until > self.until:
                self.until, self.by = until, by

    def holds(self, now: float, me: tuple[int, int]) -> float:
        """How long `me` waits before sending: the rest of a pause someone else met."""
        with self.lock:
            return self.until - now if self.by != me else 0.0


_PAUSES: dict[tuple, _Pause] = {}
_PAUSES_LOCK = threading.Lock()


def _pause_for(url: httpx.URL, clock: Callable[[], float]) -> _Pause:
    key = (url.scheme, url.host, url.port, id(clock))  # times on one clock compare
    with _PAUSES_LOCK:
        return _PAUSES.setdefault(key, _Pause())


class HttpClient:
    """An httpx client plus the retry policy; one per destination instance."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 30.0,
        headers: dict[str, str] | None = None,
        policy: RetryPolicy | None = None,
        throttle_delay: Callable[[httpx.Response], float | None] | None = None,
        describe_error: Callable[[httpx.Response], str | None] | None = None,
        name: str = "destination",
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.name = name
        self.policy = policy or RetryPolicy()
        self._throttle_delay = throttle_delay
        self._describe_error = describe_error
        self._sleep = sleep
        self._clock = clock  # paired with `sleep`, so a test's fake sleep shows in the time given up after
        self._client = httpx.Client(base_url=base_url, timeout=timeout_s, headers=headers or {})
        self._local = threading.local()

    @contextlib.contextmanager
    def once(self) -> Iterator[None]:
        """Requests in this block are not sent again when their answer is lost (a timeout, a reset
        connection, a 5xx): creating an audience twice would leave a duplicate. Throttles, which say
        nothing was done, are still waited out and retried. The run stops; the next one finds by name
        what the lost request may have created."""
        self._local.once = True
        try:
            yield
        finally:
            self._local.once = False

    def request(self, method: str, url: str, **kwargs) -> httpx.Response:
        """Send with retries; returns the final response (2xx or a permanent 4xx).

        Raises DestinationError when retries run out on throttles, 5xx or timeouts.
        """
        if "json" in kwargs:  # encoded once, not again on every retry
            kwargs["content"] = encode_json(kwargs.pop("json"))
            kwargs["headers"] = {"Content-Type": "application/json", **(kwargs.get("headers") or {})}
        last = ""
        started = self._clock()
        pause = _pause_for(self._client.base_url.join(url), self._clock)
        me = (id(self), threading.get_ident())
        for attempt in range(self.policy.max_attempts):
            delay = None
            held = pause.holds(self._clock(), me)
            if held > 0:  # another request met a throttle: wait it out with it
                self._sleep(min(held, self.policy.max_delay_s))
            try:
                response = self._client.request(method, url, **kwargs)
            except httpx.TransportError as exc:  # timeouts, refused and reset connections
                last = f"{type(exc).__name__} on {method} {_shown(url)}"
                if getattr(self._local, "once", False):
                    raise DestinationError(f"{self.name}: no answer to {method} {_shown(url)} ({type(exc).__name__}); "
                                           "not sent again, since the platform may have acted on it") from None
            else:
                if response.status_code >= 500 and getattr(self._local, "once", False):
                    return response  # the caller's error: the platform may have acted on it
                delay = self._throttle_delay(response) if self._throttle_delay else None
                if delay is None and response.status_code in RETRY_STATUSES:
                    delay = retry_after_seconds(response)
                    if delay is None:
                        delay = -1.0
                if delay is None:
                    return response
                last = f"HTTP {response.status_code} on {method} {_shown(url)}"
                # The status alone hides why (Meta throttles with HTTP 400 and a code in the body).
                described = self._describe_error(response) if self._describe_error else None
                if described:
                    last += f": {described}"
            if delay is not None and delay >= 0 and response.status_code < 500:  # a throttle, not an outage
                pause.extend(self._clock() + min(delay, self.policy.max_delay_s), me)
            if attempt + 1 < self.policy.max_attempts:
                wait = delay if delay is not None and delay >= 0 else self.policy.backoff(attempt)
                self._sleep(min(wait, self.policy.max_delay_s))
        # Retries ran out: the platform is down or throttling hard, so later batches would fare no better.
        took = self._clock() - started
        raise DestinationError(f"{self.name}: gave up after {self.policy.max_attempts} attempts over {took:.1f} s; "
                               f"last: {last}", fatal=True)

    def close(self) -> None:
        self._client.close()


def _shown(url: str) -> str:
    """A relative API path is safe to show; a full URL may carry a token, so it is not shown."""
    if "://" in url:
        return "the configured URL"
    return url.split("?", 1)[0] or "/"
