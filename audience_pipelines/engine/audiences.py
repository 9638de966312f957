"""Opening a sync's destination audience, and the registry of audiences this project created.

A name resolves to the audience this project created before (the registry, kept per
destination type and account, not per sync), else to one the platform lists by that name, else
to a new one. The whole lookup runs under an exclusive lock on the account's registry file, so
two runs racing on one name create it once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa

from audience_pipelines.contract import ConfigError, Destination, Target, TerminalError

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass
class RegisteredAudience:
    name: str
    id: str
    created: bool  # created by this project (else found on the platform by name)
    at: str
    by_sync: str
    by_run: str


def _account_dir(account: str) -> str:
    safe = _SAFE.sub("_", account)[:60]
    # Distinct accounts must never share a file, even when their safe forms agree.
    return f"{safe}-{hashlib.sha256(account.encode()).hexdigest()[:10]}"


class AudienceRegistry:
    """`<root>/<type>/<account>/audiences.json`, one per destination account."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, type_name: str, account: str) -> Path:
        return self.root / _SAFE.sub("_", type_name) / _account_dir(account) / "audiences.json"

    def entries(self, type_name: str, account: str | None = None) -> list[RegisteredAudience]:
        """What is registered for a type (every account when `account` is None)."""
        paths = [self.path(type_name, account)] if account else sorted((self.root / type_name).glob("*/audiences.json"))
        out = []
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                out += [RegisteredAudience(**e) for e in json.loads(p.read_text())["audiences"]]
        return out

    def accounts(self, type_name: str) -> list[str]:
        out = []
        for p in sorted((self.root / type_name).glob("*/audiences.json")):
            with contextlib.suppress(FileNotFoundError, KeyError):
                out.append(json.loads(p.read_text())["account"])
        return out

    @contextlib.contextmanager
    def locked(self, type_name: str, account: str) -> Iterator[_Book]:
        path = self.path(type_name, account)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.parent / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits: the other run is only finding or creating
            book = _Book(path, account)
            yield book
            book.save()
        finally:
            os.close(fd)


class _Book:
    def __init__(self, path: Path, account: str):
        self.path, self.account = path, account
        try:
            raw = json.loads(path.read_text())["audiences"]
        except FileNotFoundError:
            raw = []
        self.entries = [RegisteredAudience(**e) for e in raw]
        self.dirty = False

    def get(self, name: str) -> RegisteredAudience | None:
        return next((e for e in reversed(self.entries) if e.name == name), None)

    def record(self, entry: RegisteredAudience) -> None:
        self.entries = [e for e in self.entries if e.name != entry.name] + [entry]
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        tmp = self.path.with_name(".audiences.json.tmp")
        body = {"account": self.account, "audiences": [asdict(e) for e in self.entries]}
        with open(tmp, "w") as f:
            json.dump(body, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def open_audience(destination: Destination, target: Target, registry: AudienceRegistry, sync: str,
                  run_id: str, notes: list[str], fields: dict[str, pa.DataType] | None = None) -> str:
    """The id of the sync's destination audience: found, registered or created, never twice.

    `fields` (name -> column type), the mapped fields, are checked against the platform first, so a
    misconfigured sync creates nothing."""
    destination.check_access()
    if fields:
        destination.check_fields(fields)
    if target.id:
        destination.check_audience(target.id)
        return target.id
    if not target.name:
        raise ConfigError(f"sync '{sync}': the target has neither an id nor a name")
    caps = destination.capabilities
    with registry.locked(destination.type_name, destination.account()) as book:
        known = book.get(target.name)
        if known is not None:
            try:
                destination.check_audience(known.id)
                return known.id
            except TerminalError:
                notes.append(f"audience '{target.name}' ({known.id}), registered by an earlier run, is gone "
                             "from the platform; it was looked up again by name")
        found = destination.find_audience(target.name) if caps.can_list_audiences else None
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        if found is not None:
            if known is None or known.id != found:
                book.record(RegisteredAudience(target.name, str(found), False, now, sync, run_id))
            return str(found)
        if not caps.can_create_audiences:
            raise ConfigError(f"sync '{sync}': {destination.type_name} has no audience named '{target.name}' and "
                              "cannot create one; create it on the platform or give the target's id")
        created = str(destination.create_audience(target.name))
        # Recorded before anything is sent to it: a rerun finds it here, never creates a second.
        book.record(RegisteredAudience(target.name, created, True, now, sync, run_id))
        book.save()
        return created
