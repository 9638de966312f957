"""The fault matrix: every fault x every sync mode, ending with the destination's state compared exactly.

A scenario seeds the destination with a mirror run of M1, runs M2 in the mode
under test with one fault armed, then runs M2 again with nothing armed. The
destination must then hold exactly what the mode promises, the snapshot must
agree, and no journalled row may be left pending. Each destination supplies
its own faults in the platform's own form (a `Case`); the engine-level faults
(kill -9 mid-dispatch, disk full at commit, warehouse unreachable) are shared.

`python -m audience_pipelines_tests.faults <json>` is the child process the
kill -9 fault runs a sync in.
"""

from __future__ import annotations

import contextlib
import errno
from abc import ABC, abstractmethod
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from audience_pipelines.contract import Destination, EnvSecret, Target
from audience_pipelines.destinations import destination_type
from audience_pipelines.engine import RunOptions, SnapshotStore, SyncSpec, run_sync
from audience_pipelines.engine import partitions as partitions_module
from audience_pipelines.engine.errors import AudienceError
from audience_pipelines.engine.warehouse import query_audience

MODES: dict[str, dict[str, str]] = {
    "mirror": {"mode": "mirror"},
    "additive": {"mode": "additive"},
    "subtractive": {"mode": "subtractive"},
    "removal do_nothing": {"mode": "mirror", "removal": "do_nothing"},
}
SYNC = "matrix"
BATCH = 2  # small batches, so a run is killed between batches

# key -> (email, plan). M2: three leave, one changes email, one changes plan, three join.
M1 = {f"k{i}": (f"user{i}@example.com", "silver") for i in range(10)}
M2 = {k: v for k, v in M1.items() if k not in ("k0", "k1", "k2")}
M2 |= {"k3": ("moved3@example.com", "silver"), "k4": ("user4@example.com", "gold")}
M2 |= {f"k{i}": (f"user{i}@example.com", "bronze") for i in (20, 21, 22)}


def promised(mode: str) -> dict[str, tuple[str, str]]:
    """What the destination holds after M1 (mirror) then M2 in `mode`."""
    opts = MODES[mode]
    if opts["mode"] == "subtractive":
        return {k: v for k, v in M1.items() if k in M2}
    if opts["mode"] == "additive" or opts.get("removal") == "do_nothing":
        return {**M1, **M2}
    return dict(M2)


class Case(ABC):
    """One destination in the matrix: its client, its state, its faults in its own form."""

    name: str
    identifiers: dict[str, str] = {"email": "email"}
    fields: dict[str, str] = {"plan": "plan"}
    # fault name -> arm(case) returning a destination to use instead of the normal one, or None
    faults: dict[str, Callable[[Case], Destination | None]] = {}
    # The faulted run is a full resend (a replace session where the destination has them).
    full_resync: bool = False

    # The platform keeps audiences by id and finds them by name (else a name is the audience's id).
    names_audiences: bool = False
    # (method, path regex) of the request that creates an audience, for the lost-answer test.
    create_request: tuple[str, str] | None = None

    @classmethod
    def open(cls, tmp_path):
        """A context manager yielding a case on a fresh fake (its audiences and members start empty).

        Cases under `cases/` implement it; one that needs a fixture (a real database) has its own test.
        """
        raise NotImplementedError(f"{cls.__name__} is opened by its own fixture")

    @abstractmethod
    def destination(self) -> Destination:
        """A fresh client, as a run builds one."""

    def audience_names(self) -> list[str]:
        """Names of the audiences on the platform, in creation order (where `names_audiences`)."""
        raise NotImplementedError

    @abstractmethod
    def spec(self) -> tuple[str, dict]:
        """(type, settings) to build the same destination in another process."""

    @abstractmethod
    def state(self):
        """The destination's members, comparable with `expected`."""

    @abstractmethod
    def expected(self, members: dict[str, tuple[str, str]]):
        """The state the destination holds for exactly `members`."""

    def disarm(self) -> None:
        """Clear every injected fault."""

    def profiles(self) -> dict[str, str | None]:
        """A CRM's people, in a list or not: email -> their `plan` property."""
        raise NotImplementedError(f"{self.name} keeps no profiles")


