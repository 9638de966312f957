"""Rows per second of a first sync and a 2%-churn rerun to each platform's fake server.

    python benchmarks/platforms.py [--rows N] [--group ads|crm|all] [--platform TYPE ...]

For each ad platform (the contract suite's cases whose type hashes identifiers) and each CRM (the
cases whose type needs a profile per member), the engine runs a first sync of N members (key,
email, plan; CRMs get `plan` as a mapped field) and then a rerun where 2% left and 2% joined,
through the platform's client, over real HTTP to its fake server on 127.0.0.1 (started in this
process, in a thread). Timed: the whole `run_sync` (normalising and hashing, diff, batching, HTTP,
the fake's work, profile creation, the commit). Each line checks that the fake then holds exactly
the N members of the rerun, with their fields. The figures are the client's and the fake's
together on this machine, not the platform's: a real platform's latency and rate limits dominate
a real sync.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parents[1]))

import audience_pipelines_tests.cases as cases_package  # noqa: E402
from audience_pipelines.contract import Target  # noqa: E402
from audience_pipelines.destinations import destination_type  # noqa: E402
from audience_pipelines.engine import RunOptions, SnapshotStore, SyncSpec, run_sync  # noqa: E402

# The contract suite's clients time out fast on purpose; batches of thousands need longer.
cases_package.TIMEOUT_S = 120.0

GROUPS = {
    "ads": lambda caps: caps.hashes_identifiers,
    "crm": lambda caps: caps.needs_profile,
}


def people(start: int, stop: int) -> dict[str, tuple[str, str]]:
    return {f"k{i}": (f"person{i}@example.com", ("gold", "silver", "bronze")[i % 3]) for i in range(start, stop)}


def table(members: dict[str, tuple[str, str]]) -> pa.Table:
    return pa.table({"key": list(members), "email": [e for e, _ in members.values()],
                     "plan": [p for _, p in members.values()]})


def bench(case_cls, rows: int) -> str:
    first_members = people(0, rows)
    left = rows // 50
    churn_members = people(left, rows + left)  # 2% left (the first ones), 2% joined
    with tempfile.TemporaryDirectory() as tmp, case_cls.open(Path(tmp)) as case:
        case.disarm()
        spec = SyncSpec(name="bench", audience="bench", destination=case.name, target=Target(name="vip"),
                        identifiers=dict(case.identifiers), fields=dict(case.fields))
        store = SnapshotStore(Path(tmp) / "syncs", "bench")
        times = []
        for run_id, members in (("first", first_members), ("churn", churn_members)):
            dest = case.destination()
            started = time.perf_counter()
            try:
                result = run_sync(spec, table(members), dest, store, RunOptions(run_id=run_id))
            finally:
                dest.close()
            times.append((time.perf_counter() - started, result))
        (first_s, first), (churn_s, churn) = times
        state = case.state()
        sent = churn.added + churn.removed
        ok = first.added == rows and sent == 2 * left and state == case.expected(churn_members)
        check = "ok" if ok else (f"MISMATCH (added {first.added}, churn +{churn.added}/-{churn.removed}, "
                                 f"held {len(state)})")
        return (f"{case.name:<24} first {rows:>8,} rows {first_s:7.2f} s {rows / first_s:>9,.0f} rows/s   "
                f"churn {sent:>6,} rows {churn_s:6.2f} s {sent / churn_s:>8,.0f} rows/s   {check}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--group", choices=[*GROUPS, "all"], default="all")
    parser.add_argument("--platform", action="append", help="destination type (repeatable); default: the group's")
    args = parser.parse_args()
    groups = list(GROUPS) if args.group == "all" else [args.group]
    failed = False
    for name, case_cls in cases_package.all_cases().items():
        base = name.split(" ")[0]
        caps = destination_type(base).capabilities()
        if "(" in name or not any(GROUPS[g](caps) for g in groups):
            continue  # one case per platform: its plain diff runs
        if args.platform and base not in args.platform:
            continue
        line = bench(case_cls, args.rows)
        failed |= line.endswith(")")
        print(line, flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
