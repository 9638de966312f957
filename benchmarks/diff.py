"""Benchmark the engine's membership diff against DuckDB on the same Parquet files.

    python benchmarks/diff.py --rows N [--repeat R] [--data-dir DIR] [--keep] [--regenerate]

1. Generates (or reuses, from DIR/N/) an audience membership Parquet and the
   previous run's snapshot Parquet with N members, both as the engine writes
   them: clustered by key-hash partition, zstd level 1, the membership with
   its `key_hash` (computed where it is written), the snapshot with
   `key_hash`/`row_hash` from the engine's hashing; the new membership drops 2% of the old
   members, adds 2% new ones and changes exactly one sent column in 3% of the
   kept rows (null->value and value->null included). Both files are shuffled
   independently; the ground truth key sets are recorded in meta.json.
2. Runs the engine's recipe and a DuckDB reference, each in a fresh
   subprocess (peak RSS is the worker's own), R times, interleaved.
3. Checks counts and sha256 digests of the sorted key sets of adds, removes
   and updates against each other and against the ground truth; exits 1 on
   any mismatch.
4. Prints wall seconds (median), peak RSS and per-phase times, then
   `rss_ratio_vs_duckdb=<engine peak RSS / duckdb peak RSS>` (medians over the
   repeats) and last `ratio_vs_duckdb=<engine s / duckdb s>`.

Timed span in both workers: from "start reading Parquet" to "adds, removes
and updates materialised as Arrow tables". Each worker first reads a tiny
file so one-time library start-up is not counted; imports are not counted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GEN_VERSION = 5  # bump when the generated data changes; invalidates the cache
CHUNK_ROWS = 5_000_000  # rows generated, hashed and written at a time
MEMBERS = "members.parquet"
SNAPSHOT = "snapshot.parquet"
TINY_MEMBERS = "tiny_members.parquet"
TINY_SNAPSHOT = "tiny_snapshot.parquet"
META = "meta.json"
SENT = ["email", "lifetime_value", "plan_type", "last_purchase", "country"]  # identifiers, then fields
FIELDS = SENT[1:]
KINDS = ("adds", "removes", "updates")

ADD_SHARE, REMOVE_SHARE, UPDATE_SHARE = 0.02, 0.02, 0.03
PLANS = ["free", "basic", "pro", "enterprise"]
COUNTRIES = ["US", "GB", "DE", "FR", "CA", "AU", "NL", "ES", "IT", "SE", "BR", "MX", "IN", "JP", "KR",
             "PL", "BE", "CH", "AT", "DK", "NO", "FI", "IE", "PT", "NZ", "SG", "ZA", "AR", "CL", "CO"]
DOMAINS = ["gmx.de", "mail.io", "gmail.com", "yahoo.com", "proton.me", "icloud.com", "outlook.com",
           "example.org", "hotmail.co.uk"]


def hash_inputs(table):
    """The sent columns in hashing order (identifiers, then fields), as the engine hashes them."""
    return [table[c] for c in SENT]


def keyset_digest(keys) -> str:
    """sha256 of the sorted keys joined by newlines; `keys` is any iterable of str."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


def peak_rss_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # Linux: KiB


# --------------------------------------------------------------------------- generation

def _fixed_strings(mat):
    """(n, w) uint8 matrix -> pa.string array of n strings of w bytes each (zero copy)."""
    import numpy as np
    import pyarrow as pa
    n, w = mat.shape
    offsets = np.arange(0, (n + 1) * w, w, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets),
                                                   pa.py_buffer(np.ascontiguousarray(mat))])


def _key_strings(ids):
    import numpy as np
    mat = np.empty((len(ids), 14), dtype=np.uint8)
    mat[:, :5] = np.frombuffer(b"user_", dtype=np.uint8)
    rest = ids.astype(np.int64)
    for k in range(9):
        mat[:, 13 - k] = 48 + rest % 10
        rest //= 10
    return _fixed_strings(mat)


