"""The keys of a SavedModel's lookup tables, read from its files (saved_model.pb, assets/).

Generated inputs draw strings and integers from them (samples.Vocabularies), so verification
and warmup reach the entries a SavedModel's tables know, as they do for a Keras source's
lookup layers. Nothing is loaded or run. The tables' initializers are found in every graph of
the SavedModel: a TF1 graph's nodes, and the functions of its library (TF2). Their inputs are
then followed back to what fills the table:

- a `TextFileInitializer` (InitializeTableFromTextFile[V2]) reads a vocabulary file, an asset
  (TensorFlow Transform's `compute_and_apply_vocabulary` writes one per vocabulary). Its keys
  are each line whole (key_index -2), or one column of it split by the op's `delimiter`
  (key_index >= 0). A table keyed by line number (-1) has no keys to take.
- a `KeyValueTensorInitializer` (LookupTableImportV2, InitializeTable[V2]) imports constant
  keys (a Const node; Keras's StringLookup and IntegerLookup keep theirs so).

How an initializer is linked to its file or constant: by data flow, never by name. An input
is followed through Identity, IdentityN and Snapshot; a variable read, to what was assigned to
the variable; a function call's output, to the callee's return value; a function's argument,
to what every call site passes and, for a TF2 function's captured inputs, to the object graph
node the capture is bound to (an asset, a constant, or a table resource, whose
`_create_resource` function makes the table). A value that ends at an `asset_file_def` tensor
is that asset file. A filename that ends at a constant path instead (a TF1 graph whose builder
was given no assets) is matched to the file of that base name in assets/, and taken only if
it is there: the original path names a file of the machine that built the model. Anything
else (a key computed at run time, a table restored from a checkpoint, a DatasetInitializer)
gives no keys: no vocabulary only means generated values instead of real ones.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.core.errors import ModelLoadError
from shipyard.exporter.samples import Vocabularies
from shipyard.exporter.source import read_saved_model

# Keys taken per table: the first lines of a vocabulary file, the first entries of a
# constant. Samples draw a handful of values per input, and the keys enter the version's
# fingerprint (lookup_vocabularies), so reading all of a 100k-line vocabulary would cost time
# and manifest size for nothing. TensorFlow Transform sorts vocabularies by frequency, most
# frequent first, so the first entries are the words requests carry most.
MAX_KEYS = 256

TEXT_FILE_OPS = frozenset({"InitializeTableFromTextFileV2", "InitializeTableFromTextFile"})
KEY_VALUE_OPS = frozenset({"LookupTableImportV2", "LookupTableImport", "InitializeTableV2",
                           "InitializeTable"})
WHOLE_LINE, LINE_NUMBER = -2, -1  # TextFileIndex
_PASS_THROUGH = frozenset({"Identity", "Snapshot"})
_CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})
_MAX_DEPTH = 200  # of the data flow followed back from one input; real graphs need far less
_ASSETS_COLLECTION = "saved_model_assets"  # TF1's copy of asset_file_def, in older SavedModels

Key = str | int


def read_vocabularies(directory: str | Path) -> Vocabularies:
    """Every table's keys, as the values samples draw from: strings, and integers >= 0 (a
    negative integer key is rare and usually a sentinel)."""
    keys = [key for table in table_keys(directory) for key in table]
    return Vocabularies(
        tuple(dict.fromkeys(k for k in keys if isinstance(k, str) and k)),
        tuple(dict.fromkeys(k for k in keys if isinstance(k, int) and k >= 0)))


def table_keys(directory: str | Path) -> list[list[Key]]:
    """Per table, its first MAX_KEYS keys in file (or constant) order; tables in graph order,
    a table filled identically twice (a TF2 function traced twice) once."""
    directory = Path(directory)
    tables: list[list[Key]] = []
    for meta_graph in read_saved_model(directory).meta_graphs:
        graph = _Graph(meta_graph)
        for scope, node in graph.initializers():
            for keys in _initializer_keys(graph, scope, node, directory):
                if keys and keys not in tables:
                    tables.append(keys)
    return tables


@dataclass(frozen=True)
class _Asset:
    filename: str  # in assets/


@dataclass(frozen=True)
class _Node:
    scope: str  # "" for the graph, else the library function's name
    node: Any  # NodeDef


@dataclass
class _Graph:
    """One MetaGraphDef, indexed for following values back."""

    meta_graph: Any
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # scope -> name -> NodeDef
    functions: dict[str, Any] = field(default_factory=dict)  # name -> FunctionDef
    callers: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)
    assigns: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # variable: values
    assets: dict[str, str] = field(default_factory=dict)  # tensor name -> file in assets/
    # Each value followed once: a function called from many places is not walked again per
    # path, and a cycle (a while loop's NextIteration) ends.
    _followed: dict[tuple[str, str], list[_Asset | _Node]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        graph_def = self.meta_graph.graph_def
        self.functions = {f.signature.name: f for f in graph_def.library.function}
        self.nodes = {"": {n.name: n for n in graph_def.node}}
        self.nodes.update({name: {n.name: n for n in f.node_def}
                           for name, f in self.functions.items()})
        for scope, nodes in self.nodes.items():
            for node in nodes.values():
                callee = self.callee(node)
                if callee is not None:
                    self.callers.setdefault(callee, []).append((scope, node))
                if node.op == "AssignVariableOp":
                    self.assigns.setdefault((scope, _name(node.input[0])), []).append(
                        node.input[1])
        for asset in self._asset_file_defs():
            self.assets[asset.tensor_info.name] = asset.filename

    def _asset_file_defs(self) -> list[Any]:
        from tensorflow.core.protobuf import meta_graph_pb2

        defs = list(self.meta_graph.asset_file_def)
        collection = self.meta_graph.collection_def.get(_ASSETS_COLLECTION)
        for value in collection.any_list.value if collection is not None else ():
            asset = meta_graph_pb2.AssetFileDef()
            if value.Unpack(asset):
                defs.append(asset)
        return defs

    def initializers(self) -> list[tuple[str, Any]]:
        return [(scope, node) for scope, nodes in self.nodes.items()
                for node in nodes.values() if node.op in TEXT_FILE_OPS | KEY_VALUE_OPS]

    def callee(self, node: Any) -> str | None:
        if node.op in _CALL_OPS:
            return node.attr["f"].func.name or None
        return node.op if node.op in self.functions else None  # a function called as an op

    def sources(self, scope: str, ref: str, depth: int = 0) -> list[_Asset | _Node]:
        """What the tensor `ref` of `scope` comes from: asset files, and the nodes the data
        flow cannot be followed past (constants, tables, anything computed)."""
        if ref.startswith("^") or depth > _MAX_DEPTH:
            return []
        if (scope, ref) not in self._followed:
            self._followed[scope, ref] = []  # what a cycle back to this value finds
            self._followed[scope, ref] = self._follow(scope, ref, depth)
        return self._followed[scope, ref]

    def _follow(self, scope: str, ref: str, depth: int) -> list[_Asset | _Node]:
        parts = ref.split(":")
        if scope == "":  # "node" or "node:index"
            name, index = parts[0], int(parts[1]) if len(parts) > 1 else 0
            if f"{name}:{index}" in self.assets:
                return [_Asset(self.assets[f"{name}:{index}"])]
        elif len(parts) == 1:  # a function's argument
            return self._argument_sources(scope, ref, depth + 1)
        else:  # "node:output_arg:index"
            name, index = parts[0], int(parts[2]) if len(parts) > 2 else 0
        node = self.nodes.get(scope, {}).get(name)
        if node is None:
            return []
        if node.op in _PASS_THROUGH:
            return self.sources(scope, node.input[0], depth + 1)
        if node.op == "IdentityN":
            return self.sources(scope, node.input[index], depth + 1)
        if node.op == "ReadVariableOp":
            return [found for variable in self.sources(scope, node.input[0], depth + 1)
                    if isinstance(variable, _Node)
                    for value in self.assigns.get((variable.scope, variable.node.name), ())
                    for found in self.sources(variable.scope, value, depth + 1)]
        callee = self.callee(node)
        if callee is not None and callee in self.functions:
            return self._return_sources(callee, index, depth + 1)
        return [_Node(scope, node)]

    def _return_sources(self, function: str, index: int, depth: int) -> list[_Asset | _Node]:
        signature = self.functions[function].signature
        if index >= len(signature.output_arg):
            return []
        ret = self.functions[function].ret.get(signature.output_arg[index].name)
        return self.sources(function, ret, depth) if ret else []

    def _argument_sources(self, function: str, argument: str,
                          depth: int) -> list[_Asset | _Node]:
        names = [a.name for a in self.functions[function].signature.input_arg]
        if argument not in names:
            return []
        position = names.index(argument)
        found: list[_Asset | _Node] = []
        # A TF2 function's captured inputs are its last arguments, bound in order to object
        # graph nodes (SavedConcreteFunction.bound_inputs).
        bound = self._bound_inputs(function)
        first_bound = len(names) - len(bound)
        if bound and position >= first_bound:
            found += self._object_sources(bound[position - first_bound], depth)
        for scope, call in self.callers.get(function, ()):
            inputs = [i for i in call.input if not i.startswith("^")]
            if position < len(inputs):
                found += self.sources(scope, inputs[position], depth)
        return found

    def _bound_inputs(self, function: str) -> list[int]:
        concrete = self.meta_graph.object_graph_def.concrete_functions.get(function)
        return list(concrete.bound_inputs) if concrete is not None else []

    def _object_sources(self, node_id: int, depth: int) -> list[_Asset | _Node]:
        objects = self.meta_graph.object_graph_def.nodes
        if node_id >= len(objects):
            return []
        obj = objects[node_id]
        kind = obj.WhichOneof("kind")
        if kind == "asset":
            index = obj.asset.asset_file_def_index
            asset_defs = self.meta_graph.asset_file_def
            return [_Asset(asset_defs[index].filename)] if index < len(asset_defs) else []
        if kind == "constant":
            return self.sources("", obj.constant.operation, depth)
        if kind == "resource":  # a table: what its _create_resource function returns
            return [found for child in obj.children if child.local_name == "_create_resource"
                    for function in self._concrete_functions(child.node_id)
                    for found in self._return_sources(function, 0, depth)]
        return []

    def _concrete_functions(self, node_id: int) -> list[str]:
        obj = self.meta_graph.object_graph_def.nodes[node_id]
        kind = obj.WhichOneof("kind")
        if kind == "function":
            names = list(obj.function.concrete_functions)
        elif kind == "bare_concrete_function":
            names = [obj.bare_concrete_function.concrete_function_name]
        else:
            names = []
        return [name for name in names if name in self.functions]


def _name(ref: str) -> str:
    return ref.lstrip("^").split(":")[0]


def _initializer_keys(graph: _Graph, scope: str, node: Any,
                      directory: Path) -> list[list[Key]]:
    """One list of keys per file or constant that fills the table this node initializes (one
    initializer function can be called for several tables)."""
    inputs = [i for i in node.input if not i.startswith("^")]
    if len(inputs) < 2:
        return []
    if node.op in KEY_VALUE_OPS:
        return [keys for source in graph.sources(scope, inputs[1])
                if isinstance(source, _Node) and source.node.op == "Const"
                for keys in [_constant_keys(source.node)] if keys is not None]
    key_index = node.attr["key_index"].i
    if key_index == LINE_NUMBER:
        return []
    integer_keys = _integer_keys(graph, scope, inputs[0])
    delimiter = node.attr["delimiter"].s if "delimiter" in node.attr else b"\t"
    vocab_size = node.attr["vocab_size"].i if "vocab_size" in node.attr else -1
    return [_file_keys(path, key_index, delimiter or b"\t", vocab_size, integer_keys)
            for path in _vocabulary_files(graph.sources(scope, inputs[1]), directory)]


def _vocabulary_files(sources: list[_Asset | _Node], directory: Path) -> list[Path]:
    import tensorflow as tf

    files: list[Path] = []
    for source in sources:
        if isinstance(source, _Asset):
            path = directory / "assets" / source.filename
            if not path.is_file():
                raise ModelLoadError(
                    f"MODEL: {directory}: a lookup table is initialized from "
                    f"assets/{source.filename}, which is missing; the SavedModel is incomplete "
                    "(copy it whole, or export the model again)")
        elif (source.node.op == "Const"
              and tf.as_dtype(source.node.attr["dtype"].type) == tf.string):
            value = tf.make_ndarray(source.node.attr["value"].tensor).reshape(-1)
            if len(value) != 1:
                continue
            basename = value[0].decode(errors="replace").replace("\\", "/").rsplit("/", 1)[-1]
            path = directory / "assets" / basename
            if not basename or not path.is_file():
                continue
        else:
            continue
        if path not in files:
            files.append(path)
    return files


def _integer_keys(graph: _Graph, scope: str, table: str) -> bool:
    """Whether the table's keys are integers, from the op that creates it (HashTableV2's
    key_dtype). A table that cannot be traced to one is taken as keyed by strings:
    TextFileInitializer's default, and what a vocabulary file mostly holds."""
    import tensorflow as tf

    dtypes = {tf.as_dtype(source.node.attr["key_dtype"].type)
              for source in graph.sources(scope, table)
              if isinstance(source, _Node) and "key_dtype" in source.node.attr}
    return len(dtypes) == 1 and dtypes.pop().is_integer


