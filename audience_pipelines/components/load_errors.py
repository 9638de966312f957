"""Every YAML mistake in a component, reported as `<file> (document N): <kind> '<name>', key '<path>': <what>`.

Dagster validates a component's YAML attributes in two steps, both inside `YamlDecl._load_component`:

1. `_process_attributes_with_enriched_validation_err` checks them against the model Dagster derives
   from the class (unknown and missing keys, nested shapes; every field also accepts a string there,
   for templates), raising a pydantic ValidationError that knows the line but not the component;
2. `Component.load` resolves templates and builds the class, whose own validation catches wrong
   types and values (`max_removal_share: lots`, an unknown `mode`), raising a ValidationError or a
   ResolutionException.

`install()` wraps both for this package's components: step 1 hands its errors on to step 2 instead of
raising, and step 2, which has the load context (file and document), raises one ConfigError line per
mistake, with a "did you mean" from the component's own field names and Literal values. catalog.py
(imported by every component module) installs them; Dagster looks both names up only after importing
a document's component class, so even the first document loaded goes through them.
"""

from __future__ import annotations

import collections.abc
import difflib
import re
import types
import typing
from typing import Any, Literal, get_args, get_origin

import dagster as dg
from dagster.components.core import decl as _decl
from dagster.components.resolved.errors import ResolutionException
from pydantic import BaseModel, TypeAdapter, ValidationError

from audience_pipelines.engine import AudiencePipelinesError, ConfigError

_PACKAGE = __name__.split(".")[0]
# How a component is called in messages; others by their class name, lower-cased.
KINDS = {"AudienceSync": "sync"}
_TYPE_ERRORS = {"model_type", "model_attributes_type", "dict_type", "list_type", "tuple_type", "set_type",
                "string_type", "int_type", "int_parsing", "int_from_float", "float_type", "float_parsing",
                "bool_type", "bool_parsing", "none_required", "is_instance_of", "union_tag_invalid"}
_SCALARS = {str: "text", int: "a whole number", float: "a number", bool: "true or false"}


def did_you_mean(value: Any, choices: typing.Iterable[Any]) -> str:
    """`; did you mean 'x'?` for the closest choice, or ''."""
    by_text = {str(c): c for c in choices}
    close = difflib.get_close_matches(str(value), list(by_text), n=1, cutoff=0.6)
    return f"; did you mean '{by_text[close[0]]}'?" if close else ""


def is_ours(cls: type) -> bool:
    return isinstance(cls, type) and cls.__module__.split(".")[0] == _PACKAGE


def owner(cls: type, attributes: Any) -> str:
    """`sync 'vip_to_crm'`; the kind alone when the name is missing or not a name."""
    kind = KINDS.get(cls.__name__, cls.__name__.lower())
    name = attributes.get("name") if isinstance(attributes, dict) else None
    if name is None and issubclass(cls, BaseModel) and "name" in cls.model_fields:
        default = cls.model_fields["name"].default  # Warehouse: name defaults to main
        name = default if isinstance(default, str) else None
    return f"{kind} '{name}'" if isinstance(name, (str, int, float)) and not isinstance(name, bool) else kind


# --- the component's declared types, walked along a key path -----------------------------------------

