"""Every variable is stored once (keras-team/keras#23553): the checkpoint of an export holds
the model's parameters once, plus the values of collection variables no endpoint uses (the
optimizer's state), not the two copies a plain ExportArchive writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from support.exports import export
from support.specs import FUNCTIONAL_SPEC


def stored_values(version_dir) -> int:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(version_dir / "variables" / "variables"))
    return sum(int(np.prod(shape)) for key, shape in reader.get_variable_to_shape_map().items()
               if key != "_CHECKPOINTABLE_OBJECT_GRAPH")


def test_the_checkpoint_holds_each_value_once(launcher, models, repo):
    import keras
    import tensorflow as tf

    result = export(launcher, models.path("functional"), FUNCTIONAL_SPEC, repo)

    model = keras.saving.load_model(models.path("functional"))
    optimizer_values = sum(int(np.prod(v.shape)) for v in model.optimizer.variables)
    # The Adam state is a variable collection that no endpoint uses: stored in addition.
    assert stored_values(Path(result.path)) == model.count_params() + optimizer_values
    loaded = tf.saved_model.load(result.path)
    assert len(loaded.variables) == len(model.variables)  # still restorable by name
    assert len(loaded.optimizer_variables) == len(model.optimizer.variables)


def test_a_raw_export_stores_two_copies(models, tmp_path):
    """The baseline the test above improves on: plain `model.export()`."""
    import keras

    model = keras.saving.load_model(models.path("sequential"))
    model.export(str(tmp_path / "raw"), verbose=False)
    assert stored_values(tmp_path / "raw") == 2 * model.count_params()
