"""How a label moves, as TF Serving requires it. Pure: no files, no server.

TF Serving refuses a label that points to a version it has not loaded. So a label moves in
steps: (1) add the new version to `specific`, keeping the old one and the labels, and wait until
it is AVAILABLE; (2) move the label; (3) only then drop the versions no label points to any
more. Steps that would change nothing are left out.
"""

from __future__ import annotations

from shipyard.serving.config import ModelServing


def label_move_steps(current: ModelServing | None, label: str,
                     version: int) -> list[ModelServing]:
    """The successive states of NAME's config entry that move `label` to `version`."""
    state = current or ModelServing()
    steps = []
    if version not in state.versions:
        state = state.with_version(version)
        steps.append(state)
    if state.labels.get(label) != version:
        state = state.with_label(label, version)
        steps.append(state)
    needed = tuple(sorted(set(state.labels.values())))
    if state.versions != needed:
        state = ModelServing(needed, dict(state.labels))
        steps.append(state)
    return steps


def label_removal_steps(current: ModelServing | None, label: str) -> list[ModelServing]:
    """The one step that drops `label` and the versions no other label points to. With no
    label left, the versions stay: nothing says which of them to serve."""
    if current is None or label not in current.labels:
        return []
    labels = {k: v for k, v in current.labels.items() if k != label}
    needed = tuple(sorted(set(labels.values()))) or current.versions
    return [ModelServing(needed, labels)]
