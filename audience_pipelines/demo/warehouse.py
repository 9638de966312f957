"""A synthetic DuckDB warehouse for demos and tests: customers (+ their orders).

Everything is drawn from one seeded numpy generator and dated relative to the
fixed `DEMO_REFERENCE_DATE`, so a seed always yields the same database.
Python loops only run over small vocabularies (names, cities, phone pools);
per-row work is numpy/pyarrow, so 120k customers take about a second.

Dirty rows are planted on purpose, in exact numbers, so pipelines and tests
can assert on them: `NULL_CUSTOMER_IDS` rows without an id, `DUPLICATED_IDS`
ids that appear on two rows, `MALFORMED_EMAILS` and `MALFORMED_PHONES` values
that no normalizer should accept. Emails use reserved example.* domains and
phones use fictional/drama ranges where a country has them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import unicodedata
import uuid
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc

DEMO_REFERENCE_DATE = datetime(2026, 11, 1)
NULL_CUSTOMER_IDS = 12
DUPLICATED_IDS = 25
MALFORMED_EMAILS = 60
MALFORMED_PHONES = 40
MIN_ROWS = 500  # room for the planted dirty rows

FIRST_NAMES = [
    "James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "William",
    "Elizabeth", "David", "Sarah", "Daniel", "Emma", "Oliver", "Olivia", "Noah", "Sophia", "Liam",
    "Charlotte", "Lucas", "Mia", "Thomas", "Hannah", "Leon", "Lea", "Lukas", "Anna", "Hugo", "Chloé",
    "Louis", "Inès", "Mateo", "Lucía", "Daan", "Sanne", "Jack", "Isla", "Ethan", "Ava", "José", "Zoë",
    "Søren", "Łukasz", "François", "Björn", "Renée", "Jürgen", "Siobhán", "Noël", "Ana María",
    "Jean-Luc", "Mei", "Priya", "Mohammed", "Aisha",
]
LAST_NAMES = [
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Wilson", "Taylor",
    "Anderson", "Thomas", "Moore", "Martin", "Lee", "Clark", "Walker", "Hall", "Young", "King",
    "Wright", "Scott", "Green", "Baker", "Adams", "Nelson", "Hill", "Campbell", "Mitchell", "Roberts",
    "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Dubois", "Lefèvre", "Moreau", "Rodríguez",
    "Martínez", "Fernández", "de Jong", "van den Berg", "Jansen", "O'Brien", "Murphy", "Kelly",
    "Nguyen", "Kowalski", "Wiśniewski", "Sørensen", "Çelik", "Ødegaard", "MacDonald", "Smith-Jones",
    "Núñez", "Müller-Lüdenscheidt",
]
EMAIL_DOMAINS = [
    "example.com", "example.org", "example.net", "mail.example.com", "inbox.example.org",
    "post.example.net", "shop.example.com",
]
PLANS = ["free", "starter", "pro", "enterprise"]
_PLAN_P = [0.55, 0.25, 0.15, 0.05]
_PLAN_SPEND = np.array([0.6, 1.0, 1.8, 3.5])  # order-size multiplier per plan

# country: (share, [(city, state, zip pattern)]). Zip patterns: "#" digit,
# "@" postcode letter, "a-b" a zero-padded range of the given width.
COUNTRIES: dict[str, tuple[float, list[tuple[str, str | None, str]]]] = {
    "US": (0.38, [("San Francisco", "CA", "941##"), ("New York", "NY", "100##"), ("Chicago", "IL", "606##"),
                  ("Boston", "MA", "021##"), ("Seattle", "WA", "981##"), ("Austin", "TX", "787##"),
                  ("Denver", "CO", "802##"), ("Miami", "FL", "331##"), ("Los Angeles", "CA", "900##")]),
    "GB": (0.15, [("London", None, "SW1A #@@"), ("London", None, "EC1A #@@"), ("Manchester", None, "M1 #@@"),
                  ("Leeds", None, "LS1 #@@"), ("Edinburgh", None, "EH1 #@@"), ("Bristol", None, "BS1 #@@")]),
    "DE": (0.11, [("Berlin", None, "10115-14199"), ("München", None, "80331-81929"),
                  ("Hamburg", None, "20095-22769"), ("Köln", None, "50667-51149"),
                  ("Frankfurt am Main", None, "60306-65936")]),
    "FR": (0.09, [("Paris", None, "75001-75020"), ("Lyon", None, "69001-69009"),
                  ("Marseille", None, "13001-13016"), ("Toulouse", None, "31000-31500")]),
    "CA": (0.08, [("Toronto", "ON", "M5V #@#"), ("Vancouver", "BC", "V6B #@#"), ("Montréal", "QC", "H2X #@#"),
                  ("Calgary", "AB", "T2P #@#"), ("Ottawa", "ON", "K1P #@#")]),
    "AU": (0.07, [("Sydney", "NSW", "2000-2234"), ("Melbourne", "VIC", "3000-3207"),
                  ("Brisbane", "QLD", "4000-4179"), ("Perth", "WA", "6000-6199")]),
    "ES": (0.05, [("Madrid", None, "28001-28055"), ("Barcelona", None, "08001-08042"),
                  ("Valencia", None, "46001-46026"), ("Sevilla", None, "41001-41020")]),
    "NL": (0.05, [("Amsterdam", None, "1011-1109 @@"), ("Rotterdam", None, "3011-3089 @@"),
                  ("Utrecht", None, "3511-3585 @@"), ("Den Haag", None, "2491-2599 @@")]),
    "IE": (0.01, [("Dublin", None, "D02 @###")]),
    "SE": (0.005, [("Stockholm", None, "111 ##"), ("Göteborg", None, "411 ##")]),
    "IT": (0.005, [("Milano", None, "20121-20162"), ("Roma", None, "00118-00199")]),
}
_POSTCODE_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"
_ZIPS_PER_CITY = 40

# "#" = random digit. Fictional/drama ranges where the country publishes them
# (NANP 555-01xx, Ofcom drama, ACMA fictitious); libphonenumber example numbers elsewhere.
_PHONE_TEMPLATES = {
    "US": [f"+1 {ac} 555 01##" for ac in (415, 212, 646, 312, 617, 206, 512, 303, 305, 404)],
    "CA": [f"+1 {ac} 555 01##" for ac in (416, 604, 514, 403, 613)],
    "GB": ["+44 20 7946 0###", "+44 113 496 0###", "+44 161 496 0###", "+44 117 496 0###"],
    "AU": ["+61 2 5550 ####", "+61 3 7010 ####", "+61 491 570 ###"],
}
_PHONES_PER_COUNTRY = 300
_PHONE_FORMAT_P = [0.2, 0.35, 0.3, 0.08, 0.07]  # e164, international, national, compact, "00" prefix
_BAD_PHONES = ["12", "n/a", "555-CALL-NOW", "TBD", "-", "+1", "unknown", "0"]

_EPOCH = datetime(1970, 1, 1)
_DAY = 86_400


def _ascii_slug(name: str) -> str:
    """Email-safe form of a name: "Łukasz" -> "lukasz", "O'Brien" -> "obrien"."""
    name = name.lower().translate(str.maketrans({"ł": "l", "ø": "o", "ß": "ss", "æ": "ae"}))
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return "".join(ch for ch in plain if ch.isalnum())


def _fill(pattern: str, rng: np.random.Generator) -> str:
    if "-" in pattern:  # "10115-14199" or "1011-1109 @@": numeric range, optional letter suffix
        span, _, suffix = pattern.partition(" ")
        lo, hi = span.split("-")
        number = f"{int(rng.integers(int(lo), int(hi) + 1)):0{len(lo)}d}"
        return f"{number} {_fill(suffix, rng)}" if suffix else number
    return "".join(
        str(rng.integers(10)) if ch == "#"
        else _POSTCODE_LETTERS[rng.integers(len(_POSTCODE_LETTERS))] if ch == "@"
        else ch
        for ch in pattern
    )


def _phone_templates(country: str) -> list[str]:
    if country in _PHONE_TEMPLATES:
        return _PHONE_TEMPLATES[country]
    out = []
    for kind in (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE):
        example = phonenumbers.example_number_for_type(country, kind)
        if example is not None:
            e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
            out.append(e164[:-4] + "####")
    return out


def _phone_formats(e164: str, country: str) -> list[str] | None:
    """The five written forms of one number, or None unless all parse back to it."""
    number = phonenumbers.parse(e164)
    if not phonenumbers.is_valid_number(number):
        return None
    fmt = phonenumbers.PhoneNumberFormat
    intl = phonenumbers.format_number(number, fmt.INTERNATIONAL)
    national = phonenumbers.format_number(number, fmt.NATIONAL)
    nsn = phonenumbers.national_significant_number(number)
    compact = f"{nsn[:3]}.{nsn[3:6]}.{nsn[6:]}" if number.country_code == 1 else national.replace(" ", "")
    forms = [e164, intl, national, compact, "00" + intl[1:]]
    for form in forms:
        text = "+" + form[2:] if form.startswith("00") else form
        if phonenumbers.format_number(phonenumbers.parse(text, country), fmt.E164) != e164:
            return None
    return forms


@functools.lru_cache(maxsize=4)
def _phone_pools(seed: int) -> tuple[tuple[tuple[str, ...], ...], ...]:
    """Per country (in COUNTRIES order), valid numbers each in five written forms.

    Validating every form is the slow part of a build (~1.5 s, independent of
    row count), so pools get their own generator and are cached per seed.
    """
    rng = np.random.default_rng([seed, 1])
    return tuple(tuple(map(tuple, _phone_pool(c, rng))) for c in COUNTRIES)


def _phone_pool(country: str, rng: np.random.Generator) -> list[list[str]]:
    templates = _phone_templates(country)
    seen: dict[str, list[str]] = {}
    for i in range(_PHONES_PER_COUNTRY * 2):
        if len(seen) >= _PHONES_PER_COUNTRY:
            break
        e164 = _fill(templates[i % len(templates)], rng).replace(" ", "")
        if e164 not in seen and (forms := _phone_formats(e164, country)) is not None:
            seen[e164] = forms
    return list(seen.values())


def _uuid4_strings(n: int, rng: np.random.Generator) -> pa.Array:
    """n lowercase UUIDv4 strings built from one byte buffer (no per-row Python)."""
    nibbles = rng.integers(0, 16, size=(n, 32), dtype=np.uint8)
    nibbles[:, 12] = 4  # version
    nibbles[:, 16] = 8 + (nibbles[:, 16] & 3)  # RFC 4122 variant
    chars = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[nibbles]
    dash = np.full((n, 1), ord("-"), dtype=np.uint8)
    text = np.hstack([chars[:, :8], dash, chars[:, 8:12], dash, chars[:, 12:16], dash,
                      chars[:, 16:20], dash, chars[:, 20:]])
    offsets = np.arange(0, 36 * (n + 1), 36, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text.tobytes()))


def _join(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _pick(vocab: list, idx: np.ndarray) -> pa.Array:
    return pa.array(vocab, pa.string()).take(pa.array(idx))


def _set_at(values: pa.Array, positions: np.ndarray, new: list | pa.Array) -> pa.Array:
    """Copy of `values` with `new` written at `positions`."""
    mask = np.zeros(len(values), dtype=bool)
    mask[positions] = True
    order = np.argsort(positions, kind="stable")
    filler = pa.array(np.asarray(new, dtype=object)[order], pa.string())
    return pc.replace_with_mask(values, pa.array(mask), filler)


def _timestamps(seconds: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    micros = seconds.astype(np.int64) * 1_000_000
    mask = None if valid is None else ~valid
    return pa.array(micros, pa.int64(), mask=mask).cast(pa.timestamp("us"))


def _emails(first: np.ndarray, last: np.ndarray, n: int, rng: np.random.Generator) -> pa.Array:
    fslug = [_ascii_slug(x) for x in FIRST_NAMES]
    lslug = [_ascii_slug(x) for x in LAST_NAMES]
    f, l_ = _pick(fslug, first), _pick(lslug, last)
    initial = pc.utf8_slice_codeunits(f, 0, 1)
    num = pc.cast(pa.array(rng.integers(1, 10_000, n)), pa.string())
    domain = _pick(EMAIL_DOMAINS, rng.integers(0, len(EMAIL_DOMAINS), n))
    local = pc.choose(
        pa.array(rng.choice(4, n, p=[0.35, 0.25, 0.25, 0.15]).astype(np.int8)),
        _join(f, ".", l_, num), _join(f, l_, num), _join(initial, l_, num), _join(f, "_", l_),
    )
    emails = _join(local, "@", domain)
    # Case and whitespace noise that normalization must absorb.
    style = rng.random(n)
    emails = pc.if_else(pa.array(style < 0.03), pc.utf8_title(emails), emails)
    emails = pc.if_else(pa.array((style >= 0.03) & (style < 0.04)), pc.utf8_upper(emails), emails)
    emails = pc.if_else(pa.array((style >= 0.04) & (style < 0.06)), _join("  ", emails, " "), emails)
    return pc.if_else(pa.array(rng.random(n) < 0.03), pa.scalar(None, pa.string()), emails)


def _malformed_emails(good: pa.Array) -> list[str]:
    """Break real-looking addresses in the four ways CRMs do."""
    out = []
    for i, email in enumerate(good.to_pylist()):
        local, _, domain = (email or "name@example.com").strip().lower().partition("@")
        out.append([f"{local} at {domain}", f"{local}@", f" {local} @{domain}", f"{local}@@{domain}"][i % 4])
    return out


def _build(rows: int, seed: int) -> tuple[pa.Table, pa.Table]:
    if rows < MIN_ROWS:
        raise ValueError(f"rows must be at least {MIN_ROWS}, got {rows}")
    rng = np.random.default_rng(seed)
    n = rows
    idx = np.arange(n)

    # Disjoint positions for the planted dirty rows.
    perm = rng.permutation(n)
    cuts = np.cumsum([NULL_CUSTOMER_IDS, DUPLICATED_IDS, DUPLICATED_IDS, MALFORMED_EMAILS, MALFORMED_PHONES])
    null_ids, dup_targets, dup_sources, bad_emails, bad_phones = np.split(perm[: cuts[-1]], cuts[:-1])

    ids = _join("cus_", pc.utf8_lpad(pc.cast(pa.array(idx + 1), pa.string()), 7, "0"))
    id_np = np.asarray(ids.to_numpy(zero_copy_only=False), dtype=object)
    id_np[dup_targets] = id_np[dup_sources]  # same id, independently drawn other values
    id_np[null_ids] = None
    customer_id = pa.array(id_np, pa.string())

    # Country, then city/state/zip within it.
    codes = list(COUNTRIES)
    shares = np.array([COUNTRIES[c][0] for c in codes])
    country_idx = rng.choice(len(codes), n, p=shares / shares.sum())
    cities = [(c, city, state, pattern) for c in codes for city, state, pattern in COUNTRIES[c][1]]
    city_offset = np.cumsum([0] + [len(COUNTRIES[c][1]) for c in codes])
    n_cities = np.diff(city_offset)
    city_idx = city_offset[country_idx] + (rng.random(n) * n_cities[country_idx]).astype(np.int64)
    zip_pool = [_fill(pattern, rng) for *_, pattern in cities for _ in range(_ZIPS_PER_CITY)]
    zip_pool = [z + f"-{rng.integers(10_000):04d}" if len(z) == 5 and i % 10 == 0 and cities[i // _ZIPS_PER_CITY][0] == "US"
                else z for i, z in enumerate(zip_pool)]  # some US zip+4
    zip_code = _pick(zip_pool, city_idx * _ZIPS_PER_CITY + rng.integers(0, _ZIPS_PER_CITY, n))
    city = _pick([c[1] for c in cities], city_idx)
    state = _pick([c[2] for c in cities], city_idx)
    country = _pick(codes, country_idx)
    noise = rng.random(n)
    country = pc.if_else(pa.array(noise < 0.003), pc.utf8_lower(country), country)
    country = pc.if_else(pa.array((noise >= 0.003) & (noise < 0.005)), _join(" ", country, " "), country)
    country_missing = rng.random(n) < 0.01
    country = pc.if_else(pa.array(country_missing), pa.scalar(None, pa.string()), country)

    # Names and emails.
    first = rng.integers(0, len(FIRST_NAMES), n)
    last = rng.integers(0, len(LAST_NAMES), n)
    email = _emails(first, last, n, rng)
    email = _set_at(email, bad_emails, _malformed_emails(email.take(pa.array(bad_emails))))

    # Phones: a pool of valid numbers per country, written in mixed formats.
    pools = _phone_pools(seed)
    flat = pa.array([form for pool in pools for forms in pool for form in forms], pa.string())
    pool_offset = np.cumsum([0] + [len(p) * 5 for p in pools])
    pool_size = np.array([len(p) for p in pools])
    number = (rng.random(n) * pool_size[country_idx]).astype(np.int64)
    form = rng.choice(5, n, p=_PHONE_FORMAT_P)
    # Without a country a national format is unparseable, so write those internationally.
    form = np.where(country_missing & np.isin(form, [2, 3]), 1, form)
    phone = flat.take(pa.array(pool_offset[country_idx] + number * 5 + form))
    phone = pc.if_else(pa.array(rng.random(n) < 0.08), pa.scalar(None, pa.string()), phone)
    phone = _set_at(phone, bad_phones, [_BAD_PHONES[i % len(_BAD_PHONES)] for i in range(MALFORMED_PHONES)])

    # Orders first; lifetime value and last purchase are derived from them.
    plan_idx = rng.choice(len(PLANS), n, p=_PLAN_P)
    has_orders = rng.random(n) < 0.85
    # Over-dispersed counts and log-normal order sizes give a long spend tail:
    # ~3 orders per customer on average and ~8% of lifetime values above 1000.
    extra_orders = rng.negative_binomial(0.5, 0.5 / (0.5 + 2.4), n)
    orders_count = np.where(has_orders, 1 + extra_orders, 0).astype(np.int32)
    owner = np.repeat(idx, orders_count)
    amount = np.round(rng.lognormal(np.log(70.0), 1.0, len(owner)) * _PLAN_SPEND[plan_idx[owner]], 2)
    lifetime_value = np.round(np.bincount(owner, weights=amount, minlength=n), 2)

    ref = int((DEMO_REFERENCE_DATE - _EPOCH).total_seconds())
    signup = ref - rng.integers(_DAY, 5 * 365 * _DAY, n)
    window_start = np.maximum(signup, ref - 400 * _DAY)
    last_purchase = window_start + (rng.random(n) * (ref - window_start)).astype(np.int64)
    # Earlier orders fall between signup and the last purchase; each customer's
    # first listed order is the last purchase itself.
    first_of_owner = np.r_[True, owner[1:] != owner[:-1]] if len(owner) else np.zeros(0, bool)
    ordered = signup[owner] + (rng.random(len(owner)) * (last_purchase[owner] - signup[owner])).astype(np.int64)
    ordered = np.where(first_of_owner, last_purchase[owner], ordered)
    updated = np.minimum(np.maximum(signup, np.where(has_orders, last_purchase, signup))
                         + rng.integers(0, 30 * _DAY, n), ref)

    device_id = _uuid4_strings(n, rng)
    device_id = pc.if_else(pa.array(rng.random(n) < 0.40), device_id, pa.scalar(None, pa.string()))

    customers = pa.table({
        "customer_id": customer_id,
        "email": email,
        "phone": phone,
        "first_name": _pick(FIRST_NAMES, first),
        "last_name": _pick(LAST_NAMES, last),
        "country": country,
        "state": state,
        "city": city,
        "zip": zip_code,
        "plan": _pick(PLANS, plan_idx),
        "lifetime_value": pa.array(lifetime_value, pa.float64()),
        "orders_count": pa.array(orders_count, pa.int32()),
        "last_purchase_at": _timestamps(last_purchase, has_orders),
        "signup_at": _timestamps(signup),
        "marketing_opt_in": pa.array(rng.random(n) < 0.62),
        "device_id": device_id,
        "updated_at": _timestamps(updated),
    })
    orders = pa.table({
        "order_id": _join("ord_", pc.utf8_lpad(pc.cast(pa.array(np.arange(1, len(owner) + 1)), pa.string()), 8, "0")),
        "customer_id": customer_id.take(pa.array(owner)),
        "ordered_at": _timestamps(ordered),
        "amount": pa.array(amount, pa.float64()),
    })
    return customers, orders


def _remove(path: Path) -> None:
    for p in (path, Path(f"{path}.wal")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def create_demo_warehouse(path: str | Path, *, rows: int = 120_000, seed: int = 7) -> Path:
    """(Re)build the demo DuckDB file at `path`; readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    customers, orders = _build(rows, seed)
    # Same directory so os.replace is an atomic rename on one filesystem.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        con = duckdb.connect(str(tmp))
        try:
            con.register("customers_src", customers)
            con.register("orders_src", orders)
            con.execute("CREATE TABLE customers AS SELECT * FROM customers_src")
            con.execute("CREATE TABLE orders AS SELECT * FROM orders_src")
            con.execute("CHECKPOINT")  # everything in the main file, no .wal to move
        finally:
            con.close()
        # A stale WAL next to the target would be replayed onto the new file.
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}.wal").unlink()
        os.replace(tmp, path)
    finally:
        _remove(tmp)
    return path


@contextlib.contextmanager
def _file_lock(lock_path: Path):
    try:
        import fcntl
    except ImportError:  # Windows: the atomic replace alone still prevents corruption
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_demo_warehouse(path: str | Path, *, rows: int = 120_000, seed: int = 7) -> Path:
    """Build the demo warehouse only if `path` does not exist; safe across processes."""
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # The lock file is left in place: deleting it would let a waiter lock a stale inode.
    with _file_lock(path.with_name(path.name + ".lock")):
        if not path.exists():  # another process may have built it while we waited
            create_demo_warehouse(path, rows=rows, seed=seed)
    return path