def _alternatives(tp: Any) -> list[Any]:
    origin = get_origin(tp)
    if origin is typing.Annotated:
        return _alternatives(get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [alt for arg in get_args(tp) for alt in _alternatives(arg)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _step(tps: list[Any], segment: Any) -> list[Any]:
    out = []
    for tp in (alt for t in tps for alt in _alternatives(t)):
        origin, args = get_origin(tp), get_args(tp)
        if _is_model(tp) and segment in tp.model_fields:
            out.append(tp.model_fields[segment].annotation)
        elif origin in (dict, collections.abc.Mapping) and len(args) == 2:
            out.append(args[1])
        elif origin in (list, tuple, collections.abc.Sequence) and args and isinstance(segment, int):
            out.append(args[0])
    return out


def _types_at(cls: type, path: list[Any]) -> list[Any]:
    tps: list[Any] = [cls]
    for segment in path:
        tps = _step(tps, segment)
    return [alt for t in tps for alt in _alternatives(t)]


def _keys_at(cls: type, path: list[Any]) -> list[str]:
    return list(dict.fromkeys(k for tp in _types_at(cls, path) if _is_model(tp) for k in tp.model_fields))


def _choices_at(cls: type, path: list[Any]) -> list[Any]:
    return list(dict.fromkeys(v for tp in _types_at(cls, path) if get_origin(tp) is Literal for v in get_args(tp)))


def _describe(cls: type, path: list[Any]) -> str:
    parts = []
    for tp in _types_at(cls, path):
        if tp in _SCALARS:
            parts.append(_SCALARS[tp])
        elif get_origin(tp) is Literal:
            parts.append(f"one of {list(get_args(tp))}")
        elif _is_model(tp):
            parts.append(f"a mapping (keys: {', '.join(tp.model_fields)})")
        elif tp is dict or get_origin(tp) in (dict, collections.abc.Mapping):
            parts.append("a mapping")
        elif tp is list or get_origin(tp) in (list, tuple, collections.abc.Sequence):
            parts.append("a list")
    return " or ".join(dict.fromkeys(parts))


# --- pydantic errors -> lines ------------------------------------------------------------------------

def _key_path(loc: tuple, data: Any, error_type: str) -> list[Any]:
    """The keys of `loc` that are in the YAML; the rest name union members (`str`, `CronSchedule`)."""
    kept, node = [], data
    for i, segment in enumerate(loc):
        if isinstance(node, dict) and segment in node:
            node = node[segment]
        elif isinstance(node, list) and isinstance(segment, int) and 0 <= segment < len(node):
            node = node[segment]
        elif not (error_type == "missing" and i == len(loc) - 1):
            continue
        kept.append(segment)
    return kept


def format_path(path: list[Any]) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return text or "attributes"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _what(cls: type, path: list[Any], error: dict) -> str:
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        known = _keys_at(cls, path[:-1])
        hint = did_you_mean(path[-1], known)
        return f"unknown key{hint}" if hint else f"unknown key (the keys are: {', '.join(known)})"
    if kind == "missing":
        return "required, but not given"
    if kind == "literal_error":
        choices = _choices_at(cls, path)
        return f"{_shown(value)} is not one of {choices}{did_you_mean(value, choices)}"
    if kind in _TYPE_ERRORS:
        expected = _describe(cls, path)
        if expected:
            return f"expected {expected}, got {_shown(value)}"
    if kind in ("value_error", "assertion_error") and error.get("ctx", {}).get("error") is not None:
        return str(error["ctx"]["error"])
    return f"{error['msg']} (got {_shown(value)})"


def lines_for(cls: type, errors: list[dict], data: Any) -> list[tuple[str, str]]:
    """(key path, what is wrong) per mistake; a union's other members' type mismatches are left out."""
    located = [(_key_path(tuple(e["loc"]), data, e["type"]), e) for e in errors]
    deeper = {tuple(p[:i]) for p, _ in located for i in range(len(p))}
    out: dict[tuple[str, str], None] = {}
    for path, error in located:
        if error["type"] in _TYPE_ERRORS and tuple(path) in deeper:
            continue  # another member of the union matched the shape and failed further in
        out[(format_path(path), _what(cls, path, error))] = None
    return list(out)


_RESOLUTION_HEAD = re.compile(r"^.+:\d+ - attributes\.?(?P<path>\S*)$")


def _resolution_lines(exc: ResolutionException) -> tuple[str | None, str]:
    """(key path, what is wrong) from Dagster's template-error text, whose first line locates it."""
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    head = _RESOLUTION_HEAD.match(lines[0]) if lines else None
    path = head.group("path") or "attributes" if head else None
    return path, lines[-1].strip() if lines else type(exc).__name__


# --- the two hooks -----------------------------------------------------------------------------------

class _Rejected:
    """Attributes that failed step 1, carried to `Component.load`, where the file and document are known."""

    def __init__(self, errors: list[dict], data: Any, located: ValidationError):
        self.errors, self.data, self.located = errors, data, located


def _component_for_model(model_cls: Any) -> type | None:
    todo = list(dg.Component.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if is_ours(cls) and cls.get_model_cls() is model_cls:
            return cls
    return None


def _raw_attributes(context: Any) -> Any:
    file_model = getattr(getattr(context, "component_decl", None), "component_file_model", None)
    return getattr(file_model, "attributes", None)


def load_error(cls: type, context: Any, mistakes: list[tuple[str | None, str]]) -> ConfigError:
    from audience_pipelines.components.catalog import where

    at, who = where(context), owner(cls, _raw_attributes(context))
    return ConfigError("\n".join(f"{at}: {who}, key '{path}': {what}" if path else f"{at}: {who}: {what}"
                                 for path, what in mistakes))


def install() -> None:
    """Wrap Dagster's two validation steps for this package's components (once per process)."""
    if getattr(_decl._process_attributes_with_enriched_validation_err, "_audience_pipelines", False):
        return
    validate_attributes = _decl._process_attributes_with_enriched_validation_err
    load = dg.Component.load.__func__

    def _validate_attributes(source_tree, component_file_model, model_cls):
        try:
            return validate_attributes(source_tree, component_file_model, model_cls)
        except ValidationError as located:
            if _component_for_model(model_cls) is None:
                raise
            try:  # again, for the errors as pydantic gives them (Dagster folds each key path into text)
                TypeAdapter(model_cls).validate_python(component_file_model.attributes)
            except ValidationError as raw:
                return _Rejected(raw.errors(), component_file_model.attributes, located)
            raise

    def _load(cls, attributes, context):
        if not is_ours(cls):
            return load(cls, attributes, context)
        if isinstance(attributes, _Rejected):
            raise load_error(cls, context, lines_for(cls, attributes.errors, attributes.data)) \
                from attributes.located
        try:
            return load(cls, attributes, context)
        except AudiencePipelinesError:
            raise
        except ValidationError as exc:
            raise load_error(cls, context, lines_for(cls, exc.errors(), _raw_attributes(context))) from exc
        except ResolutionException as exc:
            inner = exc.__context__
            if isinstance(inner, AudiencePipelinesError):
                raise inner from None
            raise load_error(cls, context, [_resolution_lines(exc)]) from exc

    _validate_attributes._audience_pipelines = True  # type: ignore[attr-defined]
    _decl._process_attributes_with_enriched_validation_err = _validate_attributes
    dg.Component.load = classmethod(_load)  # type: ignore[method-assign]


def first_user_error(exc: BaseException) -> AudiencePipelinesError | None:
    """The first of our errors in an exception's chain (Dagster wraps load errors in its own)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, AudiencePipelinesError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
