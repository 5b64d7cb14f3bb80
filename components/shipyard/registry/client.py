"""MLflow adapter: where the store is, and every call shipyard makes to it.

The store: `--tracking-uri`/`--registry-uri`, else MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI,
else an embedded one needing no server: SQLite at `.shipyard/mlflow.db` (relative to the
working directory). A SQLite store keeps its artifacts beside the database, in `mlartifacts/`.

Unreachable servers: MLflow retries HTTP requests with exponential backoff by itself;
shipyard bounds that through MLflow's own settings, MLFLOW_HTTP_REQUEST_MAX_RETRIES (default
here 2), MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR (1) and MLFLOW_HTTP_REQUEST_TIMEOUT (10 s),
unless they are set, and reports failure as RegistryUnavailableError (exit 6).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from shipyard.core.claims import winner
from shipyard.core.errors import RegistryUnavailableError, ShipyardError, UsageError
from shipyard.core.manifest import Manifest
from shipyard.core.vocabulary import PUBLISHED_TAG, SUPERSEDED_TAG
from shipyard.files.trees import materialize

EMBEDDED_HOME = Path(".shipyard")
MODEL_ARTIFACT_PATH = "model"
RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


_ALIAS_RACE_ATTEMPTS = 5
# The unique-key violation as SQLite, MySQL and PostgreSQL word it.
_UNIQUE_KEY_WORDS = ("UNIQUE constraint", "Duplicate entry", "duplicate key")


def _lost_alias_insert_race(err: Exception) -> bool:
    """A concurrent first set of the same alias won the insert (SQLite, MySQL, PostgreSQL
    wordings of the unique-key violation on registered_model_aliases)."""
    text = str(err)
    return "registered_model_aliases" in text and any(
        word in text for word in _UNIQUE_KEY_WORDS)


def _lost_tag_write_race(err: Exception) -> bool:
    """A concurrent write of one registered-model tag changed it between MLflow's read of it and
    its write: a delete left the update matching no row (SQLAlchemy's stale-data wording, the
    same on every database), or another first write won the insert (the unique key)."""
    text = str(err)
    return "registered_model_tags" in text and (
        "0 were matched" in text or any(word in text for word in _UNIQUE_KEY_WORDS))


@dataclass(frozen=True)
class RegistryLocation:
    tracking_uri: str
    registry_uri: str
    artifact_location: str | None  # set for SQLite stores only (beside the database)

    @classmethod
    def resolve(cls, tracking_uri: str | None = None, registry_uri: str | None = None,
                home: Path = EMBEDDED_HOME) -> RegistryLocation:
        tracking = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        artifacts = None
        if not tracking:
            home.mkdir(parents=True, exist_ok=True)
            tracking = f"sqlite:///{(home / 'mlflow.db').resolve()}"
        database = _sqlite_path(tracking)
        if database is not None:
            # MLflow's default for a database store is ./mlruns in whatever directory the
            # command ran from; beside the database, the store stays in one place.
            artifacts = (database.parent / "mlartifacts").resolve().as_uri()
        registry = registry_uri or os.environ.get("MLFLOW_REGISTRY_URI") or tracking
        _check_has_scheme(tracking, "tracking_uri", "MLFLOW_TRACKING_URI")
        _check_has_scheme(registry, "registry_uri", "MLFLOW_REGISTRY_URI")
        return cls(tracking, registry, artifacts)


# host:port or host:port/path with no scheme: MLflow would take it for a file store path.
_HOST_PORT = re.compile(r"^[A-Za-z0-9.-]+:\d+(/.*)?$")


def _check_has_scheme(uri: str, param: str, env_var: str) -> None:
    if _HOST_PORT.match(uri):
        raise UsageError(
            f"{param}: {uri!r} is a host and port without a scheme, which MLflow would read "
            f"as a local directory; use http://{uri} (or https://), or fix ${env_var}",
            param=param)


def _local_directory(uri: str) -> Path | None:
    """The directory of a file:// (or plain path) artifact URI; None for servers and buckets."""
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(uri).path))
    if "://" not in uri and ":/" not in uri:
        return Path(uri)
    return None


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///PATH` URI (None for servers and other stores)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri == prefix + ":memory:":
        return None
    return Path(uri[len(prefix):])


