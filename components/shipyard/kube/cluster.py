"""The rollout controller's cluster interface on a real Kubernetes cluster.

The only module, with kube.api, kube.lease and kube.observe, that calls the kubernetes
client. Objects come from kube.manifests (the same code that writes k8s/) and are applied with
server-side apply, field manager `shipyard`.

What a real API server adds to what the controller's fakes show, and how this module meets it:
- **Every call** goes through kube.api.call: a timeout, bounded retries for 429/5xx and
  dropped connections, and a ClusterError (a ShipyardError, on which the controller rolls
  back) for what stays wrong. No ApiException, dynamic-client or urllib3 error escapes a
  public method.
- **The Lease** (kube.lease) is held for a whole rollout; every action and every save of the
  state checks it first, and so does every poll of a long wait.
- **The state** lives in the ConfigMap `shipyard-rollout-<name>` (key state.json). Saves are
  conditional: a PUT with the resourceVersion this controller last read or wrote, so a
  controller that lost its Lease cannot overwrite the new holder's state (409:
  LeaseHeldError). Requests of `rollout promote|abort` live in their own ConfigMap.
- **Deployments** are waited for until every replica is updated and available, and fail fast
  on ProgressDeadlineExceeded and on pods that crash-loop or cannot pull their image.
- **The route** is gated on its status: before a weight moves, each Gateway that the route
  names must report it Accepted and its backends ResolvedRefs, for the route's current
  generation. The canary's objects outlive its last weight change by a grace period, so the
  Gateway has moved the traffic before the Service goes.
- **The shadow step** (set_mirror) is the same route with a RequestMirror filter to the
  canary's Service and the canary's weight 0, gated the same way; the route of any weight
  (set_weight, remove_canary) has no filter, so it also ends a mirror. A CRD older than
  Gateway API v1.3.0 prunes the filter's `percent` (its Gateway would mirror everything):
  the route applied is checked for it, and the mirror is taken off again when it is gone.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from typing import Any, Callable, ContextManager

from shipyard.core.errors import ClusterError, LeaseHeldError, ShipyardError
from shipyard.core.vocabulary import CANARY, STABLE
from shipyard.kube import api
from shipyard.kube.lease import HeldLease, Leases
from shipyard.kube.manifests import FIELD_MANAGER, ServingTarget, canary_service, render, route
from shipyard.kube.pods import stuck_reason
from shipyard.kube.routes import mirror_of, percent_pruned, route_problems, stable_only

log = logging.getLogger(__name__)
STATE_KEY = "state.json"
REQUEST_KEY = "request.json"
POLL_S = 2.0
CANARY_GRACE_S = 15.0  # how long the canary's Service outlives its last weight change
ROUTE_TIMEOUT_S = 120.0  # how long the Gateway may take to accept a route
GATEWAY_API = "gateway.networking.k8s.io/v1"
VERSION_ANNOTATION = "shipyard.dev/version"
ABSENT = ""  # a state ConfigMap known not to exist (created, never replaced, on first save)


def connect() -> Any:
    """An API client from KUBECONFIG / ~/.kube/config, or the pod's service account."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    try:
        config.load_kube_config(client_configuration=configuration)
    except (ConfigException, FileNotFoundError, TypeError):
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException:
            raise ShipyardError(
                "no Kubernetes cluster configured: set KUBECONFIG (or ~/.kube/config), or run "
                "inside a pod with the shipyard-pusher service account") from None
    return with_default_timeout(client.ApiClient(configured(configuration)))


def configured(configuration: Any) -> Any:
    """The client's settings shipyard relies on. urllib3's own retries are off: left on, they
    repeat idempotent calls up to 3 times more under each of kube.api's attempts, and sleep
    whatever Retry-After a 429 or 503 names, unbounded and unlogged."""
    configuration.retries = False
    return configuration


