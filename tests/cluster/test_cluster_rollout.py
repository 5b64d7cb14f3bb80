"""Opt-in end-to-end suite against a real Kubernetes cluster (marker `cluster`).

Runs only when KUBECONFIG points at a reachable cluster (kind, minikube, GKE...) that has the
Gateway API CRDs and a Gateway named `shipyard-gateway`, and a PVC `shipyard-models` in the
namespace given by SHIPYARD_TEST_NAMESPACE (default shipyard-e2e) whose contents are the
directory SHIPYARD_TEST_REPO on this machine (e.g. kind with an extraMount, see docs/rollouts.md).
It installs the base, pushes two versions, rolls one canary to promotion and one to rollback
against the real tensorflow/serving image. Everything else skips with the reason.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def _cluster_or_skip():
    if not os.environ.get("KUBECONFIG"):
        pytest.skip("no cluster: set KUBECONFIG to a test cluster to run the cluster suite")
    if not os.environ.get("SHIPYARD_TEST_REPO"):
        pytest.skip("set SHIPYARD_TEST_REPO to the host directory the cluster mounts as the "
                    "shipyard-models PVC")
    from kubernetes import client, config

    try:
        config.load_kube_config()
        client.VersionApi().get_code(_request_timeout=5)
    except Exception as err:  # any failure to reach it
        pytest.skip(f"KUBECONFIG is set but the cluster is unreachable: {err}")
    return client.ApiClient()


@pytest.fixture(scope="module")
def cluster():
    return _cluster_or_skip()


def test_canary_to_promotion_then_canary_to_rollback(cluster, request, tmp_path):
    from support.rollout_fakes import RecordingAliases

    from shipyard.core.spec import parse_spec
    from shipyard.kube.cluster import KubeCluster
    from shipyard.kube.manifests import ServingTarget, rbac
    from shipyard.kube.observe import ClusterObserver
    from shipyard.rollout import controller, machine
    from shipyard.rollout.policy import parse_policy
    from shipyard.steps.export import ExportRequest, export_model

    # Only now: these start TensorFlow and a verifier, which a skipped run must not pay for.
    models, launcher = request.getfixturevalue("models"), request.getfixturevalue("launcher")
    namespace = os.environ.get("SHIPYARD_TEST_NAMESPACE", "shipyard-e2e")
    repo = Path(os.environ["SHIPYARD_TEST_REPO"])
    spec = parse_spec({"endpoints": [{"name": "serve", "method": "call", "inputs": [
        {"name": "x", "shape": [None, 3], "dtype": "float32"}]}]})
    shutil.rmtree(repo / "e2e", ignore_errors=True)
    versions = [export_model(ExportRequest(model=models.path(kind), spec=spec, repo=repo,
                                           name="e2e"), launch_verifier=launcher).version
                for kind in ("sequential", "sequential_tanh", "sequential")]
    assert versions == [1, 2, 3]
    samples = tmp_path / "samples.jsonl"
    samples.write_text('{"instances": [[0.1, 0.2, 0.3], [1.0, -1.0, 0.5]]}\n')
    policy = parse_policy({
        "steps": [{"weight": 50, "pause_seconds": 20}, {"weight": 100, "pause_seconds": 20}],
        "gates": {"agreement": {"samples": str(samples), "max_abs_diff": 10.0}},
        "check_interval_seconds": 10, "no_data": "pass",
        "serving": {"replicas": 1}})
    target = ServingTarget(name="e2e", namespace=namespace, replicas=1)
    kube = KubeCluster(cluster, target, rollout_timeout_s=300)
    kube.apply(rbac(namespace))
    aliases = RecordingAliases(champion=None)
    ports = controller.Ports(kube, ClusterObserver(cluster, namespace, policy), aliases)

    first = controller.start(ports, "e2e", 1, policy, holder="e2e")
    assert first.phase == machine.PROMOTED and kube.stable_version("e2e") == 1
    promoted = controller.start(ports, "e2e", 2, policy, holder="e2e")
    assert promoted.phase == machine.PROMOTED and kube.stable_version("e2e") == 2
    assert aliases.champion_version == 2

    # Version 3 (relu) and the stable version 2 (tanh) answer differently: a gate that
    # tolerates no difference must roll it back, measured by the real observer.
    strict = parse_policy({**policy.model_dump(), "gates": {"agreement": {
        "samples": str(samples), "max_abs_diff": 1e-9}}})
    ports.observer = ClusterObserver(cluster, namespace, strict)
    rolled_back = controller.start(ports, "e2e", 3, strict, holder="e2e")
    assert rolled_back.phase == machine.ROLLED_BACK
    assert kube.stable_version("e2e") == 2 and aliases.champion_version == 2
