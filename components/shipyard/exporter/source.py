"""Loading the source model: a `.keras` file or a SavedModel directory."""

from __future__ import annotations

import contextlib
import importlib
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from shipyard.core.errors import ModelLoadError, UsageError
from shipyard.core.manifest import sha256_file
from shipyard.files.locks import OwnedWorkdir

log = logging.getLogger(__name__)

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
# Where a .keras file's weights are extracted while it loads (see _weights_read_from_disk).
LOAD_WORKDIR_PREFIX = "shipyard-load-"


@dataclass
class SourceModel:
    path: Path
    format: Literal["keras", "saved_model"]
    obj: Any  # a keras.Model, or the object tf.saved_model.load revived
    sha256: str | None  # of the .keras file; None for a SavedModel directory

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


def load_source_model(path: str | Path, *, unsafe: bool = False) -> SourceModel:
    path = Path(path)
    check_model_path(path)
    if path.is_dir():
        return _load_saved_model(path)
    return _load_keras(path, unsafe=unsafe)


def _load_keras(path: Path, *, unsafe: bool) -> SourceModel:
    import keras

    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"MODEL: {path} is corrupt: a .keras file is a zip archive and this "
                             "one is not (truncated or overwritten?); re-save the model")
    try:
        with _weights_read_from_disk(path) as readable_path:
            model = keras.saving.load_model(readable_path, safe_mode=not unsafe)
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
    return SourceModel(path=path, format="keras", obj=model, sha256=sha256_file(path))


@contextlib.contextmanager
def _weights_read_from_disk(path: Path) -> Iterator[Path]:
    """Yields the path to give keras.saving.load_model so that it reads the archive's
    model.weights.h5 from an extracted file instead of reading all of it into memory first.

    keras/src/saving/saving_lib.py reads the whole weights file into an io.BytesIO whenever
    `is_memory_sufficient(model)` says it fits, while the model's new variables already hold
    as much: two copies of every weight at once. Its other path extracts the file into a
    temporary directory beside the file it opened (and reads the zip on the fly if it cannot).
    At 1 GiB of weights, in a fresh process, that took load_model's peak from 3352 to 2328 MiB
    and its time from 4.5 to 3.9 s (bench/README.md). Keras opens a symlink to the model in
    a directory shipyard owns, so the extracted copy never lands beside the user's model and
    a killed run's copy is removed by the next load (files.locks.OwnedWorkdir).
    `is_memory_sufficient` is private to Keras: without it, Keras decides as before.
    """
    try:
        from keras.src.saving import saving_lib
    except ImportError:
        saving_lib = None
    original = getattr(saving_lib, "is_memory_sufficient", None)
    if original is None:
        yield path
        return
    try:
        owned = OwnedWorkdir(LOAD_WORKDIR_PREFIX)
    except OSError:  # no usable $TMPDIR: Keras reads the weights as it would by itself
        yield path
        return
    link = owned.path / "model.keras"  # Keras wants the .keras suffix
    try:
        link.symlink_to(path.absolute())
        saving_lib.is_memory_sufficient = lambda model: False
        yield link
    finally:
        saving_lib.is_memory_sufficient = original
        owned.remove()


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


def library_versions() -> dict[str, str]:
    """The TensorFlow and Keras that made an export (recorded in shipyard.json)."""
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__}
