"""Builds and writes a whole SavedModel version (the decisions are whole.py's).

The counterpart of archive.build_archive for SavedModel sources: it offers what the export
step uses of a BuiltArchive (endpoint_fns, collections, vocabularies, method names, write), plus
the signatures to call beyond the spec's endpoints (`calls_spec`) and how the source was
shipped (`describe`). It shares archive.py's private helpers (endpoint callables, input
signatures, variable selection, vocabularies): one definition of each for both kinds of source.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tensorflow as tf

from shipyard.core.errors import SpecError
from shipyard.core.spec import METHOD_NAMES, ExportSpec
from shipyard.exporter import archive, variable_collections, whole
from shipyard.exporter.samples import Vocabularies
from shipyard.exporter.source import SourceModel
from shipyard.files.trees import empty_directory

log = logging.getLogger(__name__)


@dataclass
class WholeArchive:
    source: SourceModel
    spec: ExportSpec
    graph: whole.SourceGraph
    shipping: whole.Shipping
    endpoint_fns: dict[str, archive.EndpointFn]  # the source's callables, calls_spec's endpoints
    collections: dict[str, list[Any]]
    vocabularies: Vocabularies
    lookup_vocabularies: list[list[Any]]
    calls_spec: ExportSpec  # the spec plus the signatures it does not name
    unverifiable: dict[str, str] = field(default_factory=dict)  # signature -> why not called
    resaved_because: str | None = None  # why a source that could be copied was re-saved

    def write(self, directory: Path) -> None:
        how = self.shipping.how(self.graph)
        if how != whole.RESAVED:
            whole.copy_source(self.source.path, directory)
            if how == whole.SIGNATURE_DEFS_ADDED:
                whole.add_signature_defs(directory, self.shipping.renamed,
                                         self.shipping.method_names)
            missed = variables_the_session_loader_misses(directory)
            if not missed:
                return
            # A Keras 3 model saved with tf.saved_model.save: TF2's loader restores it, TF1's
            # (TF Serving's) leaves variables its functions read unrestored. The object
            # tf.saved_model.load revived, saved again, has them restored by both.
            self.resaved_because = (
                f"TF1's session loader (TF Serving's) leaves {len(missed)} of the source's "
                f"variables unrestored ({', '.join(missed[:3])}{', ...' if len(missed) > 3 else ''}"
                "), so it could not serve as it is")
            log.warning("%s: %s; re-saving it from tf.saved_model.load", self.source.path,
                        self.resaved_because)
            empty_directory(directory)
        self._resave(directory)
        whole.refuse_losses(whole.lost_in_resave(self.graph, whole.read_graph(directory)),
                            self.shipping, self.resaved_because)

    def describe(self) -> dict[str, Any]:
        described = self.shipping.describe(self.graph)
        if self.resaved_because:
            described.update(how=whole.RESAVED, resaved_because=self.resaved_because)
        if self.unverifiable:
            described["not_called"] = dict(self.unverifiable)
        return described

    def _resave(self, directory: Path) -> None:
        loaded = self.source.obj
        signatures = {name: loaded.signatures[name] for name in self.graph.signatures}
        for new, existing in self.shipping.renamed.items():
            signatures[new] = loaded.signatures[existing]
        endpoints = {e.name: e for e in self.spec.endpoints}
        for name in self.shipping.wrapped:
            endpoint = endpoints[name] if name in endpoints else self.spec.default
            traced = tf.function(self.endpoint_fns[endpoint.name],
                                 input_signature=archive._input_signature(endpoint))
            signatures[name] = traced.get_concrete_function()
        for name, variables in self.collections.items():
            setattr(loaded, name, [archive.backend_variable(v) for v in variables])
        tf.saved_model.save(loaded, str(directory), signatures=signatures,
                            options=archive.SAVE_OPTIONS)
        extra = self.source.path / "assets.extra"
        if extra.is_dir():
            whole.copy_source(extra, directory / "assets.extra")
        method_names = dict(self.shipping.method_names)
        for name in self.shipping.wrapped:
            endpoint = endpoints.get(name, self.spec.default)
            if endpoint.kind != "predict":
                method_names[name] = METHOD_NAMES[endpoint.kind]
        if method_names:
            archive.set_method_names(directory, method_names)


def variables_the_session_loader_misses(directory: Path) -> list[str]:
    """The variables TF1's session loader (TF Serving's) leaves uninitialized after its
    restore and init op: every VarHandleOp of the loaded graph is asked. Decides how to ship
    (copy or re-save); the verifier, in its own process, is what proves the version."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        tf.compat.v1.saved_model.loader.load(session, ["serve"], str(directory))
        handles = [op for op in graph.get_operations() if op.type == "VarHandleOp"]
        if not handles:
            return []
        initialized = session.run([tf.raw_ops.VarIsInitializedOp(resource=op.outputs[0])
                                   for op in handles])
    return [op.get_attr("shared_name").decode() or op.name
            for op, done in zip(handles, initialized) if not done]


def build_whole(source: SourceModel, spec: ExportSpec) -> WholeArchive:
    graph = whole.read_graph_cached(source.path)  # the endpoints' callables read it too
    if spec.reusable:  # a SavedModel keeps TF Hub's interface if it has it; none is added
        from shipyard.exporter.reusable import require_interface

        require_interface(source.path)
    extras, unverifiable = whole.extra_endpoints(graph, spec)
    calls = whole.calls_spec(spec, extras)
    # The callables first: a method the source lacks, or inputs it does not take, are
    # reported as such before what shipping the rest would mean.
    endpoint_fns = {e.name: archive.endpoint_function(source, calls, e.name)
                    for e in calls.endpoints}
    shipping = whole.plan_shipping(graph, spec)
    for index, endpoint in enumerate(spec.endpoints):
        if endpoint.name in shipping.wrapped:
            _trace_or_refuse(endpoint_fns[endpoint.name], endpoint, index)
    collections = {}
    for index, collection in enumerate(spec.variable_collections):
        collections[collection.name] = variable_collections.select_variables(
            source, collection.select, index)
    lookups = archive._lookup_vocabularies(source)
    return WholeArchive(source, spec, graph, shipping, endpoint_fns, collections,
                        archive._sample_vocabularies(lookups), lookups, calls, unverifiable)


def _trace_or_refuse(fn: archive.EndpointFn, endpoint: Any, index: int) -> None:
    """Traces a new signature now, so that a misfit is reported as one (as build_archive)."""
    try:
        tf.function(fn, input_signature=archive._input_signature(endpoint)).get_concrete_function()
    except SpecError:
        raise
    except Exception as err:  # tracing runs the source's functions on the declared inputs
        declared = ", ".join(f"{name}: {decl.dtype}" for name, decl in endpoint.signature_inputs())
        raise SpecError(
            f"endpoints[{index}] ({endpoint.name!r}): calling {endpoint.method!r} of the "
            f"SavedModel with the declared inputs ({declared}) failed: {type(err).__name__}: "
            f"{str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}. Declare "
            "the inputs the signature or function takes") from None
