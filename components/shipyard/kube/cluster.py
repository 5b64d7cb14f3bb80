"""The rollout controller's cluster interface on a real Kubernetes cluster.

The only module importing the kubernetes client. Objects come from kube.manifests (the same
code that writes k8s/) and are applied with server-side apply, field manager `shipyard`.
Deployments are waited for with a bounded timeout. One coordination.k8s.io Lease per model
(`shipyard-rollout-<name>`) is held, and renewed in the background, for a whole rollout. The
rollout's state lives in the ConfigMap `shipyard-rollout-<name>` (key state.json).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
import time
from dataclasses import replace
from typing import Any, Iterator

from shipyard.core.errors import LeaseHeldError, ShipyardError
from shipyard.core.vocabulary import CANARY, STABLE
from shipyard.kube.manifests import FIELD_MANAGER, ServingTarget, render, route

log = logging.getLogger(__name__)
LEASE_SECONDS = 60
RENEW_EVERY_S = 20
STATE_KEY = "state.json"
REQUEST_KEY = "request.json"


class HeldLease:
    """The controller checks it before every action: once renewal failed, it stops."""

    def __init__(self, name: str):
        self.name = name
        self.lost = threading.Event()
        self.reason = ""

    def lose(self, reason: str) -> None:
        self.reason = reason
        self.lost.set()
        log.error("%s", reason)

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseHeldError(self.reason)


def connect() -> Any:
    """An API client from KUBECONFIG / ~/.kube/config, or the pod's service account."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        config.load_kube_config()
    except (ConfigException, FileNotFoundError, TypeError):
        try:
            config.load_incluster_config()
        except ConfigException:
            raise ShipyardError(
                "no Kubernetes cluster configured: set KUBECONFIG (or ~/.kube/config), or run "
                "inside a pod with the shipyard-pusher service account") from None
    return client.ApiClient()


