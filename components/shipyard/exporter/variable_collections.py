"""Variable collections: the variables an export spec's `variable_collections` select from the
source model (trainable, non-trainable, all, the optimizer's, or by path regex), and the check
that an optimizer's selected state is the trained one the .keras file stores."""

from __future__ import annotations

import contextlib
import re
from typing import Any

from shipyard.core.errors import SpecError
from shipyard.core.spec import RegexSelect
from shipyard.exporter.source import SourceModel


def select_variables(source: SourceModel, select: Any, index: int) -> list[Any]:
    obj = source.obj
    field = f"variable_collections[{index}].select"
    if select == "optimizer":
        optimizer = getattr(obj, "optimizer", None)
        variables = list(getattr(optimizer, "variables", []) or [])
        if optimizer is None or not variables:
            raise SpecError(f"{field}: 'optimizer' selected, but the model has no optimizer "
                            "state (it was saved without compile(), or never built its "
                            "optimizer); compile and train it before saving, or choose another "
                            "selection")
        _check_optimizer_restored(source, optimizer, variables, field)
        return variables
    attribute = {"trainable": "trainable_variables", "non_trainable": "non_trainable_variables",
                 "all": "variables"}.get(select if isinstance(select, str) else "all")
    variables = list(getattr(obj, attribute, None) or [])
    if isinstance(select, RegexSelect):
        optimizer = getattr(obj, "optimizer", None)
        optimizer_variables = list(getattr(optimizer, "variables", []) or [])
        pool = variables + optimizer_variables
        pattern = re.compile(select.regex)
        variables = [v for v in pool if pattern.search(variable_path(v))]
        if not variables:
            examples = [variable_path(v) for v in pool[:8]]
            raise SpecError(f"{field}.regex: {select.regex!r} matches no variable; variable "
                            f"paths look like {examples}")
        if any(v is w for v in variables for w in optimizer_variables):
            _check_optimizer_restored(source, optimizer, optimizer_variables, f"{field}.regex")
        return variables
    if not variables and select != "non_trainable":
        raise SpecError(f"{field}: {select!r} selects no variables from this model")
    return variables


def _check_optimizer_restored(source: SourceModel, optimizer: Any, variables: list[Any],
                              field: str) -> None:
    """Refuses an optimizer whose variables are not the ones the .keras file stores.

    Keras's load_model rebuilds the optimizer from the compile config and, when its variables
    do not match the saved ones in number, skips loading them with a warning: the optimizer
    then holds fresh values (e.g. a LossScaleOptimizer saved under a mixed_float16 policy and
    loaded under float32 comes back as its inner optimizer)."""
    saved = _saved_optimizer_variable_count(source)
    if saved is None or saved == len(variables):
        return
    raise SpecError(
        f"{field}: the optimizer's variables are selected, but {source.path.name} stores {saved} "
        f"optimizer variables and the loaded model's {type(optimizer).__name__} has "
        f"{len(variables)}: "
        "Keras did not restore the saved optimizer state, so the collection would hold fresh "
        "values, not the trained ones. Load the model with the optimizer it was saved with "
        "(a model compiled under keras.mixed_precision.set_dtype_policy('mixed_float16') "
        "saved a LossScaleOptimizer: set that policy in an --import module; an optimizer "
        "that never took a step: train it before saving), or choose another selection")


def _saved_optimizer_variable_count(source: SourceModel) -> int | None:
    """How many optimizer variables the .keras file stores (Keras's layout:
    model.weights.h5 `optimizer/vars/<i>`); None if it cannot tell (a SavedModel source,
    another layout)."""
    if source.format != "keras":
        return None
    import zipfile

    import h5py

    from shipyard.exporter.keras_loading import WEIGHTS_MEMBER, FileWindow, weights_member

    try:
        with contextlib.ExitStack() as stack:
            member = weights_member(source.path)
            if member is not None:  # stored whole: read in place
                raw = stack.enter_context(FileWindow(source.path, *member))
            else:
                archive = stack.enter_context(zipfile.ZipFile(source.path))
                raw = stack.enter_context(archive.open(WEIGHTS_MEMBER))
            weights = stack.enter_context(h5py.File(raw, "r"))
            group = weights.get("optimizer/vars")
            return len(group) if isinstance(group, h5py.Group) else None
    except (OSError, KeyError, zipfile.BadZipFile):
        return None


def variable_path(variable: Any) -> str:
    return getattr(variable, "path", None) or variable.name
