"""The validation pipeline (Apache Beam). Runs on any runner; DirectRunner by default.

read records in batches (TFRecord: each file read a batch at a time; CSV and JSONL: lines,
then BatchElements) -> map each batch onto the endpoint's inputs in one vectorized
step (batches.py; a batch that step refuses is mapped record by record, and its unmappable
records go to a side output; for an endpoint of serialized tf.Examples: TFRecord records as
they are, CSV/JSONL rows serialized) -> [sample K, re-batched] -> run the version, its source
and/or the other version in a DoFn that loads each model once per worker (`setup`) -> merge
statistics -> one JSON result file.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils import shared

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
from shipyard.validation.runners import resolve_runner

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


class _RecordMapper:
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


class _BatchMapper:
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
                           input_signature=[tf.TensorSpec([None], tf.string)]
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


class _MapBatches(beam.DoFn):
    """A batch of raw records -> one batch of inputs ({input name: array [n, ...]}), mapped in
    one vectorized step; a batch that step refuses is mapped record by record, so that each
    bad record is named with its feature on the side output and only the bad ones are left
    out."""

    def __init__(self, job: ValidationJob, vectorized: bool = True):
        self.job = job
        self.vectorized = vectorized  # False: the per-record path only (tests compare them)

    def setup(self) -> None:
        self._records = _RecordMapper(self.job)
        self._batch = _BatchMapper(self.job).map if self.vectorized else None

    def process(self, records: list[Any]) -> Iterator[Any]:
        if self._batch is not None:
            try:
                mapped = self._batch(records)
            except batches.BatchFallback:
                pass  # some record does not fit: each is mapped (or named) on its own below
            else:
                yield mapped
                return
        good = []
        for record in records:
            try:
                good.append(self._records.map(record))
            except ExampleError as err:
                yield beam.pvalue.TaggedOutput(UNMAPPABLE, f"{_describe(record)}: {err}")
        if good:
            yield batch(good)


class _ReadTFRecordBatches(beam.DoFn):
    """A TFRecord file (compressed or not, by its name, as ReadFromTFRecord opens it) ->
    lists of up to `size` records, as they are read: never the whole file."""

    def __init__(self, size: int):
        self.size = size

    def process(self, file: Any) -> Iterator[list[bytes]]:
        # The reader ReadFromTFRecord itself uses (it checks each record's CRCs), one record
        # at a time from Beam's file system, so any path Beam reads is read here.
        from apache_beam.io.tfrecordio import _TFRecordUtil

        records: list[bytes] = []
        with FileSystems.open(file.path) as f:
            while (record := _TFRecordUtil.read_record(f)) is not None:
                records.append(record)
                if len(records) == self.size:
                    yield records
                    records = []
        if records:
            yield records


def _unbatch(inputs: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    for i in range(_count(inputs)):
        yield {name: values[i] for name, values in inputs.items()}


def _count(inputs: dict[str, np.ndarray]) -> int:
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

    def process(self, named: dict[str, np.ndarray]) -> Iterator[tuple[int, stats_lib.Stats]]:
        from shipyard.exporter.archive import structure_arguments
        from shipyard.exporter.verifier import plain_array

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
        yield _count(named), result

    def _dtype(self, name: str) -> Any:
        decl = next(d for d in self.job.decls if d.name == name)
        return self._tf.string if decl.dtype == "string" else self._tf.as_dtype(decl.dtype)

    @staticmethod
    def _numpy(outputs: dict[str, Any], plain_array: Any) -> dict[str, Any]:
        return {k: plain_array(v.numpy()) for k, v in outputs.items()}


_Results = tuple[int, stats_lib.Stats, int, Any]  # examples, stats, unmappable, sample


class _MergeResults(beam.CombineFn):
    """("stats", (examples, stats)) and ("unmappable", message) elements -> one result: the
    stats summed, the unmappable examples counted and a few of them sampled (Beam's own
    Sample). One combine rather than one per figure: each is a stage of its own, and on the
    DirectRunner their fixed costs were a tenth of a validate run on 100,000 examples."""

    def __init__(self) -> None:
        self._sample = beam.combiners.SampleCombineFn(_KEPT_ERRORS)

    def setup(self) -> None:
        self._sample.setup()

    def create_accumulator(self) -> _Results:
        return 0, {}, 0, self._sample.create_accumulator()

    def add_input(self, accumulator: _Results, element: tuple[str, Any]) -> _Results:
        examples, stats, unmappable, sample = accumulator
        kind, value = element
        if kind == "stats":
            return examples + value[0], stats_lib.merge(stats, value[1]), unmappable, sample
        return examples, stats, unmappable + 1, self._sample.add_input(sample, value)

    def merge_accumulators(self, accumulators: Any) -> _Results:
        accumulators = list(accumulators)
        examples, stats, unmappable = 0, {}, 0
        for accumulator in accumulators:
            examples += accumulator[0]
            stats = stats_lib.merge(stats, accumulator[1])
            unmappable += accumulator[2]
        return examples, stats, unmappable, self._sample.merge_accumulators(
            [accumulator[3] for accumulator in accumulators])

    def compact(self, accumulator: _Results) -> _Results:
        return (*accumulator[:3], self._sample.compact(accumulator[3]))

    def extract_output(self, accumulator: _Results) -> dict[str, Any]:
        examples, stats, unmappable, sample = accumulator
        return {"examples": examples, "stats": stats, "unmappable": unmappable,
                "unmappable_examples": self._sample.extract_output(sample)}


def run_pipeline(job: ValidationJob, *, runner: str, beam_args: list[str],
                 results_dir: str, vectorized: bool = True) -> dict[str, Any]:
    """Runs the pipeline; returns {"stats", "examples", "unmappable", "unmappable_examples"}.
    `vectorized=False` maps every record on its own (the reference the vectorized path is
    tested against)."""
    options = PipelineOptions(["--runner", runner, *beam_args])
    prefix = f"{results_dir.rstrip('/')}/shipyard-validate-{uuid.uuid4().hex[:8]}"
    with beam.Pipeline(runner=resolve_runner(runner), options=options) as pipeline:
        # Raw records are batched first and mapped a batch at a time (_MapBatches): per
        # element, Beam and Python cost more than the models' work on it.
        if job.fmt == "tfrecord":
            # Beam cannot split a TFRecord file (its source is unsplittable): each file is
            # read whole by one worker either way, so it is read here in batches, without
            # Beam's per-record cost (measured: 4.5 µs per record through ReadFromTFRecord and
            # BatchElements, 1.8 µs this way). Reshuffle spreads the files over the workers.
            raw_batches = (pipeline
                           | "Find files" >> fileio.MatchFiles(job.examples)
                           | "Spread files" >> beam.Reshuffle()
                           | "Read records" >> beam.ParDo(_ReadTFRecordBatches(
                               job.max_batch_size)))
        else:
            raw_batches = (pipeline
                           | "Read" >> beam.io.ReadFromText(
                               job.examples, skip_header_lines=1 if job.fmt == "csv" else 0)
                           | "Batch records" >> beam.BatchElements(
                               min_batch_size=job.min_batch_size,
                               max_batch_size=job.max_batch_size))
        mapped = raw_batches | "Map to inputs" >> beam.ParDo(
            _MapBatches(job, vectorized)).with_outputs(UNMAPPABLE, main="inputs")
        inputs = mapped.inputs
        if job.sample is not None:
            inputs = (inputs
                      | "Unbatch" >> beam.FlatMap(_unbatch)
                      | "Sample" >> beam.combiners.Sample.FixedSizeGlobally(job.sample)
                      | "Unpack sample" >> beam.FlatMap(lambda sample: sample)
                      | "Batch" >> beam.BatchElements(min_batch_size=job.min_batch_size,
                                                      max_batch_size=job.max_batch_size)
                      | "Stack" >> beam.Map(batch))
        (
            (inputs
             | "Run models" >> beam.ParDo(_RunModels(job))
             | "Tag stats" >> beam.Map(lambda pair: ("stats", pair)),
             mapped[UNMAPPABLE] | "Tag unmappable" >> beam.Map(lambda e: ("unmappable", e)))
            | beam.Flatten()
            | "Merge" >> beam.CombineGlobally(_MergeResults())
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
