"""The canary rollout on a cluster: the controller's adapters wired together, and the rollout
started, read, asked to promote or abort, or approved (what `shipyard rollout` and the KFP
rollout component both call).

The adapters are the cluster and its metrics (kube.cluster, kube.observe) and the MLflow
registry, whose alias moves go through the audited alias path (shipyard.steps.alias). Every
function takes a `ports` factory, `(name, namespace, policy) -> Ports`, so tests run them on
fakes; `policy` is None when the command acts on the stored rollout (status, promote, abort).

With a trust key (the `verify_key` given, else the policy's `verify_key`, else
$SHIPYARD_VERIFY_KEY), `start_rollout` checks the version as `push` does, its signature
included (steps.push.check_published), before it connects to the cluster: a version that
fails is refused (exit 4) and nothing is deployed. The check reads the version's files from
the model repository: `repo`, else the policy's serving.model_root when it is an object
store's URL (serving.pvc null). A repository on a PVC is not readable from here, so with a
trust key and no `repo` the rollout is refused (exit 2) rather than deployed unchecked.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

from shipyard.core.claims import lease_holder, lease_holder_gone
from shipyard.core.errors import GateError, UsageError
from shipyard.core.names import validate_rollout_name, validate_version
from shipyard.core.vocabulary import CANARY_ALIAS as CANARY
from shipyard.core.vocabulary import CHAMPION
from shipyard.rollout import controller
from shipyard.rollout.controller import Ports
from shipyard.rollout.machine import PROMOTED, RolloutState
from shipyard.rollout.policy import RolloutPolicy
from shipyard.steps.alias import clear_alias, move_alias

PortsFactory = Callable[[str, str, RolloutPolicy | None], Ports]


class RegistryAliases:
    """The controller's Aliases port on the MLflow registry. `registry` is a ModelRegistry,
    or None to connect to `location` (tracking URI, registry URI) at the first alias read or
    move: reading a rollout's state never needs MLflow."""

    def __init__(self, registry: Any, pipeline_run_id: str | None = None, *,
                 location: tuple[str | None, str | None] = (None, None)):
        self._registry = registry
        self._location = location
        self.pipeline_run_id = pipeline_run_id

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from shipyard.registry.client import ModelRegistry, RegistryLocation

            self._registry = ModelRegistry(RegistryLocation.resolve(*self._location))
        return self._registry

    def champion(self, name: str) -> int | None:
        return (self.registry.aliases(name) or {}).get(CHAMPION)

    def set_canary(self, name: str, version: int, reason: str) -> None:
        move_alias(self.registry, name, CANARY, version, reason=reason,
                   pipeline_run_id=self.pipeline_run_id, by_rollout=True)

    def clear_canary(self, name: str, reason: str, gates: dict[str, Any]) -> None:
        clear_alias(self.registry, name, CANARY, reason=reason,
                    pipeline_run_id=self.pipeline_run_id, gates=gates)

    def move_champion(self, name: str, version: int, reason: str,
                      gates: dict[str, Any]) -> None:
        move_alias(self.registry, name, CHAMPION, version, reason=reason,
                   pipeline_run_id=self.pipeline_run_id, by_rollout=True, gates=gates)


class _NoGates:
    """The Observer of a stored rollout: promote, abort and status decide without gates."""

    def observe(self, name: str, state: Any) -> Any:
        raise RuntimeError(f"{name}: the stored rollout's ports observe nothing; "
                           "start the rollout with its policy to check gates")


def cluster_ports(name: str, namespace: str, policy: RolloutPolicy | None = None,
                  tracking_uri: str | None = None, registry_uri: str | None = None) -> Ports:
    """The controller's adapters: the cluster in use (KUBECONFIG, or the pod's service
    account), its metrics and the MLflow registry. With a `policy` the tracks are deployed
    with its serving settings and its gates are observed; without one (a stored rollout),
    the serving settings are those stored with the rollout of NAME, read first."""
    from shipyard.kube.cluster import KubeCluster, connect
    from shipyard.kube.manifests import ServingTarget
    from shipyard.kube.observe import ClusterObserver
    from shipyard.rollout.policy import Serving

    api = connect()
    observer: Any
    if policy is None:
        stored = KubeCluster(api, ServingTarget(name=name, namespace=namespace)).load_state(name)
        serving = Serving.model_validate((stored or {}).get("settings") or {})
        observer = _NoGates()
    else:
        serving, observer = policy.serving, ClusterObserver(api, namespace, policy)
    settings = serving.model_dump()
    timeout = settings.pop("rollout_timeout_seconds")
    grace = settings.pop("canary_grace_seconds")
    target = ServingTarget(name=name, namespace=namespace, **settings)
    return Ports(KubeCluster(api, target, rollout_timeout_s=timeout, canary_grace_s=grace,
                             holder_is_dead=holder_is_dead), observer,
                 RegistryAliases(None, location=(tracking_uri, registry_uri)))


def holder() -> str:
    """Who holds the model's Lease: user@host:pid, with what tells a killed holder from a
    live one on the same host (core.claims.lease_holder)."""
    import socket

    from shipyard.registry.client import current_user
    from shipyard.steps.versions import _namespace, _start_time

    return lease_holder(current_user(), socket.gethostname(), os.getpid(),
                        _start_time(os.getpid()), _namespace())


