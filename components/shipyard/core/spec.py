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
    reusable: false

Each entry of `inputs` is one positional argument of the method: a tensor, a dict of tensors
or a list of tensors. Signature input names are the dict keys or a tensor's `name`; a tensor
without one is named `input_<i>` (list items `input_<i>_<j>`).

`method` names what an endpoint calls: `call` (which also takes `training`), another method of
the model, or, for a SavedModel source, a signature or restored function, `__call__` included.

`reusable: true` adds TF Hub's reusable SavedModel interface to the version of a Keras source,
so that `hub.KerasLayer(version, trainable=True)` can fine-tune it: `__call__(inputs,
training=False)` on the default endpoint's inputs (traced for both values of `training`), the
model's `variables` and `trainable_variables`, and its weight regularization losses as
`regularization_losses`. A SavedModel source must already have the interface (it is kept).
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
    ValidationInfo,
    field_validator,
    model_validator,
)

from shipyard.core.errors import SpecError, UsageError

DType = Literal[
    "float16", "bfloat16", "float32", "float64",
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "bool", "string",
]
_IDENTIFIER = r"^[A-Za-z][A-Za-z0-9_]*$"
# A method is any attribute a model or a restored SavedModel object can have, so a leading
# underscore is allowed: TF Hub's reusable interface is `__call__`.
_METHOD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# TF Hub's reusable interface (reusable: true) puts these on the revived object.
REUSABLE_NAMES = frozenset({"regularization_losses"})
# Attributes that ExportArchive or the revived SavedModel object already use: an endpoint or a
# variable collection with one of these names would shadow it.
SERVING_DEFAULT = "serving_default"
RESERVED_NAMES = frozenset(
    {"serving_default", "variables", "trainable_variables", "non_trainable_variables",
     "signatures", "tensorflow_version", "graph_debug_info"}
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _non_negative(shape: list[int | None]) -> list[int | None]:
    if any(d is not None and d < 0 for d in shape):
        raise ValueError(f"dimensions must be >= 0; write null (not -1) for a dimension of "
                         f"unknown size, e.g. [null, 3] (got {shape})")
    return shape


# What a tf.Example can carry: float_list, int64_list and bytes_list.
FeatureDType = Literal["float32", "int64", "string"]
_FEATURE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$"


class FeatureDecl(_Strict):
    """One feature of a serialized tf.Example, per example (no batch dimension).

    Fixed-length by default (tf.io.FixedLenFeature(shape, dtype, default)); a `null` first
    dimension makes it variable-length, parsed dense and padded with `default`
    (tf.io.FixedLenSequenceFeature(shape[1:], dtype, allow_missing=True)).
    """

    shape: list[int | None] = []
    dtype: FeatureDType
    default: float | int | str | list[float | int | str] | None = None

    _non_negative = field_validator("shape")(classmethod(lambda cls, v: _non_negative(v)))

    @model_validator(mode="after")
    def _check(self) -> FeatureDecl:
        if None in self.shape[1:]:
            raise ValueError(f"only the first dimension of a feature may be null (variable "
                             f"length), got {self.shape}")
        if self.default is not None:
            values = self.default if isinstance(self.default, list) else [self.default]
            wants_text = self.dtype == "string"
            if any(isinstance(v, str) != wants_text for v in values):
                raise ValueError(f"default {self.default!r} does not match dtype {self.dtype}")
        return self

    @property
    def variable_length(self) -> bool:
        return bool(self.shape) and self.shape[0] is None


class TensorDecl(_Strict):
    """One tensor of an endpoint's input signature; with `tf_example`, a vector of serialized
    tf.Examples (shape [null], dtype string implied) whose features it declares."""

    shape: list[int | None]
    dtype: DType
    name: Annotated[str, Field(pattern=_IDENTIFIER)] | None = None
    tf_example: dict[Annotated[str, Field(pattern=_FEATURE_NAME)], FeatureDecl] | None = None

    _non_negative = field_validator("shape")(classmethod(lambda cls, v: _non_negative(v)))

    @model_validator(mode="before")
    @classmethod
    def _implied_by_tf_example(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("tf_example") is not None:
            data = {"shape": [None], "dtype": "string", **data}
        return data

    @model_validator(mode="after")
    def _check(self) -> TensorDecl:
        if self.tf_example is not None:
            if self.shape != [None] or self.dtype != "string":
                raise ValueError("a tf_example input is a vector of serialized examples, shape "
                                 "[null] and dtype string: remove `shape` and `dtype`")
            if not self.tf_example:
                raise ValueError("tf_example declares no features; list each feature the "
                                 "examples carry with its shape and dtype")
        return self


def _argument_kind(value: Any) -> str | None:
    # A mapping whose `dtype` is a string is one tensor; any other mapping is a dict of tensors.
    if isinstance(value, (list, tuple)):
        return "list-argument"
    if isinstance(value, dict):
        is_tensor = isinstance(value.get("dtype"), str) or "tf_example" in value
        return "tensor-argument" if is_tensor else "dict-argument"
    if isinstance(value, (TensorDecl)):
        return "tensor-argument"
    return None


Argument = Annotated[
    Union[
        Annotated[TensorDecl, Tag("tensor-argument")],
        Annotated[dict[Annotated[str, Field(pattern=_IDENTIFIER)], TensorDecl],
                  Tag("dict-argument")],
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


# TF Serving's SignatureDef method names (TensorFlow's signature_constants): the Classify and
# Regress APIs look signatures up by these.
METHOD_NAMES = {"predict": "tensorflow/serving/predict",
                "classify": "tensorflow/serving/classify",
                "regress": "tensorflow/serving/regress"}
# The one input of classify and regress signatures, and their outputs (classifier.cc,
# regressor.cc).
EXAMPLES_INPUT = "inputs"
KIND_OUTPUTS = {"classify": ("classes", "scores"), "regress": ("outputs",)}


class Endpoint(_Strict):
    """A serving signature: `method` of the model called with `inputs`.

    kind `classify` / `regress` follow TF Serving's Classify / Regress contracts: one input
    `inputs` of serialized tf.Examples (declared with tf_example); outputs `scores` (from the
    model output `output`) and `classes` (from `classes`), or `outputs`.
    """

    name: Annotated[str, Field(pattern=_IDENTIFIER)]
    method: str
    kind: Literal["predict", "classify", "regress"] = "predict"
    training: bool | None = None
    inputs: Annotated[list[Argument], Field(min_length=1)]
    output: str | None = None  # classify/regress: the model output that gives scores/outputs
    classes: Annotated[list[str], Field(min_length=1)] | None = None  # classify's labels

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        # serving_default is checked with the method (_method_name): a SavedModel source's own
        # serving_default may be shipped as it is under its own name.
        if name in RESERVED_NAMES and name != SERVING_DEFAULT:
            raise ValueError(f"{name!r} is reserved; choose another endpoint name "
                             "(use default_endpoint to choose what serving_default serves)")
        return name

    @field_validator("method")
    @classmethod
    def _method_name(cls, method: str, info: ValidationInfo) -> str:
        if info.data.get("name") == SERVING_DEFAULT and method != SERVING_DEFAULT:
            raise ValueError(f"an endpoint named 'serving_default' is a SavedModel source's own "
                             f"serving_default shipped as it is, so its method is "
                             f"serving_default (got {method!r}); choose another endpoint name "
                             "(use default_endpoint to choose what serving_default serves)")
        if not _METHOD.fullmatch(method):
            raise ValueError("a method is named the way Python names attributes (letters, "
                             "digits and _, not starting with a digit): call, __call__, "
                             "another method of the model, or a SavedModel's signature or "
                             "restored function")
        if method.startswith("__") and method.endswith("__") and method != "__call__":
            raise ValueError("of Python's special methods only __call__ can be served; name "
                             "the model's method instead, e.g. call")
        return method

    @model_validator(mode="after")
    def _check(self) -> Endpoint:
        if self.training is not None and self.method != "call":
            raise ValueError(f"training is only accepted with method 'call' (got method "
                             f"{self.method!r}); remove training or set method: call")
        for argument in self.inputs:
            tensors = argument.values() if isinstance(argument, dict) else (
                argument if isinstance(argument, list) else [])
            if any(t.tf_example is not None for t in tensors):
                raise ValueError("tf_example declares a whole argument (the method receives "
                                 "the dict of parsed features); write it as its own entry of "
                                 "`inputs`, not inside a dict or list")
        self._check_kind()
        names = [name for name, _ in self.signature_inputs()]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"signature input names must be unique; {duplicates} appear more "
                             "than once: give each tensor a distinct name")
        return self

    def _check_kind(self) -> None:
        if self.kind == "predict":
            if self.output is not None or self.classes is not None:
                raise ValueError("`output` and `classes` belong to kind classify or regress; "
                                 "set kind or remove them")
            return
        argument = self.inputs[0]
        if (len(self.inputs) != 1 or not isinstance(argument, TensorDecl)
                or argument.tf_example is None):
            raise ValueError(f"a {self.kind} endpoint takes one input of serialized "
                             "tf.Examples (TF Serving's contract): declare inputs: "
                             "[{tf_example: {feature: {shape, dtype}, ...}}]")
        if argument.name not in (None, EXAMPLES_INPUT):
            raise ValueError(f"a {self.kind} endpoint's input is named {EXAMPLES_INPUT!r} by "
                             f"TF Serving's contract; remove name: {argument.name!r}")
        if self.classes is not None:
            if self.kind != "classify":
                raise ValueError("`classes` belongs to kind classify; remove it")
            if len(set(self.classes)) != len(self.classes):
                raise ValueError(f"classes must be distinct, got {self.classes}")

    @property
    def method_name(self) -> str:
        """The SignatureDef method name TF Serving looks for."""
        return METHOD_NAMES[self.kind]

    def examples_input(self) -> TensorDecl | None:
        """The tf_example input, if the endpoint takes serialized examples."""
        return next((a for a in self.inputs
                     if isinstance(a, TensorDecl) and a.tf_example is not None), None)

    def signature_inputs(self) -> list[tuple[str, TensorDecl]]:
        """(signature input name, tensor) for every tensor, in argument order."""
        named: list[tuple[str, TensorDecl]] = []
        for i, argument in enumerate(self.inputs):
            if isinstance(argument, TensorDecl) and self.kind != "predict":
                named.append((EXAMPLES_INPUT, argument))
            elif isinstance(argument, TensorDecl):
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
    # NaN/Inf in the original model's outputs is refused (a broken model would otherwise pass
    # parity, NaN matching NaN) unless the model is meant to produce them.
    allow_non_finite: bool = False
    # TF Hub's reusable SavedModel interface (see the module's docstring).
    reusable: bool = False

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
        taken = sorted(set(names) & REUSABLE_NAMES) if self.reusable else []
        if taken:
            raise ValueError(f"reusable: TF Hub's interface needs the attribute names {taken}, "
                             "which an endpoint or variable collection takes; rename it")
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
        # Absent unless asked for: the normalized spec enters the fingerprint, and a key added
        # with its default must not make every model exported before it new content.
        if not data.get("reusable"):
            data.pop("reusable", None)
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
        message = format_validation_error(err, source)
        # Cross-field checks run only once every field is valid; say this one anyway, so a
        # bad default_endpoint is not reported only after the other problems are fixed.
        unknown = _unknown_default_endpoint(data)
        if unknown and "default_endpoint" not in message:
            message = message.replace(f"({err.error_count()} problem(s))",
                                      f"({err.error_count() + 1} problem(s))", 1)
            message += f"\n  - {unknown}"
        raise SpecError(message) from None


def _unknown_default_endpoint(data: dict[str, Any]) -> str | None:
    wanted = data.get("default_endpoint")
    endpoints = data.get("endpoints")
    if wanted is None or not isinstance(endpoints, list):
        return None
    names = [e.get("name") for e in endpoints if isinstance(e, dict)]
    if wanted in names:
        return None
    return f"default_endpoint: {wanted!r} is not an endpoint; use one of {names}"


def load_spec(path: str | Path) -> ExportSpec:
    """Reads and validates a spec file; every error names the file and the field path."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"spec: {path} does not exist; pass the path of an export spec "
                         "YAML file", param="spec") from None
    except OSError as err:
        raise UsageError(f"spec: cannot read {path}: {err.strerror}", param="spec") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    return parse_spec(data, source=str(path))
