"""A TF Serving pod starting from what shipyard renders: every container of kube/manifests.render
(the k8s/ base, the canary overlay, the gpu overlay, and what `shipyard rollout` applies) is
started in the TF Serving double exactly as the kubelet would start it: the container's `args`
after the image entrypoint's flags, the ConfigMap's files at its mount path and the PVC's
repository at /models (tf_serving_double.cold_start). TF Serving checks version labels before it
loads anything, at start-up too (server_core.cc: ServerCore::ReloadConfig ->
UpdateModelVersionLabelMap before AddModelsViaModelConfigList), so these starts only succeed
because the containers pass --allow_version_labels_for_unavailable_models=true.

The versions are real SavedModels (a tiny tf.Module per version, y = x * version), loaded the way
TF Serving loads them; requests go through the official tensorflow_serving.apis stubs."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from support.scale_models import save_scale_model

from shipyard.kube.manifests import (
    CANARY_EXAMPLE_VERSION,
    CANARY_EXAMPLE_WEIGHT,
    KUSTOMIZE_TARGET,
    ServingTarget,
    render,
)

FLAG = "--allow_version_labels_for_unavailable_models=true"
REFUSED = ("Failed to start server. Error: FAILED_PRECONDITION: Request to assign label to "
           "version {version} of model {name}, which is not currently available for inference")


def rollout_target() -> ServingTarget:
    """The target `shipyard rollout` renders from a policy's `serving:` defaults (cli._ports),
    with a canary deployed as KubeCluster.deploy_canary renders it."""
    from shipyard.rollout.policy import Serving

    serving = Serving().model_dump()
    serving.pop("rollout_timeout_seconds")
    serving.pop("canary_grace_seconds")
    return ServingTarget(name="churn", namespace="ml", stable_version=1, canary_version=2,
                         canary_weight=0, **serving)


# The k8s/ overlays (as unit/test_kube_manifests.py renders them) and the rollout's objects.
TARGETS = {
    "base": KUSTOMIZE_TARGET,
    "canary": replace(KUSTOMIZE_TARGET, canary_version=CANARY_EXAMPLE_VERSION,
                      canary_weight=CANARY_EXAMPLE_WEIGHT),
    "gpu": replace(KUSTOMIZE_TARGET, gpu=True),
    "rollout": rollout_target(),
}
CONTAINERS = [(overlay, track) for overlay, target in TARGETS.items()
              for track in (("stable", "canary") if target.canary_version else ("stable",))]


# ---- the PVC's repository: real SavedModels ---------------------------------------------------

@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """What the PVC `shipyard-models` holds: model/1, model/2 and churn/1, churn/2, version N
    answering y = x * N (so an answer shows which version a label reached)."""
    root = tmp_path_factory.mktemp("pvc-shipyard-models")
    for version in (1, 2):
        save_scale_model(root / "model" / str(version), float(version))
        shutil.copytree(root / "model" / str(version), root / "churn" / str(version))
    return root


# ---- a pod as the kubelet assembles it --------------------------------------------------------

def deployment(objects: list[dict], target: ServingTarget, track: str) -> dict:
    name = target.name if track == "stable" else f"{target.name}-canary"
    return next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == name)


def pod(objects: list[dict], deployment: dict, claims: dict[str, Path],
        root: Path) -> tuple[list[str], dict[str, Path]]:
    """(container args, mounts) for the TF Serving container of `deployment`: each configMap
    volume's data written as files under `root` (the kubelet projects each key as a file), each
    persistentVolumeClaim volume mapped to the host directory `claims` gives for the claim, and
    every volumeMount's container path mapped to its volume's directory."""
    spec = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "tf-serving"]
    volumes: dict[str, Path] = {}
    for volume in spec["volumes"]:
        if "configMap" in volume:
            config_map = next(o for o in objects if o["kind"] == "ConfigMap"
                              and o["metadata"]["name"] == volume["configMap"]["name"])
            directory = root / volume["name"]
            directory.mkdir(parents=True)
            for key, text in config_map["data"].items():
                (directory / key).write_text(text)
            volumes[volume["name"]] = directory
        else:
            volumes[volume["name"]] = claims[volume["persistentVolumeClaim"]["claimName"]]
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    return list(container["args"]), mounts


def served(mounts: dict[str, Path],
           args: list[str]) -> tuple[str, list[int], dict[str, int]]:
    """(model, versions loaded, {label: version}) from the mounted models.config,
    read with TF Serving's protos."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    (path,) = [a.split("=", 1)[1] for a in args if a.startswith("--model_config_file=")]
    mount = next(m for m in mounts if path.startswith(m.rstrip("/") + "/"))
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse((mounts[mount] / path[len(mount):].lstrip("/")).read_text(), config)
    (model,) = config.model_config_list.config
    return model.name, list(model.model_version_policy.specific.versions), dict(
        model.version_labels)


