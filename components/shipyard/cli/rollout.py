"""`shipyard rollout start|status|promote|abort|approve|plan`: canary rollouts on Kubernetes,
carried out by shipyard.steps.rollout (`plan` needs no cluster). Tests pass fakes of the
rollout's adapters through click's context object: obj={"rollout_ports": factory},
factory(name, namespace, policy) -> Ports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from shipyard.cli.options import (
    checked_repo,
    injected,
    json_option,
    namespace_option,
    notifier,
    notify_option,
    registry_options,
    stack,
)
from shipyard.cli.output import describe_rollout, emit, library_prints_to_stderr, note


@click.group("rollout")
def rollout_group() -> None:
    """Canary rollouts on Kubernetes: steps, gates, promotion and automatic rollback."""


@rollout_group.command("start")
@click.option("--name", required=True, help="Model name (registered model and Deployment).")
@click.option("--version", "version", type=int, required=True, help="Published version N.")
@click.option("--policy", "policy_path", required=True, type=click.Path(path_type=Path),
              help="POLICY.yaml: steps, gates, metrics, serving settings.")
@namespace_option
@registry_options
@click.option("--lease-wait", type=float, default=0.0, show_default=True,
              help="Seconds to wait for another rollout of NAME to finish first.")
@click.option("--verify-key", "verify_key", default=None, metavar="PEM",
              help="Trust key: version N's signature must verify with this PEM public key (or "
                   "chain up to this PEM CA certificate) before anything is deployed; "
                   "otherwise exit 4. Default: the policy's verify_key, else "
                   "$SHIPYARD_VERIFY_KEY; without any, signatures are not checked.")
@click.option("--repo", default=None, callback=checked_repo,
              help="The model repository (path or fsspec URL) the tracks serve from, read "
                   "for the signature check. Default: the policy's serving.model_root when it "
                   "is an object store's URL; needed with a trust key when the tracks read a "
                   "PVC.")
@notify_option
@json_option("Print the final state as JSON.")
def rollout_start_command(name: str, version: int, policy_path: Path, namespace: str,
                          tracking_uri: str | None, registry_uri: str | None,
                          lease_wait: float, verify_key: str | None, repo: str | None,
                          notify: tuple[str, ...], as_json: bool) -> None:
    """Roll version N of NAME out behind a canary, step by step, to promotion or rollback.

    Holds the model's Lease for the whole rollout and records its state in the cluster; run
    the same command again to resume a rollout whose controller stopped. A first deployment
    (nothing serves NAME yet) goes straight to stable. Steps are weights, mirrors (shadow
    traffic) and approvals; `shipyard rollout plan --policy POLICY` shows them.

    With a trust key (--verify-key, the policy's verify_key, or $SHIPYARD_VERIFY_KEY), N is
    checked as `push` checks it, its signature included, before anything is deployed: from
    --repo, or the policy's serving.model_root when it is an object store's URL. With a trust
    key and the repository on a PVC, --repo is required (exit 2 otherwise): the check never
    is skipped.

    Exit codes: 0 promoted, 8 rolled back or aborted, 9 another rollout holds NAME,
    2 bad policy or arguments, 4 N fails its signature check (nothing deployed),
    6 MLflow unreachable, 1 anything else.
    """
    from shipyard.core.names import validate_model_name, validate_version
    from shipyard.rollout.policy import load_policy
    from shipyard.steps.rollout import require_promoted, start_rollout

    validate_model_name(name)  # before the policy is read, as start_rollout does
    validate_version(version)
    policy = load_policy(policy_path)
    # The policy's receivers beside --notify's and $SHIPYARD_NOTIFY's.
    events = notifier(tuple(notify) + tuple(policy.notify))

    def show(state: Any) -> None:
        note(describe_rollout(state.to_json()))

    with library_prints_to_stderr():
        state = start_rollout(name, version, policy, namespace=namespace,
                              tracking_uri=tracking_uri, registry_uri=registry_uri,
                              lease_wait_s=lease_wait, on_change=show,
                              notify=_told(events, name), verify_key=verify_key, repo=repo,
                              **injected(rollout_ports="ports"))
    doc = state.to_json()
    emit(doc, as_json, describe_rollout(doc))
    require_promoted(state)


@rollout_group.command("status")
@click.option("--name", required=True, help="Model name.")
@namespace_option
@json_option("Print the state as JSON.")
def rollout_status_command(name: str, namespace: str, as_json: bool) -> None:
    """The current (or last) rollout of NAME, as stored in the cluster."""
    from shipyard.steps.rollout import rollout_status

    doc = rollout_status(name, namespace, **injected(rollout_ports="ports")).to_json()
    emit(doc, as_json, describe_rollout(doc))


def _told(events: Any, name: str) -> Any:
    """The controller's notify port on a Notifier: the model is each event's subject."""
    if not events.enabled:
        return None
    return lambda event_type, data: events.emit(event_type, name, data)


def _request(name: str, namespace: str, what: str, reason: str | None,
             tracking_uri: str | None, registry_uri: str | None, lease_wait: float,
             notify: tuple[str, ...], as_json: bool) -> None:
    from shipyard.steps.rollout import request_rollout

    events = notifier(notify)
    with library_prints_to_stderr():
        state = request_rollout(name, namespace, what, reason, tracking_uri=tracking_uri,
                                registry_uri=registry_uri, lease_wait_s=lease_wait,
                                notify=_told(events, name), **injected(rollout_ports="ports"))
    doc = state.to_json()
    emit(doc, as_json, describe_rollout(doc))


# What promote and abort share, after --name and --reason.
_request_options = stack(
    namespace_option,
    registry_options,
    click.option("--lease-wait", type=float, default=75.0, show_default=True,
                 help="Seconds to wait for the controller to finish (or a dead one's Lease to "
                      "expire) before leaving the request to it."),
    notify_option,
    json_option("Print the state as JSON."),
)


@rollout_group.command("promote")
@click.option("--name", required=True, help="Model name.")
@click.option("--reason", default="promoted by hand", show_default=True,
              help="Recorded with the champion move.")
@_request_options
def rollout_promote_command(name: str, reason: str, namespace: str, tracking_uri: str | None,
                            registry_uri: str | None, lease_wait: float,
                            notify: tuple[str, ...], as_json: bool) -> None:
    """Promote the canary of NAME now, skipping the remaining steps and gates.

    The request is stored where a running `rollout start` picks it up at its next check;
    this command waits (--lease-wait) for that controller to finish, or for a dead one's
    Lease to expire, and then carries out what is left itself.
    """
    _request(name, namespace, "promote", reason, tracking_uri, registry_uri, lease_wait,
             notify, as_json)


@rollout_group.command("abort")
@click.option("--name", required=True, help="Model name.")
@click.option("--reason", required=True, help="Why (recorded in the alias audit trail).")
@_request_options
def rollout_abort_command(name: str, reason: str, namespace: str, tracking_uri: str | None,
                          registry_uri: str | None, lease_wait: float,
                          notify: tuple[str, ...], as_json: bool) -> None:
    """Roll the canary of NAME back now: weight 0, canary removed, champion unchanged."""
    _request(name, namespace, "abort", reason, tracking_uri, registry_uri, lease_wait,
             notify, as_json)


@rollout_group.command("approve")
@click.option("--name", required=True, help="Model name.")
@click.option("--reason", required=True, help="Why (recorded with the champion move).")
@namespace_option
@notify_option
@json_option("Print the state as JSON.")
def rollout_approve_command(name: str, reason: str, namespace: str, notify: tuple[str, ...],
                            as_json: bool) -> None:
    """Approve the step the rollout of NAME waits at (phase awaiting_approval).

    The approval is stored where the running `rollout start` picks it up at its next check
    (if none runs, run the same `rollout start` again to resume). It is recorded with who
    gave it, and goes into the audit of the champion move. `rollout abort` rejects instead.

    Exit codes: 0 stored, 2 no rollout waiting for an approval, 1 anything else.
    """
    from shipyard.notify import ROLLOUT_APPROVED
    from shipyard.steps.rollout import approve_rollout

    events = notifier(notify)
    with library_prints_to_stderr():
        state = approve_rollout(name, namespace, reason, **injected(rollout_ports="ports"))
    events.emit(ROLLOUT_APPROVED, name, {
        "name": name, "version": state.version, "step": state.step + 1,
        "by": state.request_by, "reason": reason, "rollout_id": state.rollout_id})
    doc = state.to_json()
    emit(doc, as_json, f"approval of step {state.step + 1} stored for the rollout of {name} "
                       f"version {state.version}; its controller continues at its next check")


@rollout_group.command("plan")
@click.option("--policy", "policy_path", required=True, type=click.Path(path_type=Path),
              help="POLICY.yaml to check.")
@json_option("Print the plan as JSON.")
def rollout_plan_command(policy_path: Path, as_json: bool) -> None:
    """Check POLICY.yaml without a cluster, and print the steps a rollout will take:
    mirrors, weights, approvals, gates and their minimums, and the promotion.

    Exit codes: 0 a valid policy, 2 a bad policy (the field is named).
    """
    from shipyard.rollout.plan import describe, plan
    from shipyard.rollout.policy import load_policy

    planned = plan(load_policy(policy_path))
    emit(planned, as_json, describe(planned))
