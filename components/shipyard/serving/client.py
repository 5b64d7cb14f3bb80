"""TF Serving's gRPC ModelService: reload the model config, read version states.

The only code that talks to a TF Serving server. Errors come back as ServingError (exit 7)
naming the address and what to check.
"""

from __future__ import annotations

import time
from typing import Any

import grpc

from shipyard.core.errors import ServingError, UsageError
from shipyard.serving.protos import (
    get_model_status_pb2,
    model_management_pb2,
    model_server_config_pb2,
    model_service_pb2_grpc,
)

AVAILABLE = "AVAILABLE"
END = "END"
LOADING = "LOADING"
# What a version LOADING past the deadline may be doing: TF Serving retries a failing load
# (tensorflow_model_server's --max_num_load_retries, default 5, and
# --load_retry_interval_micros, default 60 s: loader_harness.cc's Load through retrier.cc),
# reporting LOADING all along, and only then ends it with the error.
_STILL_LOADING = (
    "TF Serving retries a load that fails --max_num_load_retries times (default 5), "
    "--load_retry_interval_micros apart (default 60000000, 60 s), and reports the version "
    "LOADING until the last attempt fails, so a broken version (or one whose warmup "
    "requests fail) can stay LOADING about 5 minutes. Check the server's log for \"Loading "
    "servable: {{name: {name} version: V}} failed\": if it is there, fix the version (or "
    "lower those flags so failures show sooner); if not, the load is just slow: raise "
    "--timeout")
_RPC_TIMEOUT_S = 30.0
_POLL_S = 0.2


def check_address(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"serving_address: expected HOST:PORT (TF Serving's gRPC port, "
                         f"usually 8500), got {address!r}", param="serving_address")
    return address


