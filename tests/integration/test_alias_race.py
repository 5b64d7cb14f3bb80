"""Concurrent first sets of one alias on a real MLflow server (SQL store). MLflow sets an alias
by reading, then inserting or updating; two first setters at once both insert, and the loser
gets the store's unique-key violation (seen in the concurrent-registration test on a loaded
machine). ModelRegistry.set_alias retries that one error, so each setter ends with the alias
set, and the last writer's version stands."""

from __future__ import annotations

import threading
import uuid

from mlflow import MlflowClient

from shipyard.registry.client import ModelRegistry, RegistryLocation


def at_once(uri: str, calls: list, errors: list[str]) -> None:
    """Runs each call(registry) in its own thread, each with its own ModelRegistry, released
    together; every failure, whatever its kind, goes into `errors`."""
    barrier = threading.Barrier(len(calls))

    def run(call) -> None:
        registry = ModelRegistry(RegistryLocation.resolve(uri))
        barrier.wait()
        try:
            call(registry)
        except Exception as err:  # the test counts every failure
            errors.append(str(err))

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_concurrent_first_sets_of_an_alias_all_succeed(mlflow_server):
    client = MlflowClient(mlflow_server.uri, mlflow_server.uri)
    name = f"race-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    run = client.create_run(client.create_experiment(name))
    for _ in range(3):
        client.create_model_version(name, f"{run.info.artifact_uri}/model",
                                    run.info.run_id)
    errors: list[str] = []
    for round_ in range(12):
        alias = f"a{round_}"
        at_once(mlflow_server.uri,
                [lambda r, v=1 + i % 3, a=alias: r.set_alias(name, a, v) for i in range(6)],
                errors)
        assert client.get_registered_model(name).aliases[alias] in {"1", "2", "3"}
    assert errors == []


def test_a_log_record_set_while_another_process_deletes_it_is_set(mlflow_server):
    """MLflow sets a registered-model tag by reading, then updating the row it read; a delete
    in between leaves the update matching no row ("expected to update 1 row(s); 0 were
    matched": seen when a concurrent register settled another's in-flight intent), and two
    first writes both insert. ModelRegistry.append_log retries those errors, so each record
    is written."""
    client = MlflowClient(mlflow_server.uri, mlflow_server.uri)
    name = f"tags-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    errors: list[str] = []
    for round_ in range(20):
        key = f"shipyard.log.{round_:03d}"
        client.set_registered_model_tag(name, key, "intent")
        at_once(mlflow_server.uri,
                [lambda r, v=f"record-{i}", k=key: r.append_log(name, k, v) for i in range(3)]
                + [lambda r, k=key: r.delete_log(name, k)], errors)
    assert errors == []
