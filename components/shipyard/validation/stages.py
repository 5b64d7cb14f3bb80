"""The validation's stages, free of any runner: what one batch of raw records goes through.

raw records -> the endpoint's inputs (BatchMapper: one vectorized step; RecordMapper: record
by record for a batch that step refuses, naming each bad record) -> the version, its source
and/or the other version (LoadedModels, run_models) -> comparison statistics (stats.py).

Two runners drive these same stages: the Beam pipeline (pipeline.py, any Beam runner) and the
in-process loop (in_process.py, the default). Neither imports the other, and this module
imports no Beam, so the in-process runner never pays Beam's import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np

from shipyard.validation import batches
from shipyard.validation import stats as stats_lib
from shipyard.validation.examples import (
    ExampleError,
    ExamplesInput,
    InputDecl,
    batch,
    check_record,
    csv_row,
    json_row,
    to_example,
    to_inputs,
)


@dataclass(frozen=True)
class ValidationJob:
    """Everything a worker needs; plain data, so it pickles to any runner."""

    examples: str  # file pattern
    fmt: str
    csv_header: tuple[str, ...] | None
    decls: tuple[InputDecl, ...]
    endpoint: str  # the endpoint: its signature in the SavedModels, its entry in the spec
    version_dir: str
    spec: dict[str, Any]  # normalized export spec of the version
    source: str | None = None
    imports: tuple[str, ...] = ()
    unsafe: bool = False
    against_dir: str | None = None
    atol: float = 1e-5
    rtol: float = 1e-5
    sample: int | None = None
    # The endpoint's one input of serialized tf.Examples, if it takes them (else None: the
    # examples are mapped onto `decls` by name).
    examples_input: ExamplesInput | None = None
    kind: str = "predict"  # predict | classify | regress: classify compares top-1 labels
    # Full batches from the start: each model call has a fixed cost, and BatchElements's
    # adaptive sizing (from 8 up) made about twice as many calls (bench/validate.py). 1024
    # rather than 256: 0.4 s less on 100,000 examples there.
    min_batch_size: int = 1024
    max_batch_size: int = 1024


class RecordMapper:
    """The per-record path: one raw record -> the endpoint's inputs, or an ExampleError that
    names the feature. Maps every record of a batch the vectorized path cannot map."""

    def __init__(self, job: ValidationJob):
        self.job = job
        if job.fmt == "tfrecord":
            import tensorflow as tf

            self._example = tf.train.Example
        self._declared_names = [decl.name for decl in job.decls]

    def map(self, record: Any) -> dict[str, Any]:
        if self.job.examples_input is not None:
            return {self.job.examples_input.name: np.array(self._serialized(record),
                                                           dtype=object)}
        return to_inputs(self._row(record), list(self.job.decls))

    def _serialized(self, record: Any) -> bytes:
        """One serialized tf.Example for the endpoint's examples input. A record is fed as it
        is: re-serializing it could reorder or drop what the model's parser reads; it is only
        checked, so that a bad record is listed rather than failing its whole batch."""
        spec = self.job.examples_input
        assert spec is not None
        if self.job.fmt != "tfrecord":
            row = (csv_row(list(self.job.csv_header or ()), record) if self.job.fmt == "csv"
                   else json_row(record))
            return to_example(row, spec)
        example = self._decode(record)
        features = {}
        for name, feature in example.features.feature.items():
            kind = feature.WhichOneof("kind")
            features[name] = (kind, len(getattr(feature, kind).value) if kind else 0)
        check_record(features, spec)
        return bytes(record)

    def _decode(self, record: Any) -> Any:
        try:
            return self._example.FromString(record)
        except Exception as err:  # protobuf's DecodeError and friends
            raise ExampleError(f"not a tf.Example record: {err}") from None

    def _row(self, record: Any) -> dict[str, Any]:
        if self.job.fmt == "csv":
            return csv_row(list(self.job.csv_header or ()), record)
        if self.job.fmt == "jsonl":
            return json_row(record)
        features = self._decode(record).features.feature
        # Only the declared features, when the record has them all under their own names
        # (records often carry many more); otherwise all of them, for the split form (x_0,
        # x_1, ...) and for an error message that lists what the record has.
        names = self._declared_names
        if all(name in features for name in names):
            return {name: _feature_values(features[name]) for name in names}
        return {name: _feature_values(feature) for name, feature in features.items()}


class BatchMapper:
    """The vectorized path: a whole batch of raw records -> the endpoint's inputs in one step,
    or BatchFallback when the batch is not uniformly good (batches.py says what it maps).

    - TFRecord into an endpoint of serialized tf.Examples: the records go in as they are,
      checked by one tf.io.parse_example with the endpoint's own feature spec (what the
      model's parser will do with them, so a batch it accepts cannot fail inside the model).
    - TFRecord into named inputs: one tf.io.parse_example with the inputs' fixed-length
      specs.
    - CSV and JSONL into named inputs: pyarrow's readers, then columns -> arrays.
    CSV and JSONL into an endpoint of serialized tf.Examples have no vectorized path: each
    row is serialized with protobuf (None here), record by record."""

    def __init__(self, job: ValidationJob):
        self.job = job
        self.map: Any = None
        if job.fmt == "tfrecord":
            import tensorflow as tf

            self._tf = tf
            if job.examples_input is not None:
                self._parse = self._parser(self._endpoint_features())
                self.map = self._checked_records
            else:
                plan = batches.tfrecord_plan(job.decls)
                if plan is not None:
                    self._parse = self._parser({
                        f.name: tf.io.FixedLenFeature(f.shape, tf.dtypes.as_dtype(f.kind))
                        for f in plan})
                    self.map = self._parsed_inputs
        elif job.examples_input is None:
            self.map = self._table_inputs

    def _parser(self, features: dict[str, Any]) -> Any:
        # Traced once for any batch size: an eager parse_example rebuilds its parser in
        # Python on every call, and a tf.function looks its trace up on every call.
        tf = self._tf
        return tf.function(lambda records: tf.io.parse_example(records, features),
                           input_signature=[tf.TensorSpec([None], tf.string)], autograph=False
                           ).get_concrete_function()

    def _endpoint_features(self) -> dict[str, Any]:
        from shipyard.core.spec import parse_spec
        from shipyard.exporter.archive import feature_spec

        endpoint = next(e for e in parse_spec(self.job.spec).endpoints
                        if e.name == self.job.endpoint)
        declared = endpoint.examples_input()
        assert declared is not None and declared.tf_example is not None
        return feature_spec(declared.tf_example)

    def _checked_records(self, records: list[bytes]) -> dict[str, np.ndarray]:
        assert self.job.examples_input is not None
        self._checked_parse(records)
        return {self.job.examples_input.name: np.array(records, dtype=object)}

    def _parsed_inputs(self, records: list[bytes]) -> dict[str, np.ndarray]:
        parsed = {name: value.numpy() for name, value in self._checked_parse(records).items()}
        return batches.from_parsed(parsed, self.job.decls)

    def _checked_parse(self, records: list[bytes]) -> dict[str, Any]:
        try:
            return self._parse(self._tf.constant(records, dtype=self._tf.string))
        except self._tf.errors.InvalidArgumentError as err:  # a bad record somewhere
            raise batches.BatchFallback(err.message) from None

    def _table_inputs(self, lines: list[str]) -> dict[str, np.ndarray]:
        table = (batches.read_csv(lines, self.job.csv_header or ()) if self.job.fmt == "csv"
                 else batches.read_jsonl(lines))
        return batches.table_inputs(table, self.job.decls)


def unbatch(inputs: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """One example at a time, each value an array (0-d for a vector input): `batch` stacks
    them back to the same dtype. A bare bytes value would be stacked into a fixed-width bytes
    array, which drops trailing NUL bytes (a serialized tf.Example ending in a 0.0 float)."""
    for i in range(count(inputs)):
        yield {name: values[i, ...] for name, values in inputs.items()}


def count(inputs: dict[str, np.ndarray]) -> int:
    return len(next(iter(inputs.values())))


def _feature_values(feature: Any) -> Any:
    """A tf.Example Feature's values: numbers as one numpy array (float_list values are
    float32, int64_list int64), so that they are converted without a Python object per value;
    bytes as a list."""
    kind = feature.WhichOneof("kind")
    if kind is None:
        return []
    values = getattr(feature, kind).value
    if kind == "bytes_list":
        return list(values)
    return np.fromiter(values, np.float32 if kind == "float_list" else np.int64, len(values))


def describe(record: Any) -> str:
    text = record if isinstance(record, str) else repr(record[:60])
    return f"example {text[:80]!r}"


class LoadedModels:
    """The models one worker process runs, loaded once and shared by its threads."""

    def __init__(self, job: ValidationJob):
        import tensorflow as tf

        self.version = tf.saved_model.load(job.version_dir).signatures[job.endpoint]
        self.against = (tf.saved_model.load(job.against_dir).signatures[job.endpoint]
                        if job.against_dir else None)
        self.source = None
        self.endpoint = None
        if job.source:
            from shipyard.core.spec import parse_spec
            from shipyard.exporter import archive, source

            source.import_modules(job.imports)
            spec = parse_spec(job.spec)
            self.endpoint = next(e for e in spec.endpoints if e.name == job.endpoint)
            # Through tf.function, as Keras's own predict runs a model: eager calls cost
            # milliseconds each in Python. The export traced this same function, so it traces.
            # Without AutoGraph, as Keras traces both (ExportArchive's add_endpoint and
            # predict's step): converting the model's Python took 0.6 s of a validation.
            # Loaded by Keras's own load_model, untouched (optimized=False): the parity
            # reference must not share the optimized load that may have produced the export.
            reference = source.load_source_model(job.source, unsafe=job.unsafe,
                                                 optimized=False)
            self.source = tf.function(archive.endpoint_function(reference, spec, job.endpoint),
                                      reduce_retracing=True, autograph=False)


def map_batch(records: list[Any], batch_mapper: Any, record_mapper: RecordMapper
              ) -> tuple[dict[str, np.ndarray] | None, list[str]]:
    """A batch of raw records -> (the endpoint's inputs for its good records, or None when
    none is good; a message naming each bad record and its feature). The vectorized step
    first (`batch_mapper`: BatchMapper.map, or None where there is none); a batch it refuses
    is mapped record by record, so that only the bad records are left out."""
    if batch_mapper is not None:
        try:
            return batch_mapper(records), []
        except batches.BatchFallback:
            pass  # some record does not fit: each is mapped (or named) on its own below
    good, bad = [], []
    for record in records:
        try:
            good.append(record_mapper.map(record))
        except ExampleError as err:
            bad.append(f"{describe(record)}: {err}")
    return (batch(good) if good else None), bad


def run_models(models: LoadedModels, job: ValidationJob, named: dict[str, np.ndarray]
               ) -> stats_lib.Stats:
    """One batch of inputs through the version (and its source and/or the other version):
    the comparison statistics of that batch."""
    import tensorflow as tf

    from shipyard.exporter.archive import structure_arguments
    from shipyard.exporter.verifier import plain_array

    feed = {k: tf.constant(v, dtype=_dtype(tf, job.decls, k)) for k, v in named.items()}
    outputs = _numpy(models.version(**feed), plain_array)
    result: stats_lib.Stats = {}
    if models.source is not None:
        reference = _numpy(models.source(*structure_arguments(models.endpoint, feed)),
                           plain_array)
        result["parity"] = stats_lib.compare_batch(reference, outputs, job.atol, job.rtol,
                                                   kind=job.kind)
    if models.against is not None:
        other = _numpy(models.against(**feed), plain_array)
        result["agreement"] = stats_lib.compare_batch(other, outputs, job.atol, job.rtol,
                                                      kind=job.kind)
    return result


def _dtype(tf: Any, decls: Iterable[InputDecl], name: str) -> Any:
    decl = next(d for d in decls if d.name == name)
    return tf.string if decl.dtype == "string" else tf.as_dtype(decl.dtype)


def _numpy(outputs: dict[str, Any], plain_array: Any) -> dict[str, Any]:
    return {k: plain_array(v.numpy()) for k, v in outputs.items()}
