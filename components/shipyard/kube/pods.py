"""What a pod's status says about a rollout that waiting longer will not fix. Pure.

Read from the kubelet's report (V1PodStatus of the kubernetes client): a container, or an init
container, waiting in one of STUCK_REASONS. An init container that fails (the signature check
of kube/verify.py on a version that does not verify) is restarted with back-off and keeps the
pod's app containers from starting: `kubectl get pods` shows the pod as Init:Error, then
Init:CrashLoopBackOff, never ready.
"""

from __future__ import annotations

from typing import Any

from shipyard.kube.verify import INIT_CONTAINER

# Waiting reasons of a container that does not get better by waiting longer.
STUCK_REASONS = ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName",
                 "CreateContainerConfigError", "CreateContainerError")
SHOWN = 300  # characters of the kubelet's message


def stuck_reason(pod: Any) -> str | None:
    """What keeps `pod` from ever becoming ready, or None. Init containers first: while one
    fails, the app containers wait in PodInitializing."""
    status = pod.status
    if status is None:
        return None
    name = pod.metadata.name
    for container in status.init_container_statuses or []:
        waiting = container.state.waiting if container.state else None
        if waiting is None or waiting.reason not in STUCK_REASONS:
            continue
        last = container.last_state.terminated if container.last_state else None
        said = ((last.message if last is not None else None) or waiting.message or "").strip()
        exited = f", last exit code {last.exit_code}" if last is not None else ""
        why = (" (the signature check: the version does not verify with the trust key, or "
               "is unsigned)" if container.name == INIT_CONTAINER else "")
        return (f"pod {name} is Init:{waiting.reason}: init container {container.name} "
                f"failed{why} ({container.restart_count or 0} restarts{exited}): "
                f"{said[:SHOWN]}; see `kubectl logs {name} -c {container.name}`")
    for container in status.container_statuses or []:
        waiting = container.state.waiting if container.state else None
        if waiting is not None and waiting.reason in STUCK_REASONS:
            return (f"pod {name} is {waiting.reason} "
                    f"({container.restart_count or 0} restarts): "
                    f"{(waiting.message or '').strip()[:SHOWN]}")
    return None
