"""`shipyard demo`: the whole job on embedded defaults, on small models trained here.

1. The reference TFX pipeline under LocalDagRunner (SQLite MLMD): CsvExampleGen on a CSV
   written here, a Trainer running the demo's module file (TFX's Trainer where TFDV is
   installed, else shipyard's ModuleTrainer: see shipyard.tfx.trainer), whose SavedModel's
   `serving_default` takes serialized tf.Examples, then ShipyardPusher (export with predict
   and classify endpoints, CPU verification, MLflow run and version on SQLite, publish,
   models.config). On the first run the version becomes stable and champion (nothing to
   compare against).
2. A challenger, trained by the same module file on other data with other weights, is
   registered and taken through the offline canary (shipyard.steps.canary): canary label, Beam
   validation against the champion on sample examples, agreement gate, promotion.
3. The champion is copied into a second environment, `<workdir>/prod` (its own repository
   and SQLite MLflow store), as a team promotes staging's winner to production
   (shipyard.steps.copy: byte for byte, proven, with its lineage).
4. The document says where everything is and how to look at it.

Re-runnable: the pipeline's data and weights come from a fixed seed, so a re-run exports the
same content and reuses its version; each run's challenger is seeded by the newest version
number, so it is a new version that takes over.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from shipyard.core.errors import GateError
from shipyard.core.progress import NullProgress, Progress
from shipyard.core.vocabulary import CHAMPION, STABLE
from shipyard.demo.spec import (
    AGREEMENT_OUTPUTS,
    DEMO_NAME,
    DEMO_SPEC,
    MIN_AGREEMENT,
    SAMPLE_EXAMPLES,
)
from shipyard.exporter.verifier import VerifierProcess, start_verifier


def run_demo(workdir: Path, *, progress: Progress = NullProgress(),
             launch_verifier: Callable[[], VerifierProcess] = start_verifier) -> dict[str, Any]:
    from shipyard.registry.client import ModelRegistry, RegistryLocation
    from shipyard.repository import open_repository
    from shipyard.steps.canary import first_deployment, offline_canary

    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    paths = _layout(workdir)
    paths["spec"].write_text(yaml.safe_dump(DEMO_SPEC, sort_keys=False))
    location = RegistryLocation.resolve(paths["tracking_uri"])
    registry = ModelRegistry(location)
    repo = open_repository(str(paths["models"]))
    run_id = "shipyard-demo-" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    with progress.step(f"signing keys in {paths['keys']}"):
        _make_keys(paths)

    with progress.step(f"check MLflow at {location.tracking_uri}"):
        registry.check_reachable()
        first_run = _champion(registry) is None
    pipeline = _run_tfx_pipeline(paths, serving_label=STABLE if first_run else None,
                                 progress=progress)
    first = None
    if first_run:
        version = pipeline["registered_model_version"]
        with progress.step(f"first deployment: version {version} becomes stable and champion"):
            # No TF Serving reads the demo's models.config: label steps need not wait for one.
            first = first_deployment(repo, registry, DEMO_NAME, version, file_only=True,
                                     pipeline_run_id=run_id, progress=progress).to_json()
    # Seeded by the newest version: each run's challenger is new, even after a rollback.
    challenger = _register_challenger(paths, location, seed=max(repo.versions(DEMO_NAME)),
                                      launch_verifier=launch_verifier, progress=progress)
    with progress.step(f"write {SAMPLE_EXAMPLES} sample examples"):
        _write_examples(paths["examples"])
    document = {"name": DEMO_NAME, "run_id": run_id, "pipeline": pipeline,
                "first_deployment": first, "challenger": challenger}
    try:
        with progress.step(f"offline canary: version {challenger['version']} against the "
                           "champion on the sample, then promotion"):
            document["canary"] = offline_canary(
                repo, registry, DEMO_NAME, challenger["version"], str(paths["examples"]),
                min_agreement=MIN_AGREEMENT, agreement_outputs=AGREEMENT_OUTPUTS,
                file_only=True, pipeline_run_id=run_id, progress=progress).to_json()
    except GateError as err:  # rolled back: the document says how far it got
        document.update(canary={"promoted": False, "validation": err.document},
                        where=_where(paths))
        raise GateError(str(err), document=document) from None
    from shipyard.steps.status import model_status

    document["champion"] = _champion(registry)
    with progress.step(f"copy champion version {document['champion']} into production "
                       f"({paths['prod']})"):
        document["production"] = _copy_to_production(paths, location, run_id, progress)
    with progress.step("verify every version's signature with model-signing"):
        document["signatures"] = _check_signatures(paths)
    document["where"] = _where(paths)
    document["status"] = model_status(repo, DEMO_NAME, read_aliases=registry.aliases,
                                      read_server=None).to_json()
    return document


def _copy_to_production(paths: dict[str, Any], location: Any, run_id: str,
                        progress: Progress) -> dict[str, Any]:
    """Staging's champion, copied into the production environment under <workdir>/prod."""
    from shipyard.registry.client import RegistryLocation
    from shipyard.steps.copy import CopyRequest, copy_version

    request = CopyRequest(name=DEMO_NAME, alias=CHAMPION, from_repo=str(paths["models"]),
                          to_repo=str(paths["prod_models"]), source=location,
                          destination=RegistryLocation.resolve(paths["prod_tracking_uri"]),
                          reason=f"the demo's promotion of staging's champion ({run_id})",
                          pipeline_run_id=run_id)
    return copy_version(request, progress=progress).to_json()


