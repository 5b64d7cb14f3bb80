"""A test double of TF Serving's gRPC model server, used only by tests.

TF Serving's binary cannot run on our machines, so tests that talk to TF Serving talk to this
instead: a real gRPC server on 127.0.0.1, in the test process, speaking TF Serving's protocol with
the official protos and stubs from `tensorflow-serving-api` (ModelService and PredictionService).
Nothing under components/ imports this module; it lives in tests/ only.

What it models, after TF Serving's own sources (main.cc, Server, ServerCore,
FileSystemStoragePathSource, AspiredVersionsManager with the AvailabilityPreservingPolicy that
tensorflow_model_server uses, BasicManager, LoaderHarness and util/retrier.cc,
SavedModelBundleSourceAdapter, saved_model_warmup.cc and saved_model_warmup_util.cc,
get_model_status_impl, predict_util, classifier, regressor, util, grpc_status_util):

- Two ways to start. `TFServingDouble().start()` is a server started with an empty
  `model_config_list {}`, configured afterwards by reload requests. `cold_start(args, mounts)`
  is a pod starting: see "Cold start" below.
- Cold start (`cold_start`), as tensorflow_model_server runs in a container:
  main.cc's flags are parsed from the image entrypoint's flags followed by the container's
  `args` (tensorflow::Flags::Parse: `--name=value`, bare `--name` for true, later flags win,
  unknown arguments are ignored); a value that does not parse ends the start. Then
  Server::BuildAndStart reads `--model_config_file` (text-format ModelServerConfig; NOT_FOUND for
  a missing file, INVALID_ARGUMENT "Invalid protobuf file: 'F'" for bad text) and calls
  ServerCore::Create, whose ReloadConfig checks that first config in the same order as a
  reload: the version labels first (UpdateModelVersionLabelMap, with
  `--allow_version_labels_for_unavailable_models`), so a label on a version that is not
  AVAILABLE, which on a cold start means any label, refuses the start with FAILED_PRECONDITION
  unless the flag is set; then the models are loaded and the start waits until each model's
  newest aspired version is AVAILABLE (ConnectAdaptersToManagerAndAwaitModelLoads; a failed
  load fails the start with UNKNOWN "Some models did not become available: {...}"). Only then
  does the gRPC server listen. A refused start raises ServerStartError with main.cc's line
  "Failed to start server. Error: CODE: message". Paths are container paths: `mounts` maps
  each mount path to the host directory behind it (a ConfigMap's files, the PVC's repository),
  and every file the server reads is looked up through it, so configs, GetModelStatus and
  errors about the config keep the container's paths (load errors name the host path). A path
  under no mount does not exist. `--model_config_file_poll_wait_seconds` re-reads the file
  (Server::PollFilesystemAndReloadConfig, first right after the start, as PeriodicFunction
  runs) and `--file_system_poll_wait_seconds` sets the version poll (1 s by default, as TF
  Serving's). `--port` is ignored: the double listens on a free port of 127.0.0.1.
- HandleReloadConfigRequest. Started with `start()`, the server behaves as one started with an
  empty `model_config_list {}`. A reload is checked in ServerCore's order: only a ModelConfigList is
  accepted; model names unique; base paths absolute; no model changes platform. Then the version
  labels are checked against the versions AVAILABLE *now*: a label on a version that is not
  AVAILABLE fails the whole reload with FAILED_PRECONDITION and nothing else happens (TF Serving
  checks labels before it touches the models, so the versions of that same config are not
  loaded either: load first, label in a second reload). Then each model's platform must be
  "tensorflow" (INVALID_ARGUMENT otherwise; TF Serving checks this after taking the labels),
  models left out of the config are unloaded, and the new config goes to the file-system
  poller. A model that is new in this config makes the reload wait until its highest version
  is AVAILABLE (or failed: UNKNOWN "N model(s) did not become available: ..."); new versions
  of models already served load in the background, after the next poll.
  Failures abort the RPC with the gRPC code and message, as TF Serving does; on success the
  response's `status` is OK.
- The file-system poller (every `file_system_poll_wait_s`, as TF Serving's
  --file_system_poll_wait_seconds): integer-named children of base_path, chosen by the version
  policy (`specific`, `latest {num_versions}`, `all`; none means latest 1). A `specific` version
  with no directory is never aspired, so it never shows up in GetModelStatus (TF Serving only
  logs a warning). A base_path that does not exist makes the whole poll fail, for every model;
  a reload adding a model with such a base_path therefore waits until the path appears or the
  client's deadline passes, and holds up the reloads behind it (as TF Serving's does).
- Loading and unloading, per version: LOADING, then AVAILABLE, or END with the loader's error
  (e.g. DATA_LOSS for a corrupt saved_model.pb, NOT_FOUND for a directory without one; the
  message names the path). A SavedModel is loaded the way TF Serving's session bundle loader
  does, with `tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)` in its own Graph and
  Session, once per version. Versions no longer aspired are unloaded (END, OK status), but
  never the last AVAILABLE one before an aspired version is AVAILABLE (availability
  preserving): a version that fails to load leaves the previous one serving. A failed version
  that stays in the config is not loaded again; leaving the config and coming back starts a new
  load.
- Warmup (`--enable_model_warmup`, on by default: Server::Options' enable_model_warmup = true,
  passed to SessionBundleConfig in server.cc). SavedModelBundleSourceAdapter's servable creator
  loads the SavedModel, then calls RunSavedModelWarmup (saved_model_warmup.cc), whose
  RunSavedModelWarmupUntracked (saved_model_warmup_util.cc) replays
  `assets.extra/tf_serving_warmup_requests`: no file is fine; otherwise each TFRecord record
  (TensorFlow's own record reader) is parsed as a PredictionLog and run by RunWarmupRequest
  through RunPredict / RunClassify / RunRegress on the new bundle, the same code the
  Predict/Classify/Regress RPCs run after their servable lookup (so Classify's and Regress's
  result checks apply), `--num_request_iterations_for_warmup` times (if > 0, else once). The
  load fails, as any load error, on: a record whose replay fails (its error as is); a record
  that does not parse (INVALID_ARGUMENT "Failed to parse warmup record: BYTES from PATH"); a
  1001st record (INVALID_ARGUMENT "Number of warmup records exceeds the maximum (1000) at
  PATH", WarmupConsts::kMaxNumRecords, checked after the record ran); a file that is not a
  TFRecord (the reader's DATA_LOSS, plus ". Please verify your warmup data is in TFRecord
  format."). predict_streamed_log and session_run_log records are UNIMPLEMENTED "Unsupported
  log_type for warmup: N", as TF Serving's; a record with no log_type does nothing.
- Load retries (`--max_num_load_retries`, default 5; `--load_retry_interval_micros`, default
  60 s; Server::Options -> ServerCore -> AspiredVersionsManager -> BasicManager ->
  LoaderHarness::Load -> Retry in util/retrier.cc): a failing load (the SavedModel or its
  warmup) is tried again up to that many times after the first failure, that long apart; the
  version stays LOADING meanwhile (GetModelStatus: LOADING, status OK) and ends END with the
  last error. A version no longer aspired stops retrying after its next attempt
  (CancelLoadServableRetry). So with the defaults a broken version is LOADING about 5 minutes:
  a reload that adds a model, and a cold start, wait that long before failing. Both values are
  constructor parameters and cold_start flags; tests whose loads fail use small ones.
- GetModelStatus: every version a model has had, highest first, or one version with
  `model_spec.version`; NOT_FOUND "Could not find any versions of model M" / "Could not find
  version V of model M". Like TF Serving, it ignores `model_spec.version_label`.
- Predict: the version by `version`, by `version_label` (INVALID_ARGUMENT "Unrecognized
  servable version label: L" when unknown), or the highest AVAILABLE one; NOT_FOUND "Servable
  not found for request: Specific(M, V)" / "Latest(M)" when it is not AVAILABLE. Signature
  (default "serving_default"), inputs, output_filter and their errors as predict_util.cc;
  outputs are serialized into the typed value fields (float_val, ...), as TF Serving's gRPC
  Predict does, and `response.model_spec` carries name, version and signature_name. The
  signature's method_name is checked only with `enable_signature_method_name_check`
  (VerifySignature in predict_util.cc; INTERNAL "Expected prediction signature method_name
  to be one of {...}").
- Classify and Regress, as the TF1-session path of TF Serving 2.x runs them
  (classification_service.cc / regression_service.cc -> classifier.cc's RunClassify /
  regressor.cc's RunRegress): "Missing ModelSpec"; the version picked as for Predict; the
  signature by `model_spec.signature_name` (default "serving_default"; INVALID_ARGUMENT "No
  signature was found with the name: S"). The method-name check follows main.cc's
  `--enable_signature_method_name_check`, off by default (Server::Options): with it on, the
  signature's method_name must be tensorflow/serving/classify (regress), INVALID_ARGUMENT
  "Expected classification signature method_name to be ... Was: ..."; with it off any
  method name is accepted (so a TF2 signature saved as predict serves Classify when its
  shape fits) and only the structure is checked. PreProcessClassification /
  PreProcessRegression: exactly one input, aliased `inputs`; one or two outputs including
  `classes` and/or `scores` (classify), exactly one output `outputs` (regress); their
  messages verbatim, the SignatureDef's DebugString rendered as protobuf text format.
  InputToSerializedExampleTensor: `input.example_list` or `example_list_with_context` (the
  context's bytes before each example's, so features merge) become one DT_STRING vector fed
  to the `inputs` tensor ("Input is empty." when there is no example); a non-string input
  tensor fails as TF's session does ("Expects arg[0] to be float but string is provided").
  PostProcessClassificationResult / PostProcessRegressionResult: rank, dtype (DT_STRING
  classes, DT_FLOAT scores and outputs), batch size and column checks with their messages;
  `result.classifications[i].classes[j]` {label, score}, `result.regressions[i].value`;
  `response.model_spec` as MakeModelSpec fills it (name, version, signature_name).
- Error messages go out as grpc_status_util.cc's ToGRPCStatus sends them: over 1024 bytes,
  the first 1024 and "...TRUNCATED".

What it does not model: TF Serving's other RPCs (MultiInference, GetModelMetadata), the TFRT
runtime (`--use_tfrt`) and its Classify/Regress, the REST API (so `--rest_api_port` and
`--monitoring_config_file` are accepted but not used; the MonitoringConfig proto is not in
tensorflow-serving-api), batching, warmup of MultiInference records (RunMultiInference is
not modelled: such a record fails the load with UNIMPLEMENTED, naming the double), warmup with
several threads (ModelWarmupOptions.num_model_warmup_threads; tensorflow_model_server leaves it
at 1), `--num_load_threads` (0 by default: after the start TF Serving runs loads one at a time in the
manager's thread, and a version that is retrying holds up the loads of every other model; the
double loads each version in its own thread), a successful retry after the version stopped
being aspired (TF Serving unloads it, CANCELLED "Loading of servable cancelled"; the double
unloads it as any unaspired version), base paths that are URIs, the exact text of errors raised inside the TensorFlow runtime (e.g. a
tf.Example that does not parse), the exact whitespace of the C++ DebugString() inside
Classify/Regress errors (newer C++ protobuf printers may vary it), resource limits, and
request logging.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import message, text_format
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
    status_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

__all__ = ["TFServingDouble", "cold_start", "parse_model_server_flags", "ModelServerFlags",
           "ServerStartError", "IMAGE_ENTRYPOINT_ARGS", "wait_for_state", "State"]

log = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State  # START, LOADING, AVAILABLE, UNLOADING, END
_AVAILABLE, _LOADING, _END = State.Value("AVAILABLE"), State.Value("LOADING"), State.Value("END")

# TensorFlow's error codes (tensorflow.error.Code, used in StatusProto) are gRPC's numbers.
_GRPC_CODE = {code.value[0]: code for code in grpc.StatusCode}
OK, UNKNOWN, INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, INTERNAL, DATA_LOSS = (
    grpc.StatusCode[name].value[0]
    for name in ("OK", "UNKNOWN", "INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION",
                 "INTERNAL", "DATA_LOSS"))
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED.value[0]

_TENSORFLOW_PLATFORM = "tensorflow"
_DEFAULT_SIGNATURE = "serving_default"
_PREDICT_METHODS = ("tensorflow/serving/predict", "tensorflow/serving/classify",
                    "tensorflow/serving/regress")
# TensorFlow's signature_constants (kClassifyMethodName, kClassifyInputs, ...).
_CLASSIFY_METHOD, _REGRESS_METHOD = _PREDICT_METHODS[1], _PREDICT_METHODS[2]
_CLASSIFY_INPUTS = _REGRESS_INPUTS = "inputs"
_CLASSIFY_OUTPUT_CLASSES, _CLASSIFY_OUTPUT_SCORES = "classes", "scores"
_REGRESS_OUTPUTS = "outputs"
_VERSION_DIR = re.compile(r"\s*[+-]?\d+\s*")  # what TF's safe_strto64 accepts
# saved_model_warmup_util.h's WarmupConsts and TensorFlow's kSavedModelAssetsExtraDirectory.
_ASSETS_EXTRA, _WARMUP_FILE, _MAX_WARMUP_RECORDS = ("assets.extra", "tf_serving_warmup_requests",
                                                    1000)
# Server::Options' (and ServerCore's, AspiredVersionsManager's) defaults for load retries.
DEFAULT_MAX_NUM_LOAD_RETRIES = 5
DEFAULT_LOAD_RETRY_INTERVAL_MICROS = 60 * 1000 * 1000


class ServingError(Exception):
    """A TF Serving error status: a tensorflow.error.Code number and its message."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:  # absl::Status::ToString(), used inside TF Serving's messages
        return f"{_GRPC_CODE.get(self.code, grpc.StatusCode.UNKNOWN).name}: {self.message}"


