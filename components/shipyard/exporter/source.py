"""Loading the source model: a `.keras` file or a SavedModel directory."""

from __future__ import annotations

import importlib
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shipyard.core.errors import ModelLoadError, UsageError
from shipyard.core.manifest import sha256_file
from shipyard.exporter.keras_loading import variables_filled_from_file, weights_read_from_disk

log = logging.getLogger(__name__)

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
OPTIMIZED_LOAD = "shipyard optimized load (keras_loading)"
KERAS_LOAD = "keras.saving.load_model"


@dataclass
class SourceModel:
    path: Path
    format: Literal["keras", "saved_model"]
    obj: Any  # a keras.Model, or the object tf.saved_model.load revived
    sha256: str | None  # of the .keras file; None for a SavedModel directory
    # How the exporting process loaded it: OPTIMIZED_LOAD (keras_loading.py), or the
    # library's own load (Keras's load_model; tf.saved_model.load for a SavedModel).
    loader: str = "tf.saved_model.load"

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path.resolve()), "format": self.format, "sha256": self.sha256}


def import_modules(modules: list[str] | tuple[str, ...]) -> None:
    """Imports --import modules so that their registered custom objects can be deserialized."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as err:  # any failure of user code at import time
            raise UsageError(f"import: cannot import module {module!r}: "
                             f"{type(err).__name__}: {err}. Check that it is on PYTHONPATH.",
                             param="import") from None


def check_model_path(path: str | Path) -> None:
    """Cheap checks (no TensorFlow) that MODEL can be what it must be."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"MODEL: {path} does not exist; pass a .keras file or a "
                             "SavedModel directory")
    if path.is_dir():
        if not any((path / name).is_file() for name in SAVED_MODEL_FILES):
            raise ModelLoadError(f"MODEL: {path} is a directory without saved_model.pb; pass a "
                                 ".keras file or a SavedModel directory")
    elif path.suffix != ".keras":
        raise ModelLoadError(f"MODEL: {path} is neither a .keras file nor a SavedModel directory; "
                             "save the model with model.save('model.keras') or model.export(dir)")


def check_model_file(path: str | Path) -> None:
    """Cheap checks (no TensorFlow) of MODEL's content, before any process is started for it:
    a .keras file's zip directory is read, no more."""
    path = Path(path)
    if path.is_file():
        _check_keras_archive(path)


def _check_keras_archive(path: Path) -> None:
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"MODEL: {path} is corrupt: a .keras file is a zip archive and this "
                             "one is not (truncated or overwritten?); re-save the model")
    try:
        with zipfile.ZipFile(path) as archive:
            members = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as err:
        raise ModelLoadError(f"MODEL: {path} is corrupt ({err}); re-save the model") from None
    if "config.json" not in members:
        raise ModelLoadError(f"MODEL: {path} is a zip archive but not a .keras file (it has no "
                             "config.json); save the model with model.save('model.keras')")


def check_imports(modules: list[str] | tuple[str, ...]) -> None:
    """Fails before anything starts if an --import module cannot be found (it is imported,
    with its errors reported, when the model is loaded: import_modules)."""
    import importlib.util

    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        except Exception:  # noqa: BLE001 (a parent package fails as it is imported: the
            continue  # import reports it with its cause, when the model is loaded)
        if not found:
            raise UsageError(f"import: cannot import module {module!r}: ModuleNotFoundError: "
                             f"No module named {module!r}. Check that it is on PYTHONPATH.",
                             param="import")


def load_source_model(path: str | Path, *, unsafe: bool = False,
                      optimized: bool = True) -> SourceModel:
    """Loads MODEL. A .keras file is loaded the optimized way (keras_loading.py) unless
    `optimized` is false: then by Keras's own `load_model`, untouched."""
    path = Path(path)
    check_model_path(path)
    if path.is_dir():
        return _load_saved_model(path)
    return _load_keras(path, unsafe=unsafe, optimized=optimized)


def _load_keras(path: Path, *, unsafe: bool, optimized: bool) -> SourceModel:
    import keras

    _check_keras_archive(path)
    try:
        if optimized:
            # One copy of each weight in memory at a time: see keras_loading.
            with (weights_read_from_disk(path) as readable_path, variables_filled_from_file()):
                model = keras.saving.load_model(readable_path, safe_mode=not unsafe)
        else:
            model = keras.saving.load_model(path, safe_mode=not unsafe)
    except Exception as err:  # Keras raises many types; translate the ones we can name
        text = str(err)
        if not unsafe and ("safe_mode" in text or "Lambda" in text):
            raise ModelLoadError(
                f"MODEL: {path} contains a Lambda layer (arbitrary code), which safe mode "
                "refuses to load; pass --unsafe if you trust this file") from None
        if "Could not locate" in text or "custom_objects" in text or "Unknown" in text:
            raise ModelLoadError(
                f"MODEL: {path} uses a class Keras cannot find ({text.splitlines()[0][:300]}); "
                "pass --import MODULE naming the module that registers it with "
                "@keras.saving.register_keras_serializable") from None
        raise ModelLoadError(f"MODEL: cannot load {path}: {type(err).__name__}: "
                             f"{text.splitlines()[0][:500] if text else ''}") from None
    return SourceModel(path=path, format="keras", obj=model, sha256=sha256_file(path),
                       loader=OPTIMIZED_LOAD if optimized else KERAS_LOAD)


def _load_saved_model(path: Path) -> SourceModel:
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    graph = path / "saved_model.pb"
    if graph.is_file():
        try:
            saved_model_pb2.SavedModel().ParseFromString(graph.read_bytes())
        except DecodeError as err:
            raise ModelLoadError(f"MODEL: {graph} is corrupt (not a SavedModel protocol buffer: "
                                 f"{err}); export the model again") from None
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as err:  # the graph parsed, so the variables or assets are at fault
        first = str(err).strip().splitlines()[0][:500] if str(err).strip() else ""
        raise ModelLoadError(f"MODEL: cannot load SavedModel {path}: its variables/ or "
                             f"assets/ are corrupt or incomplete ({type(err).__name__}: "
                             f"{first}); export the model again") from None
    return SourceModel(path=path, format="saved_model", obj=loaded, sha256=None)


def read_saved_model(directory: Path) -> Any:
    """The SavedModel protocol buffer of `directory`: saved_model.pb, or saved_model.pbtxt
    (TensorFlow's loaders read either). Raises ModelLoadError naming what is wrong."""
    from google.protobuf import text_format
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    binary, text = directory / "saved_model.pb", directory / "saved_model.pbtxt"
    try:
        if binary.is_file():
            saved_model.ParseFromString(binary.read_bytes())
        elif text.is_file():
            text_format.Parse(text.read_text(), saved_model)
        else:
            raise ModelLoadError(f"MODEL: {directory} is not a SavedModel directory: it has no "
                                 "saved_model.pb; pass the directory tf.saved_model.save or "
                                 "model.export wrote")
    except (DecodeError, text_format.ParseError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"MODEL: {directory}'s saved_model.pb(txt) is corrupt (not a "
                             f"SavedModel protocol buffer: {err}); export the model again"
                             ) from None
    return saved_model


def library_versions() -> dict[str, str]:
    """The TensorFlow and Keras that made an export (recorded in shipyard.json)."""
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__}
