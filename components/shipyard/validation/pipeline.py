"""The validation pipeline (Apache Beam). Runs on any runner; DirectRunner by default.

read examples -> map onto the endpoint's inputs (unmappable ones go to a side output; for an
endpoint of serialized tf.Examples: TFRecord records as they are, CSV/JSONL rows serialized) ->
[sample K] -> BatchElements -> run the version, its source and/or the other version in a DoFn
that loads each model once per worker (`setup`) -> merge statistics -> one JSON result file.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils import shared

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

UNMAPPABLE = "unmappable"
_KEPT_ERRORS = 5


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
    # adaptive sizing (from 8 up) made about twice as many calls (bench/validate.py).
    min_batch_size: int = 256
    max_batch_size: int = 256


class _ToInputs(beam.DoFn):
    def __init__(self, job: ValidationJob):
        self.job = job

    def setup(self) -> None:
        if self.job.fmt == "tfrecord":
            import tensorflow as tf

            self._example = tf.train.Example
        self._declared_names = [decl.name for decl in self.job.decls]

    def process(self, record: Any) -> Iterator[Any]:
        try:
            if self.job.examples_input is not None:
                yield {self.job.examples_input.name: np.array(self._serialized(record),
                                                              dtype=object)}
            else:
                yield to_inputs(self._row(record), list(self.job.decls))
        except ExampleError as err:
            yield beam.pvalue.TaggedOutput(UNMAPPABLE, f"{_describe(record)}: {err}")

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


def _describe(record: Any) -> str:
    text = record if isinstance(record, str) else repr(record[:60])
    return f"example {text[:80]!r}"


class _LoadedModels:
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
            self.source = tf.function(archive.endpoint_function(
                source.load_source_model(job.source, unsafe=job.unsafe), spec, job.endpoint),
                reduce_retracing=True)


class _RunModels(beam.DoFn):
    """Runs the version (and its source and/or the other version) on batches of examples."""

    def __init__(self, job: ValidationJob):
        self.job = job
        # One copy of the models per worker process, whatever its number of threads.
        self._shared = shared.Shared()

    def setup(self) -> None:
        import tensorflow as tf

        self._tf = tf
        models = self._shared.acquire(lambda: _LoadedModels(self.job))
        self._models = models
        self._version, self._against = models.version, models.against
        self._source, self._endpoint = models.source, models.endpoint

    def process(self, examples: list[dict[str, Any]]) -> Iterator[tuple[int, stats_lib.Stats]]:
        from shipyard.exporter.archive import structure_arguments
        from shipyard.exporter.verifier import plain_array

        named = batch(examples)
        feed = {k: self._tf.constant(v, dtype=self._dtype(k)) for k, v in named.items()}
        outputs = self._numpy(self._version(**feed), plain_array)
        result: stats_lib.Stats = {}
        if self._source is not None:
            reference = self._numpy(self._source(*structure_arguments(self._endpoint, feed)),
                                    plain_array)
            result["parity"] = stats_lib.compare_batch(reference, outputs, self.job.atol,
                                                       self.job.rtol, kind=self.job.kind)
        if self._against is not None:
            other = self._numpy(self._against(**feed), plain_array)
            result["agreement"] = stats_lib.compare_batch(other, outputs, self.job.atol,
                                                          self.job.rtol, kind=self.job.kind)
        yield len(examples), result

    def _dtype(self, name: str) -> Any:
        decl = next(d for d in self.job.decls if d.name == name)
        return self._tf.string if decl.dtype == "string" else self._tf.as_dtype(decl.dtype)

    @staticmethod
    def _numpy(outputs: dict[str, Any], plain_array: Any) -> dict[str, Any]:
        return {k: plain_array(v.numpy()) for k, v in outputs.items()}


class _MergeStats(beam.CombineFn):
    """(examples, stats) pairs -> their sum."""

    def create_accumulator(self) -> tuple[int, stats_lib.Stats]:
        return 0, {}

    def add_input(self, accumulator: tuple[int, stats_lib.Stats],
                  element: tuple[int, stats_lib.Stats]) -> tuple[int, stats_lib.Stats]:
        return accumulator[0] + element[0], stats_lib.merge(accumulator[1], element[1])

    def merge_accumulators(self, accumulators: Any) -> tuple[int, stats_lib.Stats]:
        total: tuple[int, stats_lib.Stats] = (0, {})
        for accumulator in accumulators:
            total = self.add_input(total, accumulator)
        return total

    def extract_output(self, accumulator: tuple[int, stats_lib.Stats]
                       ) -> tuple[int, stats_lib.Stats]:
        return accumulator


def run_pipeline(job: ValidationJob, *, runner: str, beam_args: list[str],
                 results_dir: str) -> dict[str, Any]:
    """Runs the pipeline; returns {"stats", "examples", "unmappable", "unmappable_examples"}."""
    options = PipelineOptions(["--runner", runner, *beam_args])
    prefix = f"{results_dir.rstrip('/')}/shipyard-validate-{uuid.uuid4().hex[:8]}"
    with beam.Pipeline(runner=_runner(runner), options=options) as pipeline:
        if job.fmt == "tfrecord":
            records = pipeline | "Read" >> beam.io.ReadFromTFRecord(job.examples)
        else:
            records = pipeline | "Read" >> beam.io.ReadFromText(
                job.examples, skip_header_lines=1 if job.fmt == "csv" else 0)
        mapped = records | "Map to inputs" >> beam.ParDo(_ToInputs(job)).with_outputs(
            UNMAPPABLE, main="inputs")
        inputs = mapped.inputs
        if job.sample is not None:
            inputs = (inputs | "Sample" >> beam.combiners.Sample.FixedSizeGlobally(job.sample)
                      | "Unpack sample" >> beam.FlatMap(lambda sample: sample))
        merged = (inputs
                  | "Batch" >> beam.BatchElements(min_batch_size=job.min_batch_size,
                                                  max_batch_size=job.max_batch_size)
                  | "Run models" >> beam.ParDo(_RunModels(job))
                  | "Merge" >> beam.CombineGlobally(_MergeStats()))
        errors = mapped[UNMAPPABLE]
        error_count = errors | "Count unmappable" >> beam.combiners.Count.Globally()
        error_sample = errors | "Keep a few" >> beam.combiners.Sample.FixedSizeGlobally(
            _KEPT_ERRORS)
        (
            (merged | "Tag stats" >> beam.Map(lambda s: {"examples": s[0], "stats": s[1]}),
             error_count | "Tag count" >> beam.Map(lambda n: {"unmappable": n}),
             error_sample | "Tag sample" >> beam.Map(lambda e: {"unmappable_examples": e}))
            | beam.Flatten()
            | beam.Map(json.dumps)
            | "Write" >> beam.io.WriteToText(prefix, shard_name_template="")
        )
    result: dict[str, Any] = {}
    with FileSystems.open(prefix) as f:
        for line in f.read().decode().splitlines():
            result.update(json.loads(line))
    FileSystems.delete([prefix])
    return {"stats": result.get("stats", {}), "examples": result.get("examples", 0),
            "unmappable": result.get("unmappable", 0),
            "unmappable_examples": sorted(result.get("unmappable_examples", []))}


def _runner(name: str) -> Any:
    """DirectRunner means Beam's in-process FnApiRunner (which honours --direct_num_workers
    and --direct_running_mode). Beam's own DirectRunner first tries Prism, downloading its
    binary from GitHub where it can: a validation must not depend on that, nor behave
    differently on a machine with internet access. Other names go to Beam as they are."""
    if name == "DirectRunner":
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner()
    return None