def _email_strings(hexval, dom):
    """'u' + 10 lowercase hex digits + '@' + domain."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    hexdigits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    mat = np.empty((len(hexval), 12), dtype=np.uint8)
    mat[:, 0] = ord("u")
    mat[:, 11] = ord("@")
    v = hexval.astype(np.uint64)
    for k in range(10):
        mat[:, 10 - k] = hexdigits[(v & np.uint64(15)).astype(np.intp)]
        v >>= np.uint64(4)
    domains = pa.DictionaryArray.from_arrays(pa.array(dom, pa.int32()), pa.array(DOMAINS)).cast(pa.string())
    return pc.binary_join_element_wise(_fixed_strings(mat), domains, "")


def _coded_strings(codes, values, null_mask=None):
    import pyarrow as pa
    idx = pa.array(codes.astype("int32"), pa.int32(), mask=null_mask)
    return pa.DictionaryArray.from_arrays(idx, pa.array(values)).cast(pa.string())


def _table(cols, rows):
    """Arrow table of the membership columns for the given row positions."""
    import pyarrow as pa
    return pa.table({
        "key": _key_strings(cols["id"][rows]),
        "email": _email_strings(cols["hex"][rows], cols["dom"][rows]),
        "lifetime_value": pa.array(cols["ltv"][rows], pa.float64()),
        "plan_type": _coded_strings(cols["plan"][rows], PLANS),
        "last_purchase": pa.array(cols["day"][rows], pa.date32(), mask=cols["day_null"][rows]),
        "country": _coded_strings(cols["ctry"][rows], COUNTRIES, cols["ctry_null"][rows]),
    })


def _schemas():
    import pyarrow as pa

    members = pa.schema([("key", pa.string()), ("email", pa.string()), ("lifetime_value", pa.float64()),
                         ("plan_type", pa.string()), ("last_purchase", pa.date32()), ("country", pa.string()),
                         ("key_hash", pa.uint64())])
    return members, members.append(pa.field("row_hash", pa.uint64()))


def generate(n: int, out: Path) -> dict:
    """Write members.parquet, snapshot.parquet, tiny warm-up files and meta.json under `out`."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from audience_pipelines.engine.hashing import key_hash, row_hash
    from audience_pipelines.engine.partitions import ClusteredWriter, partition_bits, split

    members_schema, snapshot_schema = _schemas()
    t0 = time.perf_counter()
    seed = 20240601 + n
    rng = np.random.default_rng(seed)
    n_rm, n_add = round(REMOVE_SHARE * n), round(ADD_SHARE * n)
    n_upd = round(UPDATE_SHARE * (n - n_rm))
    m = n + n_add  # rows [0, n) are the old members, [n, m) the added ones
    if m > 1_000_000_000:
        raise SystemExit("--rows too large for 9-digit keys")
    # Distinct 9-digit ids: an affine map mod 1e9 (7919 is prime, so coprime to 1e9).
    ids = (np.arange(m, dtype=np.int64) * 7919 + 104_729) % 1_000_000_000
    cols = {
        "id": ids,
        "hex": rng.integers(0, 1 << 40, m, dtype=np.uint64),
        "dom": rng.choice(len(DOMAINS), m, p=[.03, .05, .40, .15, .05, .12, .12, .04, .04]).astype(np.int8),
        "ltv": np.round(rng.lognormal(4.0, 1.2, m), 2),
        "plan": rng.choice(4, m, p=[.50, .30, .15, .05]).astype(np.int8),
        "day": rng.integers(17532, 20089, m, dtype=np.int32),  # 2018-01-01 .. 2024-12-31
        "day_null": rng.random(m) < 0.08,
        "ctry": None,
        "ctry_null": rng.random(m) < 0.01,
    }
    w = 1.0 / np.arange(1, len(COUNTRIES) + 1) ** 1.1
    cols["ctry"] = rng.choice(len(COUNTRIES), m, p=w / w.sum()).astype(np.int8)

    perm = rng.permutation(n)
    removed = np.sort(perm[:n_rm])
    kept = np.sort(perm[n_rm:])
    updated = perm[n_rm:n_rm + n_upd]  # old positions whose row changes

    # New membership = kept old rows (some changed) + added rows. Changed rows get their
    # attributes copied to [m, m + n_upd) so the old rows keep their old values.
    new_rows = np.concatenate([kept, np.arange(n, m)])
    changed_slot = np.arange(m, m + n_upd)
    for name, arr in cols.items():
        cols[name] = np.concatenate([arr, arr[updated]])
    pos_in_new = np.searchsorted(kept, updated)  # updated rows are kept rows
    new_rows[pos_in_new] = changed_slot

    which = rng.choice(len(SENT), n_upd, p=[.10, .25, .20, .25, .20])
    r = rng.random(n_upd)
    s = changed_slot
    # email: flip some of the 40 hex bits (never zero, so always different)
    sel = s[which == 0]
    cols["hex"][sel] ^= rng.integers(1, 1 << 40, len(sel), dtype=np.uint64)
    # lifetime_value: +0.01 .. +500.00
    sel = s[which == 1]
    cols["ltv"][sel] = np.round(cols["ltv"][sel] + rng.integers(1, 50_001, len(sel)) / 100, 2)
    # plan_type: any other plan
    sel = s[which == 2]
    cols["plan"][sel] = (cols["plan"][sel] + rng.integers(1, 4, len(sel))) % 4
    # last_purchase: null -> date; date -> null (30%) or a later date
    sel_mask = which == 3
    sel = s[sel_mask]
    was_null = cols["day_null"][sel]
    to_null = ~was_null & (r[sel_mask] < 0.30)
    cols["day"][sel] = np.where(was_null, rng.integers(17532, 20089, len(sel), dtype=np.int32),
                                cols["day"][sel] + rng.integers(1, 366, len(sel), dtype=np.int32))
    cols["day_null"][sel] = to_null
    transitions = {"last_purchase": {"null_to_value": int(was_null.sum()), "value_to_null": int(to_null.sum())}}
    # country: null -> country; country -> null (30%) or another country
    sel_mask = which == 4
    sel = s[sel_mask]
    was_null = cols["ctry_null"][sel]
    to_null = ~was_null & (r[sel_mask] < 0.30)
    cols["ctry"][sel] = (cols["ctry"][sel] + rng.integers(1, len(COUNTRIES), len(sel))) % len(COUNTRIES)
    cols["ctry_null"][sel] = to_null
    transitions["country"] = {"null_to_value": int(was_null.sum()), "value_to_null": int(to_null.sum())}
    change_kinds = {
        "email": int((which == 0).sum()), "lifetime_value": int((which == 1).sum()),
        "plan_type": int((which == 2).sum()),
        "last_purchase": int((which == 3).sum()), "country": int((which == 4).sum()),
    }

    old_order = rng.permutation(n)  # both files shuffled independently
    new_order = new_rows[rng.permutation(len(new_rows))]
    t_gen = time.perf_counter() - t0

    # Written a chunk at a time, so 100M members fit: only one chunk's Arrow tables are in memory.
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    bits = partition_bits(n)
    buckets = out / "buckets"
    buckets.mkdir(parents=True, exist_ok=True)
    for c, lo in enumerate(range(0, max(n, len(new_order)), CHUNK_ROWS)):
        old = _table(cols, old_order[lo:lo + CHUNK_ROWS])
        snap = old.append_column("key_hash", pa.array(key_hash(old["key"]), pa.uint64())).append_column(
            "row_hash", pa.array(row_hash(hash_inputs(old), old["key"]), pa.uint64()))  # as SnapshotStore
        new = _table(cols, new_order[lo:lo + CHUNK_ROWS])
        new = new.append_column("key_hash", pa.array(key_hash(new["key"]), pa.uint64()))  # as write_membership
        for name, table in (("s", snap), ("m", new)):  # both files are clustered by partition
            for p, part in enumerate(split(table, bits)):
                pq.write_table(part, buckets / f"{name}{p:05d}-{c:05d}.parquet")
        if lo == 0:
            pq.write_table(new.slice(0, 1000), out / TINY_MEMBERS)
            pq.write_table(snap.slice(0, 1000), out / TINY_SNAPSHOT, compression="zstd", compression_level=1)
        print(f"  wrote {min(lo + CHUNK_ROWS, n):,} of {n:,} members", file=sys.stderr, flush=True)
    for name, file, schema in (("s", SNAPSHOT, snapshot_schema), ("m", MEMBERS, members_schema)):
        writer = ClusteredWriter(out / file, schema, bits)
        for p in range(1 << bits):
            for f in sorted(buckets.glob(f"{name}{p:05d}-*.parquet")):
                writer.write(p, pq.read_table(f))
        writer.close()
    shutil.rmtree(buckets)
    del cols
    t_write = time.perf_counter() - t0

    def key_strs(positions):
        return (f"user_{i:09d}" for i in ids[positions])

    truth = {
        "adds": {"count": n_add, "sha256": keyset_digest(key_strs(np.arange(n, m)))},
        "removes": {"count": n_rm, "sha256": keyset_digest(key_strs(removed))},
        "updates": {"count": n_upd, "sha256": keyset_digest(key_strs(updated))},
    }
    meta = {
        "gen_version": GEN_VERSION, "rows": n, "seed": seed,
        "old_rows": n, "new_rows": len(new_order), "truth": truth,
        "update_changes_by_column": change_kinds, "null_transitions": transitions,
        "bytes": {f: (out / f).stat().st_size for f in (MEMBERS, SNAPSHOT)},
        "seconds": {"generate": round(t_gen, 2), "hash_and_write": round(t_write, 2)},
        "gen_peak_rss_mb": round(peak_rss_mb()),
    }
    (out / META).write_text(json.dumps(meta, indent=2))
    return meta


