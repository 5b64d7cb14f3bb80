"""One sweep of the bad inputs a new user would try, each through the real CLI.

Every case runs `shipyard.cli.main` in-process (click's CliRunner, so TensorFlow is imported at
most once) and checks the documented exit code (docs/exit-codes.md, errors.py: 2 bad spec,
arguments or name; 3 the version exists; 4 verification; 5 breaking change; 6 MLflow
unreachable; 7 TF Serving; 1 a missing or corrupt model), a message that names the field,
file or flag (and the fix where shipyard gives one), no Python traceback, and nothing created:
no repository, model directory, version, staging or lock file (in the case's directory, the
object store of {bucket} and its lock directory; {published} stays as it was).

Most cases fail before TensorFlow is loaded; those that need a model load, trace and export
real models: the session's test models (support/shipyard_test_models.py) and a copy of the
session's published version 1. Run with `-n 0 -s` (one process, output shown) to see the tally:

    bad inputs: N tried, N with the documented exit code, N with a clear message
"""

from __future__ import annotations

import re
import shutil
import traceback
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# support.specs.SEQUENTIAL_SPEC as YAML text, kept here because the cases edit it line by line
# (spec(endpoint=..., top=...)).
GOOD_SPEC = """\
endpoints:
  - name: serve
    method: call
    inputs: [{name: x, shape: [null, 3], dtype: float32}]
"""
TRACKING_DOWN = "http://127.0.0.1:1"  # nothing listens on port 1
DNS_LABEL = (r"is not a valid model name\. Expected a DNS-1123 label: 1-63 characters .*"
             r"\(e\.g\. 'churn-model'\)")


def spec(*, endpoint: str = "", top: str = "") -> str:
    """GOOD_SPEC with `endpoint` (YAML lines) added to its endpoint and `top` to the file."""
    text = GOOD_SPEC
    if endpoint:
        text = text.replace("    method: call\n", f"    method: call\n    {endpoint}\n")
    return text + top


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]  # {placeholders} are resolved by Paths
    code: int
    message: str  # a regex (DOTALL) that must match the output
    spec: str = GOOD_SPEC  # written to {spec} (or {policy})


def case(id: str, argv: str, code: int, message: str, *, spec: str = GOOD_SPEC,
         defect: str | None = None) -> Any:
    """A pytest.param; `defect` marks one shipyard gets wrong (strict xfail, the defect said)."""
    marks = [pytest.mark.xfail(strict=True, reason=defect)] if defect else []
    return pytest.param(Case(id, tuple(argv.split()), code, message, spec), id=id, marks=marks)


EXPORT = "export {junk} --spec {spec} --repo {repo} --name m"
# Every command that takes --repo, with the rest of a valid command line.
REPO_COMMANDS = {
    "export": "--spec {spec} --name m {junk}",
    "register": "--spec {spec} --name m --tracking-uri " + TRACKING_DOWN + " {junk}",
    "push": "--name m --version 1 --label stable",
    "status": "--name m --tracking-uri " + TRACKING_DOWN,
    "gc": "--name m --keep 0 --no-registry",
    "validate": "--name m --version 1 --examples {tmp}/examples.jsonl --against 2",
}

