"""A SavedModel source shipped whole: the version is the source's own SavedModel.

Rewriting a SavedModel through Keras's ExportArchive keeps only the functions it re-traces:
a TF1 graph loses its init op (SavedModelBuilder's main_op: the tables stay uninitialized), a
TF2 object loses its restored functions and attributes (TF Hub's reusable interface). So a
SavedModel source is copied as it is, and shipyard adds only what the spec asks for and the
source does not have. Three ways, the least invasive that does the job (`Shipping.how`):

- COPIED: every endpoint is a signature of the source, under its own name: the files are
  copied byte for byte (shipyard's own assets.extra/ files aside).
- SIGNATURE_DEFS_ADDED: a TF1 graph whose endpoints rename its signatures, or name their
  method: the copy's saved_model.pb gets SignatureDefs that point at the same tensors (TF
  Serving's and tf.saved_model.load's TF1 loaders both read that map). The graph, its init
  op and its variables are the source's.
- RESAVED: anything that needs a new function (a classify/regress signature over a predict
  one, parsing tf.Examples for a signature that takes features, a restored function served as
  a signature, a renamed TF2 signature, variable collections): the object that
  tf.saved_model.load revived is saved again with all of its signatures plus the new ones.
  What the re-save would lose (a signature, a restored function or attribute, an asset, a
  variable) is looked for in the written files, and the export is refused if anything is.

Every signature the version serves is called on the source and on the version, including
those the spec does not name (`extra_endpoints`); the verifier loads the version with TF1's
session loader, as TF Serving does, so the init ops are proven to run.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.core.errors import SpecError
from shipyard.core.spec import (
    EXAMPLES_INPUT,
    KIND_OUTPUTS,
    Endpoint,
    ExportSpec,
    TensorDecl,
)

SERVING_DEFAULT = "serving_default"
COPIED = "copied as is"
SIGNATURE_DEFS_ADDED = "copied; signature defs added"
RESAVED = "re-saved from tf.saved_model.load with what the spec adds"
# What shipyard writes into assets.extra/ itself: a source's own copies (it may be an earlier
# version) are replaced, everything else there travels with the version.
OWN_EXTRA_FILES = frozenset({"tf_serving_warmup_requests", "shipyard.json"})
# Object graph nodes that are restored functions (tf.function, or a bare concrete function).
FUNCTION_KINDS = ("function", "bare_concrete_function")


@dataclass(frozen=True)
class SourceGraph:
    """What a SavedModel directory holds, read from its files (no TensorFlow load)."""

    signatures: dict[str, dict[str, Any]]  # archive.read_signatures: method name, inputs, outputs
    tf2: bool  # written by tf.saved_model.save (an object graph); False: a TF1 graph
    functions: frozenset[str]  # restored functions of the root object (TF2)
    attributes: frozenset[str]  # every child of the root object (TF2)
    assets: frozenset[str]  # asset file names
    variables: int  # tensors in the checkpoint


def read_graph(directory: Path) -> SourceGraph:
    import tensorflow as tf

    from shipyard.exporter.archive import read_signatures
    from shipyard.exporter.source import read_saved_model

    proto = read_saved_model(directory)
    meta_graph = next(m for m in proto.meta_graphs if "serve" in m.meta_info_def.tags)
    nodes = meta_graph.object_graph_def.nodes
    children = {c.local_name: c.node_id for c in nodes[0].children} if nodes else {}
    functions = {name for name, node in children.items()
                 if nodes[node].WhichOneof("kind") in FUNCTION_KINDS}
    prefix = directory / "variables" / "variables"
    variables = 0
    if prefix.with_suffix(".index").exists():
        variables = sum(1 for key, _ in tf.train.list_variables(str(prefix))
                        if key != "_CHECKPOINTABLE_OBJECT_GRAPH")
    return SourceGraph(read_signatures(directory), bool(nodes), frozenset(functions),
                       frozenset(children), frozenset(Path(a.filename).name
                                                      for a in meta_graph.asset_file_def),
                       variables)


@functools.lru_cache(maxsize=8)
def _graph_of(directory: Path, modified: float) -> SourceGraph:
    return read_graph(directory)


def read_graph_cached(directory: Path) -> SourceGraph:
    """read_graph, once per directory and version of its saved_model.pb in this process (each
    endpoint's callable asks)."""
    directory = Path(directory).resolve()
    return _graph_of(directory, max(path.stat().st_mtime for path in (
        directory / "saved_model.pb", directory / "saved_model.pbtxt") if path.exists()))


@dataclass
class Shipping:
    """What the version adds to the source (a pure decision: see plan_shipping)."""

    renamed: dict[str, str] = field(default_factory=dict)  # new signature -> source signature
    wrapped: dict[str, str] = field(default_factory=dict)  # new signature -> why it is new
    method_names: dict[str, str] = field(default_factory=dict)  # signature -> method name
    collections: bool = False

    def how(self, graph: SourceGraph) -> str:
        if self.wrapped or self.collections or (self.renamed and graph.tf2):
            return RESAVED
        if self.renamed or self.method_names:
            return SIGNATURE_DEFS_ADDED
        return COPIED

    def describe(self, graph: SourceGraph) -> dict[str, Any]:
        return {"how": self.how(graph), "graph": "TF2" if graph.tf2 else "TF1",
                "renamed": dict(self.renamed), "added": dict(self.wrapped)}


def plan_shipping(graph: SourceGraph, spec: ExportSpec) -> Shipping:
    """Which endpoints are the source's signatures (kept, or renamed), and which need a new
    function; refuses any endpoint that would replace a signature of the source."""
    shipping = Shipping(collections=bool(spec.variable_collections))
    for index, endpoint in enumerate(spec.endpoints):
        existing = graph.signatures.get(endpoint.method)
        misfit = _misfit(endpoint, existing) if existing is not None else (
            f"{endpoint.method!r} is a restored function, not a signature")
        taken = graph.signatures.get(endpoint.name)
        if taken is not None and (endpoint.name != endpoint.method or misfit):
            raise SpecError(
                f"endpoints[{index}]: the source already has a signature {endpoint.name!r}, and "
                f"this endpoint would replace it ({misfit or 'with ' + repr(endpoint.method)}); "
                f"nothing of the source is dropped. Give the endpoint another name to add it "
                f"beside {endpoint.name!r}, or ship {endpoint.name!r} as it is "
                f"(method: {endpoint.name}, inputs as the signature declares them)")
        if misfit:
            shipping.wrapped[endpoint.name] = misfit
            continue
        if endpoint.name != endpoint.method:
            shipping.renamed[endpoint.name] = endpoint.method
        if endpoint.kind != "predict" and existing["method_name"] != endpoint.method_name:
            shipping.method_names[endpoint.name] = endpoint.method_name
    default = spec.default
    if SERVING_DEFAULT in graph.signatures:
        # The source's serving_default stays. If the default endpoint is another function
        # (Keras's export: `serve`, the same function), the verifier's serving_default call
        # proves that it answers as the default endpoint; it can only if it takes the same
        # inputs.
        served = {name: info["dtype"]
                  for name, info in graph.signatures[SERVING_DEFAULT]["inputs"].items()}
        declared = {name: decl.dtype for name, decl in default.signature_inputs()}
        other = default.method != SERVING_DEFAULT or default.name in shipping.wrapped
        # A new classify/regress function is never the source's serving_default (other
        # outputs); another predict function can be, if it takes the same inputs.
        if other and (served != declared or
                      (default.name in shipping.wrapped and default.kind != "predict")):
            raise SpecError(
                f"default_endpoint: endpoint {default.name!r} (method {default.method!r}, "
                f"kind {default.kind}) takes {declared}, the source's serving_default takes "
                f"{served}: it cannot be what serving_default serves unless serving_default "
                "is replaced, and nothing of the source is dropped. Make the default endpoint "
                "one that serving_default answers (method: serving_default, with its inputs)")
        return shipping  # serving_default stays as the source has it, method name included
    if default.name in shipping.wrapped:
        shipping.wrapped[SERVING_DEFAULT] = f"the default endpoint {default.name!r}"
        return shipping
    shipping.renamed[SERVING_DEFAULT] = default.method
    source_method = graph.signatures[default.method]["method_name"]
    if default.kind != "predict" and source_method != default.method_name:
        shipping.method_names[SERVING_DEFAULT] = default.method_name
    return shipping


def _misfit(endpoint: Endpoint, signature: dict[str, Any]) -> str | None:
    """Why the source's signature cannot serve as the endpoint as it is; None if it can."""
    declared = {name: decl for name, decl in endpoint.signature_inputs()}
    if endpoint.kind != "predict":
        fits = (signature["method_name"] == endpoint.method_name
                and sorted(signature["inputs"]) == [EXAMPLES_INPUT]
                and signature["inputs"][EXAMPLES_INPUT]["dtype"] == "string"
                and bool(signature["outputs"])
                and set(signature["outputs"]) <= set(KIND_OUTPUTS[endpoint.kind]))
        return None if fits else (
            f"a {endpoint.kind} signature over {endpoint.method!r} "
            f"({signature['method_name'].rsplit('/', 1)[-1]})")
    if sorted(declared) != sorted(signature["inputs"]):
        if endpoint.examples_input() is not None:
            return (f"it parses tf.Examples for signature {endpoint.method!r}, which takes "
                    f"{sorted(signature['inputs'])}")
        return (f"signature {endpoint.method!r} takes inputs {sorted(signature['inputs'])}, "
                f"the spec declares {sorted(declared)}")
    for name, decl in declared.items():
        if signature["inputs"][name]["dtype"] != decl.dtype:
            return (f"signature {endpoint.method!r} takes {name!r} as "
                    f"{signature['inputs'][name]['dtype']}, the spec declares {decl.dtype}")
    return None


def serves_as_is(source_graph: SourceGraph, endpoint: Endpoint) -> bool:
    """Whether `endpoint` is one of the source's classify/regress signatures as it is (then its
    outputs are the source's own, not reshaped for the kind)."""
    signature = source_graph.signatures.get(endpoint.method)
    return (endpoint.kind != "predict" and signature is not None
            and _misfit(endpoint, signature) is None)


def extra_endpoints(graph: SourceGraph, spec: ExportSpec) -> tuple[list[Endpoint], dict[str, str]]:
    """Endpoints for the signatures of the version that the spec does not name, so that each
    is called on the source and on the version; and the ones that cannot be called, with why.

    Inputs are generated from each signature's own tensor specs. A signature with one string
    input is taken to take serialized tf.Examples when the spec declares exactly one set of
    tf_example features (TFX's Trainer: serving_default and transform_features parse alike).
    """
    named = {e.name for e in spec.endpoints} | {SERVING_DEFAULT}
    feature_sets = {repr(e.examples_input().tf_example): e.examples_input().tf_example
                    for e in spec.endpoints if e.examples_input() is not None}
    features = next(iter(feature_sets.values())) if len(feature_sets) == 1 else None
    extras: list[Endpoint] = []
    skipped: dict[str, str] = {}
    for name, signature in sorted(graph.signatures.items()):
        if name in named:
            continue
        inputs = signature["inputs"]
        try:
            if len(inputs) == 1 and features is not None and \
                    next(iter(inputs.values()))["dtype"] == "string":
                (input_name,) = inputs
                argument: Any = TensorDecl(name=input_name, shape=[None], dtype="string",
                                           tf_example=features)
            else:
                argument = {key: TensorDecl(shape=_declared_shape(info["shape"]),
                                            dtype=info["dtype"])
                            for key, info in inputs.items()}
            extras.append(Endpoint(name=name, method=name, inputs=[argument]))
        except ValueError as err:  # a name or dtype a spec cannot declare
            skipped[name] = f"its inputs cannot be generated ({_first_line(err)})"
    return extras, skipped


def _declared_shape(shape: list[int | None] | None) -> list[int | None]:
    return [None] if shape is None else shape


def calls_spec(spec: ExportSpec, extras: list[Endpoint]) -> ExportSpec:
    """The spec plus the extra signatures: what the references, the warmup and the verifier's
    plan are made from (the manifest keeps the user's spec)."""
    if not extras:
        return spec
    return spec.model_copy(update={"endpoints": [*spec.endpoints, *extras],
                                   "default_endpoint": spec.default.name})


def copy_source(source_dir: Path, target: Path) -> None:
    """The source's files into `target` (which exists), less shipyard's own extra files. A
    graph in text form (saved_model.pbtxt) is written in binary form, saved_model.pb: the
    same protocol buffer, in the form the version's signature defs are edited in."""
    for path in source_dir.rglob("*"):
        relative = path.relative_to(source_dir)
        if relative.parts[0] == "assets.extra" and relative.name in OWN_EXTRA_FILES:
            continue
        if relative == Path("saved_model.pbtxt"):
            from shipyard.exporter.source import read_saved_model

            (target / "saved_model.pb").write_bytes(
                read_saved_model(source_dir).SerializeToString(deterministic=True))
            continue
        destination = target / relative
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)


