"""Turning declared settings into destination objects, with errors that name the key."""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from audience_pipelines.destinations import DESTINATION_TYPES, Destination
from audience_pipelines.engine import ConfigError

DATA_DIR_PLACEHOLDER = "{data_dir}"
_SECRET_PLACEHOLDER = "set-from-environment"


def resolve_placeholders(value, data_dir: Path):
    if isinstance(value, str):
        return value.replace(DATA_DIR_PLACEHOLDER, str(data_dir))
    return value


def _is_text(annotation) -> bool:
    """`str` or `str | None` (possibly Annotated): a setting that holds text."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _is_text(typing.get_args(annotation)[0])
    if annotation is str:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = set(typing.get_args(annotation))
        return str in args and args <= {str, type(None)}
    return False


def text_settings(type_name: str) -> frozenset[str]:
    """The settings of a destination type that hold text (ids, names, URLs): loaded as written in YAML."""
    cls = DESTINATION_TYPES.get(type_name)
    if cls is None:
        return frozenset()
    return frozenset(k for k, f in cls.settings_model.model_fields.items() if _is_text(f.annotation))


def _describe(exc: ValidationError) -> str:
    # include_input=False: an invalid secret must not end up in the message.
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        key = ".".join(str(p) for p in err["loc"]) or "settings"
        parts.append(f"'{key}': {err['msg']}")
    return "; ".join(parts)


def check_destination_config(name: str, type_name: str, settings: Mapping, from_env: Mapping[str, str]) -> None:
    """Validate at load time, without reading any secret."""
    cls = DESTINATION_TYPES.get(type_name)
    if cls is None:
        raise ConfigError(f"destination '{name}': unknown type '{type_name}'; known types: {sorted(DESTINATION_TYPES)}")
    inline_secrets = sorted(set(settings) & set(cls.secret_settings) - {"url"})
    if inline_secrets:
        raise ConfigError(
            f"destination '{name}': {inline_secrets} must not be written in YAML; "
            f"name the environment variable under from_env, e.g. from_env: {{{inline_secrets[0]}: MY_VAR}}")
    fields = cls.settings_model.model_fields
    unknown = sorted(set(from_env) - set(fields))
    if unknown:
        raise ConfigError(f"destination '{name}': from_env names unknown setting(s) {unknown}; "
                          f"settings of type '{type_name}' are {sorted(fields)}")
    values = {**settings, **{k: _SECRET_PLACEHOLDER for k in from_env}}
    try:
        cls.settings_model(**values)
    except ValidationError as exc:
        raise ConfigError(f"destination '{name}' ({type_name}): {_describe(exc)}") from None


def build_destination(name: str, type_name: str, settings: Mapping, from_env: Mapping[str, str],
                      data_dir: Path, environ: Mapping[str, str] = os.environ) -> Destination:
    check_destination_config(name, type_name, settings, from_env)
    cls = DESTINATION_TYPES[type_name]
    values = {k: resolve_placeholders(v, data_dir) for k, v in settings.items()}
    for setting, var in from_env.items():
        value = environ.get(var)
        if value:
            values[setting] = resolve_placeholders(value, data_dir)
        elif setting not in values:  # an inline value, where allowed, is the default
            raise ConfigError(f"destination '{name}' needs its {setting}: set the environment variable {var}")
    try:
        return cls(cls.settings_model(**values))
    except ValidationError as exc:
        raise ConfigError(f"destination '{name}' ({type_name}): {_describe(exc)}") from None