CASES = [
    # ---- the spec (checked before the model is looked at: no TensorFlow) -------------------
    case("spec-missing-file", "export {junk} --spec {tmp}/nope.yaml --repo {repo} --name m", 2,
         r"--spec: \S*nope\.yaml does not exist; pass the path of an export spec YAML file"),
    case("spec-is-a-directory", "export {junk} --spec {tmp} --repo {repo} --name m", 2,
         r"--spec: cannot read \S+: Is a directory"),
    case("spec-not-yaml", EXPORT, 2, r"spec\.yaml: not valid YAML",
         spec="endpoints: [\n  {name: serve, method: call\n"),
    case("spec-empty-file", EXPORT, 2,
         r"spec\.yaml: expected a mapping with an 'endpoints' list at the top level", spec=""),
    case("spec-unknown-top-level-key", EXPORT, 2,
         r"spec\.yaml: the export spec is invalid.*- endpoints: Field required"
         r".*- endpoint: unknown field: remove it or correct its spelling",
         spec=GOOD_SPEC.replace("endpoints:", "endpoint:")),
    case("spec-unknown-endpoint-key", EXPORT, 2,
         r"endpoints\[0\]\.inputs: Field required.*"
         r"endpoints\[0\]\.input: unknown field: remove it or correct its spelling",
         spec=GOOD_SPEC.replace("inputs:", "input:")),
    case("spec-bad-dtype-name", EXPORT, 2,
         r"endpoints\[0\]\.inputs\[0\]\.dtype: Input should be 'float16', .*'string' "
         r"\(got 'float'\)", spec=GOOD_SPEC.replace("float32", "float")),
    case("spec-shape-bad-element", EXPORT, 2,
         r"endpoints\[0\]\.inputs\[0\]\.shape\[1\]: Input should be a valid integer.*"
         r"\(got 'three'\)", spec=GOOD_SPEC.replace("[null, 3]", "[null, three]")),
    case("spec-shape-minus-one", EXPORT, 2,
         r"endpoints\[0\]\.inputs\[0\]\.shape: dimensions must be >= 0; write null \(not -1\)",
         spec=GOOD_SPEC.replace("[null, 3]", "[-1, 3]")),
    case("spec-negative-tolerance", EXPORT, 2,
         r"tolerance\.atol: Input should be greater than or equal to 0 \(got -1e-05\)",
         spec=spec(top="tolerance: {atol: -1.0e-5}\n")),
    case("spec-bad-default-endpoint", EXPORT, 2,
         r"default_endpoint 'predict' is not an endpoint; use one of \['serve'\]",
         spec=spec(top="default_endpoint: predict\n")),
    case("spec-bad-default-endpoint-and-tolerance", EXPORT, 2,
         r"\(2 problem\(s\)\):\n  - tolerance\.rtol: Input should be greater than or equal to "
         r"0.*\n  - default_endpoint: 'predict' is not an endpoint; use one of \['serve'\]",
         spec=spec(top="default_endpoint: predict\ntolerance: {rtol: -1}\n")),
    case("spec-duplicate-endpoint-names", EXPORT, 2,
         r"endpoint and variable collection names must be unique; \['serve'\] appear more "
         r"than once", spec=GOOD_SPEC + GOOD_SPEC.split("\n", 1)[1]),
    case("spec-endpoint-name-bad-characters", EXPORT, 2,
         r"endpoints\[0\]\.name: String should match pattern '\^\[A-Za-z\]\[A-Za-z0-9_\]\*\$' "
         r"\(got 'my-endpoint'\)", spec=GOOD_SPEC.replace("name: serve", "name: my-endpoint")),
    case("spec-endpoint-name-reserved", EXPORT, 2,
         r"endpoints\[0\]\.method: an endpoint named 'serving_default' is a SavedModel "
         r"source's own serving_default shipped as it is, so its method is serving_default",
         spec=GOOD_SPEC.replace("name: serve", "name: serving_default")),
    case("spec-unknown-kind", EXPORT, 2,
         r"endpoints\[0\]\.kind: Input should be 'predict', 'classify' or 'regress' "
         r"\(got 'classification'\)", spec=spec(endpoint="kind: classification")),
    case("spec-classify-without-tf-example", EXPORT, 2,
         r"endpoints\[0\]: a classify endpoint takes one input of serialized tf\.Examples "
         r"\(TF Serving's contract\): declare inputs: \[\{tf_example:",
         spec=spec(endpoint="kind: classify\n    output: logits")),
    case("spec-classes-without-kind", EXPORT, 2,
         r"endpoints\[0\]: `output` and `classes` belong to kind classify or regress; set kind "
         r"or remove them", spec=spec(endpoint="classes: [cat, dog]")),
    case("spec-bad-variable-selection", EXPORT, 2,
         r"variable_collections\[0\]\.select: Input should be 'trainable', 'non_trainable', "
         r"'all' or 'optimizer' \(got 'optimiser'\)",
         spec=spec(top="variable_collections: [{name: opt, select: optimiser}]\n")),
    case("spec-input-not-a-tensor", EXPORT, 2,
         r"endpoints\[0\]\.inputs\[0\]: expected a tensor \{shape, dtype\[, name\]\}, a dict of "
         r"tensors or a list of tensors \(got 7\)",
         spec=GOOD_SPEC.replace("[{name: x, shape: [null, 3], dtype: float32}]", "[7]")),

    # ---- model names (DNS-1123 labels; also what keeps paths inside --repo) ----------------
    case("name-dot-dot-slash", "export {junk} --spec {spec} --repo {repo} --name ../x", 2,
         r"--name: '\.\./x' " + DNS_LABEL),
    case("name-empty", "export {junk} --spec {spec} --repo {repo} --name=", 2,
         r"--name: '' " + DNS_LABEL),
    case("name-64-characters", "export {junk} --spec {spec} --repo {repo} --name " + "m" * 64,
         2, r"--name: 'm{64}' " + DNS_LABEL),
    case("name-uppercase", "register {junk} --spec {spec} --repo {repo} --name Churn", 2,
         r"--name: 'Churn' " + DNS_LABEL),
    case("name-underscore", "push --repo {repo} --name churn_model --version 1 --label stable",
         2, r"--name: 'churn_model' " + DNS_LABEL),

    # ---- versions (TF Serving's are int64 >= 1) ---------------------------------------------
    case("version-zero", EXPORT + " --version 0", 2,
         r"--version: 0 is not a valid version\. Expected an integer from 1 to "
         r"9223372036854775807 \(TF Serving's versions are int64\)"),
    case("version-above-int64", EXPORT + " --version 99999999999999999999999", 2,
         r"--version: 99999999999999999999999 is not a valid version\. Expected an integer "
         r"from 1 to 9223372036854775807"),
    case("version-not-a-number", EXPORT + " --version latest", 2,
         r"Invalid value for '--version': 'latest' is not a valid integer"),
    case("push-version-zero", "push --repo {repo} --name m --version 0 --label stable", 2,
         r"--version: 0 is not a valid version"),
    case("version-exists", "export {junk} --spec {spec} --repo {published} --name m --version 1",
         3, r"--version: \S+/m/1 already exists and published versions are never overwritten; "
            r"omit --version to use 2, or pass an unused number"),

    # ---- model paths --------------------------------------------------------------------------
    case("model-missing", "export {tmp}/nope.keras --spec {spec} --repo {repo} --name m", 1,
         r"MODEL: \S*nope\.keras does not exist; pass a \.keras file or a SavedModel directory"),
    case("model-h5-file", "export {h5} --spec {spec} --repo {repo} --name m", 1,
         r"MODEL: \S*model\.h5 is neither a \.keras file nor a SavedModel directory; save the "
         r"model with model\.save\('model\.keras'\) or model\.export\(dir\)"),
    case("model-directory-not-saved-model", "export {tmp} --spec {spec} --repo {repo} --name m",
         1, r"MODEL: \S+ is a directory without saved_model\.pb; pass a \.keras file or a "
            r"SavedModel directory"),
    case("model-empty-keras-file", "export {empty} --spec {spec} --repo {repo} --name m", 1,
         r"MODEL: \S*empty\.keras is corrupt: a \.keras file is a zip archive and this one is "
         r"not \(truncated or overwritten\?\); re-save the model"),
    case("model-truncated-keras-file", "export {truncated} --spec {spec} --repo {repo} --name m",
         1, r"MODEL: \S*truncated\.keras is corrupt: .*re-save the model"),
    case("model-zip-that-is-not-keras", "export {notkeras} --spec {spec} --repo {repo} --name m",
         1, r"MODEL: \S*notkeras\.keras is a zip archive but not a \.keras file \(it has no "
         r"config\.json\); save the model with model\.save\('model\.keras'\)"),
    case("model-corrupt-saved-model-pb", "export {badpb} --spec {spec} --repo {repo} --name m", 1,
         r"MODEL: \S*saved_model\.pb is corrupt \(not a SavedModel protocol buffer.*\); export "
         r"the model again"),

    # ---- flags and commands --------------------------------------------------------------------
    case("command-misspelled", "exprot {junk} --spec {spec} --repo {repo} --name m", 2,
         r"No such command 'exprot'\. Did you mean 'export'\?"),
    case("flag-spec-missing", "export {junk} --repo {repo} --name m", 2,
         r"Missing option '--spec'"),
    case("serving-runtime-bogus", EXPORT + " --serving-runtime latest", 2,
         r"--serving-runtime: 'latest' is not a TensorFlow release this check can run; give the "
         r"TensorFlow version of your TF Serving image as MAJOR\.MINOR, .*or 'none' to skip"),

    # ---- the repository (--repo): every command that takes it -------------------------------
    # A file where the repository's directory should be, a URL no filesystem knows or without
    # a bucket or path: exit 2 while the arguments are read (register: before MLflow, which is
    # down here), naming the flag, the value and the fix. Nothing is created.
    *(case(f"repo-is-a-file-{command}", f"{command} --repo {{junk}} {rest}", 2,
           r"--repo (\S+/model\.keras): \1 is a file, not a directory; give the model "
           r"repository's directory \(the first export creates it\), or an object store's URL "
           r"such as gs://bucket/models")
      for command, rest in REPO_COMMANDS.items()),
    case("repo-under-a-file", "push --repo {junk}/models --name m --version 1 --label stable", 2,
         r"--repo (\S+/model\.keras)/models: \1 is a file, not a directory, so no repository "
         r"can be created at \S+/model\.keras/models; give the model repository's directory"),
    *(case(f"repo-bare-unknown-scheme-{command}", f"{command} --repo foo:// {rest}", 2,
           r"--repo foo://: foo:// is not a storage URL scheme; give a local path, a file:// "
           r"URL, or an object store's URL such as gs://bucket/models")
      for command, rest in REPO_COMMANDS.items()),
    case("repo-unknown-url-scheme", "export {junk} --spec {spec} --repo foo://bucket/models "
         "--name m", 2, r"--repo foo://bucket/models: foo:// is not a storage URL scheme; give "
                        r"a local path, a file:// URL, or an object store's URL such as "
                        r"gs://bucket/models"),
    case("repo-url-without-a-bucket", "push --repo gs:// --name m --version 1 --label stable",
         2, r"--repo gs://: name a bucket or folder after gs://, e\.g\. "
            r"gs://models-bucket/models"),
    case("repo-url-without-a-scheme", "status --repo ://models --name m", 2,
         r"--repo ://models: no URL scheme before ://; give a local path, a file:// URL"),
    case("repo-file-url-without-a-path", "gc --repo file:// --name m --keep 0 --no-registry",
         2, r"--repo file://: name a directory after file://, e\.g\. file:///srv/models, or "
            r"give the path itself"),
    case("repo-empty", "validate --repo= --name m --version 1 --examples {tmp}/examples.jsonl "
         "--against 2", 2, r"--repo '': no path given; give the model repository's directory"),
    case("repo-object-store-path-is-a-file", "push --repo {bucket}/models.config --name m "
         "--version 1 --label stable", 2,
         r"--repo (memory://\S+/models\.config): \1 is a file, not a folder; give the model "
         r"repository's folder \(the first export creates it\)"),
    # A mistyped --repo (no such directory) or --name: refused, and no directory or lock file
    # left behind (not even an empty NAME/.serving.lock).
    case("push-repo-mistyped", "push --repo {tmp}/nowhere --name m --version 1 --label "
         "stable", 2, r"--name m: the repository \S+/nowhere has no model 'm' \(no \S+/nowhere/m"
                      r"\); check --name and --repo"),
    case("push-name-mistyped", "push --repo {published} --name mm --version 1 --label stable",
         2, r"--name mm: the repository \S+/repo has no model 'mm' \(no \S+/repo/mm\); check "
            r"--name and --repo"),
    case("push-bucket-mistyped", "push --repo {bucket}/nowhere --name m --version 1 --label "
         "stable", 2, r"--name m: the repository memory://\S+/nowhere has no model 'm' \(no "
                      r"memory://\S+/nowhere/m\); check --name and --repo"),
    case("gc-repo-mistyped", "gc --repo {tmp}/nowhere --name m --keep 0 --no-registry", 2,
         r"--name m: the repository \S+/nowhere has no model 'm' \(no \S+/nowhere/m\); check "
         r"--name and --repo"),
    case("gc-name-mistyped", "gc --repo {published} --name mm --keep 0 --no-registry", 2,
         r"--name mm: the repository \S+/repo has no model 'mm'"),
    case("status-repo-mistyped", "status --repo {tmp}/nowhere --name m", 2,
         r"--name m: \S+/nowhere has no versions of m, its models\.config does not name it and "
         r"the registry has no aliases for it; check --repo and --name"),
    case("validate-repo-mistyped", "validate --repo {tmp}/nowhere --name m --version 1 "
         "--examples {tmp}/examples.jsonl --against 2", 2,
         r"--version 1: \S+/nowhere/m/1 is not a published version of m \(no shipyard\.json\); "
         r"verified published versions: none"),
    # An export or register to a repository that does not exist yet creates it (and the model's
    # directory) for its staging; when it fails, both go again.
    case("export-to-a-new-repository-fails", "export {junk} --spec {spec} --repo "
         "{tmp}/new/models --name m", 1, r"MODEL: \S*model\.keras is corrupt"),
    case("register-to-a-new-repository-fails", "register {junk} --spec {spec} --repo "
         "{tmp}/new/models --name m", 1, r"MODEL: \S*model\.keras is corrupt"),
    case("gc-keep-negative", "gc --repo {repo} --name m --keep -1 --no-registry", 2,
         r"--keep: expected 0 or more versions to keep, got -1"),
    case("push-label-bad", "push --repo {published} --name m --version 1 --label prod", 2,
         r"Invalid value for '--label': 'prod' is not one of 'stable', 'canary'"),
    case("push-version-not-published", "push --repo {published} --name m --version 7 --label "
         "stable", 2, r"--version 7: \S+/m/7 is not a published version of m \(no "
                      r"shipyard\.json\); verified published versions: 1"),
    case("push-serving-address-without-port", "push --repo {published} --name m --version 1 "
         "--label stable --serving-address localhost", 2,
         r"--serving-address: expected HOST:PORT \(TF Serving's gRPC port, usually 8500\), got "
         r"'localhost'"),
    case("push-serving-unreachable", "push --repo {published} --name m --version 1 --label "
         "stable --serving-address 127.0.0.1:1", 7,
         r"cannot read model status at TF Serving 127\.0\.0\.1:1: UNAVAILABLE: .*Check "
         r"--serving-address \(the gRPC port, usually 8500\) and that the server is up"),
    case("validate-nothing-to-compare", "validate --repo {published} --name m --version 1 "
         "--examples {tmp}/examples.jsonl", 2,
         r"nothing to compare: pass --source MODEL .* and/or --against champion\|VERSION"),
    case("validate-min-agreement-above-1", "validate --repo {published} --name m --version 1 "
         "--examples {tmp}/examples.jsonl --against 2 --min-agreement 95", 2,
         r"--min-agreement: expected a share between 0 and 1, got 95"),
    case("validate-examples-missing", "validate --repo {published} --name m --version 1 "
         "--examples {tmp}/missing.jsonl --against 2", 2,
         r"--examples \S*missing\.jsonl: no file matches; check the path or glob"),
    case("validate-examples-unknown-format", "validate --repo {published} --name m --version 1 "
         "--examples {tmp}/examples.txt --against 2", 2,
         r"--examples \S*examples\.txt: cannot tell the format from the name; pass --format "
         r"tfrecord\|csv\|jsonl"),
    case("validate-endpoint-unknown", "validate --repo {published} --name m --version 1 "
         "--examples {tmp}/examples.jsonl --against 2 --endpoint predict", 2,
         r"--endpoint: the version has no endpoint 'predict'; it has serve"),

    # ---- rollout and schedule ------------------------------------------------------------
    case("rollout-policy-weight-over-100", "rollout start --name m --version 1 --policy "
         "{policy}", 2,
         r"policy\.yaml: the rollout policy is invalid \(1 problem\(s\)\):\n  - "
         r"steps\[1\]\.weight: Input should be less than or equal to 100 \(got 150\)",
         spec="steps: [{weight: 10}, {weight: 150}]\n"),
    case("schedule-cron-in-words", "schedule create --host http://127.0.0.1:1 --cron every-day "
         "--repository {repo}", 2, r"--cron: expected 5 fields \(minute hour day month weekday\) "
                                   r"or 6 \(with seconds first\), got 1 in 'every-day'"),

    # ---- the registry ----------------------------------------------------------------------
    case("register-mlflow-unreachable", "register {junk} --spec {spec} --repo {repo} --name m "
         "--tracking-uri " + TRACKING_DOWN, 6,
         r"MLflow at http://127\.0\.0\.1:1 \(registry http://127\.0\.0\.1:1\) is unreachable "
         r"after bounded retries: .*Start the server or fix --tracking-uri/--registry-uri"),
    case("gc-mlflow-unreachable", "gc --repo {published} --name m --keep 0 --tracking-uri "
         + TRACKING_DOWN, 6, r"MLflow at http://127\.0\.0\.1:1 .*is unreachable.*fix "
                             r"--tracking-uri"),
    case("register-tracking-uri-without-scheme", "register {junk} --spec {spec} --repo {repo} "
         "--name m --tracking-uri 127.0.0.1:5000", 2,
         r"--tracking-uri: '127\.0\.0\.1:5000' is a host and port without a scheme.*"
         r"use http://127\.0\.0\.1:5000"),
    case("register-tracking-uri-unsupported-scheme", "register {junk} --spec {spec} --repo "
         "{repo} --name m --tracking-uri weird://x", 2,
         r"--tracking-uri: MLflow has no model registry for 'weird://x'.*use an MLflow server"),
    case("status-mlflow-unreachable-nothing-on-disk", "status --repo {repo} --name m "
         "--tracking-uri " + TRACKING_DOWN, 6, r"MLflow at http://127\.0\.0\.1:1 .*unreachable"),
    # The version is refused before MLflow is asked (which is down here: exit 6 otherwise).
    case("alias-set-version-zero", "alias set m candidate 0 --reason r --tracking-uri "
         + TRACKING_DOWN, 2, r"Invalid value for 'VERSION': 0 is not in the range "
                             r"1<=x<=9223372036854775807"),

    # ---- the spec against the model, and the model's answers (TensorFlow) ------------------
    case("import-missing-module", "export {sequential} --spec {spec} --repo {repo} --name m "
         "--import no_such_module", 2,
         r"--import: cannot import module 'no_such_module': ModuleNotFoundError: .*Check that "
         r"it is on PYTHONPATH"),
    case("device-absent", "export {sequential} --spec {spec} --repo {repo} --name m --device "
         "/GPU:0", 2, r"--device /GPU:0: this machine has no such device; it has .*CPU:0.*leave "
                      r"--device out"),
    case("method-missing", "export {sequential} --spec {spec} --repo {repo} --name m", 2,
         r"endpoints\[0\]\.method: Sequential has no public method 'predict_proba'",
         spec=GOOD_SPEC.replace("method: call", "method: predict_proba")),
    case("dtype-string-for-float-model", "export {sequential} --spec {spec} --repo {repo} "
         "--name m", 2, r"'serve'.*(x: string\[None, 3\]|\['x'\] are declared as strings)",
         spec=GOOD_SPEC.replace("float32", "string")),
    case("model-answers-nan", "export {nan} --spec {spec} --repo {repo} --name m", 4,
         r"endpoint 'serve' output 'logits': the original model answers NaN or Inf .*nothing "
         r"was published\. .*`allow_non_finite: true`"),
    case("breaking-renamed-input", "export {sequential} --spec {spec} --repo {published} "
         "--name m", 5, r"the new export breaks clients of version 1 \(\S+/m/1\):\n  - .*\bx\b"
                        r".*pass --allow-breaking if clients are ready",
         spec=GOOD_SPEC.replace("name: x", "name: features")),
]

