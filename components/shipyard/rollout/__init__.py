"""Canary rollouts: the policy, the gates and the state machine (pure), and the controller
that drives them through injected adapters (cluster, metrics, agreement probe, registry)."""