# ---- the official client ---------------------------------------------------------------

def status(address: str, name: str) -> dict[int, str]:
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    with grpc.insecure_channel(address) as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            request, timeout=10)
    state = get_model_status_pb2.ModelVersionStatus.State.Name
    return {s.version: state(s.state) for s in response.model_version_status}


def predict_by_label(address: str, name: str, label: str, x=(1.0, 2.5)):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.version_label = label
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(list(x), dtype=tf.float32))
    with grpc.insecure_channel(address) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=10)


def assert_serving(server, name: str, versions: list[int], labels: dict[str, int]) -> None:
    """Every configured version AVAILABLE, and a Predict by each label answered by its version."""
    assert status(server.address, name) == {v: "AVAILABLE" for v in versions}
    assert labels, "shipyard's configs always label the version they serve"
    for label, version in labels.items():
        response = predict_by_label(server.address, name, label)
        assert response.model_spec.version.value == version
        assert list(response.outputs["y"].float_val) == [1.0 * version, 2.5 * version]


# ---- tests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay,track", CONTAINERS, ids=[f"{o}-{t}" for o, t in CONTAINERS])
def test_every_rendered_container_starts_cold_and_again_after_a_restart(overlay, track,
                                                                        repository, tmp_path):
    from support.tf_serving_double import cold_start

    target = TARGETS[overlay]
    objects = render(target)
    args, mounts = pod(objects, deployment(objects, target, track),
                       {target.pvc: repository}, tmp_path)
    assert FLAG in args  # the exact spelling main.cc defines
    name, versions, labels = served(mounts, args)
    assert (name, labels) == (target.name, {track: versions[0]})
    # The rendered base_path is the container's /models/NAME; only the mount makes it real.
    assert mounts["/models"] == repository

    for start in ("cold start", "pod restart"):  # the restart reads the same files again
        server = cold_start(args, mounts)
        try:
            assert_serving(server, name, versions, labels)
            # The --model_config_file_poll_wait_seconds thread re-reads the file; the labels
            # are unchanged, so the reload is accepted (TF Serving logs nothing).
            assert server.poll_config_file() is None, start
            assert_serving(server, name, versions, labels)
        finally:
            server.stop()


@pytest.mark.parametrize("overlay,track", [("base", "stable"), ("canary", "canary")])
@pytest.mark.parametrize("change", ["flag removed", "flag false", "flag misspelled"])
def test_the_same_pod_without_the_flag_is_refused_with_tf_servings_message(overlay, track,
                                                                          change, repository,
                                                                          tmp_path):
    from support.tf_serving_double import ServerStartError, cold_start

    target = TARGETS[overlay]
    objects = render(target)
    args, mounts = pod(objects, deployment(objects, target, track),
                       {target.pvc: repository}, tmp_path)
    others = [a for a in args if a != FLAG]
    # A misspelled flag is an unknown argument to main.cc: ignored, so the labels are refused.
    args = {"flag removed": others,
            "flag false": [*others, "--allow_version_labels_for_unavailable_models=false"],
            "flag misspelled": [*others, "--allow_version_labels_for_unavailable_model=true"],
            }[change]
    version = target.stable_version if track == "stable" else target.canary_version
    expected = REFUSED.format(version=version, name=target.name)
    with pytest.raises(ServerStartError, match=f"^{expected}$") as refused:
        cold_start(args, mounts)
    assert refused.value.status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]


