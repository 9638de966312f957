"""Rows per second of a first sync and a 2%-churn rerun to each ad platform's fake server.

    python benchmarks/ad_platforms.py [--rows N] [--platform TYPE ...]

For each ad-platform destination (the contract suite's cases whose type hashes identifiers),
the engine runs a first sync of N members (key, email) and then a rerun where 2% left and 2%
joined, through the platform's client, over real HTTP to its fake server on 127.0.0.1 (started in
this process, in a thread). Timed: the whole `run_sync` (normalising and hashing, diff, batching,
HTTP, the fake's work, the commit). Each line checks the fake holds exactly N members afterwards.
The figures are the client's and the fake's together on this machine, not the platform's: a real
platform's latency and rate limits dominate a real sync.
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


def members(n: int, start: int = 0) -> pa.Table:
    keys = [f"k{i}" for i in range(start, start + n)]
    return pa.table({"key": keys, "email": [f"person{i}@example.com" for i in range(start, start + n)],
                     "plan": ["gold"] * n})


def churned(n: int) -> pa.Table:
    left = n // 50
    return pa.concat_tables([members(n - left, start=left), members(left, start=n)])


def bench(case_cls, rows: int) -> str:
    with tempfile.TemporaryDirectory() as tmp, case_cls.open(Path(tmp)) as case:
        case.disarm()
        spec = SyncSpec(name="bench", audience="bench", destination=case.name, target=Target(name="vip"),
                        identifiers={k: c for k, c in case.identifiers.items()})
        store = SnapshotStore(Path(tmp) / "syncs", "bench")
        times = []
        for run_id, table in (("first", members(rows)), ("churn", churned(rows))):
            dest = case.destination()
            started = time.perf_counter()
            try:
                result = run_sync(spec, table, dest, store, RunOptions(run_id=run_id))
            finally:
                dest.close()
            times.append((time.perf_counter() - started, result))
        (first_s, first), (churn_s, churn) = times
        held = len(case.state())
        ok = "ok" if first.added == rows and churn.added + churn.removed == 2 * (rows // 50) and held == rows \
            else f"MISMATCH (added {first.added}, churn +{churn.added}/-{churn.removed}, held {held})"
        sent = churn.added + churn.removed
        return (f"{case.name:<24} first {rows:>8,} rows {first_s:7.2f} s {rows / first_s:>9,.0f} rows/s   "
                f"churn {sent:>6,} rows {churn_s:6.2f} s {sent / churn_s:>8,.0f} rows/s   {ok}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--platform", action="append", help="destination type (repeatable); default: all")
    args = parser.parse_args()
    chosen = []
    for name, case_cls in cases_package.all_cases().items():
        base = name.split(" ")[0]
        if "(" in name or not destination_type(base).capabilities().hashes_identifiers:
            continue  # one case per platform: its plain diff runs
        if args.platform and base not in args.platform:
            continue
        chosen.append(case_cls)
    for case_cls in chosen:
        print(bench(case_cls, args.rows), flush=True)


if __name__ == "__main__":
    main()
