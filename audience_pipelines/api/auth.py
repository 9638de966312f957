"""Bearer tokens: given in $AUDIENCE_PIPELINES_API_TOKENS (comma-separated), or as SHA-256 hashes in a file.

Only hashes are kept in memory and compared, in constant time; a token never reaches a log.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from audience_pipelines.engine import ConfigError

TOKENS_ENV = "AUDIENCE_PIPELINES_API_TOKENS"
TOKENS_FILE_ENV = "AUDIENCE_PIPELINES_API_TOKENS_FILE"
_PREFIX = "sha256:"


def hash_token(token: str) -> str:
    """The line a tokens file holds for `token`."""
    return _PREFIX + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


class Tokens:
    def __init__(self, hashes: set[str]):
        self._hashes = sorted(hashes)

    @property
    def configured(self) -> bool:
        return bool(self._hashes)

    def accepts(self, token: str) -> bool:
        digest = hash_token(token)
        return any([hmac.compare_digest(digest, h) for h in self._hashes])  # a list: every hash is compared

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ, file: str | None = None) -> "Tokens":
        hashes = {hash_token(t.strip()) for t in environ.get(TOKENS_ENV, "").split(",") if t.strip()}
        path = file or environ.get(TOKENS_FILE_ENV)
        if path:
            hashes |= read_tokens_file(Path(path))
        return cls(hashes)


def read_tokens_file(path: Path) -> set[str]:
    """`sha256:<hex>` lines; blank lines and `#` comments are skipped. A plain token is refused."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"tokens file {path}: {exc.strerror}") from None
    hashes = set()
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        hexdigest = line.removeprefix(_PREFIX)
        if not line.startswith(_PREFIX) or len(hexdigest) != 64 or any(c not in "0123456789abcdef" for c in hexdigest):
            raise ConfigError(f"tokens file {path}, line {number}: not a token hash (sha256:<64 hex digits>); "
                              "make one with `audience-pipelines api-token`")
        hashes.add(line)
    return hashes