# ---- the tally -------------------------------------------------------------------------------

TALLY = {"tried": 0, "code": 0, "message": 0}
MISSES: set[str] = set()
DEFECTS = {p.id for p in CASES if p.marks}
REAL_VERIFIERS: list[str] = []  # failing cases that went as far as starting a verifier


class LazyVerifier:
    """A verifier process started only if a case gets as far as verifying: a case that fails
    earlier (all of these should) costs no TensorFlow import in a child process."""

    def __init__(self, case_id: str):
        self._case_id = case_id
        self._real = None

    def _process(self):
        if self._real is None:
            from shipyard.exporter.verifier import VerifierProcess

            REAL_VERIFIERS.append(self._case_id)
            self._real = VerifierProcess()
        return self._real

    @property
    def workdir(self) -> Path:
        return self._process().workdir

    @property
    def reference(self):
        return self._process().reference

    @property
    def start_child(self):  # a fallback export's fresh verifier is started the same way
        return self._process().start_child

    def run(self, job, timeout=None):
        return self._process().run(job, **({} if timeout is None else {"timeout": timeout}))

    def start(self, job):
        self._process().start(job)

    def abandon(self):
        if self._real is not None:
            self._real.abandon()

    def finish(self, expected, timeout=None):
        return self._process().finish(expected,
                                      **({} if timeout is None else {"timeout": timeout}))

    def log_tail(self, lines: int = 30) -> str:
        return self._real.log_tail(lines) if self._real else ""

    def close(self) -> None:
        if self._real is not None:
            self._real.close()


