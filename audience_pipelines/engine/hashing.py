"""64-bit hashes of keys and sent rows, computed with numpy over Arrow buffers.

`key_hash` lets the diff match members on a uint64 instead of a string;
`row_hash` tells whether what we would send differs from what we sent.
Both are deterministic across processes and platforms (no Python `hash`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_NULL = np.uint64(0x6A09E667F3BCC909)  # sentinel so null differs from any value
_CHUNK_ROWS = 262_144  # bounds the per-byte temporaries of string hashing


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Bijective avalanche of uint64 values (splitmix64 finaliser)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _validity(arr: pa.Array) -> np.ndarray | None:
    if arr.null_count == 0:
        return None
    return np.asarray(arr.is_valid(), dtype=bool)


_MAX_PAD = 256  # strings up to this many bytes take the fixed-width fast path


def _mix_words(words: np.ndarray, word_pos: np.ndarray | np.uint64, seed: np.uint64) -> np.ndarray:
    with np.errstate(over="ignore"):
        return splitmix64(words ^ (word_pos * _M1 + seed))


def _hash_binary_chunk(arr: pa.Array, seed: np.uint64) -> np.ndarray:
    """Hash each string as a sum of mixed 8-byte words, position and length salted.

    NUL padding is safe because the byte length is folded in at the end.
    """
    n = len(arr)
    if n == 0:
        return np.empty(0, dtype=np.uint64)
    if not (pa.types.is_binary(arr.type) or pa.types.is_string(arr.type)):
        arr = arr.cast(pa.binary())
    arr = arr.fill_null(b"" if pa.types.is_binary(arr.type) else "")
    lengths = pc.binary_length(arr).to_numpy(zero_copy_only=False).astype(np.uint64)
    max_len = int(lengths.max())
    if max_len <= _MAX_PAD and pa.types.is_string(arr.type):
        width = max(8, (max_len + 7) // 8 * 8)
        # Fixed-width padding turns the strings into an n x (width/8) matrix of words.
        padded = pc.ascii_rpad(arr, width, padding="\0")
        if len(padded.buffers()[2]) >= n * width and int(pc.sum(pc.binary_length(padded)).as_py()) == n * width:
            words = np.frombuffer(padded.buffers()[2], dtype=np.uint64, count=n * width // 8)
            words = words.reshape(n, width // 8)
            words_per = np.maximum((lengths + np.uint64(7)) // np.uint64(8), np.uint64(1))
            with np.errstate(over="ignore"):
                acc = _mix_words(words[:, 0], np.uint64(0), seed)
                for j in range(1, width // 8):
                    # Words past a string's own length must not count, or the hash would depend on the chunk.
                    acc += _mix_words(words[:, j], np.uint64(j), seed) * (words_per > j)
                return splitmix64(acc + lengths * _M2)
    return _hash_ragged(arr, lengths.astype(np.int64), seed)


def _hash_ragged(arr: pa.Array, lengths: np.ndarray, seed: np.uint64) -> np.ndarray:
    """Same hash as the fast path, for chunks holding very long strings."""
    n = len(arr)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int32, count=arr.offset + n + 1)[arr.offset:]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.empty(0, np.uint8)
    words_per = np.maximum((lengths + 7) // 8, 1)
    word_start = np.zeros(n, dtype=np.int64)
    np.cumsum(words_per[:-1], out=word_start[1:])
    total_words = int(word_start[-1] + words_per[-1])
    padded = np.zeros(total_words * 8, dtype=np.uint8)
    total_bytes = int(lengths.sum())
    if total_bytes:
        row_of_byte = np.repeat(np.arange(n, dtype=np.int64), lengths)
        within = np.arange(total_bytes, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        padded[word_start[row_of_byte] * 8 + within] = data[offsets[row_of_byte] + within]
    words = padded.view(np.uint64)
    pos = np.arange(total_words, dtype=np.int64) - np.repeat(word_start, words_per)
    with np.errstate(over="ignore"):
        summed = np.add.reduceat(_mix_words(words, pos.astype(np.uint64), seed), word_start)
        return splitmix64(summed + lengths.astype(np.uint64) * _M2)


def hash_strings(values: pa.Array | pa.ChunkedArray, seed: int = 0) -> np.ndarray:
    """uint64 hash of each string/binary value; nulls map to a fixed sentinel.

    Different seeds give independent hashes of the same bytes.
    """
    useed = np.uint64(seed)
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    out = np.empty(sum(len(c) for c in chunks), dtype=np.uint64)
    pos = 0
    for chunk in chunks:
        if pa.types.is_dictionary(chunk.type):
            # Hash the few dictionary values once, gather by index.
            dict_hash = hash_strings(chunk.dictionary, seed)
            idx = chunk.indices.fill_null(0).to_numpy(zero_copy_only=False)
            h = dict_hash[idx] if len(dict_hash) else np.zeros(len(chunk), np.uint64)
            valid = _validity(chunk)
            if valid is not None:
                h = np.where(valid, h, _NULL)
            out[pos : pos + len(chunk)] = h
            pos += len(chunk)
            continue
        if not (pa.types.is_string(chunk.type) or pa.types.is_binary(chunk.type)
                or pa.types.is_large_string(chunk.type) or pa.types.is_large_binary(chunk.type)):
            chunk = chunk.cast(pa.string())
        for lo in range(0, len(chunk), _CHUNK_ROWS):
            part = chunk.slice(lo, _CHUNK_ROWS)
            # A fresh copy has offsets starting at zero, which _hash_binary_chunk relies on.
            part = pa.concat_arrays([part]) if part.offset else part
            h = _hash_binary_chunk(part, useed)
            valid = _validity(part)
            if valid is not None:
                h = np.where(valid, h, _NULL)
            out[pos : pos + len(part)] = h
            pos += len(part)
    return out


def hash_column(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """uint64 per row for any column type; equal values give equal hashes."""
    t = values.type
    if pa.types.is_dictionary(t) or pa.types.is_string(t) or pa.types.is_large_string(t) \
            or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return hash_strings(values)
    if pa.types.is_floating(t):
        f = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)
        f = np.where(f == 0.0, 0.0, f)  # -0.0 and 0.0 are the same value
        bits = np.ascontiguousarray(f).view(np.uint64)
    elif pa.types.is_integer(t) or pa.types.is_boolean(t):
        bits = pc.cast(values, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False).view(np.uint64)
    elif pa.types.is_temporal(t):
        # 32-bit temporals cast to int64 only through int32. The unit is kept, so a date and a
        # timestamp of one instant hash differently; a type change resends, which is right.
        as_int = pa.int32() if t.bit_width == 32 else pa.int64()
        ints = pc.cast(values, as_int).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        bits = ints.view(np.uint64)
    elif pa.types.is_null(t):
        return np.full(len(values), _NULL, dtype=np.uint64)
    else:
        return hash_strings(pc.cast(values, pa.string()))
    h = splitmix64(bits.astype(np.uint64, copy=False))
    if values.null_count:
        valid = np.asarray(values.is_valid(), dtype=bool)
        h = np.where(valid, h, _NULL)
    return h


_KEY_SEED = 0
_ROW_KEY_SEED = 0x5BD1E995  # an independent hash of the key bytes, for row hashes


def key_hash(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return hash_strings(keys, _KEY_SEED)


def row_hash(columns: list[pa.Array | pa.ChunkedArray], keys: pa.Array | pa.ChunkedArray | None) -> np.ndarray:
    """Combine finalised column hashes with distinct odd multipliers, then finalise once.

    A change in any one column always changes the sum (odd multipliers are
    invertible mod 2^64). The key bytes are folded in with a hash independent
    of `key_hash`, so two members whose key hashes collide still differ here,
    and the diff's verification of candidate updates catches the collision.
    """
    n = len(keys) if keys is not None else (len(columns[0]) if columns else 0)
    with np.errstate(over="ignore"):
        acc = hash_strings(keys, _ROW_KEY_SEED) if keys is not None else np.zeros(n, np.uint64)
        for i, col in enumerate(columns):
            mult = np.uint64((0x9E3779B97F4A7C15 * (2 * i + 3)) & 0xFFFFFFFFFFFFFFFF) | np.uint64(1)
            acc += hash_column(col) * mult
        return splitmix64(acc)
