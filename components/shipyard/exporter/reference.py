"""Outputs of the ORIGINAL model in the exporting process, and the inputs every check uses.

These outputs are not what the export is verified against: that is the independent
reference (reference_process.py: the source loaded by its own library in another process).
They are compared with it before the verifier runs (`differences`), which tells a fault of
the exporting process's optimized load apart from a fault of the export; they also give the
early, precise errors (a model failing on its declared inputs, NaN outputs).

Order matters: the variable collections are digested and the reference outputs computed only
after the SavedModel was written, and the verifier replays the same calls in the same order.
That way an endpoint with `training: true` (e.g. active dropout) still compares exactly: Keras
draws its random seeds from a seed-state variable, which the SavedModel stores as it was when
written, and which both sides then advance identically (the independent reference's process
sets its seed states to the same values: reference_process.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from shipyard.core.errors import SpecError, VerificationError
from shipyard.core.spec import Endpoint, ExportSpec, TensorDecl
from shipyard.exporter.archive import BuiltArchive
from shipyard.exporter.samples import Sample, make_real_samples, make_samples
from shipyard.exporter.verifier import KEY_SEPARATOR, array_digest, compare, plain_array


@dataclass
class Reference:
    sample: Sample
    outputs: dict[str, np.ndarray]
    signature: str  # the signature the verifier calls: the endpoint, or serving_default

    @property
    def key(self) -> str:
        """The prefix of this call's arrays in inputs.npz / expected.npz."""
        return f"{self.signature}{KEY_SEPARATOR}{self.sample.key}{KEY_SEPARATOR}"


def collection_digests(built: BuiltArchive) -> dict[str, list[str]]:
    return {name: [array_digest(to_numpy(v)) for v in variables]
            for name, variables in built.collections.items()}


def compute_references(built: BuiltArchive, spec: ExportSpec,
                       real_examples: tuple[bytes, ...] = (), *,
                       optional: frozenset[str] = frozenset(),
                       skipped: dict[str, str] | None = None) -> list[Reference]:
    """Every endpoint at each batch size (and, for tf_example endpoints, on the real examples
    if given), then serving_default on the default endpoint.

    An `optional` endpoint (a signature of a whole SavedModel that the spec does not name,
    called on inputs generated from its tensor specs) that the source itself fails on is left
    out of the calls, with why in `skipped`: the spec can declare it to have it verified."""
    references = []
    for endpoint in spec.endpoints:
        samples = make_samples(endpoint, built.vocabularies)
        if real_examples and endpoint.examples_input() is not None:
            samples += make_real_samples(endpoint, built.vocabularies, real_examples)
        try:
            calls = [_reference(built, endpoint, sample, endpoint.name) for sample in samples]
        except SpecError as err:
            if endpoint.name not in optional or skipped is None:
                raise
            skipped[endpoint.name] = (f"the source fails on inputs generated from its tensor "
                                      f"specs ({str(err).split(': ', 2)[-1][:300]}); declare "
                                      "it as an endpoint, with its inputs, to have it verified")
            continue
        for call in calls:
            references.append(call)
            if not spec.allow_non_finite:
                _refuse_non_finite(call)
    default = spec.default
    if default.name != "serving_default":  # else its calls above were serving_default's
        first = make_samples(default, built.vocabularies)[0]
        references.append(_reference(built, default, first, "serving_default"))
    return references


def _reference(built: BuiltArchive, endpoint: Endpoint, sample: Sample,
               signature: str) -> Reference:
    try:
        outputs = built.endpoint_fns[endpoint.name](*as_tensors(endpoint, sample.arguments))
    except Exception as err:  # user code on generated inputs: name the endpoint and the cause
        text = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        source = "the real examples (--examples)" if sample.real else (
            "inputs generated from the declared signature")
        raise SpecError(
            f"endpoint {endpoint.name!r}: the original model fails on {source} (batch "
            f"{sample.batch_size}): {type(err).__name__}: {text}. "
            f"{_advice(endpoint, str(err))}") from None
    return Reference(sample, {k: to_numpy(v) for k, v in outputs.items()}, signature)


class NonFiniteOutputs(VerificationError):
    """The loaded model answered NaN or Inf on generated inputs. From shipyard's optimized
    load that may be the load's fault (a variable read before it was filled), so the export
    takes Keras's own load before it believes it."""


