"""A wire-level double of the Kubernetes API server: an HTTP server on 127.0.0.1, in a thread of
the test process, that the real `kubernetes` client (26.1.0: CoreV1Api, AppsV1Api,
CoordinationV1Api, dynamic.DynamicClient) talks to through an ApiClient whose host is
`double.url`. It holds what shipyard's rollout uses, and answers as the API server does.

What it models, and where that comes from:

- **Discovery**: /version, /api, /api/v1, /apis, /apis/GROUP/VERSION (APIVersions,
  APIGroupList, APIResourceList with kinds, verbs and subresources), which is what the
  dynamic client's LazyDiscoverer reads (kubernetes/dynamic/discovery.py). The HTTPRoute CRD
  (gateway.networking.k8s.io/v1) can be made absent (`set_httproute_crd(False)`): its group
  leaves /apis and /apis/gateway.networking.k8s.io/v1 answers 404, so
  `resources.get(kind="HTTPRoute", ...)` raises ResourceNotFoundError. The client caches
  discovery in a file named after the host (tempdir/osrcp-MD5(host).json); the double
  deletes that file when it starts, stops and changes the CRD.
- **Objects** (ConfigMap, Service, Pod, ServiceAccount in v1; Deployment in apps/v1; Lease in
  coordination.k8s.io/v1; PodDisruptionBudget in policy/v1; Role, RoleBinding in
  rbac.authorization.k8s.io/v1; HTTPRoute): GET, LIST (labelSelector: =, ==, !=, in, notin,
  exists, !exists), POST (409 AlreadyExists), PUT, DELETE, PATCH (apply, merge).
  Errors are `Status` objects with the API server's reasons and messages
  (k8s.io/apimachinery/pkg/api/errors/errors.go: NewNotFound, NewAlreadyExists, NewConflict,
  NewInvalid, NewBadRequest).
- **resourceVersion and optimistic concurrency** ("Kubernetes API Concepts", Resource
  versions, https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions;
  API conventions, "Concurrency Control and Consistency",
  https://github.com/kubernetes/community/blob/master/contributors/devel/sig-architecture/
  api-conventions.md#concurrency-control-and-consistency): one counter, bumped by every
  write that changes an object (an apply that changes nothing writes nothing). A PUT with a
  stale metadata.resourceVersion is 409 Conflict, "Operation cannot be fulfilled on
  leases.coordination.k8s.io "x": the object has been modified; please apply your changes
  to the latest version and try again". A PUT without resourceVersion is an unconditional
  update for the kinds whose registry strategy says AllowUnconditionalUpdate() (ConfigMap,
  Service, Deployment, Pod, ...), and 422 "metadata.resourceVersion: Invalid value: 0x0:
  must be specified for an update" for Leases (pkg/registry/coordination/lease/strategy.go)
  and custom resources (apiextensions-apiserver customresource/strategy.go); the store's
  Update (apiserver/pkg/registry/generic/registry/store.go). A PUT of an absent Lease
  creates it (AllowCreateOnUpdate true); of other absent kinds it is 404.
- **metadata.generation**: 1 on create; a Deployment's is bumped when its spec or
  annotations change (pkg/registry/apps/deployment/strategy.go, PrepareForUpdate), a custom
  resource's on any change outside metadata (customresource/strategy.go). Writes to the main
  resource never change `status` of kinds with a status subresource (Deployment, HTTPRoute).
- **Server-side apply** ("Server-Side Apply",
  https://kubernetes.io/docs/reference/using-api/server-side-apply/): PATCH with
  Content-Type application/apply-patch+yaml, `fieldManager` required (422 "PatchOptions.meta.
  k8s.io "" is invalid: fieldManager: Required value: is required for apply patch",
  ValidatePatchOptions), `force`. Creates an absent object. Field ownership is recorded in
  metadata.managedFields (manager, operation Apply|Update, apiVersion, time, FieldsV1). An
  apply that would change a field owned by another manager is 409 Conflict with causes of
  type FieldManagerConflict and the message "Apply failed with 1 conflict: conflict with
  "kubectl-edit" using v1 at 2026-01-01T00:00:00Z: .data.state.json"
  (apimachinery/pkg/util/managedfields/internal/conflict.go); `force=true` takes the fields
  over. A field the applier owned and no longer applies is removed unless another manager
  owns it. POST/PUT/merge PATCH are "Update" operations of fieldManager (or of the
  User-Agent's product token, as the API server defaults it).
- **Lease MicroTime**: spec.acquireTime / spec.renewTime decode with Go's
  time.Parse(RFC3339Micro = "2006-01-02T15:04:05.000000Z07:00")
  (apimachinery/pkg/apis/meta/v1/micro_time.go, UnmarshalJSON). Go's parser requires exactly
  the layout's 6 fraction digits (time/format.go: "stdFracSecond0 requires the exact number
  of digits as specified in the layout"), so "2026-01-01T00:00:00+00:00" (Python's
  isoformat() of a whole second) is a 400 BadRequest "Lease in version "v1" cannot be
  handled as a Lease: parsing time ... cannot parse "+00:00" as ".000000"". Stored and
  answered as t.UTC().Format(RFC3339Micro) (MarshalJSON).
- **Deployment status** (no pods run): by default a Deployment becomes ready on the
  `ready_after_reads`-th GET after its generation changed (status replicas, updatedReplicas,
  readyReplicas, availableReplicas = spec.replicas, observedGeneration, conditions Available
  / MinimumReplicasAvailable and Progressing / NewReplicaSetAvailable), and gets Running
  pods labelled with its template labels and pod-template-hash. Hooks set any status, e.g.
  Progressing False / ProgressDeadlineExceeded ("Deployments", Failed Deployment,
  https://kubernetes.io/docs/concepts/workloads/controllers/deployment/#failed-deployment),
  and pods whose container waits in CrashLoopBackOff, or whose init container keeps failing
  (Init:CrashLoopBackOff, the signature check of kube/verify.py refusing a version).
- **HTTPRoute** (Gateway API v1.3.0 by default, v1.2.1 with `gateway_api_release="v1.2.1"`;
  see gateway_api_schema.py): POST/PUT/apply are
  defaulted, pruned and validated against the CRD's openAPIV3Schema; an invalid object is
  422 Invalid with the field paths ("HTTPRoute.gateway.networking.k8s.io "m" is invalid:
  spec.rules[0].backendRefs[0].weight: ..."). Status is a subresource: a hook sets
  status.parents[].conditions (Accepted, ResolvedRefs, with the reasons of
  apis/v1/shared_types.go); by default the double plays a Gateway controller that accepts
  each parentRef and resolves refs when the backend Services exist, those of RequestMirror
  filters included (else ResolvedRefs False, BackendNotFound; HTTPRequestMirrorFilter's
  BackendRef: "If the referent cannot be found, this BackendRef is invalid ... The controller
  must ensure the "ResolvedRefs" condition on the Route status is set to `status: False`").
- **Names and labels**: a Service's name must be a DNS-1035 label, other names DNS-1123
  subdomains, label values at most 63 characters (422 Invalid, apimachinery
  util/validation).
- **Proxy**: /api/v1/namespaces/NS/services/NAME:PORT/proxy/PATH and .../pods/NAME:PORT/proxy/
  PATH go to handlers the test registers (404 when the Service or Pod does not exist; 503
  "no endpoints available for service "NAME"" when nothing serves it).
- **Faults**: rules (method, path regex, count) that answer a status (409, 422, 429 with
  Retry-After, 500, 503, ...), drop the connection without answering, or hang past the
  client's timeout. A 429 is what the API server's max-in-flight / priority-and-fairness
  filter writes: plain text "Too many requests, please try again later." with Retry-After
  (apiserver/pkg/server/filters/maxinflight.go, tooManyRequests).
- **Request log**: method, path, query, headers of interest, parsed body, answer.

Known simplifications: lists are atomic in field ownership (real SSA merges associative lists
such as containers by key, so two managers of different list entries conflict here where they
would not on a real server); fields are owned at leaf granularity below maps; no watch, no
json-patch, strategic-merge patches are treated as JSON merge patches; DELETE answers a
Status and removes at once (no finalizers, no garbage collection of pods); few built-in
defaults (Deployment progressDeadlineSeconds / revisionHistoryLimit, Service type /
clusterIP / port protocol); no RBAC, no admission; CEL rules of CRDs are not evaluated.

Usage:

    with KubeApiDouble() as double:
        api = double.api_client()
        cluster = KubeCluster(api, ServingTarget(name="m"), rollout_timeout_s=5)
        double.serve_pods(r"m-canary-.*", 8501, lambda request: METRICS_TEXT)
        double.inject("/apis/apps/v1/.*/deployments/m-canary", method="GET", status=503, times=1)
        ...
        assert double.requests_matching("PATCH", r".*/httproutes/m")
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import http.server
import json
import os
import re
import socket
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import yaml

from support import gateway_api_schema

RFC3339_MICRO = "2006-01-02T15:04:05.000000Z07:00"
OPTIMISTIC_LOCK = ("the object has been modified; please apply your changes to the latest "
                   "version and try again")
TOO_MANY_REQUESTS = "Too many requests, please try again later."
DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
MICRO = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d{6})(Z|[+-]\d{2}:\d{2})")
GATEWAY_CONTROLLER = "shipyard.test/kube-api-double"
HEADERS_OF_INTEREST = ("Content-Type", "Accept", "User-Agent")
_MISSING = object()


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    singular: str
    unconditional_update: bool = True  # the registry strategy's AllowUnconditionalUpdate()
    create_on_update: bool = False  # AllowCreateOnUpdate()
    status_subresource: bool = False
    generation: str | None = None  # "spec" (Deployment) | "non-metadata" (custom resources)
    dns1035_name: bool = False
    custom: bool = False
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified_resource(self) -> str:  # schema.GroupResource.String()
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:  # schema.GroupKind.String()
        return f"{self.kind}.{self.group}" if self.group else self.kind


VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
KINDS = (
    Kind("", "v1", "configmaps", "ConfigMap", "configmap", short_names=("cm",)),
    Kind("", "v1", "services", "Service", "service", dns1035_name=True, short_names=("svc",),
         subresources=("status", "proxy")),
    Kind("", "v1", "pods", "Pod", "pod", short_names=("po",),
         subresources=("status", "proxy", "log")),
    Kind("", "v1", "serviceaccounts", "ServiceAccount", "serviceaccount", short_names=("sa",)),
    Kind("apps", "v1", "deployments", "Deployment", "deployment", status_subresource=True,
         generation="spec", short_names=("deploy",), subresources=("status", "scale")),
    Kind("coordination.k8s.io", "v1", "leases", "Lease", "lease", unconditional_update=False,
         create_on_update=True),
    Kind("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", "poddisruptionbudget",
         status_subresource=True, short_names=("pdb",), subresources=("status",)),
    Kind("rbac.authorization.k8s.io", "v1", "roles", "Role", "role"),
    Kind("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", "rolebinding"),
    Kind("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute", "httproute",
         unconditional_update=False, status_subresource=True, generation="non-metadata",
         custom=True, subresources=("status",)),
)
HTTPROUTE = KINDS[-1]


# ---- what the double answers ----------------------------------------------------------------

@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(obj).encode(), "application/json", headers or {})


REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
           405: "MethodNotAllowed", 409: "Conflict", 410: "Expired", 415: "UnsupportedMediaType",
           422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
           503: "ServiceUnavailable", 504: "Timeout"}


def status_body(code: int, message: str, reason: str | None = None,
                details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A metav1.Status of a failure."""
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason or REASONS.get(code, ""), "code": code}
    if details:
        body["details"] = details
    return body