class PlatformCase(Case):
    """A platform behind a fake server: audiences kept by id and found by name; identifiers only.

    A case names its fake, its client and its own `settings(**overrides)`; the rest is the same everywhere.
    """

    fields: dict[str, str] = {}
    names_audiences = True

    fake_cls: type  # started by `open` with `fake_args`
    fake_args: dict = {}
    client_cls: type[Destination]
    # How the fake exposes audiences: the property holding them by id, the key of a name, the lookup by name.
    audiences: str = "audiences"
    name_key: str = "name"
    find_audience: str = "audience_id_by_name"
    # The fake's method forgetting the rows a fault refused (injections are cleared for every case).
    clear_refusals: str = "clear_rejected_values"

    def __init__(self, fake):
        self.fake = fake

    @classmethod
    @contextlib.contextmanager
    def open(cls, tmp_path):
        with cls.fake_cls(**cls.fake_args) as server:
            yield cls(server)

    @abstractmethod
    def settings(self, **overrides):
        """The client's settings against the fake; `overrides` replace some (a revoked token, say)."""

    def destination(self, **overrides) -> Destination:
        return self.client_cls(self.settings(**overrides), sleep=lambda s: None)

    def spec(self):
        return self.client_cls.destination_type.name, plain_settings(self.settings())

    def audience_names(self):
        return [a[self.name_key] for a in getattr(self.fake, self.audiences).values()]

    def audience_id(self, name: str):
        return getattr(self.fake, self.find_audience)(name)

    def state(self, name: str = "vip"):
        aid = self.audience_id(name)
        return self.fake.members(aid) if aid else set()

    def disarm(self):
        self.fake.clear_injections()
        getattr(self.fake, self.clear_refusals)()


@dataclass
class Outcome:
    destination: str
    fault: str
    mode: str
    faulted_run: str = ""
    held: bool = False
    detail: str = ""


RESULTS: list[Outcome] = []


