"""The model corpus (support/corpus.py, support/corpus_models.py): tiny Keras models of many
shapes, each saved as `.keras`, exported with shipyard, and the published version's answers
compared with Keras's own `keras.saving.load_model` of the same file, made in a separate
process that imports no shipyard code, on the same inputs, within the spec's tolerance. A
model that cannot be exported must be refused with a message naming the problem and the fix,
and nothing published.

The published version is called the way TF Serving calls it: TensorFlow's session loader
(`tf.compat.v1.saved_model.loader.load`, tags {serve}), inputs fed by signature name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.corpus import CASES, CASES_BY_NAME, Case
from support.exports import export
from support.processes import subprocess_env

from shipyard.core.errors import SpecError

MODULE = "support.corpus_models"
SINGLE = "<single>"  # support.corpus_models.SINGLE (that module imports TensorFlow)
REFERENCE_TIMEOUT_S = 300

# Refused models: the error and what its message must say (the problem, then the fix).
REFUSALS = {
    "loss-scale-optimizer": (SpecError, r"variable_collections\[0\]\.select: the optimizer's "
                                        r"variables are selected, but loss-scale-optimizer\.keras "
                                        r"stores \d+ optimizer variables and the loaded model's "
                                        r"Adam has \d+: Keras did not restore the saved "
                                        r"optimizer state.*set_dtype_policy\('mixed_float16'\) "
                                        r"saved a LossScaleOptimizer"),
    "sparse-output": (SpecError, r"output 'lookup' is a SparseTensor.*serving signature "
                                 r"returns dense tensors.*sparse=False.*tf\.sparse\.to_dense"),
    "ragged-output": (SpecError, r"output 'vectorize' is a RaggedTensor.*serving signature "
                                 r"returns dense tensors.*ragged=False.*to_tensor\(\)"),
}
EXPORTED = [case.name for case in CASES if case.refused is None]


class Corpus:
    """The saved models, and Keras's own answers from one process started when they were
    saved (it imports TensorFlow while the first exports run)."""

    def __init__(self, directory: Path):
        from support.corpus_models import save_corpus

        self.directory = directory
        job = save_corpus(directory)
        self.models = {entry["name"]: Path(entry["model"]) for entry in job["cases"]}
        self.inputs = {entry["name"]: Path(entry["inputs"]) for entry in job["cases"]}
        job_path = directory / "job.json"
        job_path.write_text(json.dumps(job))
        self._output = Path(job["output"])
        self._log = directory / "reference.log"
        with open(self._log, "wb") as log:
            self._process = subprocess.Popen([sys.executable, "-m", MODULE, str(job_path)],
                                             stdout=log, stderr=subprocess.STDOUT,
                                             env=subprocess_env())
        self._answers: dict[str, np.ndarray] | None = None
        self._result: dict = {}

    def keras_answers(self, name: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Keras's own outputs for case `name` ({output: array}, {output: dtype}), and its
        optimizer's variables under 'optimizer|<i>'."""
        if self._answers is None:
            code = self._process.wait(timeout=REFERENCE_TIMEOUT_S)
            log = self._log.read_text(errors="replace")[-3000:]
            assert code == 0, f"Keras's reference process failed ({code}):\n{log}"
            self._result = json.loads(self._output.with_suffix(".json").read_text())
            with np.load(self._output) as stored:
                self._answers = {key: stored[key] for key in stored.files}
        assert self._result["shipyard_modules"] == [], (
            "the reference must share no code with shipyard, yet it imported "
            f"{self._result['shipyard_modules']}")
        assert name not in self._result["errors"], (
            f"Keras's own load of {name} failed: {self._result['errors'][name]}")
        prefix = f"{name}|"
        answers = {k.removeprefix(prefix): v for k, v in self._answers.items()
                   if k.startswith(prefix)}
        dtypes = {k.removeprefix(prefix): v for k, v in self._result["dtypes"].items()
                  if k.startswith(prefix)}
        return answers, dtypes

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    saved = Corpus(tmp_path_factory.mktemp("corpus"))
    yield saved
    saved.close()


