"""The export spec: YAML -> validated, immutable objects. Pure: imports no TensorFlow.

    endpoints:
      - name: serve
        method: call
        training: false
        inputs:
          - {x1: {shape: [null, 3], dtype: float32}, color: {shape: [null, 1], dtype: string}}
    variable_collections:
      - {name: optimizer_variables, select: optimizer}
    default_endpoint: serve
    tolerance: {atol: 1.0e-5, rtol: 1.0e-5}

Each entry of `inputs` is one positional argument of the method: a tensor, a dict of tensors
or a list of tensors. Signature input names are the dict keys or a tensor's `name`; a tensor
without one is named `input_<i>` (list items `input_<i>_<j>`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from shipyard.errors import SpecError, UsageError

DType = Literal[
    "float16", "bfloat16", "float32", "float64",
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "bool", "string",
]
_IDENTIFIER = r"^[A-Za-z][A-Za-z0-9_]*$"
# Attributes that ExportArchive or the revived SavedModel object already use: an endpoint or a
# variable collection with one of these names would shadow it.
RESERVED_NAMES = frozenset(
    {"serving_default", "variables", "trainable_variables", "non_trainable_variables",
     "signatures", "tensorflow_version", "graph_debug_info"}
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorDecl(_Strict):
    """One tensor of an endpoint's input signature."""

    shape: list[int | None]
    dtype: DType
    name: Annotated[str, Field(pattern=_IDENTIFIER)] | None = None

    @field_validator("shape")
    @classmethod
    def _known_or_null(cls, shape: list[int | None]) -> list[int | None]:
        if any(d is not None and d < 0 for d in shape):
            raise ValueError(f"dimensions must be >= 0; write null (not -1) for a dimension of "
                             f"unknown size, e.g. [null, 3] (got {shape})")
        return shape


def _argument_kind(value: Any) -> str | None:
    # A mapping whose `dtype` is a string is one tensor; any other mapping is a dict of tensors.
    if isinstance(value, (list, tuple)):
        return "list-argument"
    if isinstance(value, dict):
        return "tensor-argument" if isinstance(value.get("dtype"), str) else "dict-argument"
    if isinstance(value, (TensorDecl)):
        return "tensor-argument"
    return None


Argument = Annotated[
    Union[
        Annotated[TensorDecl, Tag("tensor-argument")],
        Annotated[dict[Annotated[str, Field(pattern=_IDENTIFIER)], TensorDecl], Tag("dict-argument")],
        Annotated[list[TensorDecl], Tag("list-argument")],
    ],
    Discriminator(
        _argument_kind,
        custom_error_type="invalid_argument",
        custom_error_message=(
            "expected a tensor {shape, dtype[, name]}, a dict of tensors or a list of tensors"
        ),
    ),
]
# Union tags show up in pydantic's error locations; they are not fields, so paths skip them.
_UNION_TAGS = frozenset({"tensor-argument", "dict-argument", "list-argument",
                         "selection-name", "selection-regex"})


class Endpoint(_Strict):
    """A serving signature: `method` of the model called with `inputs`."""

    name: Annotated[str, Field(pattern=_IDENTIFIER)]
    method: Annotated[str, Field(pattern=_IDENTIFIER)]
    training: bool | None = None
    inputs: Annotated[list[Argument], Field(min_length=1)]

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_NAMES:
            raise ValueError(f"{name!r} is reserved; choose another endpoint name "
                             "(use default_endpoint to choose what serving_default serves)")
        return name

    @model_validator(mode="after")
    def _check(self) -> Endpoint:
        if self.training is not None and self.method != "call":
            raise ValueError(f"training is only accepted with method 'call' (got method "
                             f"{self.method!r}); remove training or set method: call")
        names = [name for name, _ in self.signature_inputs()]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"signature input names must be unique; {duplicates} appear more "
                             "than once: give each tensor a distinct name")
        return self

    def signature_inputs(self) -> list[tuple[str, TensorDecl]]:
        """(signature input name, tensor) for every tensor, in argument order."""
        named: list[tuple[str, TensorDecl]] = []
        for i, argument in enumerate(self.inputs):
            if isinstance(argument, TensorDecl):
                named.append((argument.name or f"input_{i}", argument))
            elif isinstance(argument, dict):
                for key, tensor in argument.items():
                    if tensor.name is not None and tensor.name != key:
                        raise ValueError(f"input {key!r} also says name: {tensor.name!r}; in a "
                                         "dict the key is the signature input name: drop `name`")
                    named.append((key, tensor))
            else:
                named.extend((tensor.name or f"input_{i}_{j}", tensor)
                             for j, tensor in enumerate(argument))
        return named


