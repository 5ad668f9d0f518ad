"""JSON Schema <-> Gemini's OpenAPI `Schema` subset: tool parameters and response schemas cleaned for a
Gemini upstream (to_gemini_schema), and a Gemini caller's schemas read back as JSON Schema. Pure; no I/O."""

from __future__ import annotations

import re
from typing import Any

import orjson

from adapters.gemini.common import _f, _list, _str


_SCHEMA_TYPES = {"string", "number", "integer", "boolean", "array", "object"}
_SCALAR_KEYS = {"title": str, "description": str, "pattern": str, "minItems": int, "maxItems": int,
                "minLength": int, "maxLength": int, "minProperties": int, "maxProperties": int,
                "minimum": (int, float), "maximum": (int, float)}
_FORMATS = {"STRING": {"enum", "date-time"}, "NUMBER": {"float", "double"}, "INTEGER": {"int32", "int64"}}


def to_gemini_schema(schema: Any) -> dict[str, Any]:
    """A JSON Schema as Gemini's OpenAPI `Schema` subset (trap 11): $ref/$defs inlined (a recursive
    reference becomes a bare OBJECT), type arrays and null unions made `nullable`/anyOf, oneOf as anyOf,
    allOf merged, const as a one-value enum, non-string enums and every unknown keyword
    ($schema, additionalProperties, propertyNames, ...) dropped, arrays given `items`."""
    defs: dict[str, Any] = {}
    if isinstance(schema, dict):
        for key in ("definitions", "$defs"):
            if isinstance(schema.get(key), dict):
                defs.update(schema[key])
    return _clean(schema, defs, frozenset(), 0)


def _clean(node: Any, defs: dict[str, Any], seen: frozenset[str], depth: int) -> dict[str, Any]:
    if not isinstance(node, dict) or depth > 40:
        return {"type": "STRING"}
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        rest = {k: v for k, v in node.items() if k != "$ref"}
        if name in seen or not isinstance(defs.get(name), dict):
            return {"type": "OBJECT", **({"description": rest["description"]} if _str(rest.get("description")) else {})}
        return _clean({**defs[name], **rest}, defs, seen | {name}, depth + 1)
    if isinstance(node.get("allOf"), list):
        node = _merge_all_of(node, defs, seen)
    out: dict[str, Any] = {}
    kind, nullable = node.get("type"), node.get("nullable") is True
    kind = kind.lower() if isinstance(kind, str) else kind if isinstance(kind, list) else None
    if isinstance(kind, list):
        nullable = nullable or "null" in kind
        kinds = [k.lower() for k in kind if isinstance(k, str) and k.lower() in _SCHEMA_TYPES]
        if len(kinds) > 1:
            out["anyOf"] = [_clean({**node, "type": k}, defs, seen, depth + 1) for k in kinds]
            kind = None
        else:
            kind = kinds[0] if kinds else None
    elif kind == "null":
        kind, nullable = None, True
    variants = node.get("anyOf", node.get("oneOf"))
    if isinstance(variants, list) and "anyOf" not in out:
        real = [v for v in variants if not (isinstance(v, dict) and v.get("type") == "null")]
        nullable = nullable or len(real) < len(variants)
        cleaned = [_clean(v, defs, seen, depth + 1) for v in real]
        if len(cleaned) == 1 and kind is None:
            out.update(cleaned[0])
        elif cleaned:
            out["anyOf"] = cleaned
    values = node.get("enum", [node["const"]] if "const" in node else None)
    if isinstance(values, list) and values and all(isinstance(v, str) for v in values):
        out["enum"], kind = list(values), "string"
    elif isinstance(values, list) and values:  # Gemini enums are strings only: say it in words instead
        listed = ", ".join(orjson.dumps(v).decode() for v in values[:20])
        node = {**node, "description": (_str(node.get("description")) + f" (one of: {listed})").strip()}
    if kind is None and "anyOf" not in out:
        kind = "object" if isinstance(node.get("properties"), dict) else "array" if "items" in node else kind
    if kind in _SCHEMA_TYPES:
        out["type"] = kind.upper()
    elif "anyOf" not in out and "type" not in out:
        out["type"] = "STRING"  # an untyped value: Gemini wants a type, and text loses the least
    if nullable:
        out["nullable"] = True
    for key, types in _SCALAR_KEYS.items():
        value = node.get(key)
        if isinstance(value, types) and not isinstance(value, bool):  # type: ignore[arg-type]
            out[key] = value
    if isinstance(node.get("format"), str) and node["format"] in _FORMATS.get(out.get("type", ""), ()):
        out["format"] = node["format"]
    if out.get("type") == "OBJECT" and isinstance(node.get("properties"), dict):
        props = {str(k): _clean(v, defs, seen, depth + 1) for k, v in node["properties"].items()}
        if props:
            out["properties"] = props
            required = [r for r in _list(node.get("required")) if isinstance(r, str) and r in props]
            if required:
                out["required"] = required
    if out.get("type") == "ARRAY":
        items = node.get("items")
        items = items[0] if isinstance(items, list) and items else items
        out["items"] = _clean(items, defs, seen, depth + 1) if isinstance(items, dict) else {"type": "STRING"}
    return out


def _merge_all_of(node: dict[str, Any], defs: dict[str, Any], seen: frozenset[str]) -> dict[str, Any]:
    merged = {k: v for k, v in node.items() if k != "allOf"}
    props = dict(merged.get("properties") or {})
    required = list(_list(merged.get("required")))
    for sub in node["allOf"]:
        if isinstance(sub, dict) and isinstance(sub.get("$ref"), str):
            name = sub["$ref"].rsplit("/", 1)[-1]
            sub = defs.get(name) if name not in seen else None
        if not isinstance(sub, dict):
            continue
        props.update(sub.get("properties") or {})
        required += [r for r in _list(sub.get("required")) if r not in required]
        for key, value in sub.items():
            merged.setdefault(key, value)
    if props:
        merged["properties"], merged["type"] = props, merged.get("type", "object")
    merged["required"] = required
    merged.pop("allOf", None)
    return merged


def from_gemini_schema(node: Any) -> dict[str, Any]:
    """A Gemini `Schema` (upper-case types, `nullable`; google-genai sends its keywords in snake_case)
    as plain JSON Schema for other providers."""
    if not isinstance(node, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in node.items():
        key = {"ref": "$ref", "defs": "$defs"}.get(key) or re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key)
        if key == "type" and isinstance(value, str):
            kind = value.lower()
            out["type"] = [kind, "null"] if _f(node, "nullable") is True else kind
        elif key in ("properties", "$defs") and isinstance(value, dict):
            out[key] = {k: from_gemini_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = from_gemini_schema(value)
        elif key == "anyOf" and isinstance(value, list):
            out[key] = [from_gemini_schema(v) for v in value]
        elif key not in ("nullable", "propertyOrdering") and not (key == "format" and value == "enum"):
            out[key] = value
    return out

