"""The Gateway API's HTTPRoute schema, pinned: the CRD of release v1.3.0 (standard channel),
vendored in data/gateway.networking.k8s.io_httproutes.v1.3.0.yaml (source URL and commit in its
header), and what the API server does with a CRD's structural schema on a write. The CRD of
v1.2.1 (data/gateway.networking.k8s.io_httproutes.v1.2.1.yaml) stays for the tests of a
cluster that has the older release: every function takes `release`. The two differ where
shipyard cares in RequestMirror's `percent`, which v1.3.0 brought to the standard channel
(v1.2.1 prunes it).

- defaulting (`default:` of a missing field whose parent exists, applied recursively; e.g. a
  rule without `matches` gets `[{path: {type: PathPrefix, value: /}}]`, a backendRef without
  `weight` gets 1, a parentRef gets `group: gateway.networking.k8s.io`, `kind: Gateway`);
- pruning (fields the schema does not declare are dropped, and reported as warnings);
- validation (OpenAPI v3 keywords: type, required, enum, pattern, min/max, lengths, items),
  reported as field errors with the API server's field path syntax
  (`spec.rules[0].backendRefs[1].weight`).

See "Extend the Kubernetes API with CustomResourceDefinitions": Validation, Defaulting, and
Field pruning (https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/
custom-resource-definitions/).

Simplifications: the CEL rules (`x-kubernetes-validations`) and `format`s are not evaluated;
`metadata` is not checked here (the API double checks names and labels itself); the error
text after the field path is jsonschema's wording, not kube-openapi's.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

GATEWAY_API_RELEASE = "v1.3.0"  # the release shipyard's README names (the default)
RELEASES = ("v1.2.1", "v1.3.0")  # the vendored CRDs


def crd_file(release: str = GATEWAY_API_RELEASE) -> Path:
    if release not in RELEASES:
        raise KeyError(f"no vendored HTTPRoute CRD of Gateway API {release} (have {RELEASES})")
    return Path(__file__).parent / "data" / f"gateway.networking.k8s.io_httproutes.{release}.yaml"


def source_url(release: str = GATEWAY_API_RELEASE) -> str:
    return (f"https://github.com/kubernetes-sigs/gateway-api/blob/{release}/config/crd/"
            "standard/gateway.networking.k8s.io_httproutes.yaml")


CRD_FILE = crd_file()
SOURCE_URL = source_url()


@dataclass(frozen=True)
class FieldError:
    """One invalid field, as the API server's StatusCause: reason, message and field."""

    field: str
    reason: str  # FieldValueRequired | FieldValueNotSupported | FieldValueInvalid
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@functools.cache
def httproute_crd(release: str = GATEWAY_API_RELEASE) -> dict[str, Any]:
    return yaml.safe_load(crd_file(release).read_text())


@functools.cache
def _schema_json(version: str, release: str) -> str:
    for served in httproute_crd(release)["spec"]["versions"]:
        if served["name"] == version:
            return json.dumps(served["schema"]["openAPIV3Schema"])
    raise KeyError(f"the HTTPRoute CRD of {release} serves no version {version}")


def httproute_schema(version: str = "v1", release: str = GATEWAY_API_RELEASE) -> dict[str, Any]:
    """The openAPIV3Schema of one served version (a fresh copy)."""
    return json.loads(_schema_json(version, release))


def default_and_prune(obj: dict[str, Any], version: str = "v1",
                      release: str = GATEWAY_API_RELEASE) -> tuple[dict[str, Any], list[str]]:
    """`obj` defaulted and pruned as the API server stores it, and the pruned field paths."""
    out = copy.deepcopy(obj)
    pruned: list[str] = []
    schema = httproute_schema(version, release)
    for key in list(out):
        if key not in schema["properties"]:
            pruned.append(key)
            del out[key]
    for key in ("spec", "status"):
        if key in out:
            out[key] = _walk(out[key], schema["properties"][key], key, pruned)
    return out, pruned


def _walk(value: Any, schema: dict[str, Any], path: str, pruned: list[str]) -> Any:
    if isinstance(value, dict) and "properties" in schema:
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            for key in list(value):
                if key not in schema["properties"]:
                    pruned.append(f"{path}.{key}")
                    del value[key]
        for key, sub in schema["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = _walk(value[key], sub, f"{path}.{key}", pruned)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_walk(item, schema["items"], f"{path}[{i}]", pruned)
                for i, item in enumerate(value)]
    return value


def validate_httproute(obj: dict[str, Any], version: str = "v1",
                       release: str = GATEWAY_API_RELEASE) -> list[FieldError]:
    """Field errors of `obj` (already defaulted) against the pinned schema; [] when valid."""
    schema = httproute_schema(version, release)
    schema["properties"]["metadata"] = {"type": "object"}
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(obj), key=lambda e: (list(e.absolute_path), e.message))
    return [_field_error(e) for e in errors]


def field_path(parts: list[Any]) -> str:
    """['spec', 'rules', 0, 'backendRefs'] -> 'spec.rules[0].backendRefs'."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _field_error(error: jsonschema.ValidationError) -> FieldError:
    parts = list(error.absolute_path)
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else "?"
        return FieldError(field_path([*parts, missing]), "FieldValueRequired", "Required value")
    where = field_path(parts)
    shown = json.dumps(error.instance)
    if error.validator == "enum":
        allowed = ", ".join(json.dumps(v) for v in error.validator_value)
        return FieldError(where, "FieldValueNotSupported",
                          f"Unsupported value: {shown}: supported values: {allowed}")
    return FieldError(where, "FieldValueInvalid",
                      f"Invalid value: {shown}: {where} in body: {error.message}")
