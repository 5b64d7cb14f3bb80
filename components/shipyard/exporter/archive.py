"""Builds a Keras ExportArchive from a source model and an export spec.

Each endpoint becomes a signature whose input names are the declared names and whose output
names are the model's output names; the default endpoint is added first, because ExportArchive
serves its first endpoint as `serving_default`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import keras
import tensorflow as tf

from shipyard.core.errors import SpecError, UsageError
from shipyard.core.spec import Endpoint, ExportSpec, TensorDecl
from shipyard.exporter import reusable

# Re-exported: the export step, bench/export.py (which wraps checkpoint_digests here) and the
# tests reach them as archive.<name>; they live in content.py.
from shipyard.exporter.content import (  # noqa: F401
    architecture_digest,
    checkpoint_digests,
    keras_config_digest,
    read_signatures,
    rng_state_digests,
    rng_states,
)
from shipyard.exporter.samples import Vocabularies
from shipyard.exporter.source import SourceModel
from shipyard.exporter.variable_collections import select_variables

EndpointFn = Callable[..., dict[str, Any]]
_LOOKUP_LAYERS = (keras.layers.StringLookup, keras.layers.IntegerLookup,
                  keras.layers.TextVectorization)


@dataclass
class BuiltArchive:
    archive: Any  # keras.export.ExportArchive
    endpoint_fns: dict[str, EndpointFn]  # the ORIGINAL model's callables, outputs named
    collections: dict[str, list[Any]]  # variable collection name -> variables
    vocabularies: Vocabularies  # what sample inputs draw from
    lookup_vocabularies: list[list[Any]]  # per lookup layer, in layer order (fingerprinted)
    method_names: dict[str, str]  # signature -> TF Serving method name, where not predict
    # The export step's view of any built version (whole_archive.WholeArchive has them too):
    # the calls every check makes (None: the spec's endpoints), the signatures not called.
    calls_spec: ExportSpec | None = None
    unverifiable: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any] | None:
        """How the source was shipped (shipyard.json's source.shipped); None: rewritten by
        ExportArchive, as every Keras source is."""
        return None

    def write(self, directory: Path) -> None:
        self.archive.write_out(str(directory), options=SAVE_OPTIONS, verbose=False)
        if self.method_names:
            set_method_names(directory, self.method_names)


def set_method_names(directory: Path, method_names: dict[str, str]) -> None:
    """Sets SignatureDef.method_name in saved_model.pb (tf.saved_model.save writes
    tensorflow/serving/predict for every signature; TF Serving's Classify and Regress APIs
    look for their own). The field is metadata: the graph does not change. fingerprint.pb
    holds a checksum of saved_model.pb, so it is written again."""
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    path = directory / "saved_model.pb"
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(path.read_bytes())
    for meta_graph in proto.meta_graphs:
        for name, method_name in method_names.items():
            if name in meta_graph.signature_def:
                meta_graph.signature_def[name].method_name = method_name
    path.write_bytes(proto.SerializeToString(deterministic=True))
    fingerprint = directory / "fingerprint.pb"
    if fingerprint.exists():
        fingerprint.write_bytes(fingerprinting.CreateFingerprintDef(str(directory)))


# Variables are saved through the host (needed when they live on a TPU, harmless elsewhere),
# and no device placement is recorded (VariablePolicy.NONE), so a version exported on a
# GPU/TPU worker loads on plain CPU TF Serving; the CPU-only verifier proves it does.
SAVE_OPTIONS = tf.saved_model.SaveOptions(
    experimental_io_device="/job:localhost",
    experimental_variable_policy=tf.saved_model.experimental.VariablePolicy.NONE)


@contextlib.contextmanager
def placed_on(device: str | None) -> Iterator[None]:
    """Runs the export on `device` (e.g. "/GPU:0", "/TPU:0"); None: TensorFlow's choice."""
    if device is None:
        yield
        return
    present = [d.name for d in tf.config.list_logical_devices()]
    wanted = device.upper().removeprefix("/DEVICE:")
    if not any(name.upper().endswith(wanted.lstrip("/")) for name in present):
        raise UsageError(f"device {device}: this machine has no such device; it has "
                         f"{', '.join(present)}. Run the export on an accelerator worker, or "
                         "leave --device out", param="device")
    with tf.device(device):
        yield


def build_archive(source: SourceModel, spec: ExportSpec) -> BuiltArchive:
    archive = keras.export.ExportArchive()
    archive.track(source.obj)
    _track_backend_variables(archive)
    ordered = [spec.default] + [e for e in spec.endpoints if e.name != spec.default.name]
    endpoint_fns: dict[str, EndpointFn] = {}
    for endpoint in ordered:
        index = spec.endpoints.index(endpoint)
        fn = _endpoint_fn(source, endpoint, index)
        try:
            traced = archive.add_endpoint(endpoint.name, fn,
                                          input_signature=_input_signature(endpoint))
            traced.get_concrete_function()  # trace now, so a misfit is reported as one
        except SpecError:
            raise  # already names the field (e.g. an output that cannot be a signature output)
        except Exception as err:  # tracing runs user code: any error means the inputs misfit
            declared = ", ".join(f"{name}: {decl.dtype}{_shape_text(decl.shape)}"
                                 for name, decl in endpoint.signature_inputs())
            raise SpecError(
                f"endpoints[{index}] ({endpoint.name!r}): calling {endpoint.method!r} with the "
                f"declared inputs ({declared}) failed: {type(err).__name__}: "
                f"{_first_line(err)}. Declare one entry in `inputs` per positional argument, "
                "with the dtypes and shapes the method expects.") from None
        endpoint_fns[endpoint.name] = fn
    collections = {}
    for index, collection in enumerate(spec.variable_collections):
        variables = select_variables(source, collection.select, index)
        archive.add_variable_collection(collection.name, [backend_variable(v) for v in variables])
        collections[collection.name] = variables
    lookups = _lookup_vocabularies(source)
    method_names = {e.name: e.method_name for e in spec.endpoints if e.kind != "predict"}
    if spec.default.kind != "predict":  # serving_default is the default endpoint's signature
        method_names["serving_default"] = spec.default.method_name
    reusable.add_interface(archive, source, spec)  # TF Hub's interface, if the spec asks
    return BuiltArchive(archive, endpoint_fns, collections, _sample_vocabularies(lookups, source),
                        lookups, method_names)


def backend_variable(variable: Any) -> Any:
    """The tf.Variable a Keras variable holds (TensorFlow backend); tf.Variables as they are."""
    value = getattr(variable, "value", None)
    return value if isinstance(value, tf.Variable) else variable


def _track_backend_variables(archive: Any) -> None:
    """Stores every variable once (keras-team/keras#23553).

    ExportArchive.track() lists the model's Keras variables, while the endpoints capture the
    tf.Variables inside them, which write_out() tracks as `_all_variables`. The two are
    different trackable objects over the same buffers, so the checkpoint holds every value
    twice, and every loader (TF Serving included) restores two copies. Tracking the
    tf.Variables themselves makes both lists name the same objects, which the checkpoint
    then stores once (the approach of keras PR #23563). The revived `variables`,
    `trainable_variables` and `non_trainable_variables` are tf.Variables either way.
    """
    tracked = archive._tf_trackable  # no public hook: ExportArchive keeps these lists here
    for attribute in ("variables", "trainable_variables", "non_trainable_variables"):
        setattr(tracked, attribute, [backend_variable(v) for v in getattr(tracked, attribute)])


def tensor_spec(decl: TensorDecl, name: str) -> tf.TensorSpec:
    return tf.TensorSpec(shape=decl.shape, dtype=tf.dtypes.as_dtype(decl.dtype), name=name)


def _input_signature(endpoint: Endpoint) -> list[Any]:
    names = iter(name for name, _ in endpoint.signature_inputs())
    signature: list[Any] = []
    for argument in endpoint.inputs:
        if isinstance(argument, TensorDecl):
            signature.append(tensor_spec(argument, next(names)))
        elif isinstance(argument, dict):
            signature.append({key: tensor_spec(decl, next(names))
                              for key, decl in argument.items()})
        else:
            signature.append([tensor_spec(decl, next(names)) for decl in argument])
    return signature


def _endpoint_fn(source: SourceModel, endpoint: Endpoint, index: int) -> EndpointFn:
    if source.format == "keras":
        # A Keras model takes features: the endpoint parses the examples for it. A SavedModel
        # source's signature parses them itself (its feature spec only says how to make them).
        fn = _parsing_examples(_keras_endpoint_fn(source.obj, endpoint, index), endpoint)
    else:
        fn = _saved_model_endpoint_fn(source.obj, endpoint, index)
        if _serves_as_is(source, endpoint):
            return fn  # the source's own classify/regress signature: its outputs as they are
    return _shaped_for_kind(fn, endpoint, index)


def _serves_as_is(source: SourceModel, endpoint: Endpoint) -> bool:
    from shipyard.exporter.whole import read_graph_cached, serves_as_is

    return serves_as_is(read_graph_cached(source.path), endpoint)


def feature_spec(features: dict[str, Any]) -> dict[str, Any]:
    """The spec's tf_example features -> tf.io.parse_example's feature spec."""
    parsed = {}
    for name, feature in features.items():
        dtype = tf.dtypes.as_dtype(feature.dtype)
        if feature.variable_length:
            parsed[name] = tf.io.FixedLenSequenceFeature(
                feature.shape[1:], dtype, allow_missing=True, default_value=feature.default)
        else:
            parsed[name] = tf.io.FixedLenFeature(feature.shape, dtype,
                                                 default_value=feature.default)
    return parsed


def _parsing_examples(fn: EndpointFn, endpoint: Endpoint) -> EndpointFn:
    """Replaces each tf_example argument (serialized examples) by its dict of features."""
    specs = {i: feature_spec(argument.tf_example) for i, argument in enumerate(endpoint.inputs)
             if isinstance(argument, TensorDecl) and argument.tf_example is not None}
    if not specs:
        return fn

    def parse_then_call(*args: Any) -> dict[str, Any]:
        args = tuple(tf.io.parse_example(a, specs[i]) if i in specs else a
                     for i, a in enumerate(args))
        return fn(*args)

    return parse_then_call


def _shaped_for_kind(fn: EndpointFn, endpoint: Endpoint, index: int) -> EndpointFn:
    """Classify: {scores [N, K] float, classes [N, K] string}; regress: {outputs [N] or [N, 1]
    float}; the contracts of TF Serving's classifier.cc and regressor.cc."""
    if endpoint.kind == "predict":
        return fn
    field = f"endpoints[{index}]"

    def kind_outputs(*args: Any) -> dict[str, Any]:
        outputs = fn(*args)
        if endpoint.output is None and len(outputs) != 1:
            wanted = "scores" if endpoint.kind == "classify" else "regression values"
            raise SpecError(f"{field}.output: the model has outputs {sorted(outputs)}; name the "
                            f"one that gives the {wanted}")
        name = endpoint.output or next(iter(outputs))
        if name not in outputs:
            raise SpecError(f"{field}.output: {name!r} is not an output of the model; its "
                            f"outputs are {sorted(outputs)}")
        value = tf.cast(outputs[name], tf.float32)
        if endpoint.kind == "regress":
            if value.shape.rank not in (1, 2) or (value.shape.rank == 2 and value.shape[-1] != 1):
                raise SpecError(f"{field}: output {name!r} has shape {value.shape}; TF Serving's "
                                "Regress needs one value per example, [N] or [N, 1]")
            return {"outputs": value}
        if value.shape.rank == 1:
            value = value[:, None]
        if value.shape.rank != 2:
            raise SpecError(f"{field}: output {name!r} has shape {value.shape}; TF Serving's "
                            "Classify needs scores [N, K]")
        count = value.shape[-1]
        if count is None and endpoint.classes is None:
            raise SpecError(f"{field}.classes: output {name!r} does not fix its number of "
                            "classes; list the class labels in `classes`")
        labels = endpoint.classes or [str(i) for i in range(count)]
        if count is not None and len(labels) != count:
            raise SpecError(f"{field}.classes: {len(labels)} labels for {count} scores per "
                            f"example in output {name!r}; list one label per score")
        classes = tf.tile(tf.constant([labels]), tf.stack([tf.shape(value)[0], 1]))
        return {"classes": classes, "scores": value}

    return kind_outputs


def _keras_endpoint_fn(model: Any, endpoint: Endpoint, index: int) -> EndpointFn:
    if endpoint.method == "call":
        training = bool(endpoint.training)
        output_names = _model_output_names(model)

        def call(*args: Any) -> dict[str, Any]:
            return _name_outputs(model(*args, training=training), output_names)

        return call
    method = getattr(model, endpoint.method, None)
    if not callable(method):
        raise SpecError(
            f"endpoints[{index}].method: {type(model).__name__} has no public method "
            f"{endpoint.method!r}; its own methods are {_own_methods(model)} (or use 'call')")

    def custom(*args: Any) -> dict[str, Any]:
        return _name_outputs(method(*args), None)

    return custom


def _saved_model_endpoint_fn(loaded: Any, endpoint: Endpoint, index: int) -> EndpointFn:
    if endpoint.training is not None:
        raise SpecError(f"endpoints[{index}].training: a SavedModel source has no training "
                        "switch (its functions were traced with one fixed); remove `training`")
    # Names in the order tf.nest.flatten yields the tensors (dict values sorted by key), which
    # is not the spec's order: zip the arguments with these, never with signature_inputs().
    declared = [spec.name for spec in tf.nest.flatten(_input_signature(endpoint))]
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    function = getattr(loaded, endpoint.method, None)
    if endpoint.method in signatures:
        signature = signatures[endpoint.method]
        expected = sorted(signature.structured_input_signature[1])
        if endpoint.examples_input() is not None and len(expected) == len(declared) == 1:
            # Serialized examples in, whatever the source calls that input (TFX's Trainer:
            # `examples`; a classify/regress endpoint must call it `inputs`).
            declared = expected
        if sorted(declared) == expected:
            def call_signature(*args: Any) -> dict[str, Any]:
                flat = tf.nest.flatten(args)
                return dict(signature(**dict(zip(declared, flat))))

            return call_signature
        examples = endpoint.examples_input()
        if examples is not None and len(endpoint.inputs) == 1 and \
                sorted(examples.tf_example) == expected:
            # Serialized examples in, parsed into the features the signature takes by name.
            parse = feature_spec(examples.tf_example)

            def parse_then_call_signature(serialized: Any) -> dict[str, Any]:
                return dict(signature(**tf.io.parse_example(serialized, parse)))

            return parse_then_call_signature
        if function is None:
            raise SpecError(
                f"endpoints[{index}].inputs: signature {endpoint.method!r} of the SavedModel "
                f"takes inputs {expected}, the spec declares {sorted(declared)}; declare "
                "exactly the signature's input names")
        # A restored function of the same name takes positional arguments: names are free.
    if function is None or not callable(function):
        restored = sorted(name for name in dir(loaded) if not name.startswith("_")
                          and callable(getattr(loaded, name, None)))
        raise SpecError(
            f"endpoints[{index}].method: the SavedModel has no signature or restored function "
            f"{endpoint.method!r}; signatures: {sorted(signatures)}, functions: {restored}")

    def call_function(*args: Any) -> dict[str, Any]:
        return _name_outputs(function(*args), None)

    return call_function


def _name_outputs(result: Any, output_names: list[str] | None) -> dict[str, Any]:
    """Signature outputs keyed by the model's output names (Keras would say output_0, ...)."""
    if isinstance(result, dict):
        named = dict(result)
    else:
        flat = list(result) if isinstance(result, (list, tuple)) else [result]
        if output_names and len(output_names) == len(flat):
            named = dict(zip(output_names, flat))
        else:
            named = {f"output_{i}": tensor for i, tensor in enumerate(flat)}
    # A serving signature maps string names to tensors; nothing nested fits in one.
    for name, value in named.items():
        if not isinstance(name, str) or isinstance(value, (dict, list, tuple)):
            raise SpecError(
                f"output {name!r} is {type(value).__name__}-valued or not named by a string: "
                "a signature returns a tensor, a list of tensors or a flat dict of tensors "
                "keyed by name; add an endpoint method that flattens the outputs")
        if isinstance(value, tf.__internal__.CompositeTensor):
            # tf.saved_model writes it as a composite signature output, which TF Serving's
            # Predict, Classify and Regress cannot return (nor read_signatures describe).
            kind = type(value).__name__
            raise SpecError(
                f"output {name!r} is a {kind}: a serving signature returns dense tensors, "
                f"and TF Serving cannot return a {kind}. Make the model return a dense "
                "tensor (sparse=False / ragged=False on the layer that makes it), or add an "
                "endpoint method that converts it (tf.sparse.to_dense(x), x.to_tensor())")
    return named


def _model_output_names(model: Any) -> list[str] | None:
    if isinstance(model, keras.Sequential):
        # Sequential has no output_names; its single output is its last layer's.
        return [model.layers[-1].name] if model.layers else None
    try:
        names = list(model.output_names)
    except Exception:  # subclassed models without a functional graph have none
        return None
    return names or None


def _own_methods(model: Any) -> list[str]:
    names: set[str] = set()
    for cls in type(model).__mro__:
        if cls.__module__.startswith(("keras", "tensorflow", "builtins")):
            break
        names.update(n for n, v in vars(cls).items() if callable(v) and not n.startswith("_"))
    return sorted(names)


def _lookup_vocabularies(source: SourceModel) -> list[list[Any]]:
    if source.format == "saved_model":  # its tables' keys, read from its graph and assets
        from shipyard.exporter.saved_model_vocabulary import table_keys

        return table_keys(source.path)
    if source.format != "keras":
        return []
    vocabularies = []
    for layer in _all_layers(source.obj):
        if isinstance(layer, _LOOKUP_LAYERS):
            vocabularies.append([item.decode() if isinstance(item, bytes) else
                                 item if isinstance(item, str) else int(item)
                                 for item in layer.get_vocabulary()])
    return vocabularies


def _sample_vocabularies(lookups: list[list[Any]],
                         source: SourceModel | None = None) -> Vocabularies:
    strings = [i for vocab in lookups for i in vocab if isinstance(i, str) and i and i != "[UNK]"]
    # IntegerLookup lists its OOV token (-1) in the vocabulary; it is not a real entry.
    integers = [i for vocab in lookups for i in vocab if isinstance(i, int) and i >= 0]
    # A Keras lookup without OOV indices fails on any value outside its vocabulary: samples
    # carry none then. (An inverted one takes indices: its vocabulary is what it returns.)
    closed = source is not None and source.format == "keras" and any(
        isinstance(layer, _LOOKUP_LAYERS) and getattr(layer, "num_oov_indices", 1) == 0
        and not getattr(layer, "invert", False) for layer in _all_layers(source.obj))
    return Vocabularies(tuple(dict.fromkeys(strings)), tuple(dict.fromkeys(integers)),
                        out_of_vocabulary=not closed)


def _all_layers(model: Any) -> list[Any]:
    try:
        return list(model._flatten_layers(include_self=False, recursive=True))
    except AttributeError:  # not a Keras layer tree
        return list(getattr(model, "layers", []))


def _shape_text(shape: list[int | None]) -> str:
    return "[" + ", ".join("null" if d is None else str(d) for d in shape) + "]"


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:500] if text else ""


def endpoint_function(source: SourceModel, spec: ExportSpec, name: str) -> EndpointFn:
    """The ORIGINAL model's callable for endpoint `name` (as the export wraps it)."""
    index = [e.name for e in spec.endpoints].index(name)
    return _endpoint_fn(source, spec.endpoints[index], index)


def structure_arguments(endpoint: Endpoint, named: dict[str, Any]) -> list[Any]:
    """Signature inputs by name -> the positional arguments the endpoint's method takes."""
    names = iter(name for name, _ in endpoint.signature_inputs())
    arguments: list[Any] = []
    for argument in endpoint.inputs:
        if isinstance(argument, TensorDecl):
            arguments.append(named[next(names)])
        elif isinstance(argument, dict):
            arguments.append({key: named[next(names)] for key in argument})
        else:
            arguments.append([named[next(names)] for _ in argument])
    return arguments
