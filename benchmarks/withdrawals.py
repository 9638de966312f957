"""Cost of the two safeguards a sync to an identifier-matching platform pays.

    python benchmarks/withdrawals.py [--rows N] [--withdrawals W] [--unnamed K] [--batch B]

1. Withdrawals: the time to blank, in W rows being withdrawn, every identifier
   value one of N current members still sends (two hashed identifier columns),
   as `engine.withdrawals` does before a Meta removal or update.
2. Isolation: the extra requests a run spends finding K rows a platform counted
   as not applied without naming them, in one batch of B rows, through the
   dispatcher against an in-process destination; checks every one is found.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parents[1]))

from audience_pipelines.contract import Target  # noqa: E402
from audience_pipelines.engine import RunOptions, SnapshotStore, SyncSpec, run_sync  # noqa: E402
from audience_pipelines.engine.payload import Payload  # noqa: E402
from audience_pipelines.engine import withdrawals as engine_withdrawals  # noqa: E402
from audience_pipelines_tests.memory_destination import MemoryDestination  # noqa: E402


def hashed(prefix: str, n: int) -> pa.Array:
    return pa.array([hashlib.sha256(f"{prefix}{i}".encode()).hexdigest() for i in range(n)])


def withdrawals(rows: int, withdrawn: int, repeat: int) -> None:
    table = pa.table({"key": pa.array([str(i) for i in range(rows)]),
                      "EMAIL": hashed("e", rows), "PHONE": hashed("p", rows)})
    payload = Payload(table, ["EMAIL", "PHONE"], [])
    # Leavers: the second half share nothing, the first half share their email with a member.
    old = pa.table({"key": pa.array([f"gone{i}" for i in range(withdrawn)]),
                    "EMAIL": pa.concat_arrays([table["EMAIL"].combine_chunks().slice(0, withdrawn // 2),
                                               hashed("ge", withdrawn - withdrawn // 2)]),
                    "PHONE": hashed("gp", withdrawn)})
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        still = engine_withdrawals.StillSent.collect([old], [payload.table], payload.identifier_columns)
        sent, silent = engine_withdrawals.withdrawals(still, old, np.arange(withdrawn), payload.identifier_columns,
                                                      ["EMAIL", "PHONE"])
        times.append(time.perf_counter() - start)
    blanked = sent["EMAIL"].null_count
    assert blanked == withdrawn // 2 and not silent.any(), (blanked, silent.sum())
    print(f"withdrawals: {withdrawn:,} rows against {rows:,} members, 2 columns: "
          f"{statistics.median(times):.3f} s median of {repeat} ({blanked:,} shared emails blanked)")


def isolation(batch: int, unnamed: int, tmp: Path) -> None:
    """Runs until only the K refused rows are left uncommitted (the budget may leave more the first time)."""
    dest = MemoryDestination(batch_rows=batch)
    dest.count_only = True
    rng = np.random.default_rng(20261202)
    keys = [f"c{i}" for i in range(batch)]
    dest.reject = {keys[i] for i in rng.choice(batch, unnamed, replace=False)}
    spec = SyncSpec(name="bench", audience="a", destination="mem", target=Target(name="a"),
                    identifiers={"email": "email"})
    members = pa.table({"key": keys, "email": [f"{k}@example.com" for k in keys]})
    store = SnapshotStore(tmp, "bench")
    runs, extra, start = [], 0, time.perf_counter()
    while True:
        result = run_sync(spec, members, dest, store, RunOptions(run_id=f"r{len(runs) + 1}"))
        runs.append((result.added, result.failed, result.destination_stats.get("isolation_requests", 0)))
        extra += runs[-1][2]
        if result.failed == unnamed or len(runs) == 10:
            break
    took = time.perf_counter() - start
    assert result.failed == unnamed and set(dest.members("a")) == set(keys) - dest.reject
    per_run = "; ".join(f"run {i}: {a:,} committed, {f:,} left, {x} extra requests"
                        for i, (a, f, x) in enumerate(runs, start=1))
    print(f"isolation: {unnamed} unnamed of {batch:,} rows isolated in {len(runs)} run(s), {extra} extra "
          f"requests ({extra / unnamed:.1f} per row, {took:.2f} s in process). {per_run}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--withdrawals", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--unnamed", type=int, nargs="+", default=[1, 10, 49, 200])
    args = ap.parse_args()
    withdrawals(args.rows, args.withdrawals, args.repeat)
    import tempfile

    for k in args.unnamed:
        with tempfile.TemporaryDirectory() as tmp:
            isolation(args.batch, k, Path(tmp))


if __name__ == "__main__":
    main()
