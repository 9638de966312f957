"""Segment membership: per record, the audiences it belongs to now, as one text field.

The value is the audience names in sorted order joined by ';' (the form multi-select properties
take in CRMs), and '' for a record in none, so a destination clears the field when a record leaves
its last audience. Each audience costs one hash-set probe over the records; the combinations of
audiences a record can hold are encoded as a bitmask and turned into text once per combination.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SEGMENTS_COLUMN = "audience_membership"  # the derived field's name in a sync's `fields`
SEPARATOR = ";"
MAX_AUDIENCES = 63  # one bit each in an int64 mask


def segment_membership(keys: pa.Array | pa.ChunkedArray, audiences: dict[str, pa.Array | pa.ChunkedArray]
                       ) -> pa.Array:
    """For each key, the audiences (name -> their member keys) that hold it: 'a;b', or '' for none."""
    if len(audiences) > MAX_AUDIENCES:
        raise ValueError(f"segment membership covers at most {MAX_AUDIENCES} audiences per entity, "
                         f"not {len(audiences)}")
    names = sorted(audiences)
    keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
    mask = np.zeros(len(keys), dtype=np.int64)
    for bit, name in enumerate(names):
        members = audiences[name]
        members = members.combine_chunks() if isinstance(members, pa.ChunkedArray) else members
        held = np.asarray(pc.is_in(keys, value_set=members.cast(keys.type)).fill_null(False), dtype=bool)
        mask |= held.astype(np.int64) << bit
    codes, index = np.unique(mask, return_inverse=True)
    texts = [SEPARATOR.join(n for bit, n in enumerate(names) if code >> bit & 1) for code in codes.tolist()]
    return pa.array(texts, pa.string()).take(pa.array(index.astype(np.int64)))