@contextlib.contextmanager
def translate_errors(location: RegistryLocation) -> Iterator[None]:
    """MLflow and HTTP failures -> shipyard errors that name the URI and the fix."""
    import requests
    from mlflow.exceptions import MlflowException
    from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

    try:
        yield
    except UnsupportedModelRegistryStoreURIException:
        param = ("tracking_uri" if location.registry_uri == location.tracking_uri
                 else "registry_uri")
        raise UsageError(
            f"{param}: MLflow has no model registry for {location.registry_uri!r} (its "
            "scheme is not one MLflow's registry supports); use an MLflow server "
            "(http://HOST:PORT) or a database URI (sqlite:///PATH, postgresql://...)",
            param=param) from None
    except MlflowException as err:
        text = str(err)
        if _is_unreachable(text):
            raise RegistryUnavailableError(
                f"MLflow at {location.tracking_uri} (registry {location.registry_uri}) is "
                f"unreachable after bounded retries: {text.splitlines()[0][:300]}. Start the "
                "server or fix --tracking-uri/--registry-uri; retries are set by "
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES and MLFLOW_HTTP_REQUEST_TIMEOUT") from None
        raise ShipyardError(f"MLflow at {location.tracking_uri} refused the request: "
                            f"{text.splitlines()[0][:500]}") from None
    except requests.exceptions.RequestException as err:  # escaped MLflow's own wrapping
        raise RegistryUnavailableError(
            f"MLflow at {location.tracking_uri} is unreachable: {err}") from None


def _is_unreachable(text: str) -> bool:
    markers = ("Max retries exceeded", "Connection refused", "Failed to establish",
               "timed out", "Read timed out", "Name or service not known")
    return any(m in text for m in markers)


class ModelRegistry:
    """Every MLflow call shipyard makes, on one MlflowClient (the seam tests use for real)."""

    def __init__(self, location: RegistryLocation):
        for key, value in RETRY_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from mlflow import MlflowClient

        self.location = location
        with translate_errors(location):  # an unsupported store URI fails here already
            self.client = MlflowClient(tracking_uri=location.tracking_uri,
                                       registry_uri=location.registry_uri)

    def check_reachable(self) -> None:
        with translate_errors(self.location):
            self.client.search_experiments(max_results=1)

    # -- versions ---------------------------------------------------------------------------

    def find_by_fingerprint(self, name: str, fingerprint: str) -> Any | None:
        """The version holding this content: the oldest published one, else the oldest."""
        return winner(self.versions_with_fingerprint(name, fingerprint))

    def versions_with_fingerprint(self, name: str, fingerprint: str) -> list[Any]:
        if self._existing_model(name) is None:
            return []
        with translate_errors(self.location):
            return list(self.client.search_model_versions(
                f"name='{name}' and tags.`shipyard.fingerprint`='{fingerprint}'"))

    def latest_version_number(self, name: str) -> int:
        if self._existing_model(name) is None:
            return 0
        with translate_errors(self.location):
            versions = self.client.search_model_versions(f"name='{name}'")
        return max((int(v.version) for v in versions), default=0)

    def log_run(self, name: str, *, params: dict[str, str], metrics: dict[str, float],
                tags: dict[str, str], saved_model_dir: Path, manifest_path: Path,
                spec_text: str) -> tuple[str, str]:
        """Creates the run with everything logged, left RUNNING: it is finished once its
        version exists (finish_run), so a run killed before that is recognisably abandoned.
        Returns (run_id, model source URI)."""
        from shipyard.registry.pyfunc import model_signature

        signature = model_signature(Manifest.from_json(json.loads(manifest_path.read_text())))
        with translate_errors(self.location):
            experiment_id = self._experiment(f"shipyard/{name}")
            run = self.client.create_run(experiment_id, tags=tags, run_name=f"{name}-export")
            run_id = run.info.run_id
            for chunk in _chunks(list(params.items()), 100):
                self.client.log_batch(run_id, params=[_param(k, v) for k, v in chunk])
            self.client.log_batch(run_id, metrics=[_metric(k, v) for k, v in metrics.items()])
            self.client.log_artifact(run_id, str(manifest_path))
            self.client.log_text(run_id, spec_text, "spec.yaml")
            workdir = saved_model_dir.with_name(saved_model_dir.name + ".pyfunc")
            try:
                model_dir = _pyfunc_model_dir(saved_model_dir, workdir, signature)
                local_store = _local_directory(run.info.artifact_uri)
                if local_store is not None:
                    # An artifact store on this machine (the embedded SQLite store's
                    # mlartifacts/): hard links where it shares the version's file system,
                    # so register writes the SavedModel's bytes once. Published versions are
                    # never modified in place, so the two names cannot drift apart.
                    materialize(str(model_dir), local_store / MODEL_ARTIFACT_PATH)
                else:
                    # The one copy of the SavedModel's bytes into the artifact store.
                    self.client.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT_PATH)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
        return run_id, f"{run.info.artifact_uri}/{MODEL_ARTIFACT_PATH}"

    def create_version(self, name: str, *, source: str, run_id: str,
                       tags: dict[str, str]) -> int:
        """Registers the run's model as a new version and returns its number.

        MLflow's client retries a request whose answer was lost, and the retry of
        create_model_version registers a second version. Every version of one run holds the
        same content, so the oldest is kept and the others (never published: this process
        is the only one that knows their numbers) are deleted."""
        from mlflow.exceptions import MlflowException

        with translate_errors(self.location):
            try:
                self.client.create_registered_model(name)
            except MlflowException as err:
                if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
                    raise
            created = self.client.create_model_version(name, source=source, run_id=run_id,
                                                       tags=tags)
        kept = self.drop_duplicates(name, run_id, keep=None)
        return kept if kept is not None else int(created.version)

    def drop_duplicates(self, name: str, run_id: str, keep: int | None) -> int | None:
        """Deletes the unpublished versions registered from `run_id` other than `keep`
        (default: the oldest); returns the version kept (None if the run has none)."""
        with translate_errors(self.location):
            versions = self.client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
        numbers = sorted(int(v.version) for v in versions)
        if not numbers:
            return None
        keep = numbers[0] if keep is None else keep
        for v in versions:
            if int(v.version) != keep and v.tags.get(PUBLISHED_TAG) != "true":
                self.delete_version(name, int(v.version))
        return keep

    def delete_version(self, name: str, version: int) -> None:
        from mlflow.exceptions import MlflowException

        with translate_errors(self.location):
            try:
                self.client.delete_model_version(name, str(version))
            except MlflowException as err:  # a retried delete finds it gone
                if "RESOURCE_DOES_NOT_EXIST" not in str(err.error_code):
                    raise

    def set_tags(self, name: str, version: int, run_id: str | None, tags: dict[str, str]) -> None:
        """The same tags on the version and on its run."""
        self.set_version_tags(name, version, tags)
        if run_id:
            self.set_run_tags(run_id, tags)

    def set_version_tags(self, name: str, version: int, tags: dict[str, str]) -> None:
        with translate_errors(self.location):
            for key, value in tags.items():
                self.client.set_model_version_tag(name, str(version), key, value)

    def set_run_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        if tags:  # one request for all of them
            with translate_errors(self.location):
                self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def run(self, run_id: str) -> Any:
        with translate_errors(self.location):
            return self.client.get_run(run_id)

    def finish_run(self, run_id: str) -> None:
        with translate_errors(self.location):
            self.client.set_terminated(run_id, status="FINISHED")

    def fail_abandoned_runs(self, experiment_id: str, fingerprint: str, keep: str) -> list[str]:
        """Marks FAILED the runs of this content still RUNNING other than `keep`: runs of
        attempts killed before their version existed (or duplicated by a retried
        create_run). Each gets `shipyard.superseded_by=<keep>`, saying which run holds the
        version. Returns their ids."""
        from mlflow.entities import RunTag

        with translate_errors(self.location):
            runs = self.client.search_runs(
                [experiment_id],
                filter_string=(f"tags.`shipyard.fingerprint` = '{fingerprint}' "
                               "and attributes.status = 'RUNNING'"))
            abandoned = [r.info.run_id for r in runs if r.info.run_id != keep]
            for run_id in abandoned:
                self.client.log_batch(run_id, tags=[RunTag(SUPERSEDED_TAG, keep)])
                self.client.set_terminated(run_id, status="FAILED")
        return abandoned

    def supersede_run(self, run_id: str, by: str) -> None:
        """Marks a run whose version gave way to an older one of the same content: FAILED,
        with `shipyard.superseded_by=<the run holding the version kept>`."""
        self.set_run_tags(run_id, {SUPERSEDED_TAG: by})
        with translate_errors(self.location):
            self.client.set_terminated(run_id, status="FAILED")

    def version(self, name: str, version: int) -> Any:
        from mlflow.exceptions import MlflowException

        with translate_errors(self.location):
            try:
                return self.client.get_model_version(name, str(version))
            except MlflowException as err:
                if "RESOURCE_DOES_NOT_EXIST" in str(err.error_code):
                    raise UsageError(f"VERSION: registered model {name!r} has no version "
                                     f"{version}") from None
                raise

    def find_version(self, name: str, version: int) -> Any | None:
        """Version `version` of NAME, or None when the registry does not have it."""
        if self._existing_model(name) is None:
            return None
        try:
            return self.version(name, version)
        except UsageError:
            return None

    def log_results(self, run_id: str, metrics: dict[str, float], document: str,
                    artifact_file: str) -> None:
        """Adds metrics and a JSON document to an existing run (e.g. validation results)."""
        with translate_errors(self.location):
            if metrics:
                self.client.log_batch(run_id, metrics=[_metric(k, v) for k, v in metrics.items()])
            self.client.log_text(run_id, document, artifact_file)

    # -- aliases ----------------------------------------------------------------------------

    def describe_version(self, name: str, version: int, text: str) -> None:
        """The version's MLflow description (what its UI shows on the version's page)."""
        with translate_errors(self.location):
            self.client.update_model_version(name, str(version), description=text)

    def describe_model(self, name: str, text: str) -> None:
        with translate_errors(self.location):
            self.client.update_registered_model(name, description=text)

    def registered_model(self, name: str) -> Any:
        model = self._existing_model(name)
        if model is None:
            raise UsageError(f"NAME: there is no registered model {name!r} at "
                             f"{self.location.registry_uri}; register one with "
                             "`shipyard register`")
        return model

    def aliases(self, name: str) -> dict[str, int] | None:
        """{alias: version} of NAME; None when the registry has no model of that name."""
        model = self._existing_model(name)
        return None if model is None else {a: int(v) for a, v in model.aliases.items()}

    def _existing_model(self, name: str) -> Any | None:
        """The registered model, or None if the registry has none of that name."""
        from mlflow.exceptions import MlflowException

        with translate_errors(self.location):
            try:
                return self.client.get_registered_model(name)
            except MlflowException as err:
                if "RESOURCE_DOES_NOT_EXIST" in str(err.error_code):
                    return None
                raise

    def set_alias(self, name: str, alias: str, version: int | None) -> None:
        from mlflow.exceptions import MlflowException

        with translate_errors(self.location):
            if version is None:
                self.client.delete_registered_model_alias(name, alias)
                return
            for attempt in range(_ALIAS_RACE_ATTEMPTS):
                try:
                    self.client.set_registered_model_alias(name, alias, str(version))
                    return
                except MlflowException as err:
                    if not _lost_alias_insert_race(err) or attempt + 1 == _ALIAS_RACE_ATTEMPTS:
                        raise
                    # MLflow's SQL store sets an alias by reading, then inserting or updating:
                    # two first setters of one alias at once both insert, and the second
                    # breaks the unique key. Once the first insert is committed, the same
                    # call updates the row (seen: 10 of 90 concurrent first sets on SQLite).
                    time.sleep(0.05 * (attempt + 1))

    def append_log(self, name: str, key: str, value: str) -> None:
        from mlflow.exceptions import MlflowException

        with translate_errors(self.location):
            for attempt in range(_ALIAS_RACE_ATTEMPTS):
                try:
                    self.client.set_registered_model_tag(name, key, value)
                    return
                except MlflowException as err:
                    if not _lost_tag_write_race(err) or attempt + 1 == _ALIAS_RACE_ATTEMPTS:
                        raise
                    # MLflow's SQL store sets a tag by reading it, then updating the row it
                    # read or inserting one. A concurrent register settling what it took for a
                    # killed move's intent (steps/alias.py settle_pending) can delete that row
                    # in between, or insert it first; the same call then inserts or updates
                    # (the first was seen in the concurrent-registration test).
                    time.sleep(0.05 * (attempt + 1))

    def delete_log(self, name: str, key: str) -> None:
        from mlflow.exceptions import MlflowException

        with translate_errors(self.location):
            try:
                self.client.delete_registered_model_tag(name, key)
            except MlflowException as err:  # a retried delete finds it gone
                if "RESOURCE_DOES_NOT_EXIST" not in str(err.error_code):
                    raise

    def _experiment(self, experiment_name: str) -> str:
        from mlflow.exceptions import MlflowException

        existing = self.client.get_experiment_by_name(experiment_name)
        if existing is not None:
            return existing.experiment_id
        try:
            return self.client.create_experiment(
                experiment_name, artifact_location=self.location.artifact_location)
        except MlflowException as err:
            # Two first registrations of one model race here; the loser uses the winner's.
            if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
                raise
        return self.client.get_experiment_by_name(experiment_name).experiment_id