class ApiError(Exception):
    def __init__(self, code: int, message: str, reason: str | None = None,
                 details: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.response = _json(code, status_body(code, message, reason, details), headers)


def not_found(kind: Kind, name: str) -> ApiError:
    return ApiError(404, f'{kind.qualified_resource} "{name}" not found', "NotFound",
                    {"name": name, "group": kind.group, "kind": kind.plural})


def invalid(kind: Kind, name: str, causes: list[dict[str, str]]) -> ApiError:
    """errors.NewInvalid: one message for all the field errors, each a cause."""
    texts = [f"{c['field']}: {c['message']}" for c in causes]
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return ApiError(422, f'{kind.qualified_kind} "{name}" is invalid: {joined}', "Invalid",
                    {"name": name, "group": kind.group, "kind": kind.kind, "causes": causes})


# ---- faults and the request log -------------------------------------------------------------

@dataclass
class Fault:
    """Matches requests by method (None: any) and a regex on the path (re.search, no query).
    `times`: how many requests it answers (None: all). action: "status" answers `status`
    (a Status object, or the plain text 429 with Retry-After); "drop" closes the connection
    without answering; "hang" answers nothing for `hang_s` seconds, then closes; "lose_answer"
    carries the request out (the write is made) and then closes without answering, as when
    a connection breaks after the API server committed (the client cannot tell it from
    "drop", and retries a write that already happened)."""

    path: str
    method: str | None = None
    status: int = 500
    action: str = "status"
    times: int | None = None
    retry_after: int | None = None
    message: str | None = None
    reason: str | None = None
    hang_s: float = 5.0
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return ((self.method is None or self.method.upper() == method)
                and re.search(self.path, path) is not None
                and (self.times is None or self.hits < self.times))

    def response(self) -> Response:
        if self.status == 429 and self.message is None:
            return Response(429, (TOO_MANY_REQUESTS + "\n").encode(), "text/plain; charset=utf-8",
                            {"Retry-After": str(1 if self.retry_after is None else self.retry_after),
                             "X-Content-Type-Options": "nosniff"})
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        details = {"retryAfterSeconds": self.retry_after} if self.retry_after else None
        message = self.message or {
            409: "Operation cannot be fulfilled: injected conflict",
            422: "injected: is invalid", 429: TOO_MANY_REQUESTS,
            500: "Internal error occurred: injected", 503: "injected: service unavailable",
        }.get(self.status, f"injected {self.status}")
        return _json(self.status, status_body(self.status, message, self.reason, details),
                     headers)


@dataclass
class LoggedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    answer: int | str | None = None  # the status code, or "dropped" / "hung"

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass
class ProxyRequest:
    """What a proxy handler gets: the request as the pod or Service would receive it."""

    method: str
    kind: str  # "services" | "pods"
    namespace: str
    name: str
    port: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


ProxyHandler = Callable[[ProxyRequest], Any]


# ---- stored objects and field ownership -----------------------------------------------------

@dataclass
class _Manager:
    api_version: str
    time: str
    fields: set[tuple[str, ...]]


@dataclass
class _Stored:
    kind: Kind
    obj: dict[str, Any]
    managers: dict[tuple[str, str], _Manager] = field(default_factory=dict)
    reads: int = 0  # Deployments: GETs since the generation last changed
    owner: str | None = None  # pods: the Deployment that made them


_IDENTITY = {("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "namespace"),
             ("metadata", "resourceVersion"), ("metadata", "uid"), ("metadata", "generation"),
             ("metadata", "creationTimestamp"), ("metadata", "managedFields")}


def _leaves(obj: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for key, value in obj.items():
        path = (*prefix, key)
        if isinstance(value, dict) and value:
            out.update(_leaves(value, path))
        else:
            out[path] = value
    return out


def _fields(obj: dict[str, Any], kind: Kind) -> dict[tuple[str, ...], Any]:
    """The fields a manager can own: leaves below maps (lists atomic), identity left out."""
    return {path: value for path, value in _leaves(obj).items()
            if path not in _IDENTITY and path[:2] != ("metadata", "managedFields")
            and not (kind.status_subresource and path[0] == "status")}


def _overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return _MISSING
        obj = obj[key]
    return obj


def _set(obj: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        if not isinstance(obj.get(key), dict):
            obj[key] = {}
        obj = obj[key]
    obj[path[-1]] = copy.deepcopy(value)


def _delete(obj: dict[str, Any], path: tuple[str, ...]) -> None:
    parent = _get(obj, path[:-1]) if len(path) > 1 else obj
    if isinstance(parent, dict):
        parent.pop(path[-1], None)


def _fields_v1(paths: set[tuple[str, ...]]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in sorted(paths):
        node = tree
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return tree


def _path_text(path: tuple[str, ...]) -> str:
    return "".join(f".{key}" for key in path)


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _time(moment: dt.datetime | None = None) -> str:  # metav1.Time: RFC 3339, seconds
    return (moment or _now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro(moment: dt.datetime) -> str:  # metav1.MicroTime
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_micro_time(text: str) -> dt.datetime:
    """Go's time.Parse(RFC3339Micro, text), with Go's error text (ValueError)."""
    match = MICRO.fullmatch(text)
    if match is None:
        head = re.match(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", text)
        rest = text[19:] if head else text
        expected = ".000000" if head else "2006"
        raise ValueError(f'parsing time "{text}" as "{RFC3339_MICRO}": cannot parse '
                         f'"{rest}" as "{expected}"')
    stamp = match.group(1) + match.group(2) + match.group(3).replace("Z", "+00:00")
    return dt.datetime.fromisoformat(stamp)


def _selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """labels.Parse: equality- and set-based requirements, comma-separated (AND)."""
    for requirement in re.split(r",(?![^()]*\))", selector.strip()):
        requirement = requirement.strip()
        if not requirement:
            continue
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", requirement):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if (op == "in") != (labels.get(key, _MISSING) in values):
                return False
        elif m := re.fullmatch(r"(\S+?)\s*(==|!=|=)\s*(\S*)", requirement):
            key, op, value = m.groups()
            if (op == "!=") == (labels.get(key) == value):
                return False
        elif requirement.startswith("!"):
            if requirement[1:] in labels:
                return False
        elif requirement not in labels:
            return False
    return True


def discovery_cache_file(host: str) -> str:
    """Where kubernetes.dynamic's Discoverer caches discovery for `host` (discovery.py)."""
    digest = hashlib.md5(host.encode("utf-8"), usedforsecurity=False).hexdigest()
    return os.path.join(tempfile.gettempdir(), f"osrcp-{digest}.json")


# ---- the server -----------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kube-api-double"

    def log_message(self, *args: Any) -> None:
        pass

    def _dispatch(self) -> None:
        self.server.double._serve(self)  # type: ignore[attr-defined]

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class KubeApiDouble:
    def __init__(self, *, namespace: str = "shipyard", ready_after_reads: int | None = 1,
                 make_pods: bool = True, gateway_controller: bool = True,
                 httproute_crd: bool = True, git_version: str = "v1.31.0",
                 gateway_api_release: str = gateway_api_schema.GATEWAY_API_RELEASE):
        """`ready_after_reads`: a Deployment becomes ready on this many GETs after its
        generation changed (None: only when a test says so). `make_pods`: ready Deployments
        get Running pods. `gateway_controller`: HTTPRoutes get a status like a Gateway
        controller's at every generation. `gateway_api_release`: whose HTTPRoute CRD the
        cluster has (gateway_api_schema.RELEASES)."""
        self.namespace = namespace
        self.ready_after_reads = ready_after_reads
        self.make_pods = make_pods
        self.gateway_controller = gateway_controller
        self.git_version = git_version
        self._crd = httproute_crd
        self.gateway_api_release = gateway_api_release
        gateway_api_schema.crd_file(gateway_api_release)  # a release that is vendored
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._objects: dict[tuple[str, str, str, str], _Stored] = {}
        self._rv = 1000
        self._faults: list[Fault] = []
        self._log: list[LoggedRequest] = []
        self._proxies: list[tuple[str, str, re.Pattern[str], str, ProxyHandler]] = []
        self._behaviour: dict[tuple[str, str], int | None] = {}
        self.errors: list[BaseException] = []  # the double's own failures (answered 500)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- life ------------------------------------------------------------------------------
    def start(self) -> KubeApiDouble:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.double = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="kube-api-double", daemon=True)
        self._thread.start()
        self.forget_discovery_cache()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)  # type: ignore[union-attr]
            self.forget_discovery_cache()

    def __enter__(self) -> KubeApiDouble:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the double first"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api_client(self, **settings: Any) -> Any:
        """A kubernetes.client.ApiClient talking to the double (settings: Configuration
        attributes, e.g. retries=0)."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        for key, value in settings.items():
            setattr(configuration, key, value)
        return client.ApiClient(configuration)

    def forget_discovery_cache(self) -> None:
        if self._server is not None:
            try:
                os.unlink(discovery_cache_file(self.url))
            except FileNotFoundError:
                pass

    # --- hooks: the cluster's state ----------------------------------------------------------
    def set_httproute_crd(self, present: bool) -> None:
        """Install or remove the HTTPRoute CRD (removing it deletes every HTTPRoute)."""
        with self._lock:
            self._crd = present
            if not present:
                for key in [k for k, s in self._objects.items() if s.kind is HTTPROUTE]:
                    del self._objects[key]
        self.forget_discovery_cache()

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """A copy of a stored object, by kind ("Deployment") or plural; None if absent."""
        k = self._kind_named(kind)
        with self._lock:
            stored = self._objects.get(self._key(k, namespace or self.namespace, name))
            return copy.deepcopy(stored.obj) if stored else None

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        k = self._kind_named(kind)
        with self._lock:
            return [copy.deepcopy(s.obj) for key, s in sorted(self._objects.items())
                    if s.kind is k and key[2] == (namespace or self.namespace)]

    def managers(self, kind: str, name: str, namespace: str | None = None
                 ) -> dict[tuple[str, str], set[str]]:
        """{(manager, operation): {".spec.replicas", ...}} of a stored object."""
        k = self._kind_named(kind)
        with self._lock:
            stored = self._objects[self._key(k, namespace or self.namespace, name)]
            return {m: {_path_text(p) for p in entry.fields}
                    for m, entry in stored.managers.items()}

    def seed(self, obj: dict[str, Any], *, manager: str = "kubectl-client-side-apply",
             operation: str = "Update") -> dict[str, Any]:
        """Store an object as another client wrote it (its fields owned by `manager`)."""
        kind = self._kind_for(obj["apiVersion"], obj["kind"])
        namespace = obj["metadata"].get("namespace", self.namespace)
        with self._lock:
            stored = self._create(kind, namespace, copy.deepcopy(obj), manager,
                                  operation=operation)
            return copy.deepcopy(stored.obj)

    def deployment_behaviour(self, name: str, ready_after_reads: int | None,
                             namespace: str | None = None) -> None:
        """How `name` becomes ready: after this many GETs, or never (None: tests set its
        status). Holds for a Deployment created later too."""
        with self._lock:
            self._behaviour[(namespace or self.namespace, name)] = ready_after_reads

    def set_deployment_status(self, name: str, status: dict[str, Any],
                              namespace: str | None = None) -> dict[str, Any]:
        """Merge `status` (API field names) into a Deployment's status, as the Deployment
        controller's write to /status; it stops becoming ready by itself."""
        namespace = namespace or self.namespace
        kind = self._kind_named("Deployment")
        with self._lock:
            self._behaviour[(namespace, name)] = None
            stored = self._stored(kind, namespace, name)
            stored.obj["status"] = {**stored.obj.get("status", {}), **copy.deepcopy(status)}
            self._bump(stored)
            return copy.deepcopy(stored.obj)

    def progress_deadline_exceeded(self, name: str, namespace: str | None = None) -> None:
        """The Deployment controller's verdict after progressDeadlineSeconds without
        progress: Progressing False, reason ProgressDeadlineExceeded."""
        namespace = namespace or self.namespace
        with self._lock:
            obj = self._stored(self._kind_named("Deployment"), namespace, name).obj
            replicas = obj["spec"].get("replicas", 1)
            now = _time()
            self.set_deployment_status(name, {
                "observedGeneration": obj["metadata"]["generation"], "replicas": replicas,
                "updatedReplicas": replicas, "unavailableReplicas": replicas,
                "conditions": [
                    {"type": "Available", "status": "False",
                     "reason": "MinimumReplicasUnavailable",
                     "message": "Deployment does not have minimum availability.",
                     "lastUpdateTime": now, "lastTransitionTime": now},
                    {"type": "Progressing", "status": "False",
                     "reason": "ProgressDeadlineExceeded",
                     "message": f'ReplicaSet "{name}-{_template_hash(obj)}" has timed out '
                                "progressing.",
                     "lastUpdateTime": now, "lastTransitionTime": now}]}, namespace)

    def add_pod(self, name: str, labels: dict[str, str], *, namespace: str | None = None,
                ready: bool = True, waiting_reason: str | None = None,
                waiting_message: str = "", restart_count: int = 0,
                container: str = "tf-serving") -> dict[str, Any]:
        """A pod as the kubelet reports it: Running and ready, or with its container waiting
        (e.g. waiting_reason="CrashLoopBackOff", restart_count=5)."""
        namespace = namespace or self.namespace
        started = _time()
        if waiting_reason:
            ready = False
            state = {"waiting": {"reason": waiting_reason, "message": waiting_message}}
            last = {"terminated": {"exitCode": 1, "reason": "Error", "startedAt": started,
                                   "finishedAt": started}}
        else:
            state, last = {"running": {"startedAt": started}}, {}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
               "spec": {"containers": [{"name": container, "image": "tensorflow/serving"}]},
               "status": {"phase": "Running", "podIP": "10.244.0.10", "startTime": started,
                          "conditions": [{"type": "Ready", "status": str(ready)}],
                          "containerStatuses": [{
                              "name": container, "ready": ready,
                              "restartCount": restart_count, "started": ready,
                              "image": "tensorflow/serving", "imageID": "",
                              "state": state, "lastState": last}]}}
        with self._lock:
            kind = self._kind_named("Pod")
            self._objects.pop(self._key(kind, namespace, name), None)
            return copy.deepcopy(self._create(kind, namespace, pod, "kubelet").obj)

    def crash_loop(self, deployment: str, *, namespace: str | None = None,
                   restart_count: int = 5) -> dict[str, Any]:
        """A pod of `deployment` (its template's labels) whose container is in
        CrashLoopBackOff, as the kubelet reports it."""
        namespace = namespace or self.namespace
        with self._lock:
            obj = self._stored(self._kind_named("Deployment"), namespace, deployment).obj
            labels = dict(obj["spec"]["template"]["metadata"].get("labels", {}))
            labels["pod-template-hash"] = _template_hash(obj)
            pod_name = f"{deployment}-{labels['pod-template-hash']}-crash"
        container = obj["spec"]["template"]["spec"]["containers"][0]["name"]
        return self.add_pod(pod_name, labels, namespace=namespace,
                            waiting_reason="CrashLoopBackOff", restart_count=restart_count,
                            container=container,
                            waiting_message=f"back-off 5m0s restarting failed container="
                                            f"{container} pod={pod_name}_{namespace}(uid)")

    def init_crash_loop(self, deployment: str, *, message: str, namespace: str | None = None,
                        restart_count: int = 3) -> dict[str, Any]:
        """A pod of `deployment`'s current template whose first init container keeps failing
        (exit 1, `message` as its termination message, as terminationMessagePolicy
        FallbackToLogsOnError makes of its log), as the kubelet reports it: phase Pending,
        Initialized and Ready False, the init container waiting in CrashLoopBackOff
        (`kubectl get pods`: Init:CrashLoopBackOff) and the app containers in PodInitializing.
        The Deployment never becomes ready (its behaviour is set to None)."""
        namespace = namespace or self.namespace
        with self._lock:
            self._behaviour[(namespace, deployment)] = None
            obj = self._stored(self._kind_named("Deployment"), namespace, deployment).obj
            template = copy.deepcopy(obj["spec"]["template"])
            labels = dict(template["metadata"].get("labels", {}))
            labels["pod-template-hash"] = _template_hash(obj)
        pod_name = f"{deployment}-{labels['pod-template-hash']}-init"
        (init, *_), containers = template["spec"]["initContainers"], template["spec"]["containers"]
        started = _time()
        failed = {"terminated": {"exitCode": 1, "reason": "Error", "message": message,
                                 "startedAt": started, "finishedAt": started}}

        def waiting(container: dict[str, Any], reason: str, said: str) -> dict[str, Any]:
            return {"name": container["name"], "image": container["image"], "imageID": "",
                    "ready": False, "restartCount": 0, "started": False,
                    "state": {"waiting": {"reason": reason, "message": said}},
                    "lastState": {}}

        init_status = waiting(init, "CrashLoopBackOff",
                              f"back-off 40s restarting failed container={init['name']} "
                              f"pod={pod_name}_{namespace}(uid)")
        init_status.update(restartCount=restart_count, lastState=failed)
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod_name, "namespace": namespace, "labels": labels,
                            "annotations": template["metadata"].get("annotations", {})},
               "spec": template["spec"],
               "status": {"phase": "Pending", "startTime": started,
                          "conditions": [
                              {"type": "Initialized", "status": "False",
                               "reason": "ContainersNotInitialized",
                               "message": f"containers with incomplete status: "
                                          f"[{init['name']}]"},
                              {"type": "Ready", "status": "False",
                               "reason": "ContainersNotReady"}],
                          "initContainerStatuses": [init_status],
                          "containerStatuses": [waiting(c, "PodInitializing", "")
                                                for c in containers]}}
        with self._lock:
            kind = self._kind_named("Pod")
            self._objects.pop(self._key(kind, namespace, pod_name), None)
            return copy.deepcopy(self._create(kind, namespace, pod, "kubelet").obj)

    def set_route_status(self, name: str, *, accepted: bool = True, resolved_refs: bool = True,
                         reason: str | None = None, message: str = "",
                         parents: list[dict[str, Any]] | None = None,
                         namespace: str | None = None) -> dict[str, Any]:
        """Set an HTTPRoute's status.parents as its Gateway controller would: one entry per
        parentRef with the conditions Accepted and ResolvedRefs (reasons: Accepted |
        NotAllowedByListeners | NoMatchingParent | ...; ResolvedRefs | BackendNotFound |
        RefNotPermitted | ...), or exactly `parents`. The gateway controller stops."""
        namespace = namespace or self.namespace
        with self._lock:
            self.gateway_controller = False
            stored = self._stored(HTTPROUTE, namespace, name)
            if parents is None:
                parents = _route_parents(stored.obj, accepted, resolved_refs, reason, message)
            stored.obj["status"] = {"parents": copy.deepcopy(parents)}
            errors = gateway_api_schema.validate_httproute(
                stored.obj, release=self.gateway_api_release)
            if errors:
                raise ValueError(f"status not valid for the HTTPRoute schema: {errors}")
            self._bump(stored)
            return copy.deepcopy(stored.obj)

    # --- hooks: proxies, faults, the log -----------------------------------------------------
    def serve_service(self, name: str, port: int | str, handler: ProxyHandler,
                      namespace: str | None = None) -> None:
        """Requests to services/NAME:PORT/proxy/... go to handler(ProxyRequest), which
        returns a body (dict/list: JSON, str/bytes: text), a (status, body) pair, or a
        Response. PORT may be the Service port's number or name."""
        self._proxies.append(("services", namespace or self.namespace,
                              re.compile(re.escape(name)), str(port), handler))

    def serve_pods(self, name_pattern: str, port: int | str, handler: ProxyHandler,
                   namespace: str | None = None) -> None:
        """Requests to pods/NAME:PORT/proxy/... for pods whose name fully matches the regex."""
        self._proxies.append(("pods", namespace or self.namespace, re.compile(name_pattern),
                              str(port), handler))

    def inject(self, path: str, *, method: str | None = None, status: int = 500,
               action: str = "status", times: int | None = None,
               retry_after: int | None = None, message: str | None = None,
               reason: str | None = None, hang_s: float = 5.0) -> Fault:
        """Add a fault rule (first match wins; see Fault)."""
        assert action in ("status", "drop", "hang", "lose_answer"), action
        fault = Fault(path, method, status, action, times, retry_after, message, reason, hang_s)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def requests(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._log)

    def requests_matching(self, method: str | None = None, path: str | None = None
                          ) -> list[LoggedRequest]:
        return [r for r in self.requests if (method is None or r.method == method.upper())
                and (path is None or re.search(path, r.path))]

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    # --- the wire ----------------------------------------------------------------------------
    def _serve(self, h: _Handler) -> None:
        method = h.command
        parts = urlsplit(h.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        headers = {name: h.headers[name] for name in HEADERS_OF_INTEREST if name in h.headers}
        entry = LoggedRequest(method, parts.path, query, headers, _parse_body(raw))
        with self._lock:
            self._log.append(entry)
            fault = next((f for f in self._faults if f.matches(method, parts.path)), None)
            if fault:
                fault.hits += 1
        if fault is not None and fault.action in ("drop", "hang", "lose_answer"):
            entry.answer = {"drop": "dropped", "hang": "hung"}.get(fault.action, "lost")
            if fault.action == "lose_answer":
                try:
                    self._route(method, parts.path, query, dict(h.headers), raw)
                except ApiError:
                    pass
            if fault.action == "hang":
                self._stopping.wait(fault.hang_s)
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if fault is not None:
            response = fault.response()
        else:
            try:
                response = self._route(method, parts.path, query, dict(h.headers), raw)
            except ApiError as err:
                response = err.response
            except Exception as err:  # the double's own bug: answer it, and keep it for asserts
                self.errors.append(err)
                response = _json(500, status_body(500, f"kube-api-double: {err!r}"))
        entry.answer = response.status
        try:
            h.send_response(response.status)
            h.send_header("Content-Type", response.content_type)
            h.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers.items():
                h.send_header(name, value)
            h.end_headers()
            h.wfile.write(response.body)
        except OSError:  # the client gave up (its timeout)
            h.close_connection = True

    def _route(self, method: str, path: str, query: dict[str, list[str]],
               headers: dict[str, str], raw: bytes) -> Response:
        if path == "/version":
            major, minor = self.git_version.lstrip("v").split(".")[:2]
            return _json(200, {"major": major, "minor": minor, "gitVersion": self.git_version,
                               "platform": "linux/amd64"})
        if path == "/api":
            return _json(200, {"kind": "APIVersions", "versions": ["v1"],
                               "serverAddressByClientCIDRs": [
                                   {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})
        if path == "/apis":
            return _json(200, self._group_list())
        if path == "/api/v1":
            return _json(200, self._resource_list("", "v1"))
        if m := re.fullmatch(r"/apis/([^/]+)/([^/]+)", path):
            if not self._kinds_of(m.group(1), m.group(2)):
                raise ApiError(404, "the server could not find the requested resource",
                               "NotFound", {})
            return _json(200, self._resource_list(m.group(1), m.group(2)))
        if m := re.fullmatch(r"/api/v1/namespaces/([^/]+)/(services|pods)/([^/]+)/proxy(/.*)?",
                             path):
            return self._proxy(method, m.group(2), m.group(1), m.group(3), m.group(4) or "/",
                               query, headers, raw)
        m = (re.fullmatch(r"/api/(?P<version>v1)(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)"
                          r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?", path)
             or re.fullmatch(r"/apis/(?P<group>[^/]+)/(?P<version>[^/]+)(?:/namespaces/"
                             r"(?P<ns>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?"
                             r"(?:/(?P<sub>[^/]+))?", path))
        if m is None:
            raise ApiError(404, "the server could not find the requested resource", "NotFound")
        found = m.groupdict()
        kind = next((k for k in self._kinds_of(found.get("group") or "", found["version"])
                     if k.plural == found["plural"]), None)
        if kind is None:
            raise ApiError(404, "the server could not find the requested resource", "NotFound")
        if query.get("watch", ["false"])[-1] in ("true", "1"):
            raise ApiError(405, "kube-api-double: watch is not modelled", "MethodNotAllowed")
        namespace, name, sub = found["ns"], found["name"], found["sub"]
        if name is None:
            if method == "GET":
                return self._list(kind, namespace, query)
            if method == "POST" and namespace:
                return self._post(kind, namespace, query, headers, raw)
            raise ApiError(405, f"the server does not allow this method on the requested "
                                f"resource ({method} {kind.plural})", "MethodNotAllowed")
        if sub is not None and not (sub == "status" and kind.status_subresource):
            raise ApiError(404, "the server could not find the requested resource", "NotFound")
        with self._lock:
            if method == "GET":
                return _json(200, self._read(kind, namespace, name))
            if method == "PUT":
                return self._put(kind, namespace, name, sub, query, headers, raw)
            if method == "PATCH":
                return self._patch(kind, namespace, name, query, headers, raw)
            if method == "DELETE":
                stored = self._stored(kind, namespace, name)
                del self._objects[self._key(kind, namespace, name)]
                self._rv += 1
                return _json(200, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                   "status": "Success",
                                   "details": {"name": name, "group": kind.group,
                                               "kind": kind.plural,
                                               "uid": stored.obj["metadata"]["uid"]}})
        raise ApiError(405, f"method {method} not allowed", "MethodNotAllowed")

    # --- discovery ---------------------------------------------------------------------------
    def _active_kinds(self) -> list[Kind]:
        return [k for k in KINDS if self._crd or not k.custom]

    def _kinds_of(self, group: str, version: str) -> list[Kind]:
        return [k for k in self._active_kinds() if (k.group, k.version) == (group, version)]

    def _group_list(self) -> dict[str, Any]:
        groups: dict[str, dict[str, Any]] = {}
        for k in self._active_kinds():
            if k.group and k.group not in groups:
                gv = {"groupVersion": k.group_version, "version": k.version}
                groups[k.group] = {"name": k.group, "versions": [gv], "preferredVersion": gv}
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": list(groups.values())}

    def _resource_list(self, group: str, version: str) -> dict[str, Any]:
        resources = []
        for k in self._kinds_of(group, version):
            resources.append({"name": k.plural, "singularName": k.singular, "namespaced": True,
                              "kind": k.kind, "verbs": VERBS, "shortNames": list(k.short_names)})
            for sub in k.subresources:
                verbs = {"proxy": ["create", "delete", "get", "patch", "update"],
                         "log": ["get"]}.get(sub, ["get", "patch", "update"])
                sub_kind = {"proxy": f"{k.kind}ProxyOptions", "scale": "Scale"}.get(sub, k.kind)
                resources.append({"name": f"{k.plural}/{sub}", "singularName": "",
                                  "namespaced": True, "kind": sub_kind, "verbs": verbs})
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version,
                "resources": resources}

    # --- reads -------------------------------------------------------------------------------
    @staticmethod
    def _key(kind: Kind, namespace: str, name: str) -> tuple[str, str, str, str]:
        return (kind.group, kind.plural, namespace, name)

    def _kind_named(self, name: str) -> Kind:
        for k in KINDS:
            if name in (k.kind, k.plural):
                return k
        raise KeyError(name)

    def _kind_for(self, api_version: str, kind_name: str) -> Kind:
        for k in self._active_kinds():
            if (k.group_version, k.kind) == (api_version, kind_name):
                return k
        raise KeyError(f"{api_version} {kind_name}")

    def _stored(self, kind: Kind, namespace: str, name: str) -> _Stored:
        stored = self._objects.get(self._key(kind, namespace, name))
        if stored is None:
            raise not_found(kind, name)
        return stored

    def _read(self, kind: Kind, namespace: str, name: str) -> dict[str, Any]:
        stored = self._stored(kind, namespace, name)
        if kind.kind == "Deployment":
            self._on_deployment_read(stored)
        return copy.deepcopy(stored.obj)

    def _list(self, kind: Kind, namespace: str | None, query: dict[str, list[str]]
              ) -> Response:
        selector = (query.get("labelSelector") or [""])[-1]
        fields = (query.get("fieldSelector") or [""])[-1]
        with self._lock:
            items = []
            for key, stored in sorted(self._objects.items()):
                if stored.kind is not kind or (namespace and key[2] != namespace):
                    continue
                meta = stored.obj["metadata"]
                if selector and not _selector_matches(selector, meta.get("labels") or {}):
                    continue
                if fields and not _selector_matches(
                        fields, {"metadata.name": meta["name"],
                                 "metadata.namespace": meta["namespace"]}):
                    continue
                items.append(copy.deepcopy(stored.obj))
            return _json(200, {"kind": f"{kind.kind}List", "apiVersion": kind.group_version,
                               "metadata": {"resourceVersion": str(self._rv)}, "items": items})

    # --- writes ------------------------------------------------------------------------------
    def _decode(self, kind: Kind, raw: bytes, content_type: str) -> dict[str, Any]:
        try:
            body = (yaml.safe_load(raw) if "yaml" in content_type else json.loads(raw or b"{}"))
        except (ValueError, yaml.YAMLError) as err:
            raise ApiError(400, f"the object provided is unrecognized: {err}",
                           "BadRequest") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the object provided is unrecognized (must be of type "
                                f"{kind.kind})", "BadRequest")
        if body.get("kind", kind.kind) != kind.kind or body.get(
                "apiVersion", kind.group_version) != kind.group_version:
            raise ApiError(400, f"the API version in the data ({body.get('apiVersion')}) does "
                                f"not match the expected API version ({kind.group_version})",
                           "BadRequest")
        body.setdefault("apiVersion", kind.group_version)
        body.setdefault("kind", kind.kind)
        body.setdefault("metadata", {})
        if kind.kind == "Lease":
            spec = body.get("spec") or {}
            for key in ("acquireTime", "renewTime"):
                if isinstance(spec.get(key), str):
                    try:
                        spec[key] = _micro(parse_micro_time(spec[key]))
                    except ValueError as err:
                        raise ApiError(400, f'Lease in version "v1" cannot be handled as a '
                                            f"Lease: {err}", "BadRequest") from None
        return body

    def _check_target(self, kind: Kind, namespace: str, name: str | None,
                      body: dict[str, Any]) -> None:
        meta = body["metadata"]
        if meta.get("namespace", namespace) != namespace:
            raise ApiError(400, "the namespace of the provided object does not match the "
                                "namespace sent on the request", "BadRequest")
        meta["namespace"] = namespace
        if name is not None and meta.get("name", name) != name:
            raise ApiError(400, f"the name of the object ({meta.get('name')}) does not match "
                                f"the name on the URL ({name})", "BadRequest")
        if name is not None:
            meta["name"] = name

    def _validate(self, kind: Kind, obj: dict[str, Any]) -> list[str]:
        """Names, labels and (HTTPRoute) the CRD's schema; returns the pruning warnings."""
        meta, name = obj["metadata"], obj["metadata"].get("name", "")
        causes: list[dict[str, str]] = []
        if not name:
            causes.append({"reason": "FieldValueRequired", "field": "metadata.name",
                           "message": "Required value: name or generateName is required"})
        elif kind.dns1035_name and (len(name) > 63 or not DNS1035.fullmatch(name)):
            causes.append({"reason": "FieldValueInvalid", "field": "metadata.name", "message": (
                f'Invalid value: "{name}": a DNS-1035 label must consist of lower case '
                "alphanumeric characters or '-', start with an alphabetic character, and end "
                "with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for "
                "validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
                if DNS1035.fullmatch(name) is None else
                f'Invalid value: "{name}": must be no more than 63 characters')})
        elif not kind.dns1035_name and (len(name) > 253 or not DNS1123_SUBDOMAIN.fullmatch(name)):
            causes.append({"reason": "FieldValueInvalid", "field": "metadata.name", "message": (
                f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower '
                "case alphanumeric characters, '-' or '.', and must start and end with an "
                "alphanumeric character (e.g. 'example.com', regex used for validation is "
                r"'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")})
        for value in (meta.get("labels") or {}).values():
            if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.fullmatch(value):
                causes.append({"reason": "FieldValueInvalid", "field": "metadata.labels",
                               "message": f'Invalid value: "{value}": must be no more than 63 '
                                          "characters" if isinstance(value, str)
                               and len(value) > 63 else
                               f'Invalid value: "{value}": a valid label must be an empty '
                               "string or consist of alphanumeric characters, '-', '_' or "
                               "'.', and must start and end with an alphanumeric character"})
        warnings: list[str] = []
        if kind is HTTPROUTE:
            defaulted, pruned = gateway_api_schema.default_and_prune(
                obj, release=self.gateway_api_release)
            obj.clear()
            obj.update(defaulted)
            obj["metadata"] = meta
            warnings = [f'unknown field "{p}"' for p in pruned]
            causes += [{"reason": e.reason, "field": e.field, "message": e.message}
                       for e in gateway_api_schema.validate_httproute(
                           obj, release=self.gateway_api_release)]
        if causes:
            raise invalid(kind, name, causes)
        return warnings

    def _manager(self, query: dict[str, list[str]], headers: dict[str, str]) -> str:
        manager = (query.get("fieldManager") or [""])[-1]
        return manager or headers.get("User-Agent", "unknown").split("/")[0]

    def _post(self, kind: Kind, namespace: str, query: dict[str, list[str]],
              headers: dict[str, str], raw: bytes) -> Response:
        body = self._decode(kind, raw, headers.get("Content-Type", ""))
        self._check_target(kind, namespace, None, body)
        with self._lock:
            name = body["metadata"].get("name", "")
            if name and self._key(kind, namespace, name) in self._objects:
                raise ApiError(409, f'{kind.qualified_resource} "{name}" already exists',
                               "AlreadyExists",
                               {"name": name, "group": kind.group, "kind": kind.plural})
            owned = set(_fields(body, kind))
            warnings = self._validate(kind, body)
            stored = self._create(kind, namespace, body, self._manager(query, headers),
                                  validated=True, owned=owned)
            return _json(201, copy.deepcopy(stored.obj), _warning_headers(warnings))

    def _create(self, kind: Kind, namespace: str, obj: dict[str, Any], manager: str,
                operation: str = "Update", validated: bool = False,
                owned: set[tuple[str, ...]] | None = None) -> _Stored:
        """`owned`: the fields the request set (before any defaulting), else all of obj's."""
        owned = set(_fields(obj, kind)) if owned is None else owned
        if not validated:
            self._validate(kind, obj)
        meta = obj["metadata"]
        meta["namespace"] = namespace
        for key in ("resourceVersion", "managedFields", "generation"):
            meta.pop(key, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _time()
        if kind.generation:
            meta["generation"] = 1
        if kind.status_subresource:  # create cannot set status; built-in kinds answer {}
            obj.pop("status", None)
            if not kind.custom:
                obj["status"] = {}
        _builtin_defaults(kind, obj)
        stored = _Stored(kind, obj)
        if owned:
            stored.managers[(manager, operation)] = _Manager(kind.group_version, _time(), owned)
        self._objects[self._key(kind, namespace, meta["name"])] = stored
        self._after_write(stored, None)
        self._bump(stored)
        return stored

    def _put(self, kind: Kind, namespace: str, name: str, sub: str | None,
             query: dict[str, list[str]], headers: dict[str, str], raw: bytes) -> Response:
        body = self._decode(kind, raw, headers.get("Content-Type", ""))
        self._check_target(kind, namespace, name, body)
        stored = self._objects.get(self._key(kind, namespace, name))
        manager = self._manager(query, headers)
        if stored is None:
            if not kind.create_on_update or sub:
                raise not_found(kind, name)
            owned = set(_fields(body, kind))
            warnings = self._validate(kind, body)
            created = self._create(kind, namespace, body, manager, validated=True, owned=owned)
            return _json(201, copy.deepcopy(created.obj), _warning_headers(warnings))
        version = body["metadata"].get("resourceVersion")
        if not version and not kind.unconditional_update:
            raise ApiError(422, f'{kind.qualified_resource} "{name}" is invalid: '
                                "metadata.resourceVersion: Invalid value: 0x0: must be "
                                "specified for an update", "Invalid",
                           {"name": name, "group": kind.group, "kind": kind.plural,
                            "causes": [{"reason": "FieldValueInvalid",
                                        "message": "Invalid value: 0x0: must be specified "
                                                   "for an update",
                                        "field": "metadata.resourceVersion"}]})
        if version and version != stored.obj["metadata"]["resourceVersion"]:
            raise ApiError(409, f'Operation cannot be fulfilled on {kind.qualified_resource} '
                                f'"{name}": {OPTIMISTIC_LOCK}', "Conflict",
                           {"name": name, "group": kind.group, "kind": kind.plural})
        if sub == "status":
            new = copy.deepcopy(stored.obj)
            new["status"] = body.get("status", {})
        else:
            new = body
            if kind.status_subresource:
                if "status" in stored.obj:
                    new["status"] = copy.deepcopy(stored.obj["status"])
                else:
                    new.pop("status", None)
        warnings = self._validate(kind, new)
        self._update(stored, new, manager)
        return _json(200, copy.deepcopy(stored.obj), _warning_headers(warnings))

    def _patch(self, kind: Kind, namespace: str, name: str, query: dict[str, list[str]],
               headers: dict[str, str], raw: bytes) -> Response:
        content_type = headers.get("Content-Type", "").split(";")[0].strip()
        manager = (query.get("fieldManager") or [""])[-1]
        if content_type == "application/apply-patch+yaml":
            if not manager:
                raise ApiError(422, 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: '
                                    "Required value: is required for apply patch", "Invalid",
                               {"group": "meta.k8s.io", "kind": "PatchOptions", "causes": [
                                   {"reason": "FieldValueRequired",
                                    "message": "Required value: is required for apply patch",
                                    "field": "fieldManager"}]})
            force = (query.get("force") or ["false"])[-1].lower() in ("true", "1", "t")
            body = self._decode(kind, raw, "yaml")
            self._check_target(kind, namespace, name, body)
            if body["metadata"].get("managedFields") is not None:
                raise ApiError(400, "metadata.managedFields must be nil", "BadRequest")
            return self._apply(kind, namespace, name, body, manager, force)
        if "force" in query:
            raise ApiError(422, 'PatchOptions.meta.k8s.io "" is invalid: force: Forbidden: may '
                                "not be specified for non-apply patch", "Invalid")
        if content_type not in ("application/merge-patch+json",
                                "application/strategic-merge-patch+json"):
            raise ApiError(415, "the body of the request was in an unknown format - accepted "
                                "media types include: application/json-patch+json, "
                                "application/merge-patch+json, application/apply-patch+yaml",
                           "UnsupportedMediaType")
        stored = self._stored(kind, namespace, name)
        patch = _parse_body(raw)
        new = _merge_patch(stored.obj, patch)
        if kind.status_subresource:
            new["status"] = copy.deepcopy(stored.obj.get("status", {}))
            if not new["status"]:
                new.pop("status")
        warnings = self._validate(kind, new)
        self._update(stored, new, manager or self._manager(query, headers))
        return _json(200, copy.deepcopy(stored.obj), _warning_headers(warnings))

    def _apply(self, kind: Kind, namespace: str, name: str, body: dict[str, Any],
               manager: str, force: bool) -> Response:
        if kind.status_subresource:
            body.pop("status", None)
        stored = self._objects.get(self._key(kind, namespace, name))
        if stored is None:
            owned = set(_fields(body, kind))
            warnings = self._validate(kind, body)
            created = self._create(kind, namespace, body, manager, operation="Apply",
                                   validated=True, owned=owned)
            return _json(201, copy.deepcopy(created.obj), _warning_headers(warnings))
        me = (manager, "Apply")
        applied = _fields(body, kind)
        current = stored.obj
        candidate = copy.deepcopy(current)
        others = {m: e for m, e in stored.managers.items() if m != me}
        mine = stored.managers.get(me)
        for path in (mine.fields if mine else set()) - set(applied):
            if not any(_overlap(path, q) for e in others.values() for q in e.fields):
                _delete(candidate, path)
        for path, value in applied.items():
            _set(candidate, path, value)
        warnings = self._validate(kind, candidate)
        conflicts = [(m, q) for m, e in others.items() for q in sorted(e.fields)
                     if any(_overlap(q, p) for p in applied)
                     and _get(candidate, q) != _get(current, q)]
        if conflicts and not force:
            raise _apply_conflict(conflicts, stored)
        for m, q in conflicts:
            others[m].fields.discard(q)
        stored.managers = {m: e for m, e in others.items() if e.fields}
        entry = _Manager(kind.group_version, mine.time if mine else _time(), set(applied))
        changed = candidate != current
        if changed or not mine or mine.fields != entry.fields:
            entry.time = _time()
        stored.managers[me] = entry
        managers_changed = not mine or mine.fields != entry.fields or bool(conflicts)
        self._commit(stored, candidate, changed or managers_changed)
        return _json(200, copy.deepcopy(stored.obj), _warning_headers(warnings))

    def _update(self, stored: _Stored, new: dict[str, Any], manager: str) -> None:
        kind = stored.kind
        old_fields, new_fields = _fields(stored.obj, kind), _fields(new, kind)
        changed = {p for p, v in new_fields.items() if old_fields.get(p, _MISSING) != v}
        removed = set(old_fields) - set(new_fields)
        me = (manager, "Update")
        for m, entry in stored.managers.items():
            if m == me:
                continue
            entry.fields = {q for q in entry.fields
                            if not any(_overlap(q, p) for p in changed | removed)}
        if changed:
            mine = stored.managers.setdefault(me, _Manager(kind.group_version, _time(), set()))
            mine.fields = {q for q in mine.fields if q not in removed} | changed
            mine.time = _time()
        stored.managers = {m: e for m, e in stored.managers.items() if e.fields}
        self._commit(stored, new, bool(changed or removed))

    def _commit(self, stored: _Stored, new: dict[str, Any], write: bool) -> None:
        old = stored.obj
        meta = new["metadata"]
        for key in ("uid", "creationTimestamp", "namespace", "name"):
            meta[key] = old["metadata"][key]
        if "generation" in old["metadata"]:
            meta["generation"] = old["metadata"]["generation"]
            if _generation_changes(stored.kind, old, new):
                meta["generation"] += 1
                stored.reads = 0
        _builtin_defaults(stored.kind, new)
        comparable = copy.deepcopy(new)
        comparable["metadata"].pop("managedFields", None)
        comparable["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        previous = copy.deepcopy(old)
        previous["metadata"].pop("managedFields", None)
        if comparable == previous and not write:
            return
        stored.obj = new
        self._after_write(stored, old)
        self._bump(stored)

    def _bump(self, stored: _Stored) -> None:
        """A write: a new resourceVersion, managedFields rendered."""
        self._rv += 1
        meta = stored.obj["metadata"]
        meta["resourceVersion"] = str(self._rv)
        meta["managedFields"] = [
            {"manager": m, "operation": op, "apiVersion": e.api_version, "time": e.time,
             "fieldsType": "FieldsV1", "fieldsV1": _fields_v1(e.fields)}
            for (m, op), e in stored.managers.items()]

    # --- what controllers do -----------------------------------------------------------------
    def _after_write(self, stored: _Stored, old: dict[str, Any] | None) -> None:
        if stored.kind is HTTPROUTE and self.gateway_controller:
            generation = stored.obj["metadata"]["generation"]
            if old is None or old["metadata"]["generation"] != generation:
                stored.obj["status"] = {"parents": _route_parents(
                    stored.obj, True, self._backends_exist(stored.obj), None, "")}

    def _backends_exist(self, route: dict[str, Any]) -> bool:
        namespace = route["metadata"]["namespace"]
        services = self._kind_named("Service")
        return all(self._key(services, ref.get("namespace", namespace), ref["name"])
                   in self._objects for ref in _route_backends(route))

    def _on_deployment_read(self, stored: _Stored) -> None:
        meta = stored.obj["metadata"]
        after = self._behaviour.get((meta["namespace"], meta["name"]), self.ready_after_reads)
        status = stored.obj.get("status", {})
        if after is None or status.get("observedGeneration") == meta["generation"]:
            return
        stored.reads += 1
        if stored.reads >= after:
            self._make_ready(stored)

    def _make_ready(self, stored: _Stored) -> None:
        obj = stored.obj
        name, namespace = obj["metadata"]["name"], obj["metadata"]["namespace"]
        replicas = obj["spec"].get("replicas", 1)
        template_hash = _template_hash(obj)
        now = _time()
        obj["status"] = {
            "observedGeneration": obj["metadata"]["generation"], "replicas": replicas,
            "updatedReplicas": replicas, "readyReplicas": replicas,
            "availableReplicas": replicas,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                 "message": "Deployment has minimum availability.", "lastUpdateTime": now,
                 "lastTransitionTime": now},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                 "message": f'ReplicaSet "{name}-{template_hash}" has successfully progressed.',
                 "lastUpdateTime": now, "lastTransitionTime": now}]}
        self._bump(stored)
        if not self.make_pods:
            return
        pods = self._kind_named("Pod")
        for key in [k for k, s in self._objects.items() if s.owner == f"{namespace}/{name}"]:
            del self._objects[key]
        labels = dict(obj["spec"]["template"]["metadata"].get("labels", {}))
        labels["pod-template-hash"] = template_hash
        container = obj["spec"]["template"]["spec"]["containers"][0]["name"]
        for i in range(replicas):
            pod = self.add_pod(f"{name}-{template_hash}-{_suffix(name, template_hash, i)}",
                               labels, namespace=namespace, container=container)
            self._objects[self._key(pods, namespace, pod["metadata"]["name"])].owner = \
                f"{namespace}/{name}"

    # --- the proxy ---------------------------------------------------------------------------
    def _proxy(self, method: str, kind_plural: str, namespace: str, target: str, path: str,
               query: dict[str, list[str]], headers: dict[str, str], raw: bytes) -> Response:
        parts = target.split(":")
        name, port = (parts[1], parts[2]) if len(parts) == 3 else (
            parts[0], parts[1] if len(parts) == 2 else "")
        kind = self._kind_named(kind_plural)
        with self._lock:
            stored = self._stored(kind, namespace, name)
            numbers = {str(p.get("name")): str(p.get("port"))
                       for p in (stored.obj.get("spec", {}).get("ports") or [])}
        handler = next((h for k, ns, pattern, p, h in self._proxies
                        if k == kind_plural and ns == namespace and pattern.fullmatch(name)
                        and p in (port, numbers.get(port))), None)
        if handler is None:
            if kind_plural == "services":
                raise ApiError(503, f'no endpoints available for service "{name}"',
                               "ServiceUnavailable")
            raise ApiError(503, f"error trying to reach service: dial tcp 10.244.0.10:{port}: "
                                "connect: connection refused", "ServiceUnavailable")
        answer = handler(ProxyRequest(method, kind_plural, namespace, name, port, path, query,
                                      headers, raw))
        if isinstance(answer, Response):
            return answer
        status, body = answer if isinstance(answer, tuple) else (200, answer)
        if isinstance(body, (dict, list)):
            return Response(status, json.dumps(body).encode(), "application/json")
        data = body.encode() if isinstance(body, str) else bytes(body)
        return Response(status, data, "text/plain; version=0.0.4")


# ---- helpers --------------------------------------------------------------------------------

def _parse_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError:
            return raw


def _warning_headers(warnings: list[str]) -> dict[str, str]:
    return {"Warning": ", ".join(f'299 - "{w}"' for w in warnings)} if warnings else {}


def _generation_changes(kind: Kind, old: dict[str, Any], new: dict[str, Any]) -> bool:
    if kind.generation == "spec":
        return (old.get("spec") != new.get("spec")
                or old["metadata"].get("annotations") != new["metadata"].get("annotations"))
    if kind.generation == "non-metadata":
        strip = ("metadata", "status") if kind.status_subresource else ("metadata",)
        return ({k: v for k, v in old.items() if k not in strip}
                != {k: v for k, v in new.items() if k not in strip})
    return False


def _builtin_defaults(kind: Kind, obj: dict[str, Any]) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    if kind.kind == "Deployment":
        spec.setdefault("progressDeadlineSeconds", 600)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("replicas", 1)
    elif kind.kind == "Service":
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if "clusterIP" not in spec:
            digest = hashlib.sha256(obj["metadata"]["name"].encode()).digest()
            spec["clusterIP"] = f"10.96.{digest[0]}.{digest[1] or 1}"
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")


def _route_backends(route: dict[str, Any]) -> list[dict[str, Any]]:
    """Every backendRef of the route: the rules', and those of RequestMirror filters on a
    rule or on a backendRef."""
    refs = []
    for rule in route["spec"].get("rules", []):
        filters = list(rule.get("filters") or [])
        for ref in rule.get("backendRefs", []):
            refs.append(ref)
            filters += ref.get("filters") or []
        refs += [f["requestMirror"]["backendRef"] for f in filters
                 if f.get("type") == "RequestMirror" and f.get("requestMirror")]
    return refs


def _template_hash(deployment: dict[str, Any]) -> str:
    text = json.dumps(deployment["spec"]["template"], sort_keys=True).encode()
    return hashlib.sha256(text).hexdigest()[:10]


def _suffix(name: str, template_hash: str, i: int) -> str:
    return hashlib.sha256(f"{name}{template_hash}{i}".encode()).hexdigest()[:5]


def _route_parents(route: dict[str, Any], accepted: bool, resolved: bool, reason: str | None,
                   message: str) -> list[dict[str, Any]]:
    generation = route["metadata"]["generation"]
    now = _time()

    def condition(kind: str, ok: bool, bad_reason: str) -> dict[str, Any]:
        return {"type": kind, "status": "True" if ok else "False",
                "reason": kind if ok else (reason or bad_reason),
                "message": message or ("" if ok else f"{kind} is False"),
                "observedGeneration": generation, "lastTransitionTime": now}

    return [{"parentRef": copy.deepcopy(ref), "controllerName": GATEWAY_CONTROLLER,
             "conditions": [condition("Accepted", accepted, "NotAllowedByListeners"),
                            condition("ResolvedRefs", resolved, "BackendNotFound")]}
            for ref in route["spec"].get("parentRefs", [])]


def _apply_conflict(conflicts: list[tuple[tuple[str, str], tuple[str, ...]]],
                    stored: _Stored) -> ApiError:
    """NewConflictError of managedfields/internal/conflict.go."""
    def who(manager: tuple[str, str]) -> str:
        name, operation = manager
        if operation == "Update":
            entry = stored.managers[manager]
            return f'"{name}" using {entry.api_version} at {entry.time}'
        return f'"{name}"'

    causes = [{"type": "FieldManagerConflict", "message": f"conflict with {who(m)}",
               "field": _path_text(p)} for m, p in conflicts]
    if len(conflicts) == 1:
        (manager, path), = conflicts
        message = f"Apply failed with 1 conflict: conflict with {who(manager)}: {_path_text(path)}"
    else:
        lines: list[str] = []
        for manager in sorted({m for m, _ in conflicts}):
            lines.append(f"conflicts with {who(manager)}:")
            lines += [f"- {_path_text(p)}" for m, p in conflicts if m == manager]
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return ApiError(409, message, "Conflict", {"causes": causes})