def _make_keys(paths: dict[str, Any]) -> None:
    """The demo's signing key (ECDSA P-256, as a team would keep in a Secret) and its public
    half (the trust key), made once per workdir."""
    if paths["signing_key"].is_file() and paths["verify_key"].is_file():
        return
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    paths["keys"].mkdir(parents=True, exist_ok=True)
    private = paths["signing_key"].with_suffix(".tmp")
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    paths["verify_key"].write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    os.replace(private, paths["signing_key"])


def _check_signatures(paths: dict[str, Any]) -> dict[str, Any]:
    """Each published version of both environments, checked by model-signing's verifier
    with the demo's trust key: {"key_fingerprint", "staging": {N: problem or None}, ...}."""
    from shipyard.repository import open_repository
    from shipyard.signing.bundle import check_version
    from shipyard.signing.keys import trust_key

    trust = trust_key(paths["verify_key"])
    assert trust is not None
    found: dict[str, Any] = {"key_fingerprint": trust.fingerprint,
                             "verify_key": str(paths["verify_key"])}
    for environment, root in (("staging", paths["models"]), ("production", paths["prod_models"])):
        repo = open_repository(str(root))
        found[environment] = {
            str(version): check_version(Path(repo.version_location(DEMO_NAME, version)),
                                        trust).problem
            for version in repo.versions(DEMO_NAME)}
    return found


def _layout(workdir: Path) -> dict[str, Any]:
    return {"workdir": workdir, "spec": workdir / "spec.yaml",
            "keys": workdir / "keys", "signing_key": workdir / "keys" / "signing-key.pem",
            "verify_key": workdir / "keys" / "verify-key.pem",
            "models": workdir / "models", "tfx": workdir / "tfx",
            "mlflow_db": workdir / "mlflow.db",
            "prod": workdir / "prod", "prod_models": workdir / "prod" / "models",
            "prod_tracking_uri": f"sqlite:///{workdir / 'prod' / 'mlflow.db'}",
            "tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}",
            "examples": workdir / "examples" / "sample.jsonl",
            "challenger": workdir / "challenger"}


def _champion(registry: Any) -> int | None:
    return (registry.aliases(DEMO_NAME) or {}).get(CHAMPION)


def _run_tfx_pipeline(paths: dict[str, Any], *, serving_label: str | None,
                      progress: Progress) -> dict[str, Any]:
    what = "export, verify, register, publish" + (f", label {serving_label}"
                                                  if serving_label else "")
    with progress.step("TFX pipeline (LocalDagRunner, SQLite MLMD): CsvExampleGen, Trainer, "
                       f"{what}"):
        from tfx.orchestration.local.local_dag_runner import LocalDagRunner

        from shipyard.demo.tfx_pipeline import build_pipeline, last_push

        paths["tfx"].mkdir(exist_ok=True)
        LocalDagRunner().run(build_pipeline(
            paths["tfx"], repository=str(paths["models"]),
            tracking_uri=paths["tracking_uri"], model_name=DEMO_NAME,
            serving_label=serving_label, seed=0, sign_key=str(paths["signing_key"])))
        return last_push(paths["tfx"])


def _register_challenger(paths: dict[str, Any], location: Any, *, seed: int,
                         launch_verifier: Callable[[], VerifierProcess],
                         progress: Progress) -> dict[str, Any]:
    from shipyard.core.spec import parse_spec
    from shipyard.signing.keys import signing_key
    from shipyard.steps.export import ExportRequest
    from shipyard.steps.register import register_model

    verifier = launch_verifier()  # its TensorFlow import overlaps the training below
    try:
        with progress.step(f"train a challenger (seed {seed}: other data, other weights)"):
            model_dir = _train_challenger(paths["challenger"], seed=seed)
    except BaseException:
        verifier.close()  # register_model closes it otherwise
        raise
    request = ExportRequest(model=model_dir,
                            spec=parse_spec(DEMO_SPEC, source=str(paths["spec"])),
                            repo=str(paths["models"]), name=DEMO_NAME,
                            sign=signing_key(paths["signing_key"]))
    with progress.step("register the challenger: export, verify, MLflow run and version, "
                       "publish"):
        return register_model(request, location, progress=progress,
                              launch_verifier=lambda: verifier).to_json()


