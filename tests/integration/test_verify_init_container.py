"""The signature check of TF Serving's pods (kube/verify.py), run for real.

1. The rendered init container's command line, run as a process on a version signed by
   shipyard.signing.bundle.sign_version and on versions changed after signing: its exit code
   is what the kubelet sees (0: TF Serving starts; anything else: the pod stays in Init).
   The version and the key sit where the container's volumeMounts put them: each argument
   under a mountPath is read from the directory mounted there, as the kubelet's mounts do;
   every other argument is the rendered one, `python` included (found on PATH).
2. On the Kubernetes API double: a canary whose pod's check keeps failing
   (Init:CrashLoopBackOff) fails deploy_canary, naming the pod, the init container and what
   model-signing said; the canary gets no route.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from support.kube_api_double import KubeApiDouble

from shipyard.core.errors import ClusterError
from shipyard.core.manifest import SIGNATURE_PATH
from shipyard.kube.cluster import KubeCluster
from shipyard.kube.manifests import ServingTarget, render
from shipyard.kube.verify import INIT_CONTAINER, KEY_MOUNT
from shipyard.signing.bundle import check_version, sign_version
from shipyard.signing.keys import signing_key, trust_key

NS = "shipyard"
TARGET = ServingTarget(name="m", namespace=NS, stable_version=1, canary_version=3,
                       verify_key_secret="shipyard-verify-key")
VARIABLES = "variables/variables.data-00000-of-00001"


def key_pair(directory: Path) -> tuple[Path, Path]:
    """An ECDSA P-256 key pair as PEM files: (private, public)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / "private.pem", directory / "public.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def signed_version(models: Path, key: Path) -> Path:
    """A small version directory of model `m` (the files a shipyard version has), signed."""
    version = models / "m" / "3"
    (version / "variables").mkdir(parents=True)
    (version / "assets.extra").mkdir()
    (version / "saved_model.pb").write_bytes(b"\x08\x01saved model")
    (version / VARIABLES).write_bytes(bytes(range(256)) * 8)
    (version / "variables/variables.index").write_bytes(b"index")
    (version / "assets.extra/tf_serving_warmup_requests").write_bytes(b"warmup")
    (version / "shipyard.json").write_text('{"format": 1}\n')
    sign_version(version, signing_key(key))
    return version


def canary_init_container() -> dict:
    deployment = next(o for o in render(TARGET) if o["kind"] == "Deployment"
                      and o["metadata"]["name"] == "m-canary")
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    return init


def run_check(init: dict, mounts: dict[str, Path]) -> subprocess.CompletedProcess:
    """The init container's command, with its volumeMounts' paths on the directories mounted
    there, as a process in this environment (shipyard's, model-signing installed)."""
    mounted = {m["mountPath"]: mounts[m["mountPath"]] for m in init["volumeMounts"]}

    def on_host(argument: str) -> str:
        for mount_path, directory in mounted.items():
            if argument == mount_path or argument.startswith(mount_path + "/"):
                return str(directory) + argument[len(mount_path):]
        return argument

    argv = [on_host(a) for a in init["command"]]
    assert argv[0] == "python" and argv != init["command"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120,
                          cwd="/")


def change(case: str, version: Path, keys: Path) -> None:
    if case == "a variable file changed":
        data = bytearray((version / VARIABLES).read_bytes())
        data[100] ^= 1
        (version / VARIABLES).write_bytes(bytes(data))
    elif case == "the manifest changed":
        (version / "shipyard.json").write_text('{"format": 2}\n')
    elif case == "a file added":
        (version / "assets.extra/extra.txt").write_text("added\n")
    elif case == "a git file added (the CLI ignores these unless told not to)":
        (version / ".gitattributes").write_text("* binary\n")
    elif case == "a file removed":
        (version / "variables/variables.index").unlink()
    elif case == "unsigned":
        (version / SIGNATURE_PATH).unlink()
    elif case == "signed with another key":
        other, _ = key_pair(keys / "other")
        sign_version(version, signing_key(other))


