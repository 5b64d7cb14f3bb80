"""KFP v2 components: export + verify + register (+ label), push, validate, the offline canary,
the copy of a version into another environment, and the rollout on a cluster.

Each is a lightweight component on the shipyard image (`Dockerfile` at the repository root):
its function body only calls the steps (shipyard.steps.ship, .push, .validate, .canary,
.copy, .rollout), which the image has installed, so KFP runs it in that container on a
cluster, and `kfp.local.SubprocessRunner` runs the same code here. `make_components(image)`
builds them for an image; `accelerate(task, kind)` puts a task on GPU or TPU workers.
"""

# (No "from __future__ import annotations": KFP reads the types of component signatures.)

from types import SimpleNamespace
from typing import Any

from kfp import dsl

DEFAULT_IMAGE = "ghcr.io/shipyard-mlops/shipyard:0.1.0"
ACCELERATORS = ("none", "gpu", "tpu")
GPU_TYPE = "nvidia.com/gpu"
TPU_NODE_LABEL = "cloud.google.com/gke-tpu-accelerator"
TPU_TOPOLOGY_LABEL = "cloud.google.com/gke-tpu-topology"


def make_components(image: str = DEFAULT_IMAGE) -> SimpleNamespace:
    @dsl.component(base_image=image)
    def ship(model: dsl.Input[dsl.Model], model_name: str, export_spec: str, repository: str,
             tracking_uri: str, serving_label: str, device: str,
             exported: dsl.Output[dsl.Model], pipeline_run_id: str = "",
             serving_runtime: str = "", sign_key: str = "") -> int:
        """Export, verify (CPU only, and on the serving image's TensorFlow: `serving_runtime`,
        "" for the default, "none" to skip), sign (`sign_key`: a PEM private key's path in the
        container, e.g. a mounted Secret; "" for $SHIPYARD_SIGNING_KEY, else unsigned),
        register in MLflow, publish; label when asked. Pass dsl.PIPELINE_JOB_ID_PLACEHOLDER as
        `pipeline_run_id` to tag the MLflow version."""
        from pathlib import Path

        import yaml

        from shipyard.core.spec import parse_spec
        from shipyard.files.trees import materialize
        from shipyard.registry.client import RegistryLocation
        from shipyard.signing.keys import signing_key
        from shipyard.steps.export import ExportRequest
        from shipyard.steps.ship import ship_model

        source = Path(model.path)
        if source.is_dir() and (source / "model.keras").is_file():
            source = source / "model.keras"
        result = ship_model(
            ExportRequest(model=source, repo=repository, name=model_name,
                          device=device or None,  # "": TensorFlow places it (CPU here)
                          serving_runtime=serving_runtime or None,
                          spec=parse_spec(yaml.safe_load(export_spec), source="export_spec"),
                          sign=signing_key(sign_key or None)),
            RegistryLocation.resolve(tracking_uri or None),
            label=serving_label or None, pipeline_run_id=pipeline_run_id or None)
        materialize(result.registered.path, Path(exported.path))
        exported.metadata.update({"registered_model_version": result.registered.version,
                                  "mlflow_run_id": result.registered.run_id,
                                  "fingerprint": result.registered.fingerprint})
        return result.registered.version

    @dsl.component(base_image=image)
    def push(repository: str, model_name: str, version: int, label: str,
             serving_address: str) -> str:
        """Point a label at a published version (models.config, and the server if given)."""
        import json

        from shipyard.repository import open_repository
        from shipyard.steps.push import push_version

        return json.dumps(push_version(open_repository(repository), model_name, version, label,
                                       serving_address=serving_address or None).to_json())

    @dsl.component(base_image=image)
    def validate(repository: str, model_name: str, version: int, examples: str,
                 against: str, tracking_uri: str, min_agreement: float,
                 agreement_outputs: str = "") -> str:
        """Validation of a version against another one (e.g. the champion); a missed
        gate fails the task. `agreement_outputs`: comma-separated, "" for all outputs."""
        import json

        from shipyard.registry.client import ModelRegistry, RegistryLocation
        from shipyard.repository import open_repository
        from shipyard.steps.validate import ValidateRequest, validate_version_on_examples

        registry = ModelRegistry(RegistryLocation.resolve(tracking_uri or None))
        document = validate_version_on_examples(
            open_repository(repository),
            ValidateRequest(name=model_name, version=version, examples=examples,
                            against=against, min_agreement=min_agreement,
                            agreement_outputs=tuple(o for o in agreement_outputs.split(",")
                                                    if o)),
            read_aliases=registry.aliases, registry=lambda: registry)
        return json.dumps(document.to_json())

    @dsl.component(base_image=image)
    def canary(repository: str, model_name: str, version: int, examples: str,
               tracking_uri: str, min_agreement: float, agreement_outputs: str = "",
               serving_address: str = "", file_only: bool = False,
               pipeline_run_id: str = "") -> str:
        """The offline canary (shipyard.steps.canary): canary label, validation against the
        champion, then promotion, or rollback and a failed task. A model's first version
        becomes stable and champion directly. Label steps wait for TF Serving at
        `serving_address`; `file_only` when no server reads models.config. Pass
        dsl.PIPELINE_JOB_ID_PLACEHOLDER as `pipeline_run_id` to record the run."""
        import json

        from shipyard.core.vocabulary import CHAMPION
        from shipyard.registry.client import ModelRegistry, RegistryLocation
        from shipyard.repository import open_repository
        from shipyard.steps.canary import first_deployment, offline_canary

        registry = ModelRegistry(RegistryLocation.resolve(tracking_uri or None))
        repo = open_repository(repository)
        where = {"serving_address": serving_address or None, "file_only": file_only,
                 "pipeline_run_id": pipeline_run_id or None}
        if (registry.aliases(model_name) or {}).get(CHAMPION) is None:
            return json.dumps(first_deployment(repo, registry, model_name, version,
                                               **where).to_json())
        return json.dumps(offline_canary(
            repo, registry, model_name, version, examples, min_agreement=min_agreement,
            agreement_outputs=tuple(o for o in agreement_outputs.split(",") if o),
            **where).to_json())

    @dsl.component(base_image=image)
    def copy(model_name: str, from_repo: str, to_repo: str, from_tracking_uri: str,
             to_tracking_uri: str, copied: dsl.Output[dsl.Model], version: int = 0,
             alias: str = "", from_registry_uri: str = "", to_registry_uri: str = "",
             to_name: str = "", to_alias: str = "candidate", reason: str = "",
             pipeline_run_id: str = "", serving_runtime: str = "",
             allow_breaking: bool = False) -> int:
        """`shipyard copy` (shipyard.steps.copy): a published version of `model_name` from
        one environment (repository + MLflow) into another, byte for byte, proven there and
        recorded with its lineage (`shipyard.copied_from`); `to_alias` moves in the
        destination. The source: `version` N, or (0) `alias` in the source registry.
        URIs: "" for the default, as the command's options; `serving_runtime` as for `ship`.
        Pass dsl.PIPELINE_JOB_ID_PLACEHOLDER as `pipeline_run_id` to record the run. Returns
        the destination's version number; `copied` holds its files, and in its metadata the
        version, MLflow run, fingerprint, lineage and whether it was reused."""
        from pathlib import Path

        from shipyard.files.trees import materialize
        from shipyard.registry.client import RegistryLocation
        from shipyard.steps.copy import CopyRequest, copy_version

        result = copy_version(CopyRequest(
            name=model_name, from_repo=from_repo, to_repo=to_repo,
            version=version or None, alias=alias or None,
            source=RegistryLocation.resolve(from_tracking_uri or None,
                                            from_registry_uri or None),
            destination=RegistryLocation.resolve(to_tracking_uri or None,
                                                 to_registry_uri or None),
            to_name=to_name or None, move_alias=to_alias, reason=reason or None,
            pipeline_run_id=pipeline_run_id or None,
            serving_runtime=serving_runtime or None, allow_breaking=allow_breaking))
        registered = result.registered
        materialize(registered.path, Path(copied.path))
        copied.metadata.update({"registered_model_name": registered.name,
                                "registered_model_version": registered.version,
                                "mlflow_run_id": registered.run_id,
                                "fingerprint": registered.fingerprint,
                                "copied_from": result.copied_from,
                                "reused": registered.reused})
        return registered.version

    @dsl.component(base_image=image)
    def rollout(model_name: str, version: int, policy: str, namespace: str,
                tracking_uri: str, registry_uri: str = "") -> str:
        """The canary rollout on the cluster the pipeline runs in (its service account needs
        the shipyard-pusher Role), as `shipyard rollout start` runs it (shipyard.steps.rollout);
        returns the final state as that command's --json prints it. A rollout that does not
        end promoted, or cannot run, fails the task with a RuntimeError giving the command's
        exit code (8 rolled back or aborted, 9 another rollout holds the model, 2 bad policy,
        ...) and its message."""
        import json
        import os
        import tempfile

        from shipyard.core.errors import ShipyardError
        from shipyard.rollout.policy import load_policy
        from shipyard.steps.rollout import require_promoted, start_rollout

        # Read from a file as `rollout start --policy` reads it: the same checks and messages.
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(policy)
        try:
            state = require_promoted(start_rollout(
                model_name, version, load_policy(f.name), namespace=namespace,
                tracking_uri=tracking_uri or None, registry_uri=registry_uri or None))
        except ShipyardError as err:
            raise RuntimeError(f"shipyard rollout start failed (exit {err.exit_code}): "
                               f"error: {err}") from err
        finally:
            os.unlink(f.name)
        return json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n"

    return SimpleNamespace(ship=ship, push=push, validate=validate, canary=canary,
                           copy=copy, rollout=rollout)


def accelerate(task: Any, kind: str, *, gpu_type: str = GPU_TYPE, count: int = 1,
               tpu: str = "tpu-v5-lite-podslice", tpu_topology: str = "1x1") -> Any:
    """Runs `task` on GPU workers (accelerator type and limit) or TPU workers (GKE's node
    selectors and the TPU toleration, through kfp-kubernetes); "none" leaves it on CPU."""
    if kind not in ACCELERATORS:
        raise ValueError(f"accelerator: expected one of {', '.join(ACCELERATORS)}, got {kind!r}")
    if kind == "gpu":
        task.set_accelerator_type(gpu_type).set_accelerator_limit(count)
    elif kind == "tpu":
        from kfp import kubernetes

        kubernetes.add_node_selector(task, label_key=TPU_NODE_LABEL, label_value=tpu)
        kubernetes.add_node_selector(task, label_key=TPU_TOPOLOGY_LABEL, label_value=tpu_topology)
        kubernetes.add_toleration(task, key="google.com/tpu", operator="Exists",
                                  effect="NoSchedule")
        task.set_accelerator_type("google.com/tpu").set_accelerator_limit(count)
    return task