class RegexSelect(_Strict):
    regex: str

    @field_validator("regex")
    @classmethod
    def _compiles(cls, regex: str) -> str:
        try:
            re.compile(regex)
        except re.error as err:
            raise ValueError(f"{regex!r} is not a valid regular expression: {err}") from None
        return regex


class VariableCollection(_Strict):
    """Variables kept in the SavedModel under `name`, restorable after loading."""

    name: Annotated[str, Field(pattern=_IDENTIFIER)]
    select: Annotated[
        Union[
            Annotated[Literal["trainable", "non_trainable", "all", "optimizer"],
                      Tag("selection-name")],
            Annotated[RegexSelect, Tag("selection-regex")],
        ],
        Discriminator(lambda v: "selection-regex" if isinstance(v, (dict, RegexSelect))
                      else "selection-name"),
    ]


class Tolerance(_Strict):
    """Parity tolerance: |exported - original| <= atol + rtol * |original|, element-wise."""

    atol: Annotated[float, Field(ge=0)] = 1e-5
    rtol: Annotated[float, Field(ge=0)] = 1e-5


class ExportSpec(_Strict):
    endpoints: Annotated[list[Endpoint], Field(min_length=1)]
    variable_collections: list[VariableCollection] = []
    default_endpoint: str | None = None
    tolerance: Tolerance = Tolerance()

    @model_validator(mode="after")
    def _check(self) -> ExportSpec:
        endpoint_names = [e.name for e in self.endpoints]
        collection_names = [c.name for c in self.variable_collections]
        names = endpoint_names + collection_names
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"endpoint and variable collection names must be unique; "
                             f"{duplicates} appear more than once")
        reserved = sorted(set(collection_names) & RESERVED_NAMES)
        if reserved:
            raise ValueError(f"variable collection names {reserved} are reserved; rename them")
        if self.default_endpoint is not None and self.default_endpoint not in endpoint_names:
            raise ValueError(f"default_endpoint {self.default_endpoint!r} is not an endpoint; "
                             f"use one of {endpoint_names}")
        return self

    @property
    def default(self) -> Endpoint:
        """The endpoint served as serving_default (the first one unless default_endpoint says)."""
        wanted = self.default_endpoint or self.endpoints[0].name
        return next(e for e in self.endpoints if e.name == wanted)

    def normalized(self) -> dict[str, Any]:
        """The spec with defaults filled in, as plain JSON data (stable across runs)."""
        data = self.model_dump(mode="json")
        data["default_endpoint"] = self.default.name
        return data

    def normalized_json(self) -> str:
        return json.dumps(self.normalized(), sort_keys=True, separators=(",", ":"))


def format_validation_error(err: ValidationError, source: str,
                            what: str = "the export spec") -> str:
    lines = [f"{source}: {what} is invalid ({err.error_count()} problem(s)):"]
    for problem in err.errors():
        path = _field_path(problem["loc"])
        received = problem.get("input")
        shown = "" if isinstance(received, (dict, list)) else f" (got {received!r})"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown field: remove it or correct its spelling"
        lines.append(f"  - {path or '<top level>'}: {message}{shown}")
    return "\n".join(lines)


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if part in _UNION_TAGS:
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def parse_spec(data: Any, *, source: str = "spec") -> ExportSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping with an 'endpoints' list at the top "
                        f"level, got {type(data).__name__}")
    try:
        return ExportSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, source)) from None


def load_spec(path: str | Path) -> ExportSpec:
    """Reads and validates a spec file; every error names the file and the field path."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"--spec: {path} does not exist; pass the path of an export spec "
                         "YAML file") from None
    except OSError as err:
        raise UsageError(f"--spec: cannot read {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    return parse_spec(data, source=str(path))
