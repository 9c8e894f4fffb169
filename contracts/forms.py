"""Trigger forms generated from the conf models, so form and validation cannot drift.

``form_fields(Model)`` turns each field of a pydantic model into the keyword arguments of
an Airflow ``Param`` (its default and JSON-schema keywords: type, title, description,
bounds, enum, items, pattern). The DAG files wrap them in ``Param``; adding a field to a
conf model adds it to the form with no other edit. The form is a convenience: the DAG's
first task validates the submitted conf with the model itself.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

# JSON-schema keywords the form understands; pydantic's other keys are dropped.
_KEPT = {"type", "title", "description", "enum", "examples", "items", "minimum", "maximum",
         "exclusiveMinimum", "exclusiveMaximum", "pattern", "minLength", "maxLength",
         "minItems", "maxItems", "format", "const"}


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        schema = {**defs[schema["$ref"].rsplit("/", 1)[-1]],
                  **{k: v for k, v in schema.items() if k != "$ref"}}
    if "items" in schema:
        schema = {**schema, "items": _resolve(schema["items"], defs)}
    return schema


def _nullable(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """``anyOf: [X, {type: null}]`` (an optional field) as X with type ``["null", X.type]``."""
    options = schema.get("anyOf")
    if not options:
        return _resolve(schema, defs)
    rest = [o for o in options if o.get("type") != "null"]
    if len(rest) != 1:
        return {k: v for k, v in schema.items() if k != "anyOf"}
    inner = _resolve(rest[0], defs)
    merged = {**inner, **{k: v for k, v in schema.items() if k != "anyOf"}}
    kind = inner.get("type")
    if len(rest) < len(options) and kind:
        merged["type"] = ["null", kind]
        if "enum" in merged and None not in merged["enum"]:
            merged["enum"] = [None, *merged["enum"]]
    return merged


def form_fields(model: type[BaseModel]) -> dict[str, dict[str, Any]]:
    """``{field: {"default": ..., <JSON-schema keywords>}}`` for every field of ``model``."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    out: dict[str, dict[str, Any]] = {}
    for name, prop in schema["properties"].items():
        prop = _nullable(prop, defs)
        field = model.model_fields[name]
        default = field.get_default(call_default_factory=True)
        if isinstance(default, tuple):
            default = list(default)
        kwargs = {k: v for k, v in prop.items() if k in _KEPT}
        out[name] = {"default": default, **kwargs}
    return out