def holder_is_dead(identity: str) -> bool:
    """Whether the Lease's holder is known to be gone (same host, its process ended)."""
    from shipyard.steps.versions import _namespace, _start_time

    return lease_holder_gone(identity, _namespace(), _start_time)


def _factory(ports: PortsFactory | None, tracking_uri: str | None,
             registry_uri: str | None) -> PortsFactory:
    return ports or functools.partial(cluster_ports, tracking_uri=tracking_uri,
                                      registry_uri=registry_uri)


def start_rollout(name: str, version: int, policy: RolloutPolicy, *,
                  namespace: str = "shipyard", tracking_uri: str | None = None,
                  registry_uri: str | None = None, lease_wait_s: float = 0.0,
                  on_change: Callable[[RolloutState], None] | None = None,
                  ports: PortsFactory | None = None,
                  notify: controller.Notify | None = None,
                  verify_key: str | None = None,
                  repo: str | None = None) -> RolloutState:
    """Rolls version N of NAME out to its end (promoted, rolled back or aborted), or resumes
    the stored rollout of that version; `require_promoted` turns another end into an error.
    `notify(event type, data)` hears each change once it is stored (rollout/events.py).
    `verify_key`, `repo`: the signature check before anything is deployed (module
    docstring)."""
    validate_rollout_name(name)
    validate_version(version)
    verify_before_deploy(name, version, policy, verify_key, repo)
    made = _factory(ports, tracking_uri, registry_uri)(name, namespace, policy)
    made.notify = notify
    return controller.start(made, name, version, policy, holder=holder(),
                            lease_wait_s=lease_wait_s, on_change=on_change)


def verify_before_deploy(name: str, version: int, policy: RolloutPolicy,
                         verify_key: str | None, repo: str | None) -> None:
    """With a trust key, version N must be published, intact and signed with it (as `push`
    checks it) before the rollout deploys anything; without one, nothing is checked here."""
    from shipyard.signing.keys import trust_key

    trust = trust_key(verify_key or policy.verify_key)
    if trust is None:
        return
    location = repo or rollout_repository(policy)
    if location is None:
        raise UsageError(
            f"repo: a trust key is set ({trust.fingerprint}, {trust.path}), so version "
            f"{version} of {name} must be verified before it is deployed, but its files are "
            f"on the PVC {policy.serving.pvc!r}, which this command cannot read: pass --repo "
            "with the repository the PVC holds (a path or an fsspec URL). Nothing was "
            "deployed", param="repo")
    from shipyard.repository import open_repository
    from shipyard.steps.push import check_published

    check_published(open_repository(location), name, version, trust=trust)


def rollout_repository(policy: RolloutPolicy) -> str | None:
    """The model repository a rollout's versions are read from, when this process can read
    it: serving.model_root when the tracks read an object store (no PVC)."""
    serving = policy.serving
    return serving.model_root if serving.pvc is None and "://" in serving.model_root else None


def require_promoted(state: RolloutState) -> RolloutState:
    """A rollout that ended other than promoted is a GateError (exit 8)."""
    if state.phase != PROMOTED:
        raise GateError(f"the rollout of {state.name} version {state.version} ended "
                        f"{state.phase}: {state.reason}")
    return state


def rollout_status(name: str, namespace: str = "shipyard", *,
                   ports: PortsFactory | None = None) -> RolloutState:
    """The current (or last) rollout of NAME, as stored in the cluster."""
    state = controller.current((ports or cluster_ports)(name, namespace, None), name)
    if state is None:
        raise UsageError(f"name {name}: no rollout of {name} is recorded in namespace "
                         f"{namespace}", param="name")
    return state


def request_rollout(name: str, namespace: str, what: str, reason: str | None, *,
                    tracking_uri: str | None = None, registry_uri: str | None = None,
                    lease_wait_s: float = 0.0,
                    ports: PortsFactory | None = None,
                    notify: controller.Notify | None = None) -> RolloutState:
    """`what` ("promote" or "abort") for the rollout of NAME in progress: stored for its
    controller, or carried out here once no controller holds the Lease (controller.request;
    `notify` then hears the ending, as the controller's own would)."""
    made = _factory(ports, tracking_uri, registry_uri)(name, namespace, None)
    made.notify = notify
    return controller.request(made, name, what, reason, holder=holder(),
                              lease_wait_s=lease_wait_s, by=requester())


def approve_rollout(name: str, namespace: str, reason: str, *,
                    ports: PortsFactory | None = None) -> RolloutState:
    """`rollout approve`: the approval the rollout of NAME waits for, stored for its
    controller (controller.approve), with who gave it."""
    validate_rollout_name(name)
    if not reason.strip():
        raise UsageError("reason: say why the step is approved (it is recorded with the "
                         "champion move)", param="reason")
    return controller.approve((ports or cluster_ports)(name, namespace, None), name, reason,
                              by=requester())


def requester() -> str:
    """Who asks for a promotion, abort or approval: user@host, recorded in the audit."""
    import socket

    from shipyard.registry.client import current_user

    return f"{current_user()}@{socket.gethostname()}"
