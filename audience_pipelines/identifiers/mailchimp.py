"""Mailchimp's member address: the subscriber hash (destination-apis.md section 0 and section 8).

Mailchimp names a list member by the MD5 hex of its lowercased email address (the `id` of a
member, the `{subscriber_hash}` of `/lists/{list_id}/members/{subscriber_hash}`). It is an
address, not a privacy hash: the API itself takes and returns plain emails.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from audience_pipelines.identifiers.hashing import as_string_array, map_unique


def subscriber_hash(email: str) -> str:
    """MD5 hex of the lowercased email (surrounding blanks dropped, as Mailchimp stores addresses)."""
    return hashlib.md5(email.strip().lower().encode("utf-8")).hexdigest()


def subscriber_hashes(emails: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`subscriber_hash` of each value, computed once per distinct value; nulls and blanks stay null."""
    return map_unique(as_string_array(emails), lambda e: subscriber_hash(e) if e and e.strip() else None)