@pytest.mark.parametrize(("case", "said"), [
    ("signed", None),
    ("a variable file changed", f"Hash mismatch for '{VARIABLES}'"),
    ("the manifest changed", "Hash mismatch for 'shipyard.json'"),
    ("a file added", "Extra files found in model '3': assets.extra/extra.txt"),
    ("a git file added (the CLI ignores these unless told not to)",
     "Extra files found in model '3': .gitattributes"),
    ("a file removed", "Missing files in model '3': variables/variables.index"),
    ("unsigned", "model.sig"),
    ("signed with another key", "Verification failed"),
])
def test_the_init_containers_command_passes_only_the_version_as_signed(tmp_path, case, said):
    private, public = key_pair(tmp_path / "keys")
    models = tmp_path / "pvc"
    version = signed_version(models, private)
    key_dir = tmp_path / "secret"  # the Secret's item, as the volume's items[].path names it
    key_dir.mkdir()
    (key_dir / "verify_key.pem").write_bytes(public.read_bytes())
    change(case, version, tmp_path / "keys")
    init = canary_init_container()
    assert init["command"][5] == "/models/m/3"  # the canary's version, under the PVC's mount
    done = run_check(init, {"/models": models, KEY_MOUNT: key_dir})
    # shipyard's own check (model-signing's API) gives the same verdict.
    assert check_version(version, trust_key(public)).ok is (said is None)
    if said is None:
        assert done.returncode == 0, done.stderr
        assert "Verification succeeded" in done.stdout
    else:
        assert done.returncode != 0, done.stdout  # the kubelet keeps TF Serving from starting
        assert "Verification failed" in done.stderr and said in done.stderr, done.stderr


# --- on the Kubernetes API double -------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now, self.on_sleep = 0.0, None

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        if self.on_sleep is not None:
            self.on_sleep()
        self.now += seconds


def test_a_canary_whose_check_fails_never_becomes_ready_and_fails_the_rollout():
    clock = FakeClock()
    with KubeApiDouble(namespace=NS) as double:
        api = double.api_client(retries=False)
        kube = KubeCluster(api, ServingTarget(name="m", namespace=NS,
                                              verify_key_secret="shipyard-verify-key"),
                           rollout_timeout_s=60, canary_grace_s=0, sleep=clock.sleep,
                           clock=clock.monotonic)
        kube.promote_stable("m", 1)  # the stable track serves version 1 (it verified)
        said = ("Verification failed with error: Signature mismatch: [\"Hash mismatch for "
                f"'{VARIABLES}': Expected 'Digest(...)', Actual 'Digest(...)'\"]")
        double.deployment_behaviour("m-canary", None)
        clock.on_sleep = lambda: double.get("Pod", "m-canary-init") or double.init_crash_loop(
            "m-canary", message=said)
        with pytest.raises(ClusterError) as raised:
            kube.deploy_canary("m", 3)
        api.close()
        message = str(raised.value)
        (pod,) = [p for p in double.list("Pod") if "initContainerStatuses" in p["status"]]
        assert (f"Deployment {NS}/m-canary: pod {pod['metadata']['name']} is "
                f"Init:CrashLoopBackOff: init container {INIT_CONTAINER} failed") in message
        assert f"last exit code 1): {said[:60]}" in message and VARIABLES in message
        assert f"kubectl logs {pod['metadata']['name']} -c {INIT_CONTAINER}" in message
        assert clock.now < 60  # at once, not after the rollout's timeout
        # The pod the kubelet reports runs the check on version 3 and never became ready.
        assert pod["spec"]["initContainers"][0]["command"][5] == "/models/m/3"
        assert {"type": "Ready", "status": "False", "reason": "ContainersNotReady"} in pod[
            "status"]["conditions"]
        assert pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == \
            "PodInitializing"
        # No route sends it traffic; the stable Deployment is as it was, checked as well.
        assert double.get("HTTPRoute", "m") is None
        stable = double.get("Deployment", "m")
        assert stable["status"]["availableReplicas"] == 2
        assert stable["spec"]["template"]["spec"]["initContainers"][0]["command"][5] == \
            "/models/m/1"
