"""What segment membership costs: the audiences each of N records is in, over A audiences.

    python benchmarks/segments.py [--records 1000000] [--audiences 10] [--repeat 3]

Each audience holds a random share (5%-60%) of the records' keys, as its membership file's key column
does; `engine.segments.segment_membership` then gives every record its ';'-joined list. Timed: that
call alone (the membership files' key columns are read beforehand), median of --repeat runs, and the
same with half as many audiences, to show how the cost grows. Checks every record's list against a
plain Python computation on a sample.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parents[1]))

from audience_pipelines.engine.segments import segment_membership  # noqa: E402


def data(records: int, audiences: int, seed: int = 11):
    rng = np.random.default_rng(seed)
    keys = pa.array([f"cus_{i:09d}" for i in range(records)], pa.string())
    held = {}
    for a in range(audiences):
        share = rng.uniform(0.05, 0.6)
        chosen = np.flatnonzero(rng.random(records) < share)
        rng.shuffle(chosen)
        held[f"audience_{a:02d}"] = keys.take(pa.array(chosen))
    return keys, held


def timed(keys, held, repeat: int) -> tuple[float, pa.Array]:
    times, out = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        out = segment_membership(keys, held)
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--audiences", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    keys, held = data(args.records, args.audiences)
    pairs = sum(len(v) for v in held.values())
    half = dict(list(held.items())[: max(1, args.audiences // 2)])
    half_s, _ = timed(keys, half, args.repeat)
    full_s, out = timed(keys, held, args.repeat)
    sample = np.random.default_rng(3).choice(args.records, size=min(2_000, args.records), replace=False)
    sets = {name: set(v.to_pylist()) for name, v in held.items()}
    for i in sample.tolist():
        key = keys[i].as_py()
        want = ";".join(n for n in sorted(held) if key in sets[n])
        if out[i].as_py() != want:
            print(f"MISMATCH at {key}: {out[i].as_py()!r} != {want!r}")
            sys.exit(1)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"records={args.records:,} audiences={args.audiences} memberships={pairs:,}")
    print(f"{len(half)} audiences: {half_s:.3f} s   {args.audiences} audiences: {full_s:.3f} s "
          f"({full_s / args.audiences * 1000:.0f} ms per audience, {args.records / full_s:,.0f} records/s)")
    print(f"distinct lists: {len(set(out.unique().to_pylist())):,}; peak RSS {rss_mb:,.0f} MB; sample of "
          f"{len(sample):,} checked")


if __name__ == "__main__":
    main()
