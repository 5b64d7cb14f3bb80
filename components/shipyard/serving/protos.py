"""TF Serving's protos and gRPC stubs, importable without importing TensorFlow.

`tensorflow_serving.apis.status_pb2` (used by every ModelService response) imports
`tensorflow.core.protobuf.error_codes_pb2`, which imports the whole `tensorflow` package: ~6 s
for a command that only talks to a server. Those two error-code modules only register a proto
file with protobuf's descriptor pool, so they are loaded here straight from their files under
private names, and `status_pb2` is loaded with its import pointed at them. Once TensorFlow is
imported anyway (in the exporter, in tests), the normal modules are used and nothing is patched.
Re-registering the identical proto files later is allowed by protobuf.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

_STATUS = "tensorflow_serving.apis.status_pb2"
# (module the generated code imports, the name it is loaded under here, its file)
_ERROR_CODES = (
    ("tensorflow.compiler.xla.tsl.protobuf", "_shipyard_tsl_error_codes_pb2",
     "compiler/xla/tsl/protobuf/error_codes_pb2.py"),
    ("tensorflow.core.protobuf", "_shipyard_core_error_codes_pb2",
     "core/protobuf/error_codes_pb2.py"),
)


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # finds a top-level package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{package} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def _load_rewritten(module_name: str, path: Path) -> ModuleType:
    source = path.read_text()
    for package, private, _ in _ERROR_CODES:
        source = source.replace(f"from {package} import error_codes_pb2 as",
                                f"import {private} as")
        source = source.replace(f"from {package}.error_codes_pb2 import *",
                                f"from {private} import *")
    if re.search(r"^\s*(from|import) tensorflow\b", source, re.MULTILINE):
        # Generated code changed shape: fail loudly rather than import TensorFlow silently.
        raise ImportError(f"shipyard.serving.protos: unexpected imports in {path}; update "
                          "_ERROR_CODES for this tensorflow/tensorflow-serving-api version")
    module = ModuleType(module_name)
    module.__file__ = str(path)
    sys.modules[module_name] = module
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module


def _register_status_without_tensorflow() -> None:
    if _STATUS in sys.modules or "tensorflow" in sys.modules:
        return
    tensorflow_dir = _package_dir("tensorflow")
    for _, private, relative in _ERROR_CODES:  # dependencies first
        _load_rewritten(private, tensorflow_dir / relative)
    _load_rewritten(_STATUS, _package_dir("tensorflow_serving") / "apis" / "status_pb2.py")


_register_status_without_tensorflow()

from tensorflow_serving.apis import (  # noqa: E402  (after the registration above)
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

__all__ = ["get_model_status_pb2", "model_management_pb2", "model_pb2",
           "model_service_pb2_grpc", "model_server_config_pb2"]
