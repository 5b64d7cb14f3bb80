"""models.config: TF Serving's text-format ModelServerConfig, built and read with its protos.

Per model shipyard manages: name, base_path, model_platform "tensorflow", a `specific` version
policy and the `stable`/`canary` version labels. Everything else in the file (other models,
other fields) is kept as found.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import text_format

from shipyard.core.errors import ShipyardError
from shipyard.core.vocabulary import CONFIG_NAME
from shipyard.serving.protos import model_server_config_pb2

PLATFORM = "tensorflow"


@dataclass(frozen=True)
class ModelServing:
    """What the config says about one model: the versions it loads and its labels."""

    versions: tuple[int, ...] = ()
    labels: dict[str, int] = field(default_factory=dict)

    def with_version(self, version: int) -> ModelServing:
        return ModelServing(tuple(sorted({*self.versions, version})), dict(self.labels))

    def with_label(self, label: str, version: int) -> ModelServing:
        return ModelServing(self.versions, {**self.labels, label: version})

    def to_json(self) -> dict[str, object]:
        return {"versions": list(self.versions), "labels": dict(sorted(self.labels.items()))}


def parse_config(text: str, source: str = CONFIG_NAME
                 ) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise ShipyardError(
            f"{source} is not a text-format ModelServerConfig: {err}. Fix or remove the file; "
            "shipyard rewrites it only through the TF Serving protos") from None
    if config.HasField("custom_model_config"):
        raise ShipyardError(f"{source} uses custom_model_config; shipyard manages "
                            "model_config_list configs only")
    return config


def render_config(config: model_server_config_pb2.ModelServerConfig) -> str:
    return text_format.MessageToString(config)


def model_serving(config: model_server_config_pb2.ModelServerConfig,
                  name: str) -> ModelServing | None:
    """NAME's versions and labels, or None when the config does not list NAME."""
    entry = _find(config, name)
    if entry is None:
        return None
    return ModelServing(tuple(sorted(entry.model_version_policy.specific.versions)),
                        dict(entry.version_labels))


def with_model(config: model_server_config_pb2.ModelServerConfig, name: str,
               base_path: str, serving: ModelServing | None
               ) -> model_server_config_pb2.ModelServerConfig:
    """A copy of `config` with NAME's entry set to `serving` (removed when None).

    The entry keeps its position and any fields shipyard does not manage; other models are
    copied untouched.
    """
    updated = model_server_config_pb2.ModelServerConfig()
    updated.CopyFrom(config)
    models = updated.model_config_list.config
    entry = _find(updated, name)
    if serving is None:
        if entry is not None:
            models.remove(entry)
        return updated
    if entry is None:
        entry = models.add()
    entry.name = name
    entry.base_path = base_path
    entry.model_platform = PLATFORM
    entry.model_version_policy.Clear()
    entry.model_version_policy.specific.versions.extend(serving.versions)
    entry.version_labels.clear()
    for label, version in sorted(serving.labels.items()):
        entry.version_labels[label] = version
    return updated


def model_names(config: model_server_config_pb2.ModelServerConfig) -> list[str]:
    return [m.name for m in config.model_config_list.config]


def _find(config: model_server_config_pb2.ModelServerConfig, name: str):  # -> ModelConfig | None
    for entry in config.model_config_list.config:
        if entry.name == name:
            return entry
    return None
