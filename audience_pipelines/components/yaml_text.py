"""Fields that hold text load as the text written in YAML.

Two steps of loading would otherwise change what a user wrote in such a field:

- YAML 1.1 (PyYAML, which Dagster uses) types plain scalars: `4242` is an int, `0042` and `0123` are
  octal ints (34, 83), `1_000` is 1000, `12:30` is 750, `1.0` a float, `yes` / `no` booleans.
- Dagster renders every string through jinja's `NativeTemplate`, whose output goes through
  `ast.literal_eval`: the quoted `"4242"` becomes int 4242, `"1e5"` a float, `"0x10"` 16, `"True"` a bool.

`resolve_text` undoes both for a text field. A string with no jinja delimiter is kept as written
(jinja would only have evaluated it). A template is rendered as Dagster renders it (same scope, same
located errors); when that yields something other than text, it is rendered again as text. A scalar
that YAML typed as a number or a boolean is read back from the YAML file as written: the value is
found at its path in the document Dagster parsed, by the source positions Dagster recorded, and used
only when it is the same value YAML gave (so an edited file never lends another value). A null stays
None (an unset optional setting).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Annotated, Any

import dagster as dg
import jinja2
import yaml
from dagster_shared.yaml_utils import DagsterYamlLoader  # the loader (and implicit tags) Dagster parses with
from dagster_shared.yaml_utils.source_position import LineCol

_TEMPLATE_DELIMITERS = ("{{", "{%", "{#")  # jinja's defaults; a string without them renders to itself
_TYPED_TAGS = frozenset({"tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"})


def is_template(value: str) -> bool:
    return any(d in value for d in _TEMPLATE_DELIMITERS)


def render_text(context: dg.ResolutionContext, value: str) -> str | None:
    """A string for a text field: as written, or its template rendered as text."""
    if not is_template(value):
        return value
    native = context.resolve_value(value)  # Dagster's own rendering, errors naming file and line
    if native is None or isinstance(native, str):
        return native
    # jinja's NativeTemplate turned the output into a Python value; the field wants the output text.
    return jinja2.Template(value).render(**context.scope)


def _start(node: yaml.Node) -> LineCol:
    return LineCol(line=node.start_mark.line + 1, col=node.start_mark.column + 1)


@functools.lru_cache(maxsize=32)
def _documents(text: str) -> dict[LineCol, yaml.Node]:
    """Each document's root node of a YAML file, by where it starts (merge keys applied, as on load)."""
    loader = DagsterYamlLoader(text)
    try:
        roots = []
        while loader.check_node():
            roots.append(loader.get_node())
        seen: set[int] = set()
        todo: list[yaml.Node] = [r for r in roots if r is not None]
        while todo:
            node = todo.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, yaml.MappingNode):
                loader.flatten_mapping(node)  # `<<: *anchor`, merged the way SafeLoader merges on load
                todo.extend(n for pair in node.value for n in pair)
            elif isinstance(node, yaml.SequenceNode):
                todo.extend(node.value)
        return {_start(r): r for r in roots if r is not None}
    finally:
        loader.dispose()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def written_text(context: dg.ResolutionContext, value: Any) -> str | None:
    """The scalar at `context.path` as written in its YAML file, if YAML read it as `value`; else None."""
    tree = context.source_position_tree
    if tree is None:
        return None
    try:
        text = Path(tree.position.filename).read_text(encoding="utf-8")
        node = _documents(text).get(tree.position.start)
    except (OSError, ValueError, yaml.YAMLError):  # e.g. YAML given as a string ("<string>")
        return None
    for segment in context.path:
        child = tree.children.get(segment)
        if node is None or child is None:
            return None
        if isinstance(node, yaml.MappingNode):
            # Dagster records a mapping entry at its key's position.
            node = next((v for k, v in node.value if _start(k) == child.position.start), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(segment, int) and 0 <= segment < len(node.value):
            node = node.value[segment]
        else:
            return None
        tree = child
    if not isinstance(node, yaml.ScalarNode) or node.tag not in _TYPED_TAGS:
        return None
    try:
        read = DagsterYamlLoader("").construct_object(node)
    except yaml.YAMLError:
        return None
    return node.value if _same(read, value) else None


def resolve_text(context: dg.ResolutionContext, value: Any) -> Any:
    """The value of a text field at `context.path`, as written (see the module docstring)."""
    if isinstance(value, str):
        return render_text(context, value)
    if isinstance(value, (bool, int, float)):
        written = written_text(context, value)
        return value if written is None else written  # not found: left for validation to report
    return context.resolve_value(value)


# A text field of a component: loads as written whether the YAML scalar is quoted or not.
Text = Annotated[str, dg.Resolver(resolve_text, model_field_type=str | int | float | bool,
                                  inject_before_resolve=False)]