# ---- files the cases point at --------------------------------------------------------------


@pytest.fixture(scope="module")
def junk(tmp_path_factory) -> Path:
    """Passes the cheap MODEL check (a .keras name) but is no model: for cases that must fail
    before the model is loaded."""
    path = tmp_path_factory.mktemp("junk") / "model.keras"
    path.write_bytes(b"not a zip archive")
    return path


@pytest.fixture(scope="module")
def published(published, tmp_path_factory) -> Path:
    """A repository holding version 1 of model `m` (the sequential test model, published by a
    real export with a real verifier): a copy of the session's (tests/conftest.py), which
    holds a version 2 too. Cases must leave it as it is."""
    repo = tmp_path_factory.mktemp("published") / "repo"
    shutil.copytree(published / "m" / "1", repo / "m" / "1")
    return repo


class Paths:
    """Resolves the {placeholders} of a case's argv; model fixtures are built only if used."""

    def __init__(self, request, tmp_path: Path, case: Case):
        self.request, self.tmp_path, self.case = request, tmp_path, case

    def resolve(self, arg: str) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: str(getattr(self, m[1])()), arg)

    def tmp(self) -> Path:
        return self.tmp_path

    def repo(self) -> Path:
        return self.tmp_path / "repo"

    def spec(self) -> Path:
        path = self.tmp_path / "spec.yaml"
        path.write_text(self.case.spec)
        return path

    def policy(self) -> Path:
        path = self.tmp_path / "policy.yaml"
        path.write_text(self.case.spec)
        return path

    def junk(self) -> Path:
        return self.request.getfixturevalue("junk")

    def bucket(self) -> str:
        """A fresh object store (fsspec memory://) holding one file, models.config."""
        import fsspec

        url = self.request.getfixturevalue("url")
        fsspec.filesystem("memory").pipe_file(f"{url}/models.config", b"")
        return url

    def published(self) -> Path:
        return self.request.getfixturevalue("published")

    def sequential(self) -> Path:
        return self.request.getfixturevalue("models").path("sequential")

    def nan(self) -> Path:
        return self.request.getfixturevalue("models").path("nan")

    def h5(self) -> Path:
        path = self.tmp_path / "model.h5"
        path.write_bytes(b"\x89HDF\r\n\x1a\n")
        return path

    def empty(self) -> Path:
        path = self.tmp_path / "empty.keras"
        path.write_bytes(b"")
        return path

    def truncated(self) -> Path:
        whole = self.sequential().read_bytes()
        path = self.tmp_path / "truncated.keras"
        path.write_bytes(whole[: len(whole) // 2])  # an interrupted copy or download
        return path

    def notkeras(self) -> Path:
        path = self.tmp_path / "notkeras.keras"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("weights.txt", "a zip, but not a Keras archive")
        return path

    def badpb(self) -> Path:
        path = self.tmp_path / "saved"
        path.mkdir()
        (path / "saved_model.pb").write_bytes(b"\xff\xfe not a protocol buffer \x00" * 8)
        return path


def tree(root: Path) -> list[str]:
    """Every entry under `root`, but the push/gc and publish locks (empty files they keep)."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.name not in (".serving.lock", ".publish.lock"))


def everything(root: Path) -> set[str]:
    """Every entry under `root`, lock files included, but the command's log files and embedded
    MLflow store (.shipyard/ in the working directory)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.relative_to(root).parts[0] != ".shipyard"}


def store_leftovers(argv: list[str]) -> list[str]:
    """What a case left in the memory:// store of {bucket} (which holds only models.config)
    and in the local lock directories of the --repo URLs it gave."""
    import fsspec

    from shipyard.core.errors import ShipyardError
    from shipyard.repository import ObjectStoreRepository

    fs = fsspec.filesystem("memory")
    left = []
    for arg in argv:
        if arg.startswith("memory://"):
            bucket = "/".join(arg.split("/")[:4])  # memory://bucket-x/models
            left += [p for p in fs.find(bucket) if not p.endswith("/models.config")]
            try:
                lock_dir = ObjectStoreRepository(arg)._lock_dir
            except ShipyardError:
                continue  # not a repository at all: it has no locks
            if lock_dir.exists():
                left += [str(p) for p in lock_dir.iterdir()]
    return left


def leftovers(repo: Path) -> list[str]:
    """Version directories, staging directories or lock files, or SavedModel files."""
    if not repo.exists():
        return []
    return sorted(str(p.relative_to(repo)) for p in repo.rglob("*")
                  if p.name.isdigit() or p.name.startswith(".staging-")
                  or p.name == "saved_model.pb")


@pytest.fixture(autouse=True)
def _fast_and_contained(monkeypatch, tmp_path):
    # An unreachable MLflow fails at once; the embedded store, if anything defaulted to it,
    # would land in this test's directory rather than the project's.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("bad", CASES)
def test_bad_input(bad: Case, request, tmp_path, caplog):
    from click.testing import CliRunner

    from shipyard.cli import main

    paths = Paths(request, tmp_path, bad)
    argv = [paths.resolve(arg) for arg in bad.argv]
    published = paths.published() if "{published}" in " ".join(bad.argv) else None
    before = tree(published) if published else None
    there = everything(tmp_path)

    result = CliRunner().invoke(main, argv, obj={"launch_verifier": lambda: LazyVerifier(bad.id)})

    output = result.output
    if result.exc_info and not isinstance(result.exception, SystemExit):
        # What a user would see: the CLI let an exception escape.
        output += "".join(traceback.format_exception(*result.exc_info))
    clear = (re.search(bad.message, output, re.DOTALL) is not None
             and "Traceback" not in output and "Traceback" not in caplog.text)
    TALLY["tried"] += 1
    TALLY["code"] += result.exit_code == bad.code
    TALLY["message"] += clear
    if result.exit_code != bad.code or not clear:
        MISSES.add(bad.id)

    shown = f"shipyard {' '.join(argv)}\n-> exit {result.exit_code}\n{output}"
    assert result.exit_code == bad.code, shown
    assert "Traceback" not in output and "Traceback" not in caplog.text, shown
    assert re.search(bad.message, output, re.DOTALL), shown
    if argv[0] in ("export", "register"):
        assert leftovers(paths.repo()) == [], shown
    if published is not None:
        assert tree(published) == before, shown
    # Nothing created: no repository, model directory or lock file (.serving.lock included).
    assert sorted(everything(tmp_path) - there) == [], shown
    assert store_leftovers(argv) == [], shown


def test_tally():
    """Prints the sweep's tally (pytest -n 0 -s); a miss outside the known defects fails here too."""
    print(f"\nbad inputs: {TALLY['tried']} tried, {TALLY['code']} with the documented exit "
          f"code, {TALLY['message']} with a clear message"
          + (f" (misses: {', '.join(sorted(MISSES))})" if MISSES else "")
          + (f"; real verifiers started: {', '.join(REAL_VERIFIERS)}" if REAL_VERIFIERS else ""))
    assert MISSES <= DEFECTS, f"unexpected misses: {sorted(MISSES - DEFECTS)}"
