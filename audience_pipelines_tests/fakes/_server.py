"""Tiny shared base for the fake destination servers: real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def parse_flat_qs(text: str) -> dict[str, str]:
    # Graph/webhook params are single-valued; keep the first.
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # keys lower-cased
    body: bytes
    notes: dict = field(default_factory=dict)  # handler -> request-log scratch space

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def form(self) -> dict[str, str]:
        return parse_flat_qs(self.body.decode("utf-8"))


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


DROP = Response(0)  # the connection is reset instead of answered


def json_response(status: int, obj, headers: dict[str, str] | None = None) -> Response:
    hdrs = {"Content-Type": "application/json; charset=UTF-8", **(headers or {})}
    return Response(status, json.dumps(obj).encode("utf-8"), hdrs)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive like real APIs; we always send Content-Length
    timeout = 60  # idle keep-alive connections must not pin threads forever

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and
        # the client's delayed ACK hold every response back about 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True  # unread chunks would desync keep-alive
            self.send_error(411, "chunked bodies unsupported; send Content-Length")
            return
        # Read the whole body first so keep-alive stays in sync.
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        resp = self.server.fake._dispatch(
            Request(self.command, url.path, parse_flat_qs(url.query), headers, body))
        if resp is DROP:  # close with a TCP reset, no answer
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        try:
            self.send_response(resp.status)
            for k, v in resp.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(resp.body)))
            self.end_headers()
            self.wfile.write(resp.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # client gave up (e.g. a timeout test)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format, *args) -> None:  # noqa: A002
        pass  # keep pytest output clean


class FakeServer:
    """Start/stop on a free port, request log, count-limited injection queue.

    Subclasses implement `_handle(req) -> Response` and `_log_entry(req, resp)`, and may
    override `_scope(req)` to say which injection scope a request belongs to.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._injections: list[dict] = []
        self._requests: list = []
        self.keep_log = True  # off for benchmarks: millions of logged requests outgrow the machine
        self.errors: list[str] = []  # tracebacks of bugs inside the fake itself

    def start(self):
        if self._httpd is None:
            self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
            self._httpd.fake = self
            self._thread = threading.Thread(  # short poll interval: fast stop() in teardown
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def requests(self) -> list:
        with self._lock:
            return list(self._requests)

    # The scopes a fault may be aimed at (what `_scope` names a request), checked when one is injected.
    injection_scopes: tuple[str, ...] | None = None

    def _push(self, kind: str, times: int, scope: str = "all", **params) -> None:
        if times < 1:
            raise ValueError("times must be >= 1")
        if self.injection_scopes is not None and scope not in self.injection_scopes:
            raise ValueError(f"scope must be one of {self.injection_scopes}")
        with self._lock:
            self._injections.append({"kind": kind, "left": times, "scope": scope, **params})

    def _pop(self, kind: str, scope: str) -> dict | None:
        """Consume one use of the oldest matching injection (FIFO per kind)."""
        with self._lock:
            for inj in self._injections:
                if inj["kind"] == kind and inj["scope"] in ("all", scope):
                    inj["left"] -= 1
                    if inj["left"] == 0:
                        self._injections.remove(inj)
                    return inj
        return None

    def inject_reset(self, times=1, scope="all") -> None:
        """Reset the connection of the next `times` requests before handling them (nothing applied)."""
        self._push("reset", times, scope)

    def inject_lost_answer(self, times=1, scope="all") -> None:
        """Handle the next `times` requests, then reset the connection instead of answering."""
        self._push("lost_answer", times, scope)

    def inject_lost_answer_on(self, method: str, path_pattern: str, times=1) -> None:
        """Handle the next `times` requests whose method is `method` and whose path matches the regex
        `path_pattern`, then reset the connection instead of answering (a create that happened unseen)."""
        self._push("lost_answer_on", times, method=method, pattern=re.compile(path_pattern))

    def _pop_matching(self, req: Request) -> dict | None:
        with self._lock:
            for inj in self._injections:
                if inj["kind"] == "lost_answer_on" and inj["method"] == req.method and inj["pattern"].search(req.path):
                    inj["left"] -= 1
                    if inj["left"] == 0:
                        self._injections.remove(inj)
                    return inj
        return None

    def clear_injections(self) -> None:
        with self._lock:
            self._injections.clear()

    def _scope(self, req: Request) -> str:
        return "all"

    def _dispatch(self, req: Request) -> Response:
        if delay := self._pop("delay", self._scope(req)):
            time.sleep(delay["seconds"])  # outside the lock: other requests proceed
        if self._pop("reset", self._scope(req)):
            resp = DROP
        else:
            try:
                resp = self._handle(req)
            except Exception:  # a bug in the fake: surface it instead of hanging the client
                with self._lock:
                    self.errors.append(traceback.format_exc())
                resp = Response(500, self.errors[-1].encode(), {"Content-Type": "text/plain"})
            if self._pop("lost_answer", self._scope(req)) or self._pop_matching(req):
                resp = DROP
        if self.keep_log:
            with self._lock:
                self._requests.append(self._log_entry(req, resp))
        return resp
