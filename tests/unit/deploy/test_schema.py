"""The CRD-to-JSON-Schema translation means what the API server enforces, on small schemas."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from deploy.schema import (
    Crd,
    UnsupportedSchema,
    crd_from_document,
    load_manifests,
    translate,
    validate,
)


def crd(spec_schema: dict[str, Any], kind: str = "RayJob") -> Crd:
    """A one-version CRD whose spec has `spec_schema`, as controller-gen would write it."""
    return crd_from_document({
        "kind": "CustomResourceDefinition",
        "spec": {
            "group": "ray.io",
            "names": {"kind": kind},
            "versions": [
                {"name": "v1alpha1", "served": True, "storage": False, "deprecated": True,
                 "schema": {"openAPIV3Schema": {"type": "object"}}},
                {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema,
                    },
                }}},
            ],
        },
    })  # fmt: skip


def errors(schema: Crd, spec: Any, **top: Any) -> list[str]:
    manifest = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "job"},
                "spec": spec, **top}  # fmt: skip
    report = validate(manifest, schema)
    return [str(p) for p in report.errors]


OBJ = {"type": "object", "properties": {"a": {"type": "integer"}}}


def test_listed_properties_reject_unknown_fields() -> None:
    schema = crd(OBJ)
    assert errors(schema, {"a": 1}) == []
    assert any("'b' was unexpected" in e for e in errors(schema, {"a": 1, "b": 2}))


def test_preserve_unknown_fields_keeps_them() -> None:
    schema = crd({**OBJ, "x-kubernetes-preserve-unknown-fields": True})
    assert errors(schema, {"a": 1, "b": 2}) == []
    assert errors(schema, {"a": "one"}) != []  # listed fields are still typed


def test_maps_with_additional_properties_stay_open() -> None:
    schema = crd({"type": "object", "additionalProperties": {"type": "string"}})
    assert errors(schema, {"any-key": "v"}) == []
    assert errors(schema, {"any-key": True}) != []  # "true" must be quoted in a string map


@pytest.mark.parametrize(("value", "ok"), [(8000, True), ("serve", True), (1.5, False),
                                           (True, False), (None, False)])  # fmt: skip
def test_int_or_string(value: Any, ok: bool) -> None:
    port = {"x-kubernetes-int-or-string": True}  # no anyOf: the translator supplies it
    schema = crd({"type": "object", "properties": {"port": port}})
    assert (errors(schema, {"port": value}) == []) is ok


def test_nullable_admits_null_and_only_null() -> None:
    schema = crd({"type": "object", "properties": {"t": {"type": "string", "nullable": True}}})
    assert errors(schema, {"t": None}) == []
    assert errors(schema, {"t": 3}) != []


def test_required_with_default_is_not_required() -> None:
    # The API server applies defaults before it validates.
    schema = crd({"type": "object", "required": ["a", "b"],
                  "properties": {"a": {"type": "string", "default": "x"},
                                 "b": {"type": "string"}}})  # fmt: skip
    assert errors(schema, {"b": "y"}) == []
    assert any("'b' is a required property" in e for e in errors(schema, {"a": "y"}))


def test_list_map_keys_reject_duplicates_after_defaulting() -> None:
    ports = {
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["containerPort", "protocol"],
        "items": {"type": "object", "required": ["containerPort"], "properties": {
            "containerPort": {"type": "integer"},
            "protocol": {"type": "string", "default": "TCP"},
        }},
    }  # fmt: skip
    schema = crd({"type": "object", "properties": {"ports": ports}})
    assert errors(schema, {"ports": [{"containerPort": 80}, {"containerPort": 81}]}) == []
    assert errors(schema, {"ports": [{"containerPort": 80},
                                     {"containerPort": 80, "protocol": "UDP"}]}) == []  # fmt: skip
    dup = errors(schema, {"ports": [{"containerPort": 80},
                                    {"containerPort": 80, "protocol": "TCP"}]})  # fmt: skip
    assert len(dup) == 1 and "duplicate entry" in dup[0]


def test_list_set_rejects_duplicates_and_atomic_does_not() -> None:
    def lst(kind: str) -> dict[str, Any]:
        return {"type": "array", "x-kubernetes-list-type": kind, "items": {"type": "string"}}

    schema = crd({"type": "object", "properties": {"s": lst("set"), "a": lst("atomic")}})
    assert errors(schema, {"a": ["x", "x"], "s": ["x", "y"]}) == []
    assert errors(schema, {"s": ["x", "x"]}) != []


def test_int32_range() -> None:
    schema = crd({"type": "object", "properties": {"n": {"type": "integer", "format": "int32"}}})
    assert errors(schema, {"n": 2**31 - 1}) == []
    assert errors(schema, {"n": 2**31}) != []
    assert errors(schema, {"n": 2.0}) != []  # an integer field takes no float


def test_cel_rules_are_reported_unchecked_not_passed_or_failed() -> None:
    rule = {"rule": "self == oldSelf", "message": "immutable"}
    field = {"type": "string", "x-kubernetes-validations": [rule]}
    schema = crd({"type": "object", "properties": {"m": field}})
    manifest = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "j"}}
    unset = validate({**manifest, "spec": {}}, schema)
    assert unset.ok and unset.unchecked == []
    used = validate({**manifest, "spec": {"m": "x"}}, schema)
    assert used.ok
    assert [p.path for p in used.unchecked] == ["spec.m"]
    assert "self == oldSelf" in used.unchecked[0].message


def test_unknown_extension_is_refused_not_ignored() -> None:
    with pytest.raises(UnsupportedSchema, match="x-kubernetes-embedded-resource"):
        translate({"type": "object", "x-kubernetes-embedded-resource": True})


@pytest.mark.parametrize(
    ("top", "where"),
    [
        ({"apiVersion": "ray.io/v1alpha1"}, "apiVersion"),
        ({"kind": "RayService"}, "kind"),
        ({"metadata": {}}, "metadata"),
        ({"metadata": {"name": "Backfill_Job"}}, "metadata.name"),
        ({"metadata": {"name": "b" * 48}}, "metadata.name"),  # KubeRay: RayJob names <= 47
        ({"metadata": {"name": "job", "labels": {"tier": 1}}}, "metadata.labels.tier"),
        ({"metadata": {"name": "job", "label": {}}}, "metadata"),
    ],
)
def test_top_level_identity(top: dict[str, Any], where: str) -> None:
    found = errors(crd(OBJ), {"a": 1}, **top)
    assert found and all(e.startswith(where + ":") or e.startswith(where) for e in found), found


def test_spec_is_required() -> None:
    report = validate({"apiVersion": "ray.io/v1", "kind": "RayJob",
                       "metadata": {"name": "job"}}, crd(OBJ))  # fmt: skip
    assert any("'spec' is a required property" in str(p) for p in report.errors)


def test_storage_version_is_the_one_checked() -> None:
    assert crd(OBJ).api_version == "ray.io/v1"


def test_duplicate_yaml_keys_are_refused() -> None:
    text = "apiVersion: ray.io/v1\nkind: RayJob\nkind: RayService\n"
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'kind'"):
        load_manifests(text)
    assert load_manifests("a: 1\n---\n---\nb: 2\n") == [{"a": 1}, {"b": 2}]