def test_a_flag_value_main_cannot_read_ends_the_start(repository, tmp_path):
    from support.tf_serving_double import ServerStartError, cold_start

    objects = render(KUSTOMIZE_TARGET)
    args, mounts = pod(objects, deployment(objects, KUSTOMIZE_TARGET, "stable"),
                       {"shipyard-models": repository}, tmp_path)
    args = [a if a != FLAG else "--allow_version_labels_for_unavailable_models=yes" for a in args]
    with pytest.raises(ServerStartError, match=r"^Couldn't interpret value =yes for flag "
                                               r"allow_version_labels_for_unavailable_models\.$"):
        cold_start(args, mounts)


def test_a_pod_without_its_config_mount_cannot_read_the_config(repository):
    from support.tf_serving_double import ServerStartError, cold_start

    objects = render(KUSTOMIZE_TARGET)
    args = deployment(objects, KUSTOMIZE_TARGET, "stable")["spec"]["template"]["spec"][
        "containers"][0]["args"]
    # Only the PVC is mounted: /config/models.config is on no volume, so it does not exist.
    with pytest.raises(ServerStartError, match=r"^Failed to start server\. Error: NOT_FOUND: "
                                               r"/config/models\.config; No such file or "
                                               r"directory$"):
        cold_start(args, {"/models": repository})


def test_a_version_that_fails_to_load_fails_the_start_after_the_labels_pass(tmp_path):
    from support.tf_serving_double import ServerStartError, cold_start

    # The labels pass (the flag), then ConnectAdaptersToManagerAndAwaitModelLoads waits for the
    # version, whose load fails: TF Serving's start ends there, naming the servable.
    pvc = tmp_path / "pvc"
    (pvc / "model" / "1").mkdir(parents=True)
    (pvc / "model" / "1" / "saved_model.pb").write_bytes(b"\x00 not a SavedModel \xff")
    objects = render(KUSTOMIZE_TARGET)
    args, mounts = pod(objects, deployment(objects, KUSTOMIZE_TARGET, "stable"),
                       {"shipyard-models": pvc}, tmp_path / "pod")
    with pytest.raises(ServerStartError, match=r"^Failed to start server\. Error: UNKNOWN: Some "
                                               r"models did not become available: "
                                               r"\{\{name: model version: 1\}, \}$"):
        cold_start(args, mounts, load_retry_interval_s=0.01)


def test_the_flag_allows_a_new_label_but_a_polled_move_still_waits_for_the_load(repository,
                                                                                tmp_path):
    from support.tf_serving_double import cold_start, wait_for_state

    from shipyard.kube.manifests import models_config
    from shipyard.serving.config import ModelServing, parse_config, render_config, with_model

    objects = render(KUSTOMIZE_TARGET)
    args, mounts = pod(objects, deployment(objects, KUSTOMIZE_TARGET, "stable"),
                       {"shipyard-models": repository}, tmp_path)
    config_file = mounts["/config"] / "models.config"
    assert config_file.read_text() == models_config(KUSTOMIZE_TARGET, 1, "stable")

    def write(versions: tuple[int, ...], labels: dict[str, int]) -> None:
        # What a file-only `shipyard push` writes for each of its steps.
        config = with_model(parse_config(""), "model", "/models/model",
                            ModelServing(versions, labels))
        config_file.write_text(render_config(config))

    server = cold_start(args, mounts)
    try:
        # Moving `stable` to 2 in the same config that loads 2 is refused, flag or not: 2 is
        # not AVAILABLE and `stable` already points elsewhere. Nothing changes.
        write((1, 2), {"stable": 2})
        refused = server.poll_config_file()
        assert refused is not None and refused.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert refused.message == ("Request to assign label to version 2 of model model, which "
                                   "is not currently available for inference")
        assert_serving(server, "model", [1], {"stable": 1})
        # A new label on a version not loaded yet is what the flag allows.
        write((1, 2), {"stable": 1, "canary": 2})
        assert server.poll_config_file() is None
        server.poll()  # FileSystemStoragePathSource's next poll aspires version 2
        wait_for_state(server, "model", 2, "AVAILABLE", timeout_s=30)
        # Step two of the push: 2 is AVAILABLE, so the label may move.
        write((1, 2), {"stable": 2, "canary": 2})
        assert server.poll_config_file() is None
        assert_serving(server, "model", [1, 2], {"stable": 2, "canary": 2})
    finally:
        server.stop()