def serve_like_tf_serving(version_dir: str, case: Case, inputs: dict[str, np.ndarray]
                          ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The `serve` signature's outputs and their dtypes, through TF Serving's loader."""
    import tensorflow as tf

    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], version_dir)
        signature = meta_graph.signature_def["serve"]
        declared = case.input_dtypes()
        feed = {signature.inputs[name].name:
                value.astype(tf.as_dtype(declared[name]).as_numpy_dtype)
                for name, value in inputs.items()}
        names = sorted(signature.outputs)
        values = session.run([signature.outputs[n].name for n in names], feed)
    dtypes = {n: tf.as_dtype(signature.outputs[n].dtype).name for n in names}
    # bfloat16 (ml_dtypes) compares as float32, which holds every bfloat16 exactly.
    return ({n: (v.astype(np.float32) if dtypes[n] == "bfloat16" else v)
             for n, v in zip(names, values)}, dtypes)


def differences(published: dict[str, np.ndarray], published_dtypes: dict[str, str],
                keras: dict[str, np.ndarray], keras_dtypes: dict[str, str],
                atol: float, rtol: float) -> list[str]:
    """Every way the published answers differ from Keras's: missing or extra outputs, another
    dtype or shape, values beyond |published - keras| <= atol + rtol * |keras| (exact for
    integers and strings)."""
    if list(keras) == [SINGLE] and len(published) == 1:  # one tensor: the export names it
        keras = {next(iter(published)): keras[SINGLE]}
        keras_dtypes = {next(iter(published)): keras_dtypes[SINGLE]}
    if sorted(published) != sorted(keras):
        return [f"outputs {sorted(published)}, Keras's load has {sorted(keras)}"]
    found = []
    for name in sorted(keras):
        got, want = published[name], keras[name]
        if published_dtypes[name] != keras_dtypes[name] or got.shape != want.shape:
            found.append(f"{name}: {published_dtypes[name]}{list(got.shape)}, Keras's load "
                         f"answers {keras_dtypes[name]}{list(want.shape)}")
        elif want.dtype.kind == "f":
            error = np.abs(got.astype(np.float64) - want.astype(np.float64))
            allowed = atol + rtol * np.abs(want.astype(np.float64))
            if not np.all(error <= allowed):
                found.append(f"{name}: max abs error {error.max():.6g} beyond atol {atol} rtol "
                             f"{rtol}; published {got.ravel()[:6].tolist()}..., Keras's load "
                             f"{want.ravel()[:6].tolist()}...")
        elif not np.array_equal(got, want):
            found.append(f"{name}: published {got.ravel()[:8].tolist()}, Keras's load "
                         f"{want.ravel()[:8].tolist()}")
    return found


def published_versions(repo: Path, name: str = "m") -> list[str]:
    """Every directory in the model's folder: versions and any staging left behind."""
    model_dir = repo / name
    return sorted(p.name for p in model_dir.iterdir()) if model_dir.exists() else []


@pytest.mark.parametrize("name", EXPORTED)
def test_the_published_version_answers_like_keras_own_load(corpus, launcher, repo, name):
    from support.corpus_models import read_inputs

    case = CASES_BY_NAME[name]
    result = export(launcher, corpus.models[name], case.spec, repo, imports=(MODULE,))

    assert result.version == 1
    inputs = read_inputs(corpus.inputs[name])
    published, published_dtypes = serve_like_tf_serving(result.path, case, inputs)
    keras, keras_dtypes = corpus.keras_answers(name)
    optimizer = {k: keras.pop(k) for k in list(keras) if k.startswith("optimizer|")}
    tolerance = case.spec["tolerance"]
    found = differences(published, published_dtypes, keras, keras_dtypes, **tolerance)
    assert not found, (f"{name} ({case.covers}): the published version does not answer like "
                       "Keras's own load of the .keras file:\n  " + "\n  ".join(found))
    if case.optimizer:
        import tensorflow as tf

        restored = tf.saved_model.load(result.path).optimizer_variables
        assert len(restored) == len(optimizer) > 2
        for i, variable in enumerate(restored):
            np.testing.assert_array_equal(variable.numpy(), optimizer[f"optimizer|{i}"],
                                          err_msg=f"optimizer variable {i}")


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_a_model_that_cannot_be_served_is_refused_and_nothing_published(corpus, launcher,
                                                                         repo, name):
    case = CASES_BY_NAME[name]
    error, message = REFUSALS[name]
    keras_answers, _ = corpus.keras_answers(name)  # Keras loads and calls it: the export fails
    assert keras_answers

    with pytest.raises(error, match=message):
        export(launcher, corpus.models[name], case.spec, repo, imports=(MODULE,))

    assert published_versions(repo) == []


def test_every_case_is_either_exported_or_refused_for_a_stated_reason():
    assert sorted(REFUSALS) == sorted(c.name for c in CASES if c.refused is not None)
    assert len(EXPORTED) + len(REFUSALS) == len(CASES) == len(CASES_BY_NAME)
