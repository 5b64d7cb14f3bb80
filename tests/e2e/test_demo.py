"""`shipyard demo`, the README's main job, on its embedded defaults, run twice in one workdir:
the standard TFX pipeline under LocalDagRunner with SQLite MLMD (CsvExampleGen, the Trainer
module file, ShipyardPusher), the first deployment, a challenger through the offline canary to
promotion; the second run reuses the pipeline's version and promotes a new challenger.

Both runs are read as a person reads them: the first in a 160x50 terminal (a pseudo-terminal
rendered by a VT100 emulator, scrollback included), the second without one (a pipeline's log).
Each shows at most 60 non-empty lines, none from the libraries, and the summary; the
libraries' output is in the run's log file under the workdir."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from support.processes import subprocess_env
from support.terminal import LIBRARY_CHATTER, run_in_terminal

from shipyard.core.manifest import checksum_mismatches, read_manifest
from shipyard.serving.config import model_serving, parse_config


def aliases_and_history(uri: str):
    from mlflow import MlflowClient

    from shipyard.core.audit import history

    model = MlflowClient(tracking_uri=uri, registry_uri=uri).get_registered_model("demo-model")
    return dict(model.aliases), history(dict(model.tags))


STEPS = ("signing keys in", "check MLflow at", "TFX pipeline (LocalDagRunner, SQLite MLMD)",
         "train a challenger", "register the challenger", "write 500 sample examples",
         "offline canary: version", "copy champion version",
         "verify every version's signature with model-signing")


def demo_env() -> dict[str, str]:
    """As a user's shell has it: TensorFlow's C++ log level not lowered by the test."""
    env = subprocess_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL")
    return env


def assert_seen_as_a_person_sees_it(lines: list[str], workdir) -> str:
    """At most 60 non-empty lines, no library line, shipyard's steps and summary; the text."""
    non_empty = [line for line in lines if line.strip()]
    text = "\n".join(lines)
    assert len(non_empty) <= 60, text
    assert [line for line in lines if any(c in line for c in LIBRARY_CHATTER)] == [], text
    for step in STEPS:
        assert step in text, (step, text)
    assert "Where everything is:" in text and "Model repository:" in text
    assert "shipyard status --repo" in text
    # The libraries' output went to the run's log file instead.
    logs = sorted((workdir / "logs").glob("demo-*.log"))
    assert logs and "Using Any for unsupported type" in logs[-1].read_text()
    return text