def _pyfunc_model_dir(saved_model_dir: Path, workdir: Path, signature: Any) -> Path:
    """An MLflow pyfunc model directory whose SavedModel is hard-linked, not copied.

    mlflow.pyfunc.log_model copies its artifacts into a temporary model directory and then
    uploads that: two more writes of every byte. Saving the model around an empty placeholder
    and linking the SavedModel's files in leaves the upload as the only copy.
    """
    import mlflow.pyfunc

    from shipyard.registry.pyfunc import SAVED_MODEL_ARTIFACT, ShipyardSavedModel

    placeholder = workdir / SAVED_MODEL_ARTIFACT
    placeholder.mkdir(parents=True)
    model_dir = workdir / "model"
    mlflow.pyfunc.save_model(str(model_dir), python_model=ShipyardSavedModel(),
                             artifacts={SAVED_MODEL_ARTIFACT: str(placeholder)},
                             pip_requirements=_serving_requirements(), signature=signature)
    target = model_dir / "artifacts" / SAVED_MODEL_ARTIFACT
    shutil.rmtree(target)
    materialize(str(saved_model_dir), target)  # hard links where the filesystem allows
    return model_dir


def _serving_requirements() -> list[str]:
    """What loading the pyfunc needs besides shipyard itself (whose ShipyardSavedModel class
    the pickled model refers to): the versions installed where it was registered."""
    from importlib.metadata import version

    return [f"tensorflow=={version('tensorflow')}", f"mlflow=={version('mlflow')}"]


def current_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return os.environ.get("USER", "unknown")


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _param(key: str, value: str) -> Any:
    from mlflow.entities import Param

    return Param(key, value[:6000])


def _metric(key: str, value: float) -> Any:
    import time

    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), 0)


def to_json_tag(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
