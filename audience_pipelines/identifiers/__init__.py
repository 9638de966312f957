"""Identifier normalization and per-platform hashing on Arrow arrays."""

from audience_pipelines.identifiers.canonical import KINDS, Normalized, normalize
from audience_pipelines.identifiers.hashing import sha256_hex
from audience_pipelines.identifiers.meta import META_FIELDS, to_meta

__all__ = ["KINDS", "META_FIELDS", "Normalized", "normalize", "sha256_hex", "to_meta"]