def _file_keys(path: Path, key_index: int, delimiter: bytes, vocab_size: int,
               integer_keys: bool) -> list[Key]:
    """The keys of the first MAX_KEYS lines (of the first `vocab_size`, when it is set), as
    TensorFlow's text-file initializer reads them: a line without its line break (and a
    carriage return before it), whole or split at `delimiter`."""
    keys: list[Key] = []
    limit = MAX_KEYS if vocab_size < 0 else min(MAX_KEYS, vocab_size)
    with path.open("rb") as file:
        for line in itertools.islice(file, limit):
            line = line.rstrip(b"\n").removesuffix(b"\r")
            if key_index != WHOLE_LINE:
                columns = line.split(delimiter)
                if key_index >= len(columns):
                    continue
                line = columns[key_index]
            key = _key(line, integer=integer_keys)
            if key is not None:
                keys.append(key)
    return list(dict.fromkeys(keys))


def _constant_keys(node: Any) -> list[Key] | None:
    import tensorflow as tf

    dtype = tf.as_dtype(node.attr["dtype"].type)
    if dtype != tf.string and not dtype.is_integer:
        return None  # a float or bool keyed table: nothing samples draw from
    values = tf.make_ndarray(node.attr["value"].tensor).reshape(-1)[:MAX_KEYS]
    keys = [_key(v, integer=False) if dtype == tf.string else int(v) for v in values]
    return list(dict.fromkeys(k for k in keys if k is not None))


def _key(raw: bytes, *, integer: bool) -> Key | None:
    """A key as samples use it; None for one they cannot (not UTF-8, not an integer)."""
    try:
        text = raw.decode()
        return int(text) if integer else text
    except (UnicodeDecodeError, ValueError):
        return None