def with_default_timeout(api_client: Any) -> Any:
    """kube.api's timeout also for the calls that do not go through kube.api.call and take no
    `_request_timeout` (the dynamic client's discovery, the observer's pod listing). The
    client passes `timeout=None` to urllib3 for those, which waits forever and overrides any
    pool default, so its one request method is given the default instead."""
    rest = api_client.rest_client
    request = rest.request

    def bounded(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return request(*args, _request_timeout=_request_timeout or api.REQUEST_TIMEOUT,
                       **kwargs)

    rest.request = bounded
    return api_client


class KubeCluster:
    def __init__(self, api_client: Any, target: ServingTarget, *,
                 rollout_timeout_s: float = 600, canary_grace_s: float = CANARY_GRACE_S,
                 route_timeout_s: float = ROUTE_TIMEOUT_S,
                 holder_is_dead: Callable[[str], bool] = lambda holder: False,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        from kubernetes import client

        self.api = api_client
        self.target = target
        self.namespace = target.namespace
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self._dynamic: Any = None
        self.rollout_timeout_s = rollout_timeout_s
        self.canary_grace_s = canary_grace_s
        self.route_timeout_s = route_timeout_s
        self.sleep, self.clock = sleep, clock
        self.leases = Leases(client.CoordinationV1Api(api_client), self.namespace,
                             holder_is_dead=holder_is_dead, sleep=sleep, clock=clock)
        self._held: dict[str, HeldLease] = {}
        self._state_versions: dict[str, str] = {}  # ConfigMap resourceVersions we know
        self._route_changed: dict[str, float] = {}  # when this process last moved a weight

    @property
    def dynamic(self) -> Any:
        if self._dynamic is None:  # its construction reads the API's discovery documents
            from kubernetes import dynamic

            self._dynamic = api.translated("read the API's discovery documents",
                                           lambda: dynamic.DynamicClient(self.api))
        return self._dynamic

    # --- objects ------------------------------------------------------------------------
    def apply(self, objects: list[dict[str, Any]]) -> list[Any]:
        """Server-side applies each object; returns the objects as the API server stored
        them (defaulted and pruned)."""
        applied = []
        for obj in objects:
            what = (f"apply {obj['kind']} {self.namespace}/{obj['metadata']['name']} "
                    "(server-side apply)")
            resource = self._resource(obj["apiVersion"], obj["kind"], what)
            applied.append(self._call(what, self.dynamic.server_side_apply, resource,
                                      body=obj, field_manager=FIELD_MANAGER,
                                      force_conflicts=True))
        return applied

    def _resource(self, api_version: str, kind: str, what: str) -> Any:
        try:
            return self.dynamic.resources.get(api_version=api_version, kind=kind)
        except Exception as err:
            if not api.is_api_error(err):
                raise
            raise api.refused(what, err) from err

    def _target(self, name: str, **changes: Any) -> ServingTarget:
        return replace(self.target, name=name, **changes)

    def stable_version(self, name: str) -> int | None:
        what = f"read Deployment {self.namespace}/{name}"
        deployment = self._read_or_none(what, self.apps.read_namespaced_deployment, name,
                                        self.namespace)
        if deployment is None:
            return None
        version = (deployment.spec.template.metadata.annotations or {}).get(
            VERSION_ANNOTATION)
        return int(version) if version else None

    def deploy_canary(self, name: str, version: int) -> None:
        target = self._target(name, canary_version=version, canary_weight=0,
                              stable_version=self.stable_version(name) or version)
        canary = [o for o in render(target, with_rbac=False)
                  if o["metadata"]["labels"].get("shipyard.dev/track") == CANARY]
        self.apply(canary)
        self.wait_for_deployment(f"{name}-canary")
        self._apply_route(name, route(target))

    def set_weight(self, name: str, weight: int) -> None:
        """The route with the canary's weight, and no mirror."""
        routed = route(self._target(name, canary_weight=weight))
        if weight == 0 and not self._exists("apps/v1", "Deployment", canary_service(name)):
            routed = stable_only(routed)  # the canary's Service is gone: stable only
        self._apply_route(name, routed, taking_traffic_off=weight == 0)

    def set_mirror(self, name: str, percent: int) -> None:
        """The shadow step: the canary's weight stays 0 and `percent` % (1 to 100) of the
        route's requests are copied to the canary's Service, whose answers the Gateway
        drops (manifests.mirror_filter); gated on the route's status as a weight is.
        0: the route without the mirror, as set_weight(name, 0) renders it."""
        if percent == 0:
            self.set_weight(name, 0)
            return
        routed = route(self._target(name, canary_weight=0, mirror_percent=percent))
        asked = (mirror_of(routed) or {}).get("percent")
        self._apply_route(name, routed, check=lambda applied: self._kept_percent(
            name, asked, applied))

    def _kept_percent(self, name: str, asked: int | None, applied: dict[str, Any]) -> None:
        """Refuses a mirror whose `percent` the API server pruned, after taking it off."""
        if asked in (None, 100) or (mirror_of(applied) or {}).get("percent") == asked:
            return  # (without percent, a mirror takes every request: what 100 asks)
        try:
            self.set_weight(name, 0)
            undone = "the mirror was taken off again"
        except ClusterError as err:
            undone = f"taking the mirror off again failed too ({err})"
        raise ClusterError(percent_pruned(f"{self.namespace}/{name}", asked, undone))

    def promote_stable(self, name: str, version: int) -> None:
        target = self._target(name, stable_version=version)
        stable = [o for o in render(target, with_rbac=False)
                  if o["metadata"]["labels"].get("shipyard.dev/track") == STABLE]
        self.apply(stable)
        self.wait_for_deployment(name)

    def remove_canary(self, name: str) -> None:
        """Routes everything to stable, waits out the grace period, then deletes the canary's
        objects. Where the route cannot be applied, the canary is kept (deleting it would turn
        its share of the traffic into errors) and the ClusterError says so; where the cluster
        has no HTTPRoute kind at all, no route can send it traffic, and it is deleted."""
        routed = stable_only(route(self._target(name, canary_weight=0)))
        try:
            self._apply_route(name, routed, taking_traffic_off=True)
        except ClusterError as err:
            if not err.missing_kind:
                raise ClusterError(
                    f"{err}. Left as it was: the HTTPRoute {self.namespace}/{name} may still "
                    f"send traffic to {name}-canary, whose Deployment and Service were kept to "
                    "serve it; run the same command again once the API accepts the route, or "
                    f"set the route's weights by hand and delete the objects labelled "
                    f"app.kubernetes.io/instance={name},shipyard.dev/track=canary") from err
            log.warning("%s; deleting the canary, which no route can reach", err)
        self._wait_out_grace(name)
        selector = (f"app.kubernetes.io/instance={name},shipyard.dev/track=canary,"
                    f"app.kubernetes.io/managed-by={FIELD_MANAGER}")
        for kind, api_version in (("Deployment", "apps/v1"), ("Service", "v1"),
                                  ("ConfigMap", "v1")):
            what = f"delete the canary's {kind}s of {self.namespace}/{name}"
            resource = self._resource(api_version, kind, what)
            found = self._call(what, resource.get, namespace=self.namespace,
                               label_selector=selector)
            for item in found.items:
                try:
                    api.call(what, resource.delete, name=item.metadata.name,
                             namespace=self.namespace, sleep=self.sleep,
                             before_each=self._check_lease)
                except Exception as err:
                    if not api.is_api_error(err):
                        raise
                    if api.status_of(err) != 404:
                        raise api.refused(what, err) from err

    def _wait_out_grace(self, name: str) -> None:
        """Until CANARY_GRACE_S after this process's last route change; the full grace when
        it does not know (a restarted controller)."""
        changed = self._route_changed.get(name)
        left = self.canary_grace_s if changed is None else (
            changed + self.canary_grace_s - self.clock())
        if left > 0:
            log.info("%s: the canary's Service stays %.0f s after the route change, while the "
                     "Gateway moves its traffic", name, left)
            self.sleep(left)

    def _exists(self, api_version: str, kind: str, name: str) -> bool:
        what = f"read {kind} {self.namespace}/{name}"
        resource = self._resource(api_version, kind, what)
        return self._read_or_none(what, resource.get, name=name,
                                  namespace=self.namespace) is not None

    # --- waits --------------------------------------------------------------------------
    def wait_for_deployment(self, name: str) -> None:
        """Until every replica runs the current template and is ready. Fails at once on
        ProgressDeadlineExceeded or a pod stuck in CrashLoopBackOff, Init:CrashLoopBackOff (the
        signature check, kube/verify.py) or an image that cannot be pulled (kube.pods), and
        after `rollout_timeout_s` otherwise; checks the Lease every poll."""
        deadline = self.clock() + self.rollout_timeout_s
        what = f"read Deployment {self.namespace}/{name}"
        while True:
            self._check_lease()
            d = self._call(what, self.apps.read_namespaced_deployment, name, self.namespace)
            status, want = d.status, d.spec.replicas or 0
            if ((status.observed_generation or 0) >= d.metadata.generation
                    and (status.updated_replicas or 0) == want
                    and (status.available_replicas or 0) == want
                    and (status.replicas or 0) == want):
                return
            current = (status.observed_generation or 0) >= d.metadata.generation
            for condition in (status.conditions or ()) if current else ():
                if (condition.type == "Progressing" and condition.status == "False"
                        and condition.reason == "ProgressDeadlineExceeded"):
                    raise ClusterError(
                        f"Deployment {self.namespace}/{name} stopped progressing "
                        f"(ProgressDeadlineExceeded: {condition.message}); check `kubectl "
                        f"describe deployment {name}` and its pods' logs")
            stuck = self._stuck_pod(d)
            if stuck:
                raise ClusterError(f"Deployment {self.namespace}/{name}: {stuck}; a version "
                                   "that fails to load never becomes ready: check the pod's "
                                   "logs (`kubectl logs POD --previous`)")
            if self.clock() > deadline:
                raise ClusterError(
                    f"Deployment {self.namespace}/{name} did not finish rolling out within "
                    f"{self.rollout_timeout_s:g} s ({status.available_replicas or 0}/{want} "
                    "available); check `kubectl describe deployment` and the pods' logs "
                    "(a version that fails to load never becomes ready)")
            self.sleep(POLL_S)

    def _stuck_pod(self, deployment: Any) -> str | None:
        labels = deployment.spec.selector.match_labels or {}
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        # Pods of an older template (a failed version's, terminating during a rollback) are
        # not this rollout's to judge: only those of the version the template names.
        version = (deployment.spec.template.metadata.annotations or {}).get(VERSION_ANNOTATION)
        pods = self._call(f"list the pods of Deployment {deployment.metadata.name}",
                          self.core.list_namespaced_pod, self.namespace,
                          label_selector=selector)
        for pod in pods.items:
            pod_version = (pod.metadata.annotations or {}).get(VERSION_ANNOTATION)
            if pod_version is None or pod_version == version:
                problem = stuck_reason(pod)  # a crash loop, an image, a failing signature check
                if problem:
                    return problem
        return None

    def _apply_route(self, name: str, routed: dict[str, Any], *,
                     taking_traffic_off: bool = False,
                     check: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Applies the route (`check` sees it as stored) and waits for its Gateways to
        accept it. A route that takes the traffic off the canary (weight 0, no mirror: a
        rollback, a promotion's end, a removal) is not held up by a Gateway that does not
        accept it: waiting or failing would only keep the canary serving longer; it is
        logged."""
        applied = self.apply([routed])[0]
        self._route_changed[name] = self.clock()
        if check is not None:
            check(applied.to_dict() if hasattr(applied, "to_dict") else dict(applied))
        try:
            self.wait_for_route(name, [p["name"] for p in routed["spec"]["parentRefs"]])
        except ClusterError as err:
            if not taking_traffic_off:
                raise
            log.warning("%s; going on: this route takes the traffic off the canary", err)

    def wait_for_route(self, name: str, gateways: list[str]) -> None:
        """Until each Gateway in `gateways` reports the route Accepted and ResolvedRefs for
        its current generation (the Gateway API's RouteParentStatus)."""
        deadline = self.clock() + self.route_timeout_s
        what = f"read HTTPRoute {self.namespace}/{name}"
        resource = self._resource(GATEWAY_API, "HTTPRoute", what)
        while True:
            self._check_lease()
            found = self._call(what, resource.get, name=name, namespace=self.namespace)
            problems = route_problems(found.to_dict(), gateways)
            if not problems:
                return
            refused = [p for p in problems if p.startswith("refused")]
            if refused or self.clock() > deadline:
                raise ClusterError(
                    f"HTTPRoute {self.namespace}/{name}: " + "; ".join(problems)
                    + ("" if refused else f" after {self.route_timeout_s:g} s")
                    + "; no weight was moved. Check the Gateway "
                    + ", ".join(gateways) + " and `kubectl describe httproute "
                    + f"{name} -n {self.namespace}`")
            self.sleep(POLL_S)

    # --- rollout state ------------------------------------------------------------------
    def _state_name(self, name: str) -> str:
        return f"shipyard-rollout-{name}"

    def load_state(self, name: str) -> dict[str, Any] | None:
        found = self._read_config_map(self._state_name(name))
        self._state_versions[name] = (found.metadata.resource_version if found is not None
                                      else ABSENT)
        return _json(found, STATE_KEY)

    def save_state(self, name: str, state: dict[str, Any]) -> None:
        """Written only while this controller holds the Lease, and only over the version of
        the state it last read or wrote (a PUT with that resourceVersion)."""
        self._check_lease(name)
        config_map = self._state_name(name)
        body = self._config_map(config_map, name, STATE_KEY, state)
        known = self._state_versions.get(name)
        if known is None:  # never read by this controller: read it now
            current = self._read_config_map(config_map)
            known = current.metadata.resource_version if current is not None else ABSENT
        what = f"save the rollout's state in ConfigMap {self.namespace}/{config_map}"
        try:
            if known == ABSENT:
                written = api.call(what, self.core.create_namespaced_config_map,
                                   self.namespace, body, sleep=self.sleep)
            else:
                body["metadata"]["resourceVersion"] = known
                written = api.call(what, self.core.replace_namespaced_config_map, config_map,
                                   self.namespace, body, sleep=self.sleep)
        except Exception as err:
            if not api.is_api_error(err):
                raise
            if api.status_of(err) != 409:
                raise api.refused(what, err) from err
            written = self._own_write_landed(config_map, body)
            if written is None:
                raise LeaseHeldError(
                    f"the rollout's state ({self.namespace}/{config_map}) was changed by "
                    "another controller since this one last wrote it: this controller lost "
                    "its Lease and stops acting") from err
        self._state_versions[name] = written.metadata.resource_version

    def _own_write_landed(self, config_map: str, body: dict[str, Any]) -> Any | None:
        """After a 409: the ConfigMap, if it holds exactly what this controller wrote (a retry
        of a write whose answer was lost, which the first attempt had made); else None."""
        current = self._read_config_map(config_map)
        return current if current is not None and current.data == body["data"] else None

    # Requests live in their own ConfigMap, written only by `rollout promote|abort`, so a
    # controller saving its state can never overwrite one.
    def load_request(self, name: str) -> dict[str, Any] | None:
        return _json(self._read_config_map(f"{self._state_name(name)}-request"), REQUEST_KEY)

    def save_request(self, name: str, request: dict[str, Any]) -> None:
        config_map = f"{self._state_name(name)}-request"
        self.apply([self._config_map(config_map, name, REQUEST_KEY, request)])

    def _read_config_map(self, config_map: str) -> Any | None:
        return self._read_or_none(f"read ConfigMap {self.namespace}/{config_map}",
                                  self.core.read_namespaced_config_map, config_map,
                                  self.namespace)

    def _config_map(self, config_map: str, name: str, key: str,
                    data: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": config_map, "namespace": self.namespace,
                             "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER,
                                        "app.kubernetes.io/instance": name}},
                "data": {key: json.dumps(data, sort_keys=True)}}

    # --- the Lease ----------------------------------------------------------------------
    def lease(self, name: str, holder: str, wait_s: float) -> ContextManager[HeldLease]:
        return _Holding(self, name, holder, wait_s)

    def _check_lease(self, name: str | None = None) -> None:
        held = [self._held[name]] if name in self._held else (
            list(self._held.values()) if name is None else [])
        for handle in held:
            handle.check()

    # --- calls --------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return api.call(what, fn, *args, sleep=self.sleep, before_each=self._check_lease,
                            **kwargs)
        except Exception as err:
            if not api.is_api_error(err):
                raise  # ClusterError, LeaseHeldError, or a bug of ours: not the API's answer
            raise api.refused(what, err) from err

    def _read_or_none(self, what: str, fn: Callable[..., Any], *args: Any,
                      **kwargs: Any) -> Any | None:
        try:
            return api.call(what, fn, *args, sleep=self.sleep, **kwargs)
        except Exception as err:
            if not api.is_api_error(err):
                raise
            if api.status_of(err) == 404 and not api.is_missing_kind(err):
                return None
            raise api.refused(what, err) from err


class _Holding:
    """The Lease of one model, held (and renewed) while the `with` block runs; the cluster
    checks it before each save and during each wait."""

    def __init__(self, cluster: KubeCluster, name: str, holder: str, wait_s: float):
        self.cluster, self.name = cluster, name
        self._context = cluster.leases.held(f"shipyard-rollout-{name}", holder, wait_s,
                                            f"a rollout of {name}")

    def __enter__(self) -> HeldLease:
        handle = self._context.__enter__()
        self.cluster._held[self.name] = handle
        self.cluster._state_versions.pop(self.name, None)  # read again under the Lease
        return handle

    def __exit__(self, *exc: Any) -> Any:
        self.cluster._held.pop(self.name, None)
        return self._context.__exit__(*exc)


def _json(found: Any | None, key: str) -> dict[str, Any] | None:
    text = (found.data or {}).get(key) if found is not None else None
    return json.loads(text) if text else None
