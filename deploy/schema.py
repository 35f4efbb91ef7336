"""Validate manifests against a CRD's openAPIV3Schema, as `kubectl apply` would, offline.

A CRD schema is OpenAPI v3 with Kubernetes extensions, not JSON Schema; `translate` turns it
into a Draft 4 JSON Schema that means what the API server enforces:

- Unknown fields fail. The API server *prunes* fields a structural schema does not list; with
  `kubectl apply` (field validation `Strict`, kubectl's default since 1.25) it *rejects* them,
  while clients that do not ask for strict validation (many controllers, older tools) get a
  warning and a silently dropped field: a misspelled `minReplica` that quietly vanishes. So
  every object that lists `properties`, unless marked `x-kubernetes-preserve-unknown-fields`,
  gets `additionalProperties: false`.
- `x-kubernetes-int-or-string` is `anyOf: [integer, string]`; `nullable` adds `null`.
- `x-kubernetes-list-type: map` / `set` reject duplicate entries (by `x-kubernetes-list-map-keys`,
  filling a missing key from its default, as the server does after defaulting); `atomic`
  and `x-kubernetes-map-type` only change merge semantics and check nothing.
- A required field that has a `default` is not required: the server defaults before validating.
- `format: int32` / `int64` check the range (the operator decodes into Go integers).
- `x-kubernetes-validations` (CEL rules) are NOT evaluated: each one met on a field the
  manifest sets is reported apart, as `unchecked`, so a caller can insist there are none.
- Any other `x-kubernetes-*` extension raises `UnsupportedSchema` rather than be ignored.

At the top level, `apiVersion` must be the CRD's served storage version and `kind` its kind;
`metadata` (which a CRD leaves to the API server) gets an ObjectMeta schema: a name that is a
DNS-1035 label no longer than the operator accepts for that kind, string labels and
annotations, no unknown fields. A `spec` is required.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft4Validator, FormatChecker, ValidationError, validators

# KubeRay v1.7.0, ray-operator/controllers/ray/utils/constant.go: a RayService's or RayJob's
# RayCluster gets a 6-character suffix and RayCluster names stop at 53 characters.
MAX_NAME_LENGTH = {"RayService": 47, "RayJob": 47, "RayCluster": 53}
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
# Extensions `translate` understands; anything else x-kubernetes-* is refused.
_HANDLED = {
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
}
_SUBSCHEMA_LISTS = ("anyOf", "allOf", "oneOf")
CEL = "x-kubernetes-validations"


class UnsupportedSchema(Exception):
    """A schema construct this translator does not implement (so it would check it wrongly)."""


@dataclass(frozen=True)
class Problem:
    """One finding: where in the manifest (`spec.rayClusterConfig...`) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '<root>'}: {self.message}"


@dataclass
class Report:
    """`errors` would make `kubectl apply` fail; `unchecked` are CEL rules nobody ran."""

    errors: list[Problem] = field(default_factory=list)
    unchecked: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class Crd:
    """The served storage version of one CRD, its schema already translated."""

    group: str
    version: str
    kind: str
    schema: dict[str, Any]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


def translate(node: Mapping[str, Any]) -> dict[str, Any]:
    """One OpenAPI v3 (CRD) schema node as Draft 4 JSON Schema; see the module docstring."""
    unknown = {k for k in node if k.startswith("x-kubernetes-")} - _HANDLED
    if unknown:
        raise UnsupportedSchema(f"schema extensions not implemented: {sorted(unknown)}")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: translate(sub) for name, sub in value.items()}
        elif key in ("items", "not", "additionalProperties") and isinstance(value, Mapping):
            out[key] = translate(value)  # additionalProperties may also be a plain boolean
        elif key in _SUBSCHEMA_LISTS:
            out[key] = [translate(sub) for sub in value]
        elif key in ("x-kubernetes-map-type", "x-kubernetes-preserve-unknown-fields"):
            continue  # merge strategy / pruning only; pruning is decided below
        elif key == "nullable":
            continue  # applied below, once "type" is known
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = bool(node.get("x-kubernetes-preserve-unknown-fields"))
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    if "required" in out and "properties" in out:
        props = out["properties"]
        out["required"] = [r for r in out["required"] if "default" not in props.get(r, {})]
        if not out["required"]:
            del out["required"]
    return out


