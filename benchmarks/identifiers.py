"""Speed of identifier normalisation and Meta hashing on repetitive and on all-distinct input.

    python benchmarks/identifiers.py [--rows N] [--distinct D] [--unique-rows U] [--repeat R]

Phones written in national format ("(415) 555-2600", default region US) and
emails with mixed case and spaces go through `identifiers.normalize` and then
`identifiers.to_meta` (digits only, SHA-256), as a Meta sync shapes them.
1. Repetitive: N rows holding D distinct values. Each distinct value is parsed
   and hashed once, so the time should follow D, not N.
2. All distinct: U rows, every value different, so every row is parsed
   (`phonenumbers`) and hashed.
Prints the median of R runs per step; checks every row came out valid and the
distinct count is kept.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).parents[1]))

from audience_pipelines.identifiers import normalize, to_meta  # noqa: E402


AREAS = (415, 650, 212)


def phones(rows: int, distinct: int) -> pa.Array:
    """National-format US numbers, all valid and different for up to 24 million distinct values."""
    base = [f"({AREAS[i % 3]}) {200 + i // 3 % 800}-{i // 2400 % 10000:04d}" for i in range(distinct)]
    return pa.array([base[i % distinct] for i in range(rows)])


def emails(rows: int, distinct: int) -> pa.Array:
    base = [f" User.{i}@Example.COM " for i in range(distinct)]
    return pa.array([base[i % distinct] for i in range(rows)])


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def measure(kind: str, values: pa.Array, distinct: int, repeat: int) -> None:
    region = "US" if kind == "phone" else None
    t_norm, out = timed(lambda: normalize(kind, values, default_region=region), repeat)
    t_hash, hashed = timed(lambda: to_meta(kind, out.values), repeat)
    assert out.values.null_count == 0 and len(hashed) == len(values), (kind, out.values.null_count)
    assert len(pc.unique(hashed)) == distinct, (kind, len(pc.unique(hashed)), distinct)
    rate = len(values) / (t_norm + t_hash)
    print(f"{kind}: {len(values):,} rows, {distinct:,} distinct: normalize {t_norm:.3f} s, "
          f"to_meta {t_hash:.3f} s, {rate:,.0f} rows/s (median of {repeat})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--distinct", type=int, default=150)
    ap.add_argument("--unique-rows", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    for kind, make in (("phone", phones), ("email", emails)):
        measure(kind, make(args.rows, args.distinct), args.distinct, args.repeat)
        measure(kind, make(args.unique_rows, args.unique_rows), args.unique_rows, max(1, args.repeat // 2))


if __name__ == "__main__":
    main()
