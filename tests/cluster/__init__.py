"""Against a real Kubernetes cluster (KUBECONFIG); skipped otherwise. Marked `cluster` by
tests/conftest.py."""
