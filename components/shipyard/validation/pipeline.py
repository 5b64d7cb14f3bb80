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
from typing import Any, Iterator

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils import shared

from shipyard.core.errors import UsageError
from shipyard.validation import stats as stats_lib
from shipyard.validation.examples import batch
from shipyard.validation.runners import resolve_runner
from shipyard.validation.stages import (
    BatchMapper,
    LoadedModels,
    RecordMapper,
    ValidationJob,
    map_batch,
    run_models,
    unbatch,
)

UNMAPPABLE = "unmappable"
_KEPT_ERRORS = 5


def matching_files(pattern: str) -> list[str]:
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except Exception as err:  # Beam raises BeamIOError for unknown schemes, missing dirs
        raise UsageError(f"examples {pattern}: cannot list matching files: {err}",
                         param="examples") from None
    if not matched:
        raise UsageError(f"examples {pattern}: no file matches; check the path or glob",
                         param="examples")
    return sorted(m.path for m in matched)


def first_line(path: str) -> str:
    """A file's first line through Beam's file systems, without its line ending."""
    with FileSystems.open(path) as f:
        return f.readline().decode().rstrip("\r\n")


class _MapBatches(beam.DoFn):
    """A batch of raw records -> one batch of inputs ({input name: array [n, ...]}), mapped in
    one vectorized step; a batch that step refuses is mapped record by record, so that each
    bad record is named with its feature on the side output and only the bad ones are left
    out."""

    def __init__(self, job: ValidationJob, vectorized: bool = True):
        self.job = job
        self.vectorized = vectorized  # False: the per-record path only (tests compare them)

    def setup(self) -> None:
        self._records = RecordMapper(self.job)
        self._batch = BatchMapper(self.job).map if self.vectorized else None

    def process(self, records: list[Any]) -> Iterator[Any]:
        mapped, bad = map_batch(records, self._batch, self._records)
        for message in bad:
            yield beam.pvalue.TaggedOutput(UNMAPPABLE, message)
        if mapped is not None:
            yield mapped


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


class _RunModels(beam.DoFn):
    """Runs the version (and its source and/or the other version) on batches of examples."""

    def __init__(self, job: ValidationJob):
        self.job = job
        # One copy of the models per worker process, whatever its number of threads.
        self._shared = shared.Shared()

    def setup(self) -> None:
        self._models = self._shared.acquire(lambda: LoadedModels(self.job))

    def process(self, named: dict[str, np.ndarray]) -> Iterator[tuple[int, stats_lib.Stats]]:
        yield len(next(iter(named.values()))), run_models(self._models, self.job, named)


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
                      | "Unbatch" >> beam.FlatMap(unbatch)
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