def _train_challenger(root: Path, *, seed: int) -> Path:
    """The pipeline's module file, run on other data (gzipped TFRecords, as ExampleGen
    writes) with TFX's own FnArgs: how a retrained challenger comes about."""
    import shutil

    from tfx.components.trainer.fn_args_utils import FnArgs

    from shipyard.demo import trainer_module
    from shipyard.demo.model import demo_rows, write_demo_tfrecord

    shutil.rmtree(root, ignore_errors=True)  # the previous run's challenger, registered then
    rows = demo_rows(768, seed=seed)
    train = write_demo_tfrecord(root / "Split-train" / "data.gz", rows[:512])
    evaluation = write_demo_tfrecord(root / "Split-eval" / "data.gz", rows[512:])
    model_dir = root / "Format-Serving"
    trainer_module.run_fn(FnArgs(
        train_files=[str(train)], eval_files=[str(evaluation)],
        serving_model_dir=str(model_dir), custom_config={"seed": seed}))
    return model_dir


def _write_examples(path: Path) -> None:
    """The offline canary's sample: JSON rows of the demo's features, which `shipyard
    validate` serializes to tf.Examples with the `serve` endpoint's feature spec."""
    from shipyard.demo.model import sample_examples

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".jsonl.tmp")
    staging.write_text("".join(json.dumps(e) + "\n" for e in sample_examples(SAMPLE_EXAMPLES)))
    os.replace(staging, path)


def _where(paths: dict[str, Any]) -> dict[str, Any]:
    models, tfx = paths["models"], paths["tfx"]
    return {
        "workdir": str(paths["workdir"]),
        "repository": str(models),
        "models_config": str(models / "models.config"),
        "tree": repository_tree(models),
        "mlflow_db": str(paths["mlflow_db"]),
        "mlflow_ui": f"{_mlflow_command()} ui --backend-store-uri {paths['tracking_uri']} "
                     "--port 5000",
        "mlmd": str(tfx / "mlmd.sqlite"),
        "examples": str(paths["examples"]),
        "status": f"shipyard status --repo {models} --name {DEMO_NAME} "
                  f"--tracking-uri {paths['tracking_uri']}",
        "alias_history": f"shipyard alias history {DEMO_NAME} "
                         f"--tracking-uri {paths['tracking_uri']}",
        "production_status": f"shipyard status --repo {paths['prod_models']} --name "
                             f"{DEMO_NAME} --tracking-uri {paths['prod_tracking_uri']}",
    }


def _mlflow_command() -> str:
    """The mlflow executable beside this Python (the project's venv), else `mlflow`."""
    beside = Path(sys.executable).parent / "mlflow"
    return str(beside) if beside.is_file() else "mlflow"


def repository_tree(root: Path, depth: int = 3, newest_versions: int = 2) -> list[str]:
    """The repository's directories and files to `depth` levels, as `tree` prints them. Hidden
    entries (lock files, staging directories) are left out: TF Serving ignores them too. Of
    each model's versions, the newest `newest_versions` are shown and the older ones take one
    line, so that the summary of a demo run again and again stays the same length."""
    lines = [str(root)]

    def walk(directory: Path, prefix: str, level: int) -> None:
        entries = sorted((p for p in directory.iterdir() if not p.name.startswith(".")),
                         key=lambda p: (not p.is_dir(), _version_key(p)))
        versions = [p for p in entries if p.is_dir() and p.name.isdigit()]
        older = versions[:-newest_versions] if len(versions) > newest_versions else []
        if len(older) == 1:
            lines.append(f"{prefix}├── {older[0].name}/ (an older version, not shown)")
        elif older:
            lines.append(f"{prefix}├── {older[0].name}/ ... {older[-1].name}/ ({len(older)} "
                         "older versions, not shown)")
        entries = [p for p in entries if p not in older]
        for index, entry in enumerate(entries):
            last = index == len(entries) - 1
            lines.append(f"{prefix}{'└── ' if last else '├── '}{entry.name}"
                         f"{'/' if entry.is_dir() else ''}")
            if entry.is_dir() and level < depth:
                walk(entry, prefix + ("    " if last else "│   "), level + 1)

    if root.is_dir():
        walk(root, "", 1)
    return lines


def _version_key(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (1 << 30, path.name)
