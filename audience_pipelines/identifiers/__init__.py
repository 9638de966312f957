"""Identifier normalization and per-platform hashing on Arrow arrays.

`kinds` is plain data; the rest (pyarrow, phonenumbers) loads on first use, so a destination
type's light module can name its identifier kinds cheaply.
"""

from __future__ import annotations

import importlib

from audience_pipelines.identifiers.kinds import KINDS, META_FIELDS

_LAZY = {"Normalized": "canonical", "normalize": "canonical", "sha256_hex": "hashing", "to_meta": "meta"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(name)


__all__ = ["KINDS", "META_FIELDS", "Normalized", "normalize", "sha256_hex", "to_meta"]
