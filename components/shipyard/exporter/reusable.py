"""TF Hub's reusable SavedModel interface (spec `reusable: true`).

TF Hub's guide ("Reusable SavedModels") defines what `hub.KerasLayer(path, trainable=True)`
needs to fine-tune a SavedModel: on the object `tf.saved_model.load` revives,
- `__call__(inputs, training=False)`: a tf.function traced for both values of `training`
  where the computation takes it (dropout, batch normalization);
- `variables` and `trainable_variables`: the tf.Variables `__call__` uses;
- `regularization_losses`: zero-argument tf.functions, one scalar each (weight regularizers).

For a Keras source they are added to the object ExportArchive saves (`archive._tf_trackable`:
what is set on it is what the revived object has). `variables` and `trainable_variables` are
there already, as the model's tf.Variables (archive._track_backend_variables), so the
fine-tuned weights are the ones the serving signatures read. A SavedModel source cannot be
given the interface (its Python code is gone); it must have it, and then ships with it.

The check with TF Hub's own client is exporter/reusable_check.py; `expectations` gives it what
the version must answer, from the source model in the exporting process.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from shipyard.core.errors import SpecError
from shipyard.core.spec import Endpoint, ExportSpec, TensorDecl
from shipyard.exporter.source import SourceModel
from shipyard.exporter.whole import FUNCTION_KINDS

INTERFACE = ("__call__", "variables", "trainable_variables", "regularization_losses")


def add_interface(archive: Any, source: SourceModel, spec: ExportSpec) -> None:
    """Adds the interface to `archive` (a keras.export.ExportArchive) if the spec asks for it."""
    if not spec.reusable:
        return
    if source.format != "keras":
        require_interface(source.path)
        return  # shipped whole, the version keeps the source's interface
    model = source.obj
    endpoint = spec.default
    _check_default_endpoint(spec)
    tracked = archive._tf_trackable  # no public hook: ExportArchive saves this object
    tracked.__call__ = _call_function(model, endpoint)
    tracked.regularization_losses = [_loss_function(regularizer, variable)
                                     for variable, regularizer in _weight_regularizers(model)]


def require_interface(saved_model_dir: Path) -> None:
    """`reusable: true` for a SavedModel source: it must have the interface already."""
    if not has_reusable_interface(saved_model_dir):
        raise SpecError(
            f"reusable: true, but the SavedModel {saved_model_dir} lacks TF Hub's reusable "
            f"interface (the root object's {', '.join(INTERFACE)}; it has "
            f"{_root_children(saved_model_dir) or 'none of them'}), and shipyard cannot add it "
            "to a SavedModel: save the model with them (TF Hub's guide, \"Reusable "
            "SavedModels\"), export its .keras file instead, or remove `reusable`")


def has_reusable_interface(saved_model_dir: Path) -> bool:
    """Whether the SavedModel's root object has TF Hub's reusable interface: a `__call__`
    function and the `variables`, `trainable_variables` and `regularization_losses` lists.

    The guide lets a model that is not meant to be fine-tuned leave out empty lists; reusable
    here means fine-tunable with `hub.KerasLayer(trainable=True)`, so all four are asked for.
    Read from saved_model.pb's object graph: nothing is loaded. A TF1 graph has none."""
    nodes = _object_graph(Path(saved_model_dir))
    if not nodes:
        return False
    children = {c.local_name: c.node_id for c in nodes[0].children}
    if any(name not in children for name in INTERFACE):
        return False
    return nodes[children["__call__"]].WhichOneof("kind") in FUNCTION_KINDS


def expectations(source: SourceModel, spec: ExportSpec, arguments: list[Any]
                 ) -> dict[str, Any]:
    """What TF Hub's client must find in the version, from the source model: the keyword
    arguments of reusable_check.check_reusable but the version and the tolerance.

    `arguments`: one call's positional arguments for the default endpoint, as the verifier
    calls it (a Reference's `sample.arguments`); `__call__` takes the first (and only) one.
    For a SavedModel source (which keeps its own interface), its restored `__call__`,
    `trainable_variables` and `regularization_losses` answer: its default endpoint's first
    argument must then be what its `__call__` takes (e.g. `method: __call__`).
    """
    from shipyard.exporter.archive import _model_output_names, _name_outputs
    from shipyard.exporter.reference import as_tensors, to_numpy

    model = source.obj
    endpoint = spec.default
    argument = as_tensors(endpoint, arguments)[0]
    if source.format != "keras":
        return {"inputs": arguments[0],
                "expected_outputs": {name: to_numpy(value) for name, value in
                                     _name_outputs(_restored_inference(model, argument),
                                                   None).items()},
                "trainable_count": len(model.trainable_variables),
                "regularization_losses": [float(np.asarray(loss()))
                                          for loss in model.regularization_losses]}
    method, takes_training = _method(model, endpoint)
    answered = method(argument, training=False) if takes_training else method(argument)
    names = _model_output_names(model) if endpoint.method in ("call", "__call__") else None
    outputs = _name_outputs(answered, names)
    return {
        "inputs": arguments[0],
        "expected_outputs": {name: to_numpy(value) for name, value in outputs.items()},
        "trainable_count": len(model.trainable_weights),
        "regularization_losses": [float(np.asarray(regularizer(variable)))
                                  for variable, regularizer in _weight_regularizers(model)],
    }