def warehouse(tmp: Path) -> sa.Engine:
    """A DuckDB warehouse holding both memberships."""
    engine = sa.create_engine(f"duckdb:///{tmp / 'warehouse.duckdb'}", poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        for name, members in (("m1", M1), ("m2", M2)):
            conn.execute(sa.text(f"create table {name} (key varchar, email varchar, plan varchar)"))
            conn.execute(sa.text(f"insert into {name} values (:k, :e, :p)"),
                         [{"k": k, "e": e, "p": p} for k, (e, p) in members.items()])
    return engine


def read(engine: sa.Engine, table: str) -> pa.Table:
    return query_audience(engine, f"select * from {table} order by key", "matrix", ["key", "email", "plan"])


def sync_spec(case: Case, mode: str) -> SyncSpec:
    return SyncSpec(name=SYNC, audience="matrix", destination=case.name, target=Target(name="vip"),
                    identifiers=case.identifiers, fields=case.fields, batch_size=BATCH, **MODES[mode])


# Members per key-hash partition for the matrix's runs (None: the engine's default, one partition here).
PARTITION_ROWS: int | None = None


def run(case: Case, mode: str, members: pa.Table, store: SnapshotStore, run_id: str,
        destination: Destination | None = None, full: bool = False):
    dest = destination or case.destination()
    try:
        return run_sync(sync_spec(case, mode), members, dest, store,
                        RunOptions(run_id=run_id, full_resync=full, partition_rows=PARTITION_ROWS))
    finally:
        dest.close()


def plain_settings(settings) -> dict:
    """Settings as a JSON-able dict with secret values in clear, for a child process in a test."""
    return {k: v.value() if isinstance(v, EnvSecret) else v for k, v in settings if v is not None}


# -- engine-level faults ---------------------------------------------------------

def kill_mid_dispatch(case: Case, mode: str, members: pa.Table, store: SnapshotStore, tmp: Path) -> str:
    """Run the sync in a child process that SIGKILLs itself after its second batch was applied."""
    path = tmp / "members.parquet"
    pq.write_table(members, path)
    type_name, settings = case.spec()
    args = {"type": type_name, "settings": settings, "root": str(store.dir.parent), "members": str(path),
            "identifiers": case.identifiers, "fields": case.fields, "mode": MODES[mode], "kill_after": 2,
            "full_resync": case.full_resync, "partition_rows": PARTITION_ROWS}
    child = subprocess.run([sys.executable, "-m", "audience_pipelines_tests.faults", json.dumps(args)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, f"child was not killed: {child.returncode} {child.stderr[-2000:]}"
    return "killed after 2 batches"


class _DiskFull:
    """pyarrow.parquet for the partitioned files, with a disk that fills while the snapshot is written."""

    def __getattr__(self, name):
        return getattr(pq, name)

    class ParquetWriter(pq.ParquetWriter):
        def __init__(self, where, *args, **kwargs):
            super().__init__(where, *args, **kwargs)
            self.where = Path(where)

        def close(self):
            super().close()
            if self.where.name.startswith(".snapshot-"):
                self.where.write_bytes(b"PAR1" + b"\0" * 64)  # a partial file, as a full disk leaves
                raise OSError(errno.ENOSPC, "No space left on device", str(self.where))


def disk_full_at_commit(case, mode, members, store, tmp, monkeypatch) -> str:
    monkeypatch.setattr(partitions_module, "pq", _DiskFull())
    try:
        run(case, mode, members, store, "r2", full=case.full_resync)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
        return "OSError ENOSPC at commit"
    finally:
        monkeypatch.setattr(partitions_module, "pq", pq)
    raise AssertionError("the disk-full fault did not fire")


def warehouse_unreachable(case, mode, members, store, tmp) -> str:
    before = case.state()
    manifest = store.manifest()
    engine = sa.create_engine("postgresql+psycopg2://audience@127.0.0.1:9/warehouse",
                              connect_args={"connect_timeout": 2})
    try:
        read(engine, "m2")
    except AudienceError as exc:
        assert "audience 'matrix': the query failed" in str(exc)
    else:
        raise AssertionError("an unreachable warehouse was read")
    finally:
        engine.dispose()
    # The sync step never runs without its membership: nothing sent, nothing committed.
    assert case.state() == before and store.manifest() == manifest
    return "AudienceError, sync not run"


ENGINE_FAULTS = ("kill -9 mid-dispatch", "disk full at commit", "warehouse unreachable")


def scenario(case: Case, fault: str, mode: str, tmp: Path, monkeypatch, label: str = "") -> Outcome:
    outcome = Outcome(case.name, fault, mode + label)
    RESULTS.append(outcome)
    engine = warehouse(tmp)
    store = SnapshotStore(tmp / "snapshots", SYNC)
    first = run(case, "mirror", read(engine, "m1"), store, "r1")
    assert first.failed == 0 and case.state() == case.expected(M1), "seeding run did not hold"
    m2 = read(engine, "m2")

    if fault == "kill -9 mid-dispatch":
        outcome.faulted_run = kill_mid_dispatch(case, mode, m2, store, tmp)
    elif fault == "disk full at commit":
        outcome.faulted_run = disk_full_at_commit(case, mode, m2, store, tmp, monkeypatch)
    elif fault == "warehouse unreachable":
        outcome.faulted_run = warehouse_unreachable(case, mode, m2, store, tmp)
    else:
        replacement = case.faults[fault](case)
        try:
            result = run(case, mode, m2, store, "r2", destination=replacement, full=case.full_resync)
            outcome.faulted_run = f"ok, {result.failed} failed" if result.failed else "ok"
        except Exception as exc:  # noqa: BLE001 - the matrix records how the run ended
            outcome.faulted_run = f"{type(exc).__name__}"
        finally:
            case.disarm()

    final = run(case, mode, read(engine, "m2"), store, "r3")
    engine.dispose()
    want = promised(mode)
    state, expected = case.state(), case.expected(want)
    outcome.detail = f"{len(want)} members"
    assert final.failed == 0, f"recovery run failed rows: {final.errors_sample}"
    assert state == expected, f"destination differs from what '{mode}' promises"
    assert set(store.read()["key"].to_pylist()) == set(want), "snapshot differs from the destination"
    assert store.read_pending() is None, "rows left pending after a clean run"
    outcome.held = True
    return outcome


def table_text(results: list[Outcome]) -> str:
    rows = [("destination", "fault", "mode", "faulted run", "final state")]
    rows += [(r.destination, r.fault, r.mode, r.faulted_run or "-",
              f"held ({r.detail})" if r.held else "NOT HELD") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    held = sum(r.held for r in results)
    lines.append(f"{held} of {len(results)} scenarios held")
    return "\n".join(lines)


def _child(args: dict) -> None:
    dtype = destination_type(args["type"])
    dest = dtype.open(dtype.settings_model(**args["settings"]))
    calls = {"n": 0}
    open_session = dest.open_session

    def killing_session(ctx):
        session = open_session(ctx)
        send = session.send

        def killing_send(*a, **kw):
            res = send(*a, **kw)
            calls["n"] += 1
            if calls["n"] >= args["kill_after"]:
                os.kill(os.getpid(), signal.SIGKILL)
            return res
        session.send = killing_send
        return session

    dest.open_session = killing_session
    spec = SyncSpec(name=SYNC, audience="matrix", destination=args["type"], target=Target(name="vip"),
                    identifiers=args["identifiers"], fields=args["fields"], batch_size=BATCH, **args["mode"])
    run_sync(spec, pq.read_table(args["members"]), dest, SnapshotStore(args["root"], SYNC),
             RunOptions(run_id="r2-killed", full_resync=args["full_resync"], partition_rows=args["partition_rows"]))
    sys.exit(3)  # not killed: fewer batches than expected


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
