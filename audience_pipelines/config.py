"""A declared destination, validated once when definitions load; opened when a run starts.

Loading needs no secret: a secret setting holds the name of its environment variable
(`EnvSecret`), read when a run opens the client. Errors name the destination and the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from audience_pipelines.contract import (
    Capabilities, ConfigError, Destination, DestinationSettings, DestinationType, EnvSecret,
)
from audience_pipelines.contract.settings import describe_validation, secret_fields, text_fields
from audience_pipelines.destinations import destination_type

DATA_DIR_PLACEHOLDER = "{data_dir}"
_FROM_ENV = "set-from-environment"  # a non-secret text setting's value until a run reads its variable


def resolve_placeholders(value, data_dir: Path):
    if isinstance(value, str):
        return value.replace(DATA_DIR_PLACEHOLDER, str(data_dir))
    return value


def text_settings(type_name: str) -> frozenset[str]:
    """The settings of a destination type that hold text (ids, names, URLs): loaded as written in YAML."""
    try:
        return text_fields(destination_type(type_name).settings_model)
    except ConfigError:
        return frozenset()


@dataclass(frozen=True)
class ConfiguredDestination:
    """One destination as declared: its type and validated settings."""

    name: str
    type: type[DestinationType]
    settings: DestinationSettings
    env_text: Mapping[str, str] = field(default_factory=dict)  # non-secret text settings read at open

    @property
    def capabilities(self) -> Capabilities:
        return self.type.capabilities(self.settings)

    def open(self, data_dir: Path, environ: Mapping[str, str] = os.environ) -> Destination:
        """Read the secrets, resolve `{data_dir}`, build the client (importing it now)."""
        updates, missing = {}, {}
        for key in type(self.settings).model_fields:
            value = getattr(self.settings, key)
            if key in self.env_text:
                value = environ.get(self.env_text[key]) or (None if value == _FROM_ENV else value)
                if value is None:
                    missing[key] = self.env_text[key]
                    continue
            if isinstance(value, EnvSecret):
                try:
                    value = EnvSecret(inline=resolve_placeholders(value.value(environ), data_dir))
                except ConfigError:
                    missing[key] = value.var
                    continue
            elif isinstance(value, str):
                value = resolve_placeholders(value, data_dir)
            updates[key] = value
        if missing:  # every one at once: a person sets them all before the next try
            raise ConfigError(f"destination '{self.name}' needs its {', '.join(missing)}: set the environment "
                              f"variable{'s' if len(missing) > 1 else ''} {', '.join(missing.values())}")
        try:
            settings = type(self.settings).model_validate({**self.settings.__dict__, **updates})
        except ValidationError as exc:
            raise ConfigError(f"destination '{self.name}' ({self.type.name}): {describe_validation(exc)}") from None
        return self.type.open(settings)


def configure_destination(name: str, type_name: str, settings: Mapping, from_env: Mapping[str, str]
                          ) -> ConfiguredDestination:
    """Validate a declared destination (no secret is read)."""
    dtype = destination_type(type_name) if type_name else None
    if dtype is None:
        raise ConfigError(f"destination '{name}': no type given")
    model = dtype.settings_model
    secrets = secret_fields(model)
    inline = sorted(k for k in settings if k in secrets and not secrets[k])
    if inline:
        raise ConfigError(
            f"destination '{name}': {inline} must not be written in YAML; "
            f"name the environment variable under from_env, e.g. from_env: {{{inline[0]}: MY_VAR}}")
    fields = model.model_fields
    unknown = sorted(set(from_env) - set(fields))
    if unknown:
        raise ConfigError(f"destination '{name}': from_env names unknown setting(s) {unknown}; "
                          f"settings of type '{type_name}' are {sorted(fields)}")
    texts = text_fields(model)
    not_text = sorted(set(from_env) - texts)
    if not_text:
        raise ConfigError(f"destination '{name}': from_env can set text settings only; {not_text} are not text")
    missing = sorted(k for k in secrets if fields[k].is_required() and k not in from_env and k not in settings)
    if missing:
        raise ConfigError(f"destination '{name}' ({type_name}): the secret setting '{missing[0]}' is missing; name "
                          f"the environment variable that holds it under from_env, e.g. "
                          f"from_env: {{{missing[0]}: MY_VAR}}")
    values = dict(settings)
    env_text = {}
    for key, var in from_env.items():
        if key in secrets:
            values[key] = EnvSecret(var, inline=settings.get(key))
        else:  # an inline value, where given, is the default
            values.setdefault(key, _FROM_ENV)
            env_text[key] = var
    try:
        validated = model(**values)
    except ValidationError as exc:
        # A text setting whose variable a run reads later is checked then, with its real value.
        later = {k for k, v in values.items() if v == _FROM_ENV}
        if any(not err["loc"] or err["loc"][0] not in later for err in exc.errors()):
            raise ConfigError(f"destination '{name}' ({type_name}): {describe_validation(exc)}") from None
        validated = model.model_construct(**values)
    return ConfiguredDestination(name, dtype, validated, env_text)


def check_destination_config(name: str, type_name: str, settings: Mapping, from_env: Mapping[str, str]) -> None:
    configure_destination(name, type_name, settings, from_env)


def build_destination(name: str, type_name: str, settings: Mapping, from_env: Mapping[str, str],
                      data_dir: Path, environ: Mapping[str, str] = os.environ) -> Destination:
    """Configure and open in one step (scripts and tests)."""
    return configure_destination(name, type_name, settings, from_env).open(data_dir, environ)