def _restored_inference(loaded: Any, argument: Any) -> Any:
    """A restored `__call__` with training=False, where it was traced with `training`."""
    try:
        return loaded(argument, training=False)
    except (TypeError, ValueError):  # no trace takes `training`: the guide allows that
        pass
    try:
        return loaded(argument)
    except (TypeError, ValueError) as err:
        text = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        raise SpecError(
            f"reusable: the SavedModel's __call__ does not take the default endpoint's inputs, "
            f"which TF Hub's client is checked on ({type(err).__name__}: {text}); make the "
            "default endpoint `method: __call__`, declaring the inputs its __call__ takes"
        ) from None


def _check_default_endpoint(spec: ExportSpec) -> None:
    endpoint = spec.default
    index = spec.endpoints.index(endpoint)
    field = f"endpoints[{index}]"
    if len(endpoint.inputs) != 1:
        raise SpecError(
            f"reusable: TF Hub's __call__ takes one positional argument (a tensor, a dict or a "
            f"list of tensors), built on the default endpoint's inputs, and {field} "
            f"({endpoint.name!r}) declares {len(endpoint.inputs)}: make the default endpoint "
            "one whose method takes one argument, or remove `reusable`")
    if endpoint.kind != "predict" or endpoint.examples_input() is not None:
        raise SpecError(
            f"reusable: TF Hub's __call__ takes the model's features, built on the default "
            f"endpoint's inputs, and {field} ({endpoint.name!r}) takes serialized tf.Examples: "
            "make a predict endpoint over the features the default_endpoint (the tf.Example "
            "endpoints can stay), or remove `reusable`")


def _method(model: Any, endpoint: Endpoint) -> tuple[Any, bool]:
    """The default endpoint's method, and whether it takes `training`."""
    if endpoint.method in ("call", "__call__"):
        return model, True  # Keras's __call__ passes `training` on to call
    method = getattr(model, endpoint.method)  # build_archive has traced it: it exists
    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return method, False
    return method, "training" in parameters


def _call_function(model: Any, endpoint: Endpoint) -> Any:
    """`__call__`, traced on the default endpoint's input for each value of `training`."""
    method, takes_training = _method(model, endpoint)
    argument = _argument_spec(endpoint)
    if takes_training:
        def call(inputs: Any, training: bool = False) -> Any:
            return method(inputs, training=training)

        function = tf.function(call, autograph=False)
        traces = (False, True)
    else:
        def call_without_training(inputs: Any) -> Any:
            return method(inputs)

        function = tf.function(call_without_training, autograph=False)
        traces = (None,)
    for training in traces:
        kwargs = {} if training is None else {"training": training}
        try:
            function.get_concrete_function(argument, **kwargs)
        except Exception as err:  # tracing runs user code: name what was traced and why
            text = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            raise SpecError(
                f"reusable: tracing TF Hub's __call__ (method {endpoint.method!r} of the default "
                f"endpoint {endpoint.name!r}{', training=' + str(training) if kwargs else ''}) "
                f"failed: {type(err).__name__}: {text}. The model must run on the default "
                "endpoint's inputs in training and inference mode; fix it, or remove "
                "`reusable`") from None
    return function


def _argument_spec(endpoint: Endpoint) -> Any:
    """The default endpoint's one argument as TensorSpecs named like its signature inputs."""
    from shipyard.exporter.archive import tensor_spec

    names = iter(name for name, _ in endpoint.signature_inputs())
    argument = endpoint.inputs[0]
    if isinstance(argument, TensorDecl):
        return tensor_spec(argument, next(names))
    if isinstance(argument, dict):
        return {key: tensor_spec(decl, next(names)) for key, decl in argument.items()}
    return [tensor_spec(decl, next(names)) for decl in argument]


def _weight_regularizers(model: Any) -> list[tuple[Any, Any]]:
    """(tf.Variable, regularizer) for each regularized trainable weight, in weight order:
    what Keras adds to `model.losses` for weights (activity regularizers need inputs, which
    a zero-argument loss cannot have)."""
    from shipyard.exporter.archive import backend_variable

    return [(backend_variable(w), w.regularizer) for w in model.trainable_weights
            if getattr(w, "regularizer", None) is not None]


def _loss_function(regularizer: Any, variable: Any) -> Any:
    def regularization_loss() -> Any:
        return regularizer(variable)

    function = tf.function(regularization_loss, input_signature=[], autograph=False)
    function.get_concrete_function()
    return function


def _object_graph(saved_model_dir: Path) -> Any:
    from shipyard.core.errors import ModelLoadError
    from shipyard.exporter.source import read_saved_model

    try:
        proto = read_saved_model(saved_model_dir)
    except ModelLoadError:
        return []
    meta_graphs = [m for m in proto.meta_graphs if "serve" in m.meta_info_def.tags]
    meta_graphs = meta_graphs or list(proto.meta_graphs)
    return meta_graphs[0].object_graph_def.nodes if meta_graphs else []


def _root_children(saved_model_dir: Path) -> list[str]:
    nodes = _object_graph(Path(saved_model_dir))
    names = {c.local_name for c in nodes[0].children} if nodes else set()
    return sorted(names & set(INTERFACE))