def test_demo_ships_a_champion_then_promotes_a_challenger_and_runs_again(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    workdir = tmp_path / "demo"
    uri = f"sqlite:///{workdir / 'mlflow.db'}"

    # Each run in its own process, as a user runs it: the Trainer's SavedModel is the source,
    # and its graph's function names depend on what the process traced before (the
    # fingerprint of a SavedModel source hashes saved_model.pb; see the stop's notes).
    screen = run_in_terminal([sys.executable, "-m", "shipyard", "demo", "--workdir",
                              str(workdir)], env=demo_env(), cwd=str(tmp_path))
    assert screen.exit_code == 0, "\n".join(screen.lines)
    told = assert_seen_as_a_person_sees_it(screen.lines, workdir)
    # Lines longer than the terminal wrap at 160 columns: long paths are matched unwrapped.
    unwrapped = "".join(screen.lines)
    assert f"MLMD {workdir / 'tfx' / 'mlmd.sqlite'})" in unwrapped, told
    pipeline_run = re.search(r"TFX pipeline: demo-model version 1 \(MLflow run (\w+);", told)
    assert pipeline_run, told

    # The TFX pipeline published version 1, recorded in MLMD and MLflow.
    assert (workdir / "models" / "demo-model" / "1" / "saved_model.pb").is_file()
    assert (workdir / "tfx" / "mlmd.sqlite").is_file()
    # CsvExampleGen on the CSV the demo wrote, the module file's Trainer (TFX's where TFDV is
    # installed), ShipyardPusher.
    assert (workdir / "tfx" / "data" / "demo.csv").is_file()
    from shipyard.tfx.trainer import trainer_component

    assert {p.name for p in (workdir / "tfx" / "pipeline-root").iterdir()} == {
        "CsvExampleGen", trainer_component().__name__, "ShipyardPusher"}
    # The Trainer's SavedModel takes serialized tf.Examples; shipyard added TF Serving's
    # Classify signature over the same examples.
    signatures = read_manifest(workdir / "models" / "demo-model" / "1").signatures
    assert signatures["serve"]["inputs"] == {"examples": {"dtype": "string", "shape": [None]}}
    assert signatures["classify"]["method_name"] == "tensorflow/serving/classify"
    assert signatures["classify"]["outputs"]["classes"]["shape"] == [None, 3]
    assert "First deployment: version 1 is stable and champion" in told
    assert "✓ first deployment: version 1 becomes stable and champion" in told
    # The challenger went through the offline canary against version 1 and took over.
    assert "Challenger: version 2\n" in told
    agreement = re.search(r"offline canary vs version 1, 500 examples: probs top-1 agreement "
                          r"([\d.]+)% \(gate >= 95%\)", told)
    assert agreement and float(agreement.group(1)) >= 95, told
    assert re.search(r"500 examples: score mean abs difference \S+ \(reported\)", told), told
    assert "promoted: version 2 is stable and champion" in told
    for version in (1, 2):
        version_dir = workdir / "models" / "demo-model" / str(version)
        assert checksum_mismatches(version_dir, read_manifest(version_dir)) == []
    # Signed with the key the demo made (by ShipyardPusher, and by register for the
    # challenger), and verified by the library's own CLI with the public half.
    keys = workdir / "keys"
    assert re.search(r"Signed and verified \(model-signing, key sha256:[0-9a-f]{12}\.\.\.\): "
                     r"staging 1, 2; production 1", told), told
    for version_dir in (workdir / "models" / "demo-model" / "1",
                        workdir / "models" / "demo-model" / "2",
                        workdir / "prod" / "models" / "demo-model" / "1"):
        checked = subprocess.run(
            [sys.executable, "-m", "model_signing", "verify", "key", str(version_dir),
             "--signature", str(version_dir / "assets.extra" / "model.sig"), "--public_key",
             str(keys / "verify-key.pem")], capture_output=True, text=True, timeout=120)
        assert checked.returncode == 0, (version_dir, checked.stdout, checked.stderr)
        assert read_manifest(version_dir).extra["signing"]["method"] == "key"

    config = parse_config((workdir / "models" / "models.config").read_text())
    served = model_serving(config, "demo-model")
    assert (served.versions, served.labels) == ((2,), {"stable": 2})
    aliases, moves = aliases_and_history(uri)
    assert aliases == {"candidate": 2, "champion": 2}
    champion_moves = [(m["from"], m["to"]) for m in moves
                      if m["alias"] == "champion"]
    assert champion_moves == [(None, 1), (1, 2)]
    promotion = next(m for m in moves if m["alias"] == "champion" and m["to"] == 2)
    assert promotion["gates"]["passed"] is True
    assert promotion["pipeline_run_id"].startswith("shipyard-demo-")
    # MLflow's artifacts sit beside its database, not in the working directory.
    assert any((workdir / "mlartifacts").rglob("saved_model.pb"))
    assert {p.name for p in tmp_path.iterdir()} == {"demo"}  # no ./mlruns, no .shipyard
    assert re.search(r"├── 1/\n.*└── 2/\n", told, re.S), told
    assert f"ui --backend-store-uri {uri} --port 5000" in unwrapped
    # Production: the champion copied into a second environment, byte for byte.
    assert ("Production: version 1, a copy of staging's champion version 2 (hard links; "
            "checksums and answers verified)") in told, told
    production_uri = f"sqlite:///{workdir / 'prod' / 'mlflow.db'}"
    assert f"shipyard status --repo {workdir / 'prod' / 'models'}" in unwrapped
    from mlflow import MlflowClient

    copied = MlflowClient(tracking_uri=production_uri, registry_uri=production_uri)
    version = copied.get_model_version("demo-model", "1")
    assert json.loads(version.tags["shipyard.copied_from"])["version"] == 2
    assert (workdir / "prod" / "models" / "demo-model" / "1" / "saved_model.pb").read_bytes() \
        == (workdir / "models" / "demo-model" / "2" / "saved_model.pb").read_bytes()

    # Run again, as a pipeline runs it: no terminal, one line per step on stderr.
    again = subprocess.run([sys.executable, "-m", "shipyard", "demo", "--workdir",
                            str(workdir)], capture_output=True, text=True, env=demo_env(),
                           timeout=600, stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stderr[-3000:]
    told = assert_seen_as_a_person_sees_it((again.stderr + again.stdout).splitlines(), workdir)
    steps = again.stderr.splitlines()
    assert len(steps) == len(STEPS), again.stderr
    assert all(line.startswith(step) and re.search(r": done in [\d.]+ s$", line)
               for line, step in zip(steps, STEPS)), again.stderr
    # The pipeline's model is the same content: version 1 and its MLflow run are reused.
    assert (f"TFX pipeline: demo-model version 1 (MLflow run {pipeline_run.group(1)};"
            in again.stdout), again.stdout
    assert "First deployment" not in told
    assert "Challenger: version 3\n" in told
    assert "offline canary vs version 2, 500 examples" in told
    assert "promoted: version 3 is stable and champion" in told
    assert "Production: version 2, a copy of staging's champion version 3" in told, told
    aliases, moves = aliases_and_history(uri)
    assert aliases["champion"] == 3
    assert [m["to"] for m in moves if m["alias"] == "champion"] == [1, 2, 3]
    served = model_serving(parse_config((workdir / "models" / "models.config").read_text()),
                           "demo-model")
    assert (served.versions, served.labels) == ((3,), {"stable": 3})
    assert {p.name for p in tmp_path.iterdir()} == {"demo"}