class ServingClient:
    def __init__(self, address: str):
        self.address = check_address(address)
        self._channel = grpc.insecure_channel(address)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reload(self, config: model_server_config_pb2.ModelServerConfig,
               timeout_s: float = _RPC_TIMEOUT_S, *, budget_s: float | None = None) -> None:
        """Sends the full config (TF Serving replaces its whole model list with it).

        TF Serving answers only once the config is applied, which for a model new to it
        means once its version has loaded: hence the caller's timeout. A refused config
        comes back as an RPC error (FAILED_PRECONDITION for a label on a version that is not
        AVAILABLE, INVALID_ARGUMENT for a bad config).
        """
        request = model_management_pb2.ReloadConfigRequest(config=config)
        try:
            response = self._models.HandleReloadConfigRequest(request, timeout=timeout_s)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                loading = self._still_loading(config)
                if loading:
                    raise ServingError(
                        f"timed out after {budget_s or timeout_s:g} s waiting for TF Serving at "
                        f"{self.address} to apply the config (it answers once new models have "
                        f"loaded): {loading} still LOADING. "
                        + _STILL_LOADING.format(name=loading.split(" ", 1)[0])) from None
                raise ServingError(
                    f"timed out after {budget_s or timeout_s:g} s waiting for TF Serving at "
                    f"{self.address} to apply the config (it answers once new models have "
                    "loaded); raise --timeout for large models, or check the server's log"
                ) from None
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                raise self._unreachable(err, "reload config") from None
            raise ServingError(f"TF Serving at {self.address} refused the config: "
                               f"{err.code().name}: {err.details()}") from None
        if response.status.error_code != 0:
            raise ServingError(f"TF Serving at {self.address} refused the config: "
                               f"{response.status.error_message or response.status.error_code}")

    def version_states(self, name: str) -> dict[int, dict[str, Any]]:
        """{version: {"state": "AVAILABLE"|"LOADING"|..., "error": str}}; {} for an unknown
        model (TF Serving answers NOT_FOUND before it has loaded any version)."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        try:
            response = self._models.GetModelStatus(request, timeout=_RPC_TIMEOUT_S)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return {}
            raise self._unreachable(err, "read model status") from None
        states = {}
        for status in response.model_version_status:
            state = get_model_status_pb2.ModelVersionStatus.State.Name(status.state)
            states[int(status.version)] = {"state": state,
                                           "error": status.status.error_message}
        return states

    def wait_available(self, name: str, versions: tuple[int, ...], timeout_s: float, *,
                       seen: dict[int, dict[str, Any]] | None = None,
                       budget_s: float | None = None) -> None:
        """Returns once every version in `versions` is AVAILABLE; ServingError when one ends
        in error or `timeout_s` passes.

        `seen`: the states before the reload. A version that had already failed keeps that
        END-with-error state until the server starts loading it again, so an unchanged one
        is still pending, not failed. `budget_s` is the whole push's timeout, for the message.
        """
        deadline = time.monotonic() + timeout_s
        seen = seen or {}
        while True:
            states = self.version_states(name)
            pending = [v for v in versions if states.get(v, {}).get("state") != AVAILABLE]
            if not pending:
                return
            for version in pending:
                status = states.get(version, {})
                failed = status.get("state") == END and status.get("error")
                if failed and status != seen.get(version):
                    raise ServingError(f"TF Serving at {self.address} failed to load {name} "
                                       f"version {version}: {status['error']}")
            if time.monotonic() >= deadline:
                described = ", ".join(f"{v}: {states.get(v, {}).get('state', 'not known')}"
                                      for v in pending)
                loading = [v for v in pending if states.get(v, {}).get("state") == LOADING]
                if loading:
                    raise ServingError(
                        f"timed out after {budget_s or timeout_s:g} s waiting for TF Serving "
                        f"at {self.address} to report {name} version(s) AVAILABLE "
                        f"({described}): {name} version(s) "
                        f"{', '.join(map(str, loading))} still LOADING. "
                        + _STILL_LOADING.format(name=name))
                raise ServingError(
                    f"timed out after {budget_s or timeout_s:g} s waiting for TF Serving at "
                    f"{self.address} to report {name} version(s) AVAILABLE ({described}); raise "
                    "--timeout for large models, or check the server's log")
            time.sleep(_POLL_S)

    def wait_unloaded(self, name: str, versions: set[int] | tuple[int, ...],
                      timeout_s: float) -> tuple[dict[int, dict[str, Any]], list[int]]:
        """Waits until none of `versions` is served: each is END or no longer reported.

        TF Serving answers a reload that drops a version before unloading it; the unload
        follows in the background (its file-system poll, then UNLOADING, then END). Returns
        the last states read and the versions still not unloaded when `timeout_s` passed. A
        timeout is not an error here: the config was applied, and the server finishes the
        unload on its own; the caller decides how to say so.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            states = self.version_states(name)
            pending = sorted(v for v in versions
                             if v in states and states[v]["state"] != END)
            if not pending or time.monotonic() >= deadline:
                return states, pending
            time.sleep(min(_POLL_S, max(deadline - time.monotonic(), 0.0)))

    def _still_loading(self, config: model_server_config_pb2.ModelServerConfig) -> str:
        """After a reload's deadline: "NAME version(s) V, ..." for the config's versions that
        TF Serving reports LOADING ("" if none, or if the states cannot be read)."""
        found = []
        for model in config.model_config_list.config:
            try:
                states = self.version_states(model.name)
            except ServingError:
                return ""
            loading = sorted(v for v, s in states.items() if s["state"] == LOADING)
            if loading:
                found.append(f"{model.name} version(s) {', '.join(map(str, loading))}")
        return "; ".join(found)

    def _unreachable(self, err: grpc.RpcError, what: str) -> ServingError:
        return ServingError(f"cannot {what} at TF Serving {self.address}: "
                            f"{err.code().name}: {err.details()}. Check --serving-address "
                            "(the gRPC port, usually 8500) and that the server is up")