def object_meta(kind: str) -> dict[str, Any]:
    """The part of ObjectMeta a manifest may carry, with the operator's name rules."""
    string_map = {"type": "object", "additionalProperties": {"type": "string"}}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {
            "name": {
                "type": "string",
                "pattern": DNS_1035_LABEL,
                "minLength": 1,
                "maxLength": MAX_NAME_LENGTH.get(kind, 63),
            },
            "namespace": {"type": "string", "pattern": DNS_1123_LABEL, "maxLength": 63},
            "labels": string_map,
            "annotations": string_map,
            "finalizers": {"type": "array", "items": {"type": "string"}},
        },
    }


def crd_from_document(doc: Mapping[str, Any]) -> Crd:
    """The storage version of a CustomResourceDefinition document (served, not deprecated)."""
    if doc.get("kind") != "CustomResourceDefinition":
        raise UnsupportedSchema(f"not a CustomResourceDefinition: {doc.get('kind')!r}")
    spec = doc["spec"]
    versions = [v for v in spec["versions"] if v.get("storage") and v.get("served")]
    if len(versions) != 1 or versions[0].get("deprecated"):
        raise UnsupportedSchema("expected exactly one served, non-deprecated storage version")
    version = versions[0]
    kind = spec["names"]["kind"]
    schema = translate(version["schema"]["openAPIV3Schema"])
    props = schema["properties"]
    props["apiVersion"] = {"type": "string", "enum": [f"{spec['group']}/{version['name']}"]}
    props["kind"] = {"type": "string", "enum": [kind]}
    props["metadata"] = object_meta(kind)
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata",
                                 "spec"})  # fmt: skip
    return Crd(group=spec["group"], version=version["name"], kind=kind, schema=schema)


@cache
def load_crd(path: Path) -> Crd:
    """A vendored CRD file (about a megabyte: parsed once per process)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return crd_from_document(yaml.load(path.read_text(encoding="utf-8"), Loader=loader))


# --- keywords the Draft 4 validator does not know ----------------------------------------


def _list_type(
    validator: Any, list_type: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not isinstance(instance, list) or list_type not in ("map", "set"):
        return
    keys: list[str] = schema.get("x-kubernetes-list-map-keys", [])
    item_props = schema.get("items", {}).get("properties", {})
    seen: dict[str, int] = {}
    for i, item in enumerate(instance):
        if list_type == "map" and isinstance(item, Mapping):
            ident = {k: item.get(k, item_props.get(k, {}).get("default")) for k in keys}
        else:
            ident = item
        token = json.dumps(ident, sort_keys=True, default=str)
        if token in seen:
            yield ValidationError(f"duplicate entry {ident!r} (items {seen[token]} and {i}); "
                                  f"x-kubernetes-list-type {list_type} forbids it")  # fmt: skip
        seen.setdefault(token, i)


def _cel(
    validator: Any, rules: list[Mapping[str, Any]], instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    for rule in rules:
        yield ValidationError(f"CEL rule not evaluated here: {rule.get('rule')!r} "
                              f"({rule.get('message', '')})")  # fmt: skip


_Checker = Callable[[object], bool]


def _int_range(fmt: str) -> _Checker:
    low, high = _INT_RANGES[fmt]

    def check(value: object) -> bool:
        return not isinstance(value, int) or isinstance(value, bool) or low <= value <= high

    return check


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=())
    for fmt in _INT_RANGES:
        checker.checks(fmt)(_int_range(fmt))
    return checker


CrdValidator = validators.extend(Draft4Validator, {"x-kubernetes-list-type": _list_type, CEL: _cel})


def _path(error: ValidationError) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in error.absolute_path)


def validate(manifest: Any, crd: Crd) -> Report:
    """Check one manifest (a parsed YAML document) against a CRD."""
    report = Report()
    validator = CrdValidator(crd.schema, format_checker=_format_checker())
    for error in sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.path))):
        problem = Problem(_path(error).replace(".[", "["), error.message)
        (report.unchecked if error.validator == CEL else report.errors).append(problem)
    return report


# --- YAML as kubectl reads it ---------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key twice in one mapping, as strict field validation does."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load_manifests(text: str) -> list[Any]:
    """Every document of a multi-document YAML manifest (empty documents skipped)."""
    return [doc for doc in yaml.load_all(text, Loader=_StrictLoader) if doc is not None]
