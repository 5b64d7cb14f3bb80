"""`shipyard demo`, the README's main job, on its embedded defaults, run twice in one workdir:
the standard TFX pipeline under LocalDagRunner with SQLite MLMD (CsvExampleGen, the Trainer
module file, ShipyardPusher), the first deployment, a challenger through the offline canary to
promotion; the second run reuses the pipeline's version and promotes a new challenger."""

from __future__ import annotations

import json
import subprocess
import sys

from support.processes import subprocess_env

from shipyard.core.manifest import checksum_mismatches, read_manifest
from shipyard.serving.config import model_serving, parse_config


def aliases_and_history(uri: str):
    from mlflow import MlflowClient

    from shipyard.core.audit import history

    model = MlflowClient(tracking_uri=uri, registry_uri=uri).get_registered_model("demo-model")
    return dict(model.aliases), history(dict(model.tags))


def test_demo_ships_a_champion_then_promotes_a_challenger_and_runs_again(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    workdir = tmp_path / "demo"
    uri = f"sqlite:///{workdir / 'mlflow.db'}"

    # Each run in its own process, as a user runs it: the Trainer's SavedModel is the source,
    # and its graph's function names depend on what the process traced before (the
    # fingerprint of a SavedModel source hashes saved_model.pb; see the stop's notes).
    result = subprocess.run([sys.executable, "-m", "shipyard", "demo", "--workdir",
                             str(workdir), "--json"], capture_output=True, text=True,
                            env=subprocess_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    first = json.loads(result.stdout)

    # The TFX pipeline published version 1, recorded in MLMD and MLflow.
    assert first["pipeline"]["pushed"] == 1
    assert first["pipeline"]["registered_model_version"] == 1
    assert first["pipeline"]["pushed_destination"] == str(workdir / "models" / "demo-model" / "1")
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
    assert first["first_deployment"] == {"name": "demo-model", "champion": 1,
                                         "first_deployment": True}
    # The challenger went through the offline canary against version 1 and took over.
    assert first["challenger"]["version"] == 2 and not first["challenger"]["reused"]
    canary = first["canary"]
    assert canary["promoted"] and canary["previous_champion"] == 1
    assert canary["gates"]["agreement"]["probs"]["top1_agreement"] >= 0.95
    assert canary["gates"]["agreement_outputs"] == ["probs"]
    assert canary["validation"]["examples"] == 500
    assert first["champion"] == 2
    for version in (1, 2):
        version_dir = workdir / "models" / "demo-model" / str(version)
        assert checksum_mismatches(version_dir, read_manifest(version_dir)) == []

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
    assert promotion["pipeline_run_id"] == first["run_id"]
    # MLflow's artifacts sit beside its database, not in the working directory.
    assert any((workdir / "mlartifacts").rglob("saved_model.pb"))
    assert {p.name for p in tmp_path.iterdir()} == {"demo"}  # no ./mlruns, no .shipyard
    assert {"├── 1/", "└── 2/"} <= {line.strip("│ ") for line in first["where"]["tree"]}
    assert first["where"]["mlflow_ui"].endswith(f"ui --backend-store-uri {uri} --port 5000")

    from shipyard.cli.output import describe_demo

    told = describe_demo(first)
    assert "First deployment: version 1 is stable and champion" in told
    assert "probs top-1 agreement" in told and "(gate >= 95%)" in told
    assert "promoted: version 2 is stable and champion" in told
    assert f"{workdir / 'models'}" in told and "shipyard status --repo" in told

    # Run again, as a user does: a new process, whose stdout must be the JSON document alone.
    again = subprocess.run([sys.executable, "-m", "shipyard", "demo", "--workdir",
                            str(workdir), "--json"], capture_output=True, text=True,
                           env=subprocess_env(), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads(again.stdout)
    # The pipeline's model is the same content: version 1 and its MLflow run are reused.
    assert second["pipeline"]["registered_model_version"] == 1
    assert second["pipeline"]["mlflow_run_id"] == first["pipeline"]["mlflow_run_id"]
    assert second["first_deployment"] is None
    assert second["challenger"]["version"] == 3
    assert second["canary"]["promoted"] and second["canary"]["previous_champion"] == 2
    aliases, moves = aliases_and_history(uri)
    assert aliases["champion"] == 3
    assert [m["to"] for m in moves if m["alias"] == "champion"] == [1, 2, 3]
    served = model_serving(parse_config((workdir / "models" / "models.config").read_text()),
                           "demo-model")
    assert (served.versions, served.labels) == ((3,), {"stable": 3})
    assert {p.name for p in tmp_path.iterdir()} == {"demo"}
