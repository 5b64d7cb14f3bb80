"""Kubernetes: the TF Serving manifests (one source of truth with k8s/), server-side apply,
rollout waits and the per-model Lease. Only kube/cluster.py imports the kubernetes client."""