def add_signature_defs(directory: Path, renamed: dict[str, str],
                       method_names: dict[str, str]) -> None:
    """SignatureDefs that copy existing ones under new names (the same tensors), and method
    names, in a TF1 graph's saved_model.pb; fingerprint.pb follows it."""
    from tensorflow.core.protobuf import saved_model_pb2

    from shipyard.exporter.archive import set_method_names

    path = directory / "saved_model.pb"
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(path.read_bytes())
    for meta_graph in proto.meta_graphs:
        for new, existing in renamed.items():
            meta_graph.signature_def[new].CopyFrom(meta_graph.signature_def[existing])
    path.write_bytes(proto.SerializeToString(deterministic=True))
    set_method_names(directory, method_names)  # rewrites fingerprint.pb as well


def lost_in_resave(source: SourceGraph, version: SourceGraph) -> list[str]:
    """What the source has and the re-saved version does not."""
    lost = [f"signature {name!r}" for name in sorted(set(source.signatures)
                                                     - set(version.signatures))]
    if source.tf2:
        lost += [f"restored function {name!r}"
                 for name in sorted(source.functions - version.functions)]
        lost += [f"attribute {name!r}" for name in sorted(source.attributes - version.attributes)
                 if name not in source.functions]
    lost += [f"asset {name!r}" for name in sorted(source.assets - version.assets)]
    if version.variables < source.variables:
        lost.append(f"{source.variables - version.variables} of {source.variables} variables")
    return lost


def refuse_losses(lost: list[str], shipping: Shipping, because: str | None = None) -> None:
    """Refuses a re-save that lost something; `because`: why it was re-saved, if not for
    what the spec adds."""
    if not lost:
        return
    needs = [f"{name} ({why})" for name, why in shipping.wrapped.items()] + [
        f"{new} (renames {old})" for new, old in shipping.renamed.items()]
    why = (f"to add {'; '.join(needs)}" if needs else
           "with the variable collections the spec declares" if shipping.collections else
           f"because {because}")
    raise SpecError(
        f"shipping this SavedModel with the spec's endpoints means saving it again {why}, and "
        f"the re-saved SavedModel would lose {', '.join(lost)}; "
        "nothing was published. Ship the source as it is: declare endpoints whose method "
        "and name are the source's signatures, with their input names and dtypes (and kind "
        "as the signature's method name)")


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else ""