@dataclass
class _Bundle:
    """One loaded SavedModel: its own graph and session, and the signatures to serve."""

    session: Any
    signatures: dict


@dataclass
class _Version:
    """One row of the state table: what TF Serving's ServableStateMonitor knows about a
    version, plus what its manager keeps (aspired or not, the loaded bundle)."""

    name: str
    version: int
    path: str
    state: int
    seq: int  # state-change counter when this row last changed (a reload waits for newer ones)
    error: ServingError | None = None
    aspired: bool = True
    managed: bool = True  # False once the manager has let go (unloaded, or failed and dropped)
    bundle: _Bundle | None = None


class TFServingDouble:
    """TF Serving's ModelService and PredictionService on 127.0.0.1 (see the module docstring).

    load_delay_s: each load sleeps this long (state LOADING) before loading, to model slow loads.
    file_system_poll_wait_s: how often base paths are polled (TF Serving's flag; 1 s there).
    allow_version_labels_for_unavailable_models: TF Serving's flag of that name (default off):
        a label that is new, or unchanged, may point to a version that is not AVAILABLE yet.
    enable_signature_method_name_check: TF Serving's flag of that name (default off, as
        Server::Options has it): Predict, Classify and Regress check the SignatureDef's
        method_name (util.cc's GetSignatureMethodNameCheckFeature; see classify()).
    max_num_load_retries, load_retry_interval_s: TF Serving's --max_num_load_retries and
        --load_retry_interval_micros (in seconds here), with TF Serving's defaults, 5 and 60 s:
        a version that fails to load stays LOADING about 5 minutes before it ends. Tests whose
        loads fail pass small values (e.g. load_retry_interval_s=0.05, or 0 retries).
    enable_model_warmup, num_request_iterations_for_warmup: main.cc's flags (warmup on by
        default, as Server::Options has it; iterations used only when > 0): each load
        replays assets.extra/tf_serving_warmup_requests (see _run_saved_model_warmup).
    """

    def __init__(self, load_delay_s: float = 0.0, *, file_system_poll_wait_s: float = 0.05,
                 allow_version_labels_for_unavailable_models: bool = False,
                 enable_signature_method_name_check: bool = False,
                 max_num_load_retries: int = DEFAULT_MAX_NUM_LOAD_RETRIES,
                 load_retry_interval_s: float = DEFAULT_LOAD_RETRY_INTERVAL_MICROS / 1e6,
                 enable_model_warmup: bool = True, num_request_iterations_for_warmup: int = 0):
        self.load_delay_s = load_delay_s
        self.enable_model_warmup = enable_model_warmup
        self.num_request_iterations_for_warmup = num_request_iterations_for_warmup
        self.file_system_poll_wait_s = file_system_poll_wait_s
        self.allow_version_labels_for_unavailable_models = (
            allow_version_labels_for_unavailable_models)
        self.enable_signature_method_name_check = enable_signature_method_name_check
        self.max_num_load_retries = max_num_load_retries
        self.load_retry_interval_s = load_retry_interval_s

        self.address: str | None = None
        self.reload_requests: list[model_server_config_pb2.ModelServerConfig] = []
        # The last config whose models were applied (a reload that failed before that leaves it).
        self.config = model_server_config_pb2.ModelServerConfig(
            model_config_list=model_server_config_pb2.ModelConfigList())

        # The state table. One condition (its lock) guards all of it: RPC threads, the poller and
        # the load threads all read and change it, and waiters are woken on every change.
        self._cond = threading.Condition()
        self._versions: dict[str, dict[int, _Version]] = {}  # every version ever seen, by model
        self._labels: dict[str, dict[str, int]] = {}
        self._polled: dict[str, model_server_config_pb2.ModelConfig] = {}  # the poller's config
        self._seq = 0
        # ServerCore's config_: set before the label check, so even a reload refused there
        # becomes the reference for the next one's "no platform change" check.
        self._core_config = model_server_config_pb2.ModelConfigList()
        self._reload_lock = threading.Lock()  # ServerCore's config_mu_: one reload at a time
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._retired: list[Any] = []  # sessions of unloaded versions, closed at stop()
        self._server: grpc.Server | None = None
        self._executor: futures.ThreadPoolExecutor | None = None
        # A cold start's view of the pod's file system: container mount path -> host directory.
        # None (start()) reads paths as they are.
        self._mounts: dict[str, str] | None = None
        # True until the first ModelConfigList has been applied on a cold start: ServerCore's
        # storage_path_source_and_router_ is unset then, and AddModelsViaModelConfigList takes
        # its first-config path. start() behaves as a server whose first config was empty.
        self._awaiting_first_config = False
        self._model_config_file: str | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> str:
        if self._server is not None:
            raise RuntimeError("already started")
        address = self._serve_grpc()
        self._spawn(self._poll_loop, "poller")
        return address

    def _serve_grpc(self) -> str:
        # TF Serving accepts messages up to 2 GiB; grpc's Python default is 4 MiB.
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1),
                   ("grpc.so_reuseport", 0)]
        self._executor = futures.ThreadPoolExecutor(max_workers=8,
                                                    thread_name_prefix="tf-serving-double-rpc")
        server = grpc.server(self._executor, options=options)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(self), server)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _PredictionService(self), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        self.address = f"127.0.0.1:{port}"
        return self.address

    def stop(self) -> None:
        # A cold start that failed has threads and loaded versions but no gRPC server yet.
        if self._stopped.is_set() or (self._server is None and not self._threads):
            return
        self._stopped.set()
        with self._cond:
            self._cond.notify_all()  # wakes a reload waiting for a model to load
        if self._server is not None:
            self._server.stop(grace=None).wait()
            # grpc leaves its worker threads; handlers see _stopped
            self._executor.shutdown(wait=True)
        for thread in self._threads:
            thread.join(timeout=30)
        with self._cond:
            for rows in self._versions.values():
                for row in rows.values():
                    if row.bundle is not None:
                        self._retired.append(row.bundle.session)
                        row.bundle = None
            sessions, self._retired = self._retired, []
        for session in sessions:
            session.close()

    def __enter__(self) -> TFServingDouble:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _spawn(self, target, name: str, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=f"tf-serving-double-{name}",
                                  daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    # ---- HandleReloadConfigRequest (ServerCore::ReloadConfig) ----------------------------------

    def reload(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Applies a config as HandleReloadConfigRequest does; raises ServingError."""
        if config.WhichOneof("config") != "model_config_list":
            raise ServingError(INVALID_ARGUMENT,
                               "ServerModelConfig type not supported by HandleReloadConfigRequest."
                               " Only ModelConfigList is currently supported")
        self._reload_config(config)

    def _reload_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """ServerCore::ReloadConfig for a ModelConfigList: validate, labels, then the models.

        On the first config of a cold start (ServerCore::Create) the models go through
        AddModelsViaModelConfigList's first-config path: FileSystemStoragePathSource polls at
        once when it is connected (SetAspiredVersionsCallback), and
        ConnectAdaptersToManagerAndAwaitModelLoads waits for every model of the config."""
        models = config.model_config_list.config
        # Reloads queue behind each other; a stuck one (see _await_new_models) holds the rest.
        while not self._reload_lock.acquire(timeout=0.1):
            if self._stopped.is_set():
                raise ServingError(grpc.StatusCode.UNAVAILABLE.value[0], "server is stopping")
        try:
            _validate_model_config_list(models)
            _validate_no_models_change_platforms(self._core_config.config, models)
            self._core_config.CopyFrom(config.model_config_list)
            with self._cond:
                self._update_labels(models)
                for model in models:
                    if _platform(model) != _TENSORFLOW_PLATFORM:
                        raise ServingError(INVALID_ARGUMENT,
                                           f"Model {model.name} requests unsupported platform "
                                           f"{_platform(model)}")
                first = self._awaiting_first_config
                new_models = {m.name for m in models} - set(self._polled)
                for name in set(self._polled) - {m.name for m in models}:
                    self._aspire(name, {})  # dropped models: unaspire every version now
                self._polled = {m.name: m for m in models}  # the poller takes it from here
                self.config = model_server_config_pb2.ModelServerConfig()
                self.config.CopyFrom(config)
                since = self._seq
                if first and self.file_system_poll_wait_s >= 0:
                    self.poll()  # the source's initial poll (a negative wait disables polling)
            self._await_new_models(new_models, since, first=first)
            self._awaiting_first_config = False
        finally:
            self._reload_lock.release()

    def _update_labels(self, models) -> None:
        """ServerCore::UpdateModelVersionLabelMap: all labels valid, or none change."""
        labels: dict[str, dict[str, int]] = {}
        for model in models:
            rows = self._versions.get(model.name, {})
            for label, version in sorted(model.version_labels.items()):
                allowed = False
                if self.allow_version_labels_for_unavailable_models:
                    current = self._labels.get(model.name, {}).get(label)
                    allowed = current is None or current == version
                row = rows.get(version)
                if not allowed and (row is None or row.state != _AVAILABLE):
                    raise ServingError(
                        FAILED_PRECONDITION,
                        f"Request to assign label to version {version} of model {model.name}, "
                        "which is not currently available for inference")
                labels.setdefault(model.name, {})[label] = version
        self._labels = labels

    def _await_new_models(self, names: set[str], since: int, *, first: bool = False) -> None:
        """ServerCore::WaitUntilModelsAvailable: each new model's highest version (among those
        the poller aspires after this reload) must end AVAILABLE. With no version ever aspired
        (base_path missing or empty) this waits, as TF Serving does, until one appears or the
        double stops; the client's deadline ends the RPC but not the wait.

        first: the first config of a cold start, where the same wait is
        ConnectAdaptersToManagerAndAwaitModelLoads -> ConnectSourcesWithFastInitialLoad, whose
        failure reads "Some models did not become available: {{name: M version: V}, }"
        (tensorflow_serving/core/load_servables_fast.cc)."""
        with self._cond:
            while True:
                if self._stopped.is_set():
                    raise ServingError(grpc.StatusCode.UNAVAILABLE.value[0], "server is stopping")
                failed, pending = [], False
                for name in sorted(names):
                    rows = [r for r in self._versions.get(name, {}).values() if r.seq > since]
                    if not rows:
                        pending = True
                        continue
                    latest = max(rows, key=lambda r: r.version)
                    if latest.state == _END:
                        failed.append(latest)
                    elif latest.state != _AVAILABLE:
                        pending = True
                if not pending:
                    break
                self._cond.wait(timeout=0.5)
        if failed and first:
            ids = "".join(f"{{name: {r.name} version: {r.version}}}, " for r in failed)
            raise ServingError(UNKNOWN, f"Some models did not become available: {{{ids}}}")
        if failed:
            details = "".join(
                f"{{{{name: {r.name} version: {r.version}}}"
                + (f" due to error: {r.error}" if r.error else "") + "}, " for r in failed)
            raise ServingError(UNKNOWN, f"{len(failed)} model(s) did not become available: "
                                        f"{{{details}}}")

    # ---- the file-system poller (FileSystemStoragePathSource) --------------------------------

    def _poll_loop(self) -> None:
        while not self._stopped.wait(self.file_system_poll_wait_s):
            self.poll()

    def poll(self) -> None:
        """One poll of every model's base_path (the poller calls this periodically)."""
        with self._cond:
            aspired: dict[str, dict[int, str]] = {}
            for model in self._polled.values():
                base_path = self._host_path(model.base_path)
                if base_path is None or not os.path.exists(base_path):
                    # TF Serving's poll stops at the first such model: no model is updated.
                    log.error("FileSystemStoragePathSource encountered a filesystem access "
                              "error: Could not find base path %s for servable %s",
                              model.base_path, model.name)
                    return
                aspired[model.name] = _versions_to_aspire(model, base_path)
            for name, versions in aspired.items():
                self._aspire(name, versions)

    def _host_path(self, path: str) -> str | None:
        """Where a container path lives on this host: the longest mount path that holds it,
        mapped to its host directory (what the kubelet's volume mounts do). None: the path is
        under no mount, so the container cannot see it (the image holds no models or configs).
        Without mounts (start()), paths are read as they are."""
        if self._mounts is None:
            return path
        for mount in sorted(self._mounts, key=len, reverse=True):
            inside = mount.rstrip("/")
            if path == inside or path.startswith(inside + "/"):
                return os.path.join(self._mounts[mount], path[len(inside):].lstrip("/"))
        return None

    def _read_config_file(self, path: str) -> model_server_config_pb2.ModelServerConfig:
        """Server's ParseProtoTextFile<ModelServerConfig>: the file read through the mounts,
        parsed as protobuf text format (TextFormat::ParseFromString); raises ServingError."""
        host = self._host_path(path)
        if host is None or not os.path.isfile(host):
            # Env::NewReadOnlyMemoryRegionFromFile: the POSIX file system's IOError for ENOENT.
            raise ServingError(NOT_FOUND, f"{path}; No such file or directory")
        config = model_server_config_pb2.ModelServerConfig()
        try:
            text_format.Parse(Path(host).read_text(), config)
        except (text_format.ParseError, UnicodeDecodeError):
            raise ServingError(INVALID_ARGUMENT, f"Invalid protobuf file: '{path}'") from None
        return config

    def poll_config_file(self) -> ServingError | None:
        """Server::PollFilesystemAndReloadConfig, the `--model_config_file_poll_wait_seconds`
        thread's work: re-read the file and ServerCore::ReloadConfig it. Like TF Serving it only
        logs a failure; the failure is also returned, for tests."""
        try:
            config = self._read_config_file(self._model_config_file)
        except ServingError as failure:
            log.error("Failed to read ModelServerConfig file: %s", failure.message)
            return failure
        try:
            if self._awaiting_first_config and config.WhichOneof("config") is None:
                log.info("Taking no action for empty config.")  # still nothing served
                return None
            if config.WhichOneof("config") != "model_config_list":
                # ReloadConfig's transition check: once a ModelConfigList is served, only
                # another ModelConfigList is accepted.
                raise ServingError(FAILED_PRECONDITION,
                                   "Cannot transition to requested config. It is only legal to "
                                   "transition from one ModelConfigList to another.")
            self._reload_config(config)
        except ServingError as failure:
            log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", failure.message)
            return failure
        return None

    def _config_poll_loop(self, interval_s: float) -> None:
        # PeriodicFunction runs its function at once, then every interval.
        while not self._stopped.is_set():
            self.poll_config_file()
            if self._stopped.wait(interval_s):
                return

    # ---- the manager (AspiredVersionsManager + AvailabilityPreservingPolicy) -----------------
    # Called with self._cond held.

    def _set_state(self, row: _Version, state: int, error: ServingError | None = None) -> None:
        self._seq += 1
        row.state, row.error, row.seq = state, error, self._seq
        self._cond.notify_all()

    def _aspire(self, name: str, versions: dict[int, str]) -> None:
        rows = self._versions.setdefault(name, {})
        for row in rows.values():
            if row.managed and row.version not in versions:
                row.aspired = False
                if row.state == _END:  # a failed load the manager now lets go of
                    row.managed = False
        for version, path in versions.items():
            row = rows.get(version)
            if row is not None and row.managed:
                row.aspired = True  # already loading, serving or failed: nothing new to do
                continue
            self._seq += 1
            rows[version] = _Version(name, version, path, State.Value("START"), self._seq)
        self._manage(name)

    def _manage(self, name: str) -> None:
        rows = [r for r in self._versions.get(name, {}).values() if r.managed]
        aspired = [r for r in rows if r.aspired]
        # Unload versions no longer aspired, lowest first, but keep one serving until an aspired
        # version is AVAILABLE (the policy's rule).
        serving_unaspired = sorted((r for r in rows if not r.aspired and r.state == _AVAILABLE),
                                   key=lambda r: r.version)
        while serving_unaspired and (not aspired or len(serving_unaspired) > 1
                                     or any(r.state == _AVAILABLE for r in aspired)):
            self._unload(serving_unaspired.pop(0))
        # Load every newly aspired version, highest first.
        for row in sorted(aspired, key=lambda r: -r.version):
            if row.state == State.Value("START"):
                self._set_state(row, _LOADING)
                self._spawn(self._load, f"load-{name}-{row.version}", row)

    def _unload(self, row: _Version) -> None:
        if row.bundle is not None:
            self._retired.append(row.bundle.session)  # a Predict may still be using it
            row.bundle = None
        row.managed = False
        self._set_state(row, _END)

    def _load(self, row: _Version) -> None:
        """LoaderHarness::Load: the loader's Load (the SavedModel, then its warmup) retried by
        util/retrier.cc's Retry up to max_num_load_retries times after the first failure,
        load_retry_interval_s apart, while the version stays LOADING (the manager publishes
        nothing between attempts, so GetModelStatus shows LOADING with an OK status). Retries
        stop once the version is no longer aspired (BasicManager::CancelLoadServableRetry;
        Retry checks that after each failed attempt, so an attempt already waiting for its
        interval still runs). The last failure ends the version (END with that error)."""
        if self._stopped.wait(self.load_delay_s):
            return
        attempt = 0
        servable = f"{{name: {row.name} version: {row.version}}}"
        while True:
            if attempt:
                log.info("Retrying of Loading servable: %s retry: %d", servable, attempt)
            try:
                bundle, error = self._load_bundle(row.path), None
            except ServingError as failure:
                bundle, error = None, failure
                log.error("Loading servable: %s failed: %s", servable, failure)
            with self._cond:
                if self._stopped.is_set():
                    if bundle is not None:
                        self._retired.append(bundle.session)
                    return
                if error is None:
                    row.bundle = bundle
                    self._set_state(row, _AVAILABLE)
                    self._manage(row.name)
                    return
                attempt += 1
                # max_num_load_retries is a uint32 in BasicManager (main.cc's flag an int32).
                if attempt > self.max_num_load_retries % 2 ** 32 or not row.aspired:
                    log.error("Servable %s cannot be loaded: %s", servable, error)
                    row.managed = row.aspired  # kept (and not retried) while still aspired
                    self._set_state(row, _END, error)
                    self._manage(row.name)
                    return
            # Env::SleepForMicroseconds: a negative interval does not wait.
            if self._stopped.wait(max(self.load_retry_interval_s, 0.0)):
                return

    def _load_bundle(self, path: str) -> _Bundle:
        """The loader's Load as SavedModelBundleSourceAdapter's servable creator runs it:
        SavedModelBundleFactory::CreateSavedModelBundle, then, with enable_model_warmup (on
        by default), RunSavedModelWarmup on the new bundle; a warmup failure fails the load."""
        bundle = _load_saved_model(path)
        if self.enable_model_warmup:
            try:
                self._run_saved_model_warmup(bundle, path)
            except BaseException:
                bundle.session.close()
                raise
        return bundle

    def _run_saved_model_warmup(self, bundle: _Bundle, export_dir: str) -> None:
        """saved_model_warmup_util.cc's RunSavedModelWarmupUntracked with one warmup thread
        (ModelWarmupOptions' default): assets.extra/tf_serving_warmup_requests is optional;
        each record is read with TensorFlow's own TFRecord reader (the RecordReader that
        SequentialRecordReader wraps), parsed as a PredictionLog, replayed
        num_request_iterations times (main.cc's --num_request_iterations_for_warmup when > 0,
        else 1) through saved_model_warmup.cc's RunWarmupRequest, and counted; the first
        failure is returned. The count is checked after each record is replayed, so 1000
        records pass and the 1001st fails after its replay. A read error other than the end of
        the file fails too, DATA_LOSS with the hint TF Serving appends."""
        warmup_path = os.path.join(export_dir, _ASSETS_EXTRA, _WARMUP_FILE)
        if not os.path.exists(warmup_path):  # Env::FilesExist
            log.info("No warmup data file found at %s", warmup_path)
            return
        iterations = (self.num_request_iterations_for_warmup
                      if self.num_request_iterations_for_warmup > 0 else 1)
        records = tf.compat.v1.io.tf_record_iterator(warmup_path)
        count = 0
        while True:
            try:
                record = next(records)
            except StopIteration:  # OUT_OF_RANGE at the end: OK
                break
            except tf.errors.OpError as failure:
                if failure.error_code == DATA_LOSS:
                    raise ServingError(DATA_LOSS, f"{failure.message}. Please verify your "
                                                  "warmup data is in TFRecord format.") from None
                raise ServingError(failure.error_code, failure.message) from None
            prediction_log = prediction_log_pb2.PredictionLog()
            try:
                prediction_log.ParseFromString(record)
            except message.DecodeError:
                # StrCat writes the record's raw bytes; a StatusProto message must be UTF-8.
                raise ServingError(INVALID_ARGUMENT, "Failed to parse warmup record: "
                                                     f"{record.decode('utf-8', 'replace')} "
                                                     f"from {warmup_path}") from None
            for _ in range(iterations):
                self._run_warmup_request(prediction_log, bundle)
            count += 1
            if count > _MAX_WARMUP_RECORDS:
                raise ServingError(INVALID_ARGUMENT, "Number of warmup records exceeds the "
                                                     f"maximum ({_MAX_WARMUP_RECORDS}) at "
                                                     f"{warmup_path}")
        log.info("Finished reading warmup data for model at %s. Number of warmup records "
                 "read: %d.", warmup_path, count)

    def _run_warmup_request(self, prediction_log, bundle: _Bundle) -> None:
        """saved_model_warmup.cc's RunWarmupRequest: the record's request through RunRegress,
        RunClassify or RunPredict on this bundle, with no servable version (the request's
        model name and version are not looked at); the response is dropped. A record with no
        log_type does nothing."""
        kind = prediction_log.WhichOneof("log_type")
        if kind == "regress_log":
            self._run_regress(bundle, None, prediction_log.regress_log.request)
        elif kind == "classify_log":
            self._run_classify(bundle, None, prediction_log.classify_log.request)
        elif kind == "predict_log":
            self._run_predict(bundle, None, prediction_log.predict_log.request)
        elif kind in ("predict_streamed_log", "session_run_log"):
            number = prediction_log_pb2.PredictionLog.DESCRIPTOR.fields_by_name[kind].number
            raise ServingError(UNIMPLEMENTED, f"Unsupported log_type for warmup: {number}")
        elif kind == "multi_inference_log":
            # TF Serving replays it through RunMultiInference, which the double does not model.
            raise ServingError(UNIMPLEMENTED, "the TF Serving double does not model "
                                              "MultiInference, so it cannot replay a warmup "
                                              "record of multi_inference_log")

    # ---- reads -------------------------------------------------------------------------------

    def model_status(self, name: str,
                     version: int | None) -> list[tuple[int, int, ServingError | None]]:
        """(version, state, error) rows as GetModelStatus reports them, highest version first."""
        with self._cond:
            rows = self._versions.get(name, {})
            if version is not None:
                if version not in rows:
                    raise ServingError(NOT_FOUND,
                                       f"Could not find version {version} of model {name}")
                chosen = [rows[version]]
            else:
                chosen = sorted(rows.values(), key=lambda r: -r.version)
                if not chosen:
                    raise ServingError(NOT_FOUND, f"Could not find any versions of model {name}")
            return [(r.version, r.state, r.error) for r in chosen]

    def _servable(self, model_spec) -> tuple[int, _Bundle]:
        """ServerCore::ServableRequestFromModelSpec, then the serving map's lookup."""
        name = model_spec.name
        if not name:
            raise ServingError(INVALID_ARGUMENT, "ModelSpec has no name specified.")
        with self._cond:
            rows = self._versions.get(name, {})
            choice = model_spec.WhichOneof("version_choice")
            if choice == "version_label":
                label = model_spec.version_label
                if label not in self._labels.get(name, {}):
                    raise ServingError(INVALID_ARGUMENT,
                                       f"Unrecognized servable version label: {label}")
                choice, version = "version", self._labels[name][label]
            elif choice == "version":
                version = model_spec.version.value
            if choice == "version":
                row = rows.get(version)
                request = f"Specific({name}, {version})"
            else:
                serving = [r for r in rows.values() if r.state == _AVAILABLE]
                row = max(serving, key=lambda r: r.version) if serving else None
                request = f"Latest({name})"
            if row is None or row.state != _AVAILABLE or row.bundle is None:
                raise ServingError(NOT_FOUND, f"Servable not found for request: {request}")
            return row.version, row.bundle

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        """TF Serving's Predict (predict_util.cc's RunPredict); raises ServingError."""
        if not request.HasField("model_spec"):
            raise ServingError(INVALID_ARGUMENT, "Missing ModelSpec")
        version, bundle = self._servable(request.model_spec)
        return self._run_predict(bundle, version, request)

    def _run_predict(self, bundle: _Bundle, version: int | None,
                     request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        """predict_util.cc's RunPredict on one loaded bundle: what Predict runs once the
        servable is found, and what warmup replays (servable_version empty there, so the
        response's model_spec has no version)."""
        signature_name = request.model_spec.signature_name or _DEFAULT_SIGNATURE
        signature = bundle.signatures.get(signature_name)
        if signature is None:
            raise ServingError(FAILED_PRECONDITION,
                               f'Serving signature key "{signature_name}" not found.')
        # predict_util.cc's VerifySignature checks the method name only when the server's
        # --enable_signature_method_name_check is on (off by default: TF2 writes
        # tensorflow/serving/predict for every signature, so the name says little).
        if (self.enable_signature_method_name_check
                and signature.method_name not in _PREDICT_METHODS):
            raise ServingError(INTERNAL, "Expected prediction signature method_name to be one of "
                                         f"{{{', '.join(_PREDICT_METHODS)}}}. Was: "
                                         f"{signature.method_name}")
        expected = sorted(signature.inputs)
        sent = sorted(request.inputs)
        if len(sent) != len(expected):
            raise ServingError(
                INVALID_ARGUMENT,
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({{{','.join(sent)}}}) != len({{{','.join(expected)}}}). "
                f"Sent extra: {{{','.join(sorted(set(sent) - set(expected)))}}}. "
                f"Missing but required: {{{','.join(sorted(set(expected) - set(sent)))}}}.")
        feeds = {}
        for alias in sent:
            if alias not in signature.inputs:
                raise ServingError(INVALID_ARGUMENT,
                                   f"input tensor alias not found in signature: {alias}. "
                                   f"Inputs expected to be in the set {{{','.join(expected)}}}.")
            tensor_info, proto = signature.inputs[alias], request.inputs[alias]
            try:
                value = tf.make_ndarray(proto)
            except Exception:  # noqa: BLE001 (any undecodable TensorProto)
                raise ServingError(INVALID_ARGUMENT, f"tensor parsing error: {alias}") from None
            if proto.dtype != tensor_info.dtype:
                # Python's Session.run would cast silently; TF Serving's C++ session refuses.
                raise ServingError(INVALID_ARGUMENT,
                                   f"Expects arg[{expected.index(alias)}] to be "
                                   f"{_dtype_name(tensor_info.dtype)} but "
                                   f"{_dtype_name(proto.dtype)} is provided")
            feeds[tensor_info.name] = value
        aliases = list(request.output_filter)
        for alias in aliases:
            if alias not in signature.outputs:
                outputs = ",".join(sorted(signature.outputs))
                raise ServingError(INVALID_ARGUMENT,
                                   f"output tensor alias not found in signature: {alias} Outputs "
                                   f"expected to be in the set {{{outputs}}}.")
        if len(set(aliases)) != len(aliases):
            duplicate = next(a for a in aliases if aliases.count(a) > 1)
            raise ServingError(INVALID_ARGUMENT, f"duplicate output tensor alias: {duplicate}")
        aliases = aliases or sorted(signature.outputs)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        if version is not None:
            response.model_spec.version.value = version
        response.model_spec.signature_name = signature_name
        try:
            values = bundle.session.run([signature.outputs[a].name for a in aliases], feeds)
        except tf.errors.OpError as failure:
            raise ServingError(failure.error_code, failure.message) from None
        except ValueError as failure:  # e.g. a shape the placeholder cannot take
            raise ServingError(INVALID_ARGUMENT, str(failure)) from None
        for alias, value in zip(aliases, values):
            response.outputs[alias].CopyFrom(_as_proto_field(np.asarray(value)))
        return response

    # ---- Classify and Regress (classification_service.cc, classifier.cc, regressor.cc) -------

    def classify(self, request: classification_pb2.ClassificationRequest
                 ) -> classification_pb2.ClassificationResponse:
        """TF Serving's Classify on a TF1-session SavedModelBundle; raises ServingError.

        TensorflowClassificationServiceImpl::Classify ("Missing ModelSpec") ->
        ClassifyWithModelSpec (ServerCore::GetServableHandle: the version as Predict picks it)
        -> classifier.cc's RunClassify: GetClassificationSignatureDef, MakeModelSpec, then
        SavedModelTensorFlowClassifier::Classify: PreProcessClassification,
        PerformOneShotTensorComputation (util.cc: InputToSerializedExampleTensor, then one
        Session::Run feeding the serialized examples to the `inputs` tensor) and
        PostProcessClassificationResult."""
        if not request.HasField("model_spec"):
            raise ServingError(INVALID_ARGUMENT, "Missing ModelSpec")
        version, bundle = self._servable(request.model_spec)
        return self._run_classify(bundle, version, request)

    def _run_classify(self, bundle: _Bundle, version: int | None,
                      request: classification_pb2.ClassificationRequest
                      ) -> classification_pb2.ClassificationResponse:
        """classifier.cc's RunClassify on one loaded bundle (Classify, and warmup's replay of
        a ClassifyLog with servable_version empty)."""
        check = self.enable_signature_method_name_check
        signature = _get_signature_def(request.model_spec, bundle, _CLASSIFY_METHOD,
                                       "classification", _pre_process_classification, check)
        response = classification_pb2.ClassificationResponse()
        _make_model_spec(response.model_spec, request.model_spec, version)
        input_name, output_names = _pre_process_classification(signature, check)
        outputs, num_examples = _perform_one_shot_tensor_computation(
            bundle, request.input, input_name, output_names)
        _post_process_classification_result(signature, num_examples, output_names, outputs,
                                            response.result)
        return response

    def regress(self, request: regression_pb2.RegressionRequest
                ) -> regression_pb2.RegressionResponse:
        """TF Serving's Regress, as classify() but through regression_service.cc and
        regressor.cc: RunRegress -> GetRegressionSignatureDef, MakeModelSpec,
        PreProcessRegression, PerformOneShotTensorComputation, PostProcessRegressionResult."""
        if not request.HasField("model_spec"):
            raise ServingError(INVALID_ARGUMENT, "Missing ModelSpec")
        version, bundle = self._servable(request.model_spec)
        return self._run_regress(bundle, version, request)

    def _run_regress(self, bundle: _Bundle, version: int | None,
                     request: regression_pb2.RegressionRequest
                     ) -> regression_pb2.RegressionResponse:
        """regressor.cc's RunRegress on one loaded bundle (Regress, and warmup's replay of a
        RegressLog with servable_version empty)."""
        check = self.enable_signature_method_name_check
        signature = _get_signature_def(request.model_spec, bundle, _REGRESS_METHOD,
                                       "regression", _pre_process_regression, check)
        response = regression_pb2.RegressionResponse()
        _make_model_spec(response.model_spec, request.model_spec, version)
        input_name, output_names = _pre_process_regression(signature, check)
        outputs, num_examples = _perform_one_shot_tensor_computation(
            bundle, request.input, input_name, output_names)
        _post_process_regression_result(signature, num_examples, output_names, outputs,
                                        response.result)
        return response


# ---- cold start: tensorflow_model_server's main() -> Server::BuildAndStart -> ServerCore -------

# The tensorflow/serving image's ENTRYPOINT, /usr/bin/tf_serving_entrypoint.sh, runs
#   tensorflow_model_server --port=8500 --rest_api_port=8501 --model_name=${MODEL_NAME} \
#       --model_base_path=${MODEL_BASE_PATH}/${MODEL_NAME} "$@"
# with MODEL_NAME=model and MODEL_BASE_PATH=/models set in the image; a Kubernetes container's
# `args` are that "$@", so they come after (and override) these.
IMAGE_ENTRYPOINT_ARGS = ("--port=8500", "--rest_api_port=8501", "--model_name=model",
                         "--model_base_path=/models/model")


class ServerStartError(Exception):
    """tensorflow_model_server ending at start: `str()` is what main() printed before it
    returned -1; `status` is the ServingError behind it (None for a flag that did not parse)."""

    def __init__(self, message: str, status: ServingError | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class ModelServerFlags:
    """main.cc's flags that the double uses, with Server::Options' defaults."""

    port: int = 8500
    rest_api_port: int = 0
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = 0
    file_system_poll_wait_seconds: int = 1
    allow_version_labels_for_unavailable_models: bool = False
    enable_signature_method_name_check: bool = False
    max_num_load_retries: int = DEFAULT_MAX_NUM_LOAD_RETRIES
    load_retry_interval_micros: int = DEFAULT_LOAD_RETRY_INTERVAL_MICROS
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 0
    ignored: list[str] = field(default_factory=list)  # main.cc flags not modelled, unknown args


# main.cc's flag list, in its order (the first flag whose name the argument starts with takes
# it): (name, type). Flags of ModelServerFlags are used; the others are checked and ignored.
_MAIN_FLAGS = (
    ("port", "int32"), ("grpc_socket_path", "string"), ("rest_api_port", "int32"),
    ("rest_api_num_threads", "int32"), ("rest_api_timeout_in_ms", "int32"),
    ("rest_api_enable_cors_support", "bool"), ("enable_batching", "bool"),
    ("allow_version_labels_for_unavailable_models", "bool"),
    ("batching_parameters_file", "string"), ("enable_per_model_batching_parameters", "bool"),
    ("model_config_file", "string"), ("model_config_file_poll_wait_seconds", "int32"),
    ("model_name", "string"), ("model_base_path", "string"), ("num_load_threads", "int32"),
    ("num_unload_threads", "int32"), ("max_num_load_retries", "int32"),
    ("load_retry_interval_micros", "int64"), ("file_system_poll_wait_seconds", "int32"),
    ("flush_filesystem_caches", "bool"), ("tensorflow_session_parallelism", "int64"),
    ("tensorflow_session_config_file", "string"), ("tensorflow_intra_op_parallelism", "int64"),
    ("tensorflow_inter_op_parallelism", "int64"), ("use_alts_credentials", "bool"),
    ("ssl_config_file", "string"), ("platform_config_file", "string"),
    ("per_process_gpu_memory_fraction", "float"), ("saved_model_tags", "string"),
    ("grpc_channel_arguments", "string"), ("grpc_max_threads", "int32"),
    ("enable_model_warmup", "bool"), ("num_request_iterations_for_warmup", "int32"),
    ("version", "bool"), ("monitoring_config_file", "string"),
    ("remove_unused_fields_from_bundle_metagraph", "bool"), ("prefer_tflite_model", "bool"),
    ("num_tflite_pools", "int32"), ("num_tflite_interpreters_per_pool", "int32"),
    ("enable_signature_method_name_check", "bool"), ("xla_cpu_compilation_enabled", "bool"),
    ("enable_profiler", "bool"), ("thread_pool_factory_config_file", "string"),
)
_INTEGER = re.compile(r"\s*[+-]?\d+")  # sscanf("%d%c") reading exactly one integer
_FLOAT = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _parse_flag(arg: str, name: str, kind: str) -> tuple[bool, bool, Any]:
    """tensorflow::Flag::Parse (tensorflow/core/util/command_line_flags.cc): (was_found,
    value_parsing_ok, value). Bools take `--name`, `--name=true` or `--name=false`; the others
    `--name=VALUE`."""
    prefix = f"--{name}"
    if not arg.startswith(prefix):
        return False, True, None
    rest = arg[len(prefix):]
    if kind == "bool":
        if rest in ("", "=true", "=false"):
            return True, True, rest != "=false"
        log.error("Couldn't interpret value %s for flag %s.", rest, name)
        return True, False, rest
    if not rest.startswith("="):
        return False, True, None
    value = rest[1:]
    if kind == "string":
        return True, True, value
    pattern = _FLOAT if kind == "float" else _INTEGER
    if not pattern.fullmatch(value):
        log.error("Couldn't interpret value %s for flag %s.", value, name)
        return True, False, value
    return True, True, float(value) if kind == "float" else int(value)


def parse_model_server_flags(argv: Sequence[str]) -> ModelServerFlags:
    """main.cc's tensorflow::Flags::Parse over argv (without the program name): each argument
    goes to the first flag of main.cc's list that takes it, a later value overrides an earlier
    one, and what no flag takes (after a bare `--`, everything) is an unknown argument, which
    main() prints and ignores. A value that does not parse makes main() print the usage and
    return -1: ServerStartError."""
    flags = ModelServerFlags()
    bad: list[str] = []
    for index, arg in enumerate(argv):
        if arg == "--":
            flags.ignored.extend(argv[index:])
            break
        for name, kind in _MAIN_FLAGS:
            found, ok, value = _parse_flag(arg, name, kind)
            if not ok:
                bad.append(f"Couldn't interpret value {value} for flag {name}.")
            if found:
                if ok and hasattr(flags, name):
                    setattr(flags, name, value)
                elif ok:
                    flags.ignored.append(arg)
                break
        else:
            log.warning("unknown argument: %s", arg)
            flags.ignored.append(arg)
    if bad:
        raise ServerStartError(" ".join(bad))
    return flags


def cold_start(args: Sequence[str], mounts: Mapping[str, str | os.PathLike], *,
               entrypoint_args: Sequence[str] = IMAGE_ENTRYPOINT_ARGS,
               **options: Any) -> TFServingDouble:
    """Starts the double as a tensorflow/serving container starts: `args` exactly as in the
    rendered container, `mounts` {container mount path: host directory} for its volumes (e.g.
    {"/config": a directory holding the ConfigMap's files, "/models": the repository the PVC
    holds}). Returns the started double; raises ServerStartError when TF Serving's start fails.

    Models tensorflow_model_server's main() (flags, see parse_model_server_flags) ->
    Server::BuildAndStart (the model config from `--model_config_file`, or one model from
    `--model_name`/`--model_base_path` without it, BuildSingleModelConfig) -> ServerCore::Create
    -> ServerCore::ReloadConfig with that config: ValidateModelConfigList, then
    UpdateModelVersionLabelMap (a label on a version that is not AVAILABLE, i.e. on any
    version at this point, fails unless `--allow_version_labels_for_unavailable_models`), then
    AddModelsViaModelConfigList -> ConnectAdaptersToManagerAndAwaitModelLoads (every model's
    newest aspired version AVAILABLE). Then the `--model_config_file_poll_wait_seconds` thread
    starts and, last, the gRPC server. `options` go to TFServingDouble (e.g. load_delay_s)
    and win over the flags (e.g. load_retry_interval_s for a test's short retries)."""
    flags = parse_model_server_flags([*entrypoint_args, *args])
    double = TFServingDouble(
        **{"file_system_poll_wait_s": float(flags.file_system_poll_wait_seconds),
           "allow_version_labels_for_unavailable_models":
               flags.allow_version_labels_for_unavailable_models,
           "enable_signature_method_name_check": flags.enable_signature_method_name_check,
           "max_num_load_retries": flags.max_num_load_retries,
           "load_retry_interval_s": flags.load_retry_interval_micros / 1e6,
           "enable_model_warmup": flags.enable_model_warmup,
           "num_request_iterations_for_warmup": flags.num_request_iterations_for_warmup,
           **options})
    double._mounts = {str(mount): os.fspath(host) for mount, host in mounts.items()}
    double._awaiting_first_config = True
    try:
        _build_and_start(double, flags)
    except ServingError as failure:
        double.stop()
        raise ServerStartError(f"Failed to start server. Error: {failure}", failure) from None
    except BaseException:
        double.stop()
        raise
    return double


def _build_and_start(double: TFServingDouble, flags: ModelServerFlags) -> None:
    """Server::BuildAndStart, with ServerCore::Create's first ReloadConfig."""
    if flags.port == 0:
        raise ServingError(INVALID_ARGUMENT, "server_options.grpc_port is not set.")
    if not flags.model_base_path and not flags.model_config_file:
        raise ServingError(INVALID_ARGUMENT, "Both server_options.model_base_path and "
                                             "server_options.model_config_file are empty!")
    if flags.model_config_file:
        config = double._read_config_file(flags.model_config_file)
        double._model_config_file = flags.model_config_file
    else:  # BuildSingleModelConfig
        config = model_server_config_pb2.ModelServerConfig()
        config.model_config_list.config.add(name=flags.model_name,
                                            base_path=flags.model_base_path,
                                            model_platform=_TENSORFLOW_PLATFORM)
    # FileSystemStoragePathSource's own thread: 0 polls once (the initial poll), a negative
    # wait never polls.
    if double.file_system_poll_wait_s > 0:
        double._spawn(double._poll_loop, "poller")
    choice = config.WhichOneof("config")
    if choice == "custom_model_config":
        # Server's LoadCustomModelConfig: LOG(FATAL), the process aborts.
        raise ServerStartError("ModelServer does not yet support custom model config.")
    if choice == "model_config_list":
        double._reload_config(config)
    else:
        log.info("Taking no action for empty config.")  # ReloadConfig on an empty config
    if flags.model_config_file and flags.model_config_file_poll_wait_seconds > 0:
        double._spawn(double._config_poll_loop, "config-poller",
                      float(flags.model_config_file_poll_wait_seconds))
    double._serve_grpc()


# ---- gRPC servicers: translate ServingError into the RPC's status, as ToGRPCStatus does -------

_ERROR_MESSAGE_LIMIT = 1024  # grpc_status_util.cc's kErrorMessageLimit (bytes)


def _abort(context, failure: ServingError):
    """grpc_status_util.cc's ToGRPCStatus: the code as is; a message over 1024 bytes is cut to
    its first 1024 bytes plus "...TRUNCATED" (signature dumps in Classify/Regress errors get
    that long)."""
    message = failure.message.encode()
    if len(message) > _ERROR_MESSAGE_LIMIT:
        message = message[:_ERROR_MESSAGE_LIMIT] + b"...TRUNCATED"
    context.abort(_GRPC_CODE.get(failure.code, grpc.StatusCode.UNKNOWN),
                  message.decode(errors="replace"))


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, double: TFServingDouble):
        self._double = double

    def HandleReloadConfigRequest(self, request, context):
        config = model_server_config_pb2.ModelServerConfig()
        config.CopyFrom(request.config)
        self._double.reload_requests.append(config)
        try:
            self._double.reload(config)
        except ServingError as failure:
            # TF Serving fills response.status too, but a failed gRPC status sends no message.
            _abort(context, failure)
        return model_management_pb2.ReloadConfigResponse(status=status_pb2.StatusProto(
            error_code=OK))

    def GetModelStatus(self, request, context):
        if not request.HasField("model_spec"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        try:
            rows = self._double.model_status(spec.name, version)
        except ServingError as failure:
            _abort(context, failure)
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, state, error in rows:
            response.model_version_status.add(
                version=number, state=state,
                status=status_pb2.StatusProto(error_code=error.code if error else OK,
                                              error_message=error.message if error else ""))
        return response


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, double: TFServingDouble):
        self._double = double

    def Predict(self, request, context):
        try:
            return self._double.predict(request)
        except ServingError as failure:
            _abort(context, failure)

    def Classify(self, request, context):
        try:
            return self._double.classify(request)
        except ServingError as failure:
            _abort(context, failure)

    def Regress(self, request, context):
        try:
            return self._double.regress(request)
        except ServingError as failure:
            _abort(context, failure)


# ---- helpers -----------------------------------------------------------------------------------

def _platform(model) -> str:
    """ServerCore's GetPlatform (the deprecated model_type still counts)."""
    if model.model_type != model_server_config_pb2.MODEL_TYPE_UNSPECIFIED:
        if model.model_platform:
            raise ServingError(INVALID_ARGUMENT,
                               "Illegal setting both ModelServerConfig::model_type (deprecated) "
                               "and ModelServerConfig::model_platform.")
        if model.model_type != model_server_config_pb2.TENSORFLOW:
            raise ServingError(INVALID_ARGUMENT, f"ModelServerConfig::model_type choice "
                                                 f"{model.model_type} not supported.")
        return _TENSORFLOW_PLATFORM
    if not model.model_platform:
        raise ServingError(INVALID_ARGUMENT,
                           "Illegal setting neither ModelServerConfig::model_type (deprecated) "
                           "nor ModelServerConfig::model_platform.")
    return model.model_platform


def _validate_model_config_list(models) -> None:
    seen = set()
    for model in models:
        if model.name in seen:
            raise ServingError(INVALID_ARGUMENT,
                               f"Illegal to list model {model.name} multiple times in config list")
        seen.add(model.name)
    for model in models:
        is_uri = re.match(r"[A-Za-z][0-9A-Za-z.]*://", model.base_path)
        if not is_uri and not model.base_path.startswith("/"):
            raise ServingError(INVALID_ARGUMENT,
                               f"Expected model {model.name} to have an absolute path or URI; "
                               f"got base_path()={model.base_path}")


def _validate_no_models_change_platforms(old_models, new_models) -> None:
    old = {model.name: _platform(model) for model in old_models}
    for model in new_models:
        if model.name in old and _platform(model) != old[model.name]:
            raise ServingError(INVALID_ARGUMENT,
                               f"Illegal to change a model's platform. For model {model.name} "
                               f"platform was {old[model.name]} and new platform requested is "
                               f"{_platform(model)}")


def _versions_to_aspire(model, base_path: str) -> dict[int, str]:
    """The versions FileSystemStoragePathSource aspires for one model: {version: path}.
    base_path: model.base_path as this process sees it (through a cold start's mounts)."""
    children = {}
    for child in sorted(os.listdir(base_path)):
        if _VERSION_DIR.fullmatch(child):
            children[int(child)] = os.path.join(base_path, child)
    policy = model.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return children
    if choice == "specific":
        wanted = set(policy.specific.versions)
        for version in sorted(wanted - set(children)):
            log.warning("Version %d of servable %s, which was requested to be served as a "
                        "'specific' version in the servable's version policy, was not found in "
                        "the file system", version, model.name)
        return {v: p for v, p in children.items() if v in wanted}
    count = max(policy.latest.num_versions, 1) if choice == "latest" else 1
    return {v: children[v] for v in sorted(children, reverse=True)[:count]}


def _load_saved_model(path: str) -> _Bundle:
    """Loads like TF Serving's session bundle loader: tag "serve", own graph and session."""
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    try:
        with graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
    except tf.errors.OpError as failure:
        session.close()
        raise ServingError(failure.error_code, failure.message) from None
    except OSError as failure:  # the Python loader's wording; TF Serving's C++ loader's codes
        session.close()
        message = str(failure)
        raise ServingError(NOT_FOUND if "does not exist" in message else DATA_LOSS,
                           message) from None
    except Exception as failure:  # noqa: BLE001 (e.g. no MetaGraph with the "serve" tag)
        session.close()
        code = NOT_FOUND if "could not be found" in str(failure) else UNKNOWN
        raise ServingError(code, f"{str(failure)} (SavedModel at {path})") from None
    return _Bundle(session=session, signatures=dict(meta_graph.signature_def))


def _dtype_name(enum: int) -> str:
    """TensorFlow's DataTypeString: DT_FLOAT -> "float"."""
    return types_pb2.DataType.Name(enum).removeprefix("DT_").lower()


# numpy dtype -> the TensorProto field Tensor::AsProtoField fills.
_VALUE_FIELDS = {
    np.dtype(np.float32): "float_val", np.dtype(np.float64): "double_val",
    np.dtype(np.int32): "int_val", np.dtype(np.int16): "int_val", np.dtype(np.int8): "int_val",
    np.dtype(np.uint8): "int_val", np.dtype(np.uint16): "int_val",
    np.dtype(np.int64): "int64_val", np.dtype(np.uint32): "uint32_val",
    np.dtype(np.uint64): "uint64_val", np.dtype(np.bool_): "bool_val",
}


def _as_proto_field(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A TensorProto with its values in the typed fields (float_val, string_val...), as TF
    Serving's gRPC Predict answers (clients may read float_val directly); others as TF writes."""
    shape = tf.TensorShape(array.shape).as_proto()
    if array.dtype.kind in "OSU":
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape)
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode()
                                for v in array.ravel())
        return proto
    field = _VALUE_FIELDS.get(array.dtype)
    if field is None:
        return tf.make_tensor_proto(array)
    proto = tensor_pb2.TensorProto(dtype=tf.as_dtype(array.dtype).as_datatype_enum,
                                   tensor_shape=shape)
    getattr(proto, field).extend(array.ravel().tolist())
    return proto


# ---- Classify and Regress: classifier.cc, regressor.cc and util.cc ---------------------------

@dataclass
class _Output:
    """One fetched tensor: its value and its dtype in the graph (a DataType enum), which is
    what the C++ Tensor carries (numpy alone cannot tell DT_STRING from other object data)."""

    value: np.ndarray
    dtype: int

    @property
    def shape_string(self) -> str:  # TensorShape::DebugString: "[3,2]", "[]" for a scalar
        return "[" + ",".join(str(d) for d in self.value.shape) + "]"


def _debug_string(signature) -> str:
    """SignatureDef::DebugString(), as protobuf text format (Python's printer; the C++ one
    writes the same fields in the same order)."""
    return text_format.MessageToString(signature)


def _get_signature_def(model_spec, bundle: _Bundle, method: str, kind: str, pre_process,
                       check: bool):
    """GetClassificationSignatureDef / GetRegressionSignatureDef: the signature by
    model_spec.signature_name (default "serving_default"); then, with the method-name check
    on, its method_name must be the API's; with it off (TF Serving's default) the signature
    passes PreProcessClassification / PreProcessRegression's structure checks instead."""
    name = model_spec.signature_name or _DEFAULT_SIGNATURE
    signature = bundle.signatures.get(name)
    if signature is None:
        raise ServingError(INVALID_ARGUMENT, f"No signature was found with the name: {name}")
    if check:
        if signature.method_name != method:
            raise ServingError(INVALID_ARGUMENT, f"Expected {kind} signature method_name to be "
                                                 f"{method}. Was: {signature.method_name}")
    else:
        pre_process(signature, check)
    return signature


def _pre_process_classification(signature, check: bool) -> tuple[str, list[str]]:
    """classifier.cc's PreProcessClassification: (input tensor name, output tensor names,
    classes before scores)."""
    if check and signature.method_name != _CLASSIFY_METHOD:
        raise ServingError(INVALID_ARGUMENT, "Expected classification signature method_name to "
                                             f"be {_CLASSIFY_METHOD}. Was: "
                                             f"{signature.method_name}")
    if len(signature.inputs) != 1:
        raise ServingError(INVALID_ARGUMENT, "Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise ServingError(INVALID_ARGUMENT, "Expected one or two output Tensors, found "
                                             f"{len(signature.outputs)}")
    if _CLASSIFY_INPUTS not in signature.inputs:
        raise ServingError(INVALID_ARGUMENT, "No classification inputs found in SignatureDef: "
                                             + _debug_string(signature))
    names = [signature.outputs[alias].name
             for alias in (_CLASSIFY_OUTPUT_CLASSES, _CLASSIFY_OUTPUT_SCORES)
             if alias in signature.outputs]
    if not names:
        raise ServingError(INVALID_ARGUMENT,
                           "Expected classification signature outputs to contain at least one "
                           f'of "{_CLASSIFY_OUTPUT_CLASSES}" or "{_CLASSIFY_OUTPUT_SCORES}". '
                           f"Signature was: {_debug_string(signature)}")
    return signature.inputs[_CLASSIFY_INPUTS].name, names


def _pre_process_regression(signature, check: bool) -> tuple[str, list[str]]:
    """regressor.cc's PreProcessRegression: (input tensor name, [output tensor name])."""
    if check and signature.method_name != _REGRESS_METHOD:
        raise ServingError(INVALID_ARGUMENT, "Expected regression signature method_name to be "
                                             f"{_REGRESS_METHOD}. Was: {signature.method_name}")
    if len(signature.inputs) != 1:
        raise ServingError(INVALID_ARGUMENT, "Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise ServingError(INVALID_ARGUMENT, "Expected one output Tensor.")
    if _REGRESS_INPUTS not in signature.inputs:
        raise ServingError(INVALID_ARGUMENT, "No regression inputs found in SignatureDef: "
                                             + _debug_string(signature))
    if _REGRESS_OUTPUTS not in signature.outputs:
        raise ServingError(INVALID_ARGUMENT, "No regression outputs found in SignatureDef: "
                                             + _debug_string(signature))
    return signature.inputs[_REGRESS_INPUTS].name, [signature.outputs[_REGRESS_OUTPUTS].name]


def _make_model_spec(spec, request_spec, version: int | None) -> None:
    """util.cc's MakeModelSpec as RunClassify/RunRegress call it: the request's model name,
    its signature_name ("serving_default" when empty) and the version that served."""
    spec.name = request_spec.name
    spec.signature_name = request_spec.signature_name or _DEFAULT_SIGNATURE
    if version is not None:  # warmup's replays pass no servable version
        spec.version.value = version


def _input_to_serialized_example_tensor(request_input) -> np.ndarray:
    """util.cc's InputToSerializedExampleTensor: a DT_STRING vector, one serialized
    tf.Example per example. With example_list_with_context each element is the serialized
    context followed by the serialized example: concatenated protobuf messages parse as one
    merged message, so the example's features are added to the context's (a feature in both
    takes the example's value). No example at all (or no input) is INVALID_ARGUMENT."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        serialized = [e.SerializeToString() for e in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        listed = request_input.example_list_with_context
        context = listed.context.SerializeToString()
        serialized = [context + e.SerializeToString() for e in listed.examples]
    else:
        serialized = []
    if not serialized:
        raise ServingError(INVALID_ARGUMENT, "Input is empty.")
    return np.array(serialized, dtype=object)


def _perform_one_shot_tensor_computation(bundle: _Bundle, request_input, input_name: str,
                                         output_names: list[str]
                                         ) -> tuple[list[_Output], int]:
    """util.cc's PerformOneShotTensorComputation: the examples tensor fed to the signature's
    input tensor, one Session::Run fetching the output tensors; (outputs, number of examples)."""
    examples = _input_to_serialized_example_tensor(request_input)
    graph = bundle.session.graph
    try:
        fed = graph.get_tensor_by_name(input_name)
        fetched = [graph.get_tensor_by_name(name) for name in output_names]
    except (KeyError, ValueError) as failure:  # a signature naming a tensor the graph lacks
        raise ServingError(INVALID_ARGUMENT, str(failure)) from None
    if fed.dtype != tf.string:
        # Python's Session.run would try to convert the strings; TF Serving's C++ session
        # refuses the feed (FunctionCallFrame::SetArgs), with the feed's index.
        raise ServingError(INVALID_ARGUMENT, "Expects arg[0] to be "
                                             f"{_dtype_name(fed.dtype.as_datatype_enum)} but "
                                             "string is provided")
    try:
        values = bundle.session.run(output_names, {input_name: examples})
    except tf.errors.OpError as failure:
        raise ServingError(failure.error_code, failure.message) from None
    except ValueError as failure:
        raise ServingError(INVALID_ARGUMENT, str(failure)) from None
    outputs = [_Output(np.asarray(value), tensor.dtype.as_datatype_enum)
               for value, tensor in zip(values, fetched)]
    return outputs, len(examples)


def _post_process_classification_result(signature, num_examples: int, output_names,
                                        outputs: list[_Output], result) -> None:
    """classifier.cc's PostProcessClassificationResult: classes and scores must be
    [batch_size, num_classes], DT_STRING and DT_FLOAT, with one row per example and, when both
    are there, as many columns; then result.classifications[i].classes[j] gets label and/or
    score."""
    if len(outputs) != len(output_names):
        raise ServingError(INVALID_ARGUMENT, f"Expected {len(output_names)} output tensor(s).  "
                                             f"Got: {len(outputs)}")
    names = {alias: signature.outputs[alias].name if alias in signature.outputs else ""
             for alias in (_CLASSIFY_OUTPUT_CLASSES, _CLASSIFY_OUTPUT_SCORES)}
    classes = scores = None
    for name, output in zip(output_names, outputs):
        if name == names[_CLASSIFY_OUTPUT_CLASSES]:
            classes = output
        elif name == names[_CLASSIFY_OUTPUT_SCORES]:
            scores = output
    for output, kind, dtype in ((classes, "classes", types_pb2.DT_STRING),
                                (scores, "scores", types_pb2.DT_FLOAT)):
        if output is None:
            continue
        if output.value.ndim != 2:
            raise ServingError(INVALID_ARGUMENT, "Expected Tensor shape: [batch_size "
                                                 f"num_classes] but got {output.shape_string}")
        if output.dtype != dtype:
            raise ServingError(INVALID_ARGUMENT,
                               f"Expected {kind} Tensor of {types_pb2.DataType.Name(dtype)}. "
                               f"Got: {types_pb2.DataType.Name(output.dtype)}")
        if output.value.shape[0] != num_examples:
            raise ServingError(INVALID_ARGUMENT, f"Expected {kind} output batch size of "
                                                 f"{num_examples}. Got: {output.value.shape[0]}")
    if classes is not None and scores is not None:
        if classes.value.shape[1] != scores.value.shape[1]:
            raise ServingError(INVALID_ARGUMENT,
                               "Tensors class and score should match in dim_size(1). Got "
                               f"{classes.value.shape[1]} vs. {scores.value.shape[1]}")
    num_classes = (classes if classes is not None else scores).value.shape[1]
    for i in range(num_examples):
        classifications = result.classifications.add()
        for c in range(num_classes):
            entry = classifications.classes.add()
            if classes is not None:
                # Class.label is a proto3 string; C++ copies the bytes, Python needs text.
                entry.label = bytes(classes.value[i, c]).decode("utf-8", errors="replace")
            if scores is not None:
                entry.score = float(scores.value[i, c])


def _post_process_regression_result(signature, num_examples: int, output_names,
                                    outputs: list[_Output], result) -> None:
    """regressor.cc's PostProcessRegressionResult: `outputs` must be [batch_size] or
    [batch_size, 1] with one row per example, DT_FLOAT; result.regressions[i].value."""
    if len(outputs) != len(output_names):
        raise ServingError(INVALID_ARGUMENT, "Expected output_tensors and output_tensor_names "
                                             "to have the same size.")
    if _REGRESS_OUTPUTS not in signature.outputs:
        raise ServingError(FAILED_PRECONDITION, "No regression outputs found in SignatureDef: "
                                                + _debug_string(signature))
    name = signature.outputs[_REGRESS_OUTPUTS].name
    output = next((o for n, o in zip(output_names, outputs) if n == name), None)
    if output is None:
        raise ServingError(INVALID_ARGUMENT, f"Could not find output tensor '{name}'")
    shape = output.value.shape
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise ServingError(INVALID_ARGUMENT, "Expected output Tensor shape to be either "
                                             "[batch_size] or [batch_size, 1] but got "
                                             f"{output.shape_string}")
    if num_examples != shape[0]:
        raise ServingError(INVALID_ARGUMENT, "Input batch size did not match output batch "
                                             f"size: {num_examples} vs. {shape[0]}")
    if output.dtype != types_pb2.DT_FLOAT:
        raise ServingError(INVALID_ARGUMENT, "Expected output Tensor of DT_FLOAT.  Got: "
                                             f"{types_pb2.DataType.Name(output.dtype)}")
    if output.value.size != num_examples:
        raise ServingError(INVALID_ARGUMENT, f"Expected output batch size to be {num_examples}."
                                             f"  Got: {output.value.size}")
    for value in output.value.ravel()[:num_examples]:
        result.regressions.add(value=float(value))


def wait_for_state(target, name: str, version: int, state="AVAILABLE",
                   timeout_s: float = 30.0, interval_s: float = 0.05):
    """Polls GetModelStatus until version `version` of model `name` is in `state` (a State
    value or its name) and returns its ModelVersionStatus.

    target: a "host:port" address, a TFServingDouble, or a ModelServiceStub. Works against a
    real TF Serving too. Raises TimeoutError after timeout_s (with the last status seen), and
    fails at once if the version ends (END) with an error while another state is awaited.
    """
    wanted = State.Value(state) if isinstance(state, str) else state
    address = getattr(target, "address", target)
    channel = grpc.insecure_channel(address) if isinstance(address, str) else None
    stub = model_service_pb2_grpc.ModelServiceStub(channel) if channel else target
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    request.model_spec.version.value = version
    deadline = time.monotonic() + timeout_s
    last = "no status yet"
    try:
        while True:
            try:
                status = stub.GetModelStatus(
                    request, timeout=max(1.0, deadline - time.monotonic())).model_version_status[0]
            except grpc.RpcError as failure:
                if failure.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                last = f"NOT_FOUND: {failure.details()}"
            else:
                if status.state == wanted:
                    return status
                last = (f"{State.Name(status.state)} (error_code {status.status.error_code}: "
                        f"{status.status.error_message!r})")
                if status.state == _END and status.status.error_code != OK:
                    raise RuntimeError(f"version {version} of model {name} failed to load "
                                       f"while waiting for {State.Name(wanted)}: {last}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"version {version} of model {name} not "
                                   f"{State.Name(wanted)} after {timeout_s} s; last: {last}")
            time.sleep(interval_s)
    finally:
        if channel is not None:
            channel.close()