def _refuse_non_finite(reference: Reference) -> None:
    for name, value in sorted(reference.outputs.items()):
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            raise NonFiniteOutputs(
                f"endpoint {reference.signature!r} output {name!r}: the original model answers "
                f"NaN or Inf ({bad} of {np.size(value)} values, batch "
                f"{reference.sample.batch_size}) on inputs generated from its signature; "
                "nothing was published. A model that is meant to produce them can say "
                "`allow_non_finite: true` in the spec; otherwise fix the model (its weights or "
                "the inputs it cannot take).")


def _advice(endpoint: Endpoint, error: str) -> str:
    """What to change in the spec, judged from the declared inputs and the error."""
    strings = [name for name, decl in endpoint.signature_inputs()
               if decl.dtype == "string" and decl.tf_example is None]
    if endpoint.examples_input() is not None:
        return ("Declare in tf_example exactly the features the model parses (names, "
                "shapes, dtypes), or pass --examples with real ones.")
    if strings and re.search(r"parse|Example|proto", error, re.IGNORECASE):
        return (f"Input(s) {strings} look like serialized tf.Examples the model parses: declare "
                "them with `tf_example: {feature: {shape, dtype}}` so shipyard builds valid "
                "examples.")
    if strings:
        return (f"Input(s) {strings} are declared as strings: if the model parses them "
                "(serialized tf.Examples), declare them with `tf_example`; if it takes "
                "numbers, declare their dtype.")
    return ("Declare the dtypes and exact shapes the model accepts (fixed sizes instead of "
            "null where it needs them).")


def write_inputs(references: list[Reference], job_dir: Path) -> Path:
    """inputs.npz, keyed '<signature>|<sample>|<tensor name>': what the independent reference
    (reference_process.py), the verifier and the runtime check are all called with."""
    inputs: dict[str, np.ndarray] = {}
    for ref in references:
        inputs.update({ref.key + k: v for k, v in ref.sample.named.items()})
    inputs_path = job_dir / "inputs.npz"
    # Serialized examples stay object arrays (pickled): fixed-width bytes would drop the NUL
    # bytes a serialized proto may end with.
    np.savez(inputs_path, **inputs)
    return inputs_path


def plan(references: list[Reference], spec: ExportSpec) -> list[dict[str, Any]]:
    """The calls, in order, as the reference process and the verifier replay them."""
    default = spec.default.name
    return [{"signature": r.signature, "batch_size": r.sample.batch_size, "key": r.key,
             "endpoint": default if r.signature == "serving_default" else r.signature}
            for r in references]


def differences(references: list[Reference], independent_path: Path, atol: float,
                rtol: float) -> list[str]:
    """Where the exporting process's model answers otherwise than the independent reference
    (the same inputs, the source loaded by its own library in another process)."""
    independent = np.load(independent_path, allow_pickle=True)
    found = []
    for ref in references:
        for name in sorted(ref.outputs):
            key = ref.key + name
            if key not in independent.files:
                found.append(f"endpoint {ref.signature!r}: output {name!r} is missing from the "
                             "independent load's outputs")
                continue
            _, problem = compare(ref.outputs[name], independent[key], atol, rtol)
            if problem:
                found.append(f"endpoint {ref.signature!r} output {name!r} (batch "
                             f"{ref.sample.batch_size}): {problem}")
    return found


def as_tensors(endpoint: Endpoint, arguments: list[Any]) -> list[Any]:
    converted = []
    for declared, value in zip(endpoint.inputs, arguments):
        if isinstance(declared, TensorDecl):
            converted.append(_tensor(declared, value))
        elif isinstance(declared, dict):
            converted.append({k: _tensor(declared[k], v) for k, v in value.items()})
        else:
            converted.append([_tensor(d, v) for d, v in zip(declared, value)])
    return converted


def _tensor(decl: TensorDecl, value: np.ndarray) -> tf.Tensor:
    return tf.constant(value, dtype=tf.dtypes.as_dtype(decl.dtype))


def to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "numpy"):
        return plain_array(value.numpy())
    return plain_array(tf.convert_to_tensor(value).numpy())
