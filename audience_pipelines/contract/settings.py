"""Typed destination settings: secrets typed as secrets and read from environment variables.

A secret setting holds an `EnvSecret`: the name of the variable, read only when a client is
built (so loading definitions needs no secret), or an inline value where the type allows one
(a URL that may carry a password) and in tests. Its text never appears in a repr, a dump or an
error.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import core_schema

from audience_pipelines.contract.errors import ConfigError


class EnvSecret:
    """A secret: the environment variable holding it, and an inline fallback value."""

    __slots__ = ("var", "_inline")

    def __init__(self, var: str | None = None, inline: str | None = None):
        self.var, self._inline = var, inline

    def value(self, environ: Mapping[str, str] | None = None) -> str:
        environ = os.environ if environ is None else environ
        if self.var and environ.get(self.var):
            return environ[self.var]
        if self._inline is not None:
            return self._inline
        raise ConfigError(f"the environment variable {self.var} is not set")

    @property
    def is_set(self) -> bool:
        return bool(self._inline is not None or (self.var and os.environ.get(self.var)))

    def __repr__(self) -> str:
        return f"EnvSecret(${self.var})" if self.var else "EnvSecret(inline)"

    def __eq__(self, other) -> bool:
        return isinstance(other, EnvSecret) and (self.var, self._inline) == (other.var, other._inline)

    def __hash__(self) -> int:
        return hash((self.var, self._inline))

    @classmethod
    def __get_pydantic_core_schema__(cls, source, handler):
        def coerce(v):
            if isinstance(v, EnvSecret):
                return v
            if isinstance(v, str) and v:
                return EnvSecret(inline=v)
            raise ValueError("expected a secret (an environment variable named under from_env)")

        return core_schema.no_info_plain_validator_function(
            coerce, serialization=core_schema.plain_serializer_function_ser_schema(repr))


class InlineAllowed:
    """Marks a secret setting that YAML may also give inline (a demo URL with no password)."""


SecretInlineAllowed = typing.Annotated[EnvSecret, InlineAllowed()]


class DestinationSettings(BaseModel):
    """Base of every destination type's settings: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


def _unwrap(annotation) -> tuple[Any, tuple]:
    if typing.get_origin(annotation) is typing.Annotated:
        inner, *meta = typing.get_args(annotation)
        base, more = _unwrap(inner)
        return base, (*meta, *more)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return annotation, ()


def secret_fields(model: type[BaseModel]) -> dict[str, bool]:
    """Secret settings of a model -> whether YAML may give them inline."""
    out = {}
    for name, f in model.model_fields.items():
        base, meta = _unwrap(f.annotation)
        if base is EnvSecret:
            out[name] = any(isinstance(m, InlineAllowed) for m in (*meta, *f.metadata))
    return out


def text_fields(model: type[BaseModel]) -> frozenset[str]:
    """Settings that hold text (ids, names, URLs, secrets): YAML values are kept as written."""
    out = set()
    for name, f in model.model_fields.items():
        base, _ = _unwrap(f.annotation)
        if base is str or base is EnvSecret:
            out.add(name)
    return frozenset(out)


def describe_validation(exc: ValidationError) -> str:
    # include_input=False: an invalid secret must not end up in the message.
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        key = ".".join(str(p) for p in err["loc"]) or "settings"
        parts.append(f"'{key}': {err['msg']}")
    return "; ".join(parts)
