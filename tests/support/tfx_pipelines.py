"""A TFX pipeline around ShipyardPusher, run with LocalDagRunner on a SQLite MLMD store: a
Model artifact imported as a Trainer leaves it (Format-Serving/), an optional blessing, and
optionally TFX's own Pusher beside ours; and how to read back what each pushed."""

from __future__ import annotations

from pathlib import Path

import yaml

from support.specs import SEQUENTIAL_SPEC


def pipeline(root: Path, model_dir: Path, *, blessed: int | None, repo: Path,
             tracking_uri: str, serving_address: str | None = None,
             tfx_pusher_to: Path | None = None, spec: dict = SEQUENTIAL_SPEC,
             model_name: str = "tfx-m"):
    """The model imported, then ShipyardPusher; with `tfx_pusher_to`, TFX's own Pusher beside
    it on the same Model (and blessing), pushing to that directory."""
    import tfx
    from tfx.dsl.components.common.importer import Importer
    from tfx.orchestration import metadata
    from tfx.orchestration import pipeline as tfx_pipeline
    from tfx.types import standard_artifacts

    from shipyard.tfx.component import ShipyardPusher

    # tfx_version as a Trainer's output carries it: without it, TFX takes the artifact for an
    # old one and its Pusher looks for the model under serving_model_dir/, not Format-Serving/.
    model = Importer(source_uri=str(model_dir), artifact_type=standard_artifacts.Model,
                     custom_properties={"tfx_version": tfx.__version__}).with_id("model")
    components = [model]
    blessing = None
    if blessed is not None:
        (root / "blessing").mkdir(exist_ok=True)
        blessing = Importer(
            source_uri=str(root / "blessing"),
            artifact_type=standard_artifacts.ModelBlessing,
            custom_properties={"blessed": blessed}).with_id("blessing")
        components.append(blessing)
    pusher = ShipyardPusher(
        model=model.outputs["result"],
        model_blessing=blessing.outputs["result"] if blessing else None,
        model_name=model_name, export_spec=yaml.safe_dump(spec), repository=str(repo),
        tracking_uri=tracking_uri, serving_label="stable", serving_address=serving_address)
    components.append(pusher)
    if tfx_pusher_to is not None:
        # TFX's stock Pusher runs here: unlike Trainer's executor, the Pusher's component and
        # executor (tfx.components.pusher, model_utils, io_utils, path_utils) import no TFDV.
        from tfx.components.pusher.component import Pusher
        from tfx.proto import pusher_pb2

        components.append(Pusher(
            model=model.outputs["result"],
            model_blessing=blessing.outputs["result"] if blessing else None,
            push_destination=pusher_pb2.PushDestination(
                filesystem=pusher_pb2.PushDestination.Filesystem(
                    base_directory=str(tfx_pusher_to)))))
    return tfx_pipeline.Pipeline(
        pipeline_name="shipyard-test", pipeline_root=str(root / "pipeline-root"),
        components=components,
        metadata_connection_config=metadata.sqlite_metadata_connection_config(
            str(root / "mlmd.sqlite")))


def pushed_artifacts(root: Path):
    from ml_metadata.metadata_store import metadata_store
    from tfx.orchestration import metadata

    config = metadata.sqlite_metadata_connection_config(str(root / "mlmd.sqlite"))
    store = metadata_store.MetadataStore(config)
    return store.get_artifacts_by_type("PushedModel"), store.get_artifacts_by_type("Model")


def by_component(artifacts) -> dict[str, object]:
    """Artifacts by the component that wrote them: LocalDagRunner puts each output under
    pipeline-root/<component id>/<output key>/<execution id>."""
    return {Path(a.uri).parent.parent.name: a for a in artifacts}