# --------------------------------------------------------------------------- workers

def _results(tables: dict, phases: dict, wall: float) -> dict:
    """Read peak RSS first, then summarise the three result tables (untimed)."""
    rss = peak_rss_mb()
    out = {"wall": wall, "peak_rss_mb": rss, "phases": phases}
    for kind in KINDS:
        t = tables[kind]
        out[kind] = {"count": t.num_rows, "sha256": keyset_digest(t["key"].to_pylist())}
    return out


def _lap_timer():
    """A dict of phase durations and a `lap(name)` that closes the current phase."""
    phases, last = {}, [time.perf_counter()]

    def lap(name):
        now = time.perf_counter()
        phases[name] = now - last[0]
        last[0] = now

    return phases, lap


def worker_engine(data: Path) -> dict:
    """The engine's recipe, a key-hash partition at a time on a thread per core: read the partition
    of the membership and hash its rows, read the snapshot partition's key, hashes and the column a
    removal sends, diff, and keep the added, updated and removed rows."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.parquet as pq

    from audience_pipelines.engine.diff import plan_diff
    from audience_pipelines.engine.hashing import row_hash
    from audience_pipelines.engine.partitions import ClusteredFile, partition_bits

    dict_cols = ["plan_type", "country"]
    pq.read_table(data / TINY_MEMBERS, read_dictionary=dict_cols)  # warm-up
    pq.read_table(data / TINY_SNAPSHOT, columns=["key", "key_hash", "row_hash", "email"])

    phases, lap = _lap_timer()
    t_start = time.perf_counter()
    members, snapshot = ClusteredFile(data / MEMBERS, read_dictionary=dict_cols), ClusteredFile(data / SNAPSHOT)
    bits = partition_bits(max(members.rows, snapshot.rows))

    def one(p: int) -> dict[str, pa.Table]:
        new = members.read(p, bits)
        new = new.append_column("row_hash", pa.array(row_hash(hash_inputs(new), new["key"]), pa.uint64()))
        old = snapshot.read(p, bits, ["key", "key_hash", "row_hash"])
        plan = plan_diff(new, old, threads=1)  # the partitions already share the cores
        # As a sync run does: the sent columns of only the held rows it removes, read from only the row groups holding one.
        return {"adds": new.take(pa.array(plan.add, pa.int64())),
                "updates": new.take(pa.array(plan.update_new, pa.int64())),
                "removes": snapshot.take(p, bits, plan.remove, ["key", "email"])}

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        parts = list(pool.map(one, range(1 << bits)))
    lap("diff_partitions")
    tables = {kind: pa.concat_tables([part[kind] for part in parts]) for kind in KINDS}
    lap("concat")
    return _results(tables, phases, time.perf_counter() - t_start)


def _sql_path(p: Path) -> str:
    return "'" + str(p).replace("'", "''") + "'"


def worker_duckdb(data: Path) -> dict:
    import duckdb

    con = duckdb.connect()
    con.sql(f"SELECT * FROM read_parquet({_sql_path(data / TINY_MEMBERS)})").to_arrow_table()  # warm-up
    con.sql(f"SELECT * FROM read_parquet({_sql_path(data / TINY_SNAPSHOT)})").to_arrow_table()

    phases, lap = _lap_timer()
    t_start = time.perf_counter()

    con.execute(f"CREATE VIEW n AS SELECT * FROM read_parquet({_sql_path(data / MEMBERS)})")
    con.execute(f"CREATE VIEW o AS SELECT * FROM read_parquet({_sql_path(data / SNAPSHOT)})")
    lap("setup")
    changed = " OR ".join(f"n.{c} IS DISTINCT FROM o.{c}" for c in SENT)
    tables = {}
    tables["adds"] = con.sql("SELECT n.* FROM n ANTI JOIN o ON n.key = o.key").to_arrow_table()
    lap("adds")
    tables["removes"] = con.sql("SELECT o.key, o.email FROM o ANTI JOIN n ON o.key = n.key").to_arrow_table()
    lap("removes")
    tables["updates"] = con.sql(f"SELECT n.* FROM n JOIN o ON n.key = o.key WHERE {changed}").to_arrow_table()
    lap("updates")
    return _results(tables, phases, time.perf_counter() - t_start)


WORKERS = {"engine": worker_engine, "duckdb": worker_duckdb}


# --------------------------------------------------------------------------- driver

def _spawn(role: str, data: Path, extra: list[str] | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", role, "--data-dir", str(data)]
    proc = subprocess.run(cmd + (extra or []), check=False, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{role} worker failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cached_meta(data: Path, n: int) -> dict | None:
    try:
        meta = json.loads((data / META).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    files_ok = all((data / f).exists() for f in (MEMBERS, SNAPSHOT, TINY_MEMBERS, TINY_SNAPSHOT))
    if meta.get("gen_version") != GEN_VERSION or meta.get("rows") != n or not files_ok:
        return None
    return meta


def _warm_page_cache(data: Path) -> None:
    for f in (MEMBERS, SNAPSHOT):
        with open(data / f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, help="members in the snapshot (N)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per approach, interleaved (median wall)")
    ap.add_argument("--data-dir", type=Path, default=HERE / ".data",
                    help="cache root; data lives in DIR/N/ (default benchmarks/.data)")
    ap.add_argument("--keep", action="store_true",
                    help="keep data generated by this run for later runs (default: delete it at the end)")
    ap.add_argument("--regenerate", action="store_true", help="regenerate even if DIR/N/ holds valid data")
    ap.add_argument("--worker", choices=["gen", *WORKERS], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker == "gen":
        print(json.dumps(generate(args.rows, args.data_dir)))
        return 0
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args.data_dir)))
        return 0
    if not args.rows or args.rows < 1000:
        ap.error("--rows N is required (N >= 1000)")
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")

    n = args.rows
    root = args.data_dir.resolve()
    data = root / str(n)
    meta = None if args.regenerate else _cached_meta(data, n)
    generated = meta is None
    if generated:
        if data.exists():
            shutil.rmtree(data)
        root.mkdir(parents=True, exist_ok=True)
        if not (root / ".gitignore").exists():
            (root / ".gitignore").write_text("*\n")  # generated data never gets committed
        print(f"generating N={n:,} in {data} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        meta = _spawn("gen", data, ["--rows", str(n)])
        print(f"  done in {time.perf_counter() - t0:.1f} s {meta['seconds']}, "
              f"peak RSS {meta['gen_peak_rss_mb']:,} MB", file=sys.stderr, flush=True)
    else:
        print(f"using cached data in {data}", file=sys.stderr, flush=True)
    truth = meta["truth"]
    _warm_page_cache(data)

    runs: dict[str, list[dict]] = {name: [] for name in WORKERS}
    for _ in range(args.repeat):
        for name in WORKERS:  # round-robin so drift hits both approaches alike
            runs[name].append(_spawn(name, data))

    mismatches = []
    for name, rs in runs.items():
        for i, res in enumerate(rs):
            for kind in KINDS:
                if res[kind] != truth[kind]:
                    mismatches.append(f"{name} run {i + 1}: {kind} {res[kind]} != ground truth {truth[kind]}")
    # Both are checked against the ground truth; also compare them directly, run by run.
    for i, (a, b) in enumerate(zip(runs["engine"], runs["duckdb"])):
        for kind in KINDS:
            if a[kind] != b[kind]:
                mismatches.append(f"run {i + 1}: {kind} engine {a[kind]} != duckdb {b[kind]}")

    wall = {name: statistics.median(r["wall"] for r in rs) for name, rs in runs.items()}
    print(f"N={n:,}  old={meta['old_rows']:,} new={meta['new_rows']:,}  "
          f"files: members {meta['bytes'][MEMBERS] / 1e6:.0f} MB, snapshot {meta['bytes'][SNAPSHOT] / 1e6:.0f} MB  "
          f"repeat={args.repeat}")
    print("truth: " + ", ".join(f"{k} {truth[k]['count']:,}" for k in KINDS)
          + "  -> " + ("MISMATCH" if mismatches else "both approaches match"))
    print()
    print(f"{'approach':<10} {'wall s':>8} {'min-max':>13} {'peak RSS MB':>12}  phases (median s)")
    for name, rs in runs.items():
        walls = [r["wall"] for r in rs]
        rss = max(r["peak_rss_mb"] for r in rs)
        phases = ", ".join(f"{p} {statistics.median(r['phases'][p] for r in rs):.2f}" for p in rs[0]["phases"])
        print(f"{name:<10} {wall[name]:>8.2f} {min(walls):>6.2f}-{max(walls):<6.2f} {rss:>12,.0f}  {phases}")
    print()
    if generated and not args.keep:
        shutil.rmtree(data)
    for line in mismatches:
        print("MISMATCH: " + line, file=sys.stderr)
    rss = {name: statistics.median(r["peak_rss_mb"] for r in rs) for name, rs in runs.items()}
    print(f"rss_ratio_vs_duckdb={rss['engine'] / rss['duckdb']:.2f}", flush=True)
    print(f"ratio_vs_duckdb={wall['engine'] / wall['duckdb']:.2f}", flush=True)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
