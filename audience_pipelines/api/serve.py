"""`audience-pipelines api`: the API under uvicorn, refusing an address beyond this machine without tokens."""

from __future__ import annotations

import ipaddress
import logging
import sys

from audience_pipelines.api.auth import TOKENS_ENV, TOKENS_FILE_ENV, Tokens
from audience_pipelines.engine import ConfigError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve beyond this machine


def serve(host: str, port: int, dagster_url: str | None = None, tokens_file: str | None = None) -> int:
    import uvicorn

    from audience_pipelines.api.app import create_app
    from audience_pipelines.webserver import Webserver

    tokens = Tokens.from_environment(file=tokens_file)
    if not tokens.configured and not is_loopback(host):
        raise ConfigError(f"refusing to listen on {host} without tokens: anyone who reaches it could change syncs. "
                          f"Set {TOKENS_ENV} (comma-separated) or {TOKENS_FILE_ENV} / --tokens-file (hashes from "
                          "`audience-pipelines api-token`), or listen on 127.0.0.1")
    web = Webserver(dagster_url)
    app = create_app(webserver=web, tokens=tokens)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("audience_pipelines").setLevel(logging.INFO)
    auth = "bearer tokens required" if tokens.configured else "no tokens configured: open to this machine only"
    print(f"audience_pipelines API on http://{host}:{port}/api/v1 ({auth}); Dagster webserver {web.url}; "
          f"OpenAPI at /api/v1/openapi.json", file=sys.stderr, flush=True)
    # One worker: writes to the definitions are serialized inside the process.
    uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=False, server_header=False)
    return 0