class KubeCluster:
    def __init__(self, api: Any, target: ServingTarget, *, rollout_timeout_s: float = 600):
        from kubernetes import client, dynamic

        self.api = api
        self.target = target
        self.namespace = target.namespace
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.leases = client.CoordinationV1Api(api)
        self.dynamic = dynamic.DynamicClient(api)
        self.rollout_timeout_s = rollout_timeout_s

    # --- objects ------------------------------------------------------------------------
    def apply(self, objects: list[dict[str, Any]]) -> None:
        for obj in objects:
            resource = self.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            self.dynamic.server_side_apply(resource, body=obj, field_manager=FIELD_MANAGER,
                                           force_conflicts=True)

    def _target(self, name: str, **changes: Any) -> ServingTarget:
        return replace(self.target, name=name, **changes)

    def stable_version(self, name: str) -> int | None:
        from kubernetes.client.exceptions import ApiException

        try:
            deployment = self.apps.read_namespaced_deployment(name, self.namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        version = (deployment.spec.template.metadata.annotations or {}).get(
            "shipyard.dev/version")
        return int(version) if version else None

    def deploy_canary(self, name: str, version: int) -> None:
        target = self._target(name, canary_version=version, canary_weight=0,
                              stable_version=self.stable_version(name) or version)
        canary = [o for o in render(target, with_rbac=False)
                  if o["metadata"]["labels"].get("shipyard.dev/track") == CANARY]
        self.apply(canary)
        self.wait_for_deployment(f"{name}-canary")
        self.apply([route(target)])

    def set_weight(self, name: str, weight: int) -> None:
        target = self._target(name, canary_weight=weight)
        routed = route(target)
        if weight == 0 and not self._exists("Deployment", f"{name}-canary"):
            routed["spec"]["rules"][0]["backendRefs"] = routed["spec"]["rules"][0][
                "backendRefs"][:1]  # the canary's Service is gone: stable only
        self.apply([routed])

    def promote_stable(self, name: str, version: int) -> None:
        target = self._target(name, stable_version=version)
        stable = [o for o in render(target, with_rbac=False)
                  if o["metadata"]["labels"].get("shipyard.dev/track") == STABLE]
        self.apply(stable)
        self.wait_for_deployment(name)

    def remove_canary(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        target = self._target(name, canary_weight=0)
        routed = route(target)
        routed["spec"]["rules"][0]["backendRefs"] = routed["spec"]["rules"][0]["backendRefs"][:1]
        self.apply([routed])
        selector = (f"app.kubernetes.io/instance={name},shipyard.dev/track=canary,"
                    f"app.kubernetes.io/managed-by={FIELD_MANAGER}")
        for kind, api_version in (("Deployment", "apps/v1"), ("Service", "v1"),
                                  ("ConfigMap", "v1")):
            resource = self.dynamic.resources.get(api_version=api_version, kind=kind)
            for item in resource.get(namespace=self.namespace, label_selector=selector).items:
                try:
                    resource.delete(name=item.metadata.name, namespace=self.namespace)
                except ApiException as err:
                    if err.status != 404:
                        raise

    def _exists(self, kind: str, name: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        resource = self.dynamic.resources.get(api_version="apps/v1" if kind == "Deployment"
                                              else "v1", kind=kind)
        try:
            resource.get(name=name, namespace=self.namespace)
            return True
        except ApiException as err:
            if err.status == 404:
                return False
            raise

    def wait_for_deployment(self, name: str) -> None:
        """Until every replica runs the current template and is ready, or the timeout."""
        deadline = time.monotonic() + self.rollout_timeout_s
        while True:
            d = self.apps.read_namespaced_deployment(name, self.namespace)
            status, want = d.status, d.spec.replicas or 0
            if ((status.observed_generation or 0) >= d.metadata.generation
                    and (status.updated_replicas or 0) == want
                    and (status.available_replicas or 0) == want
                    and (status.replicas or 0) == want):
                return
            if time.monotonic() > deadline:
                raise ShipyardError(
                    f"Deployment {self.namespace}/{name} did not finish rolling out within "
                    f"{self.rollout_timeout_s:g} s ({status.available_replicas or 0}/{want} "
                    "available); check `kubectl describe deployment` and the pods' logs "
                    "(a version that fails to load never becomes ready)")
            time.sleep(2)

    # --- rollout state ------------------------------------------------------------------
    def _state_name(self, name: str) -> str:
        return f"shipyard-rollout-{name}"

    def load_state(self, name: str) -> dict[str, Any] | None:
        return self._load_json(self._state_name(name), STATE_KEY)

    def save_state(self, name: str, state: dict[str, Any]) -> None:
        self._save_json(self._state_name(name), name, STATE_KEY, state)

    # Requests live in their own ConfigMap, written only by `rollout promote|abort`, so a
    # controller saving its state can never overwrite one.
    def load_request(self, name: str) -> dict[str, Any] | None:
        return self._load_json(f"{self._state_name(name)}-request", REQUEST_KEY)

    def save_request(self, name: str, request: dict[str, Any]) -> None:
        self._save_json(f"{self._state_name(name)}-request", name, REQUEST_KEY, request)

    def _load_json(self, config_map: str, key: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            found = self.core.read_namespaced_config_map(config_map, self.namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        text = (found.data or {}).get(key)
        return json.loads(text) if text else None

    def _save_json(self, config_map: str, name: str, key: str, data: dict[str, Any]) -> None:
        self.apply([{"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": config_map, "namespace": self.namespace,
                                  "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER,
                                             "app.kubernetes.io/instance": name}},
                     "data": {key: json.dumps(data, sort_keys=True)}}])

    # --- the Lease ----------------------------------------------------------------------
    @contextlib.contextmanager
    def lease(self, name: str, holder: str, wait_s: float) -> Iterator[HeldLease]:
        lease_name = f"shipyard-rollout-{name}"
        deadline = time.monotonic() + wait_s
        while not self._try_acquire(lease_name, holder):
            current = self.leases.read_namespaced_lease(lease_name, self.namespace).spec
            if time.monotonic() >= deadline:
                raise LeaseHeldError(
                    f"a rollout of {name} is held by {current.holder_identity} (Lease "
                    f"{self.namespace}/{lease_name}, renewed {current.renew_time}, expires "
                    f"{LEASE_SECONDS} s after that); wait for it to finish, or pass "
                    "--lease-wait SECONDS to wait for it")
            time.sleep(min(5.0, max(deadline - time.monotonic(), 0.1)))
        handle = HeldLease(lease_name)
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(handle, holder, stop),
                                   daemon=True)
        renewer.start()
        try:
            yield handle
        finally:
            stop.set()
            renewer.join()
            if not handle.lost.is_set():
                self._release(lease_name, holder)

    def _try_acquire(self, lease_name: str, holder: str) -> bool:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        now = dt.datetime.now(dt.UTC)
        spec = client.V1LeaseSpec(holder_identity=holder, lease_duration_seconds=LEASE_SECONDS,
                                  acquire_time=now, renew_time=now)
        try:
            existing = self.leases.read_namespaced_lease(lease_name, self.namespace)
        except ApiException as err:
            if err.status != 404:
                raise
            body = client.V1Lease(metadata=client.V1ObjectMeta(name=lease_name), spec=spec)
            try:
                self.leases.create_namespaced_lease(self.namespace, body)
                return True
            except ApiException as create_err:
                if create_err.status == 409:  # someone created it first
                    return False
                raise
        held = existing.spec
        expired = (held.renew_time is None or held.holder_identity is None
                   or now - held.renew_time > dt.timedelta(
                       seconds=held.lease_duration_seconds or LEASE_SECONDS))
        if held.holder_identity not in (None, holder) and not expired:
            return False
        existing.spec = spec  # replace with resourceVersion: a concurrent taker gets 409
        try:
            self.leases.replace_namespaced_lease(lease_name, self.namespace, existing)
            return True
        except ApiException as err:
            if err.status == 409:
                return False
            raise

    def _renew(self, handle: HeldLease, holder: str, stop: threading.Event) -> None:
        last_renewed = time.monotonic()
        while not stop.wait(RENEW_EVERY_S):
            try:
                lease = self.leases.read_namespaced_lease(handle.name, self.namespace)
                if lease.spec.holder_identity != holder:
                    handle.lose(f"lost the Lease {handle.name} to "
                                f"{lease.spec.holder_identity}")
                    return
                lease.spec.renew_time = dt.datetime.now(dt.UTC)
                self.leases.replace_namespaced_lease(handle.name, self.namespace, lease)
                last_renewed = time.monotonic()
            except Exception as err:  # keep trying while the Lease is still ours
                log.warning("could not renew the Lease %s: %s", handle.name, err)
                if time.monotonic() - last_renewed > LEASE_SECONDS - RENEW_EVERY_S:
                    handle.lose(f"could not renew the Lease {handle.name} for "
                                f"{LEASE_SECONDS - RENEW_EVERY_S} s; another controller may "
                                "hold it now")
                    return

    def _release(self, lease_name: str, holder: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            lease = self.leases.read_namespaced_lease(lease_name, self.namespace)
            if lease.spec.holder_identity == holder:
                lease.spec.holder_identity = None
                lease.spec.renew_time = None
                self.leases.replace_namespaced_lease(lease_name, self.namespace, lease)
        except ApiException as err:
            log.warning("could not release the Lease %s: %s", lease_name, err)
