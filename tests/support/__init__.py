"""Code the tests share and no test module owns: test doubles and fakes (tf_serving_double,
rollout_fakes), the real MLflow server and its fault proxy (mlflow_server, mlflow_proxy), the
test models (shipyard_test_models), the shared export specs (specs) and small helpers.

Imported as `support.<module>`: pytest puts tests/ on sys.path (tests/conftest.py is a rootdir
conftest and the tier directories are packages), and `processes.subprocess_env()` puts it on
PYTHONPATH for child processes. Nothing under components/ imports this package."""
