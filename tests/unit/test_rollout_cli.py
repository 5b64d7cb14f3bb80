"""`shipyard rollout start|status|promote|abort` over fakes of the cluster interfaces. (The
rollout's alias moves on a real MLflow registry: integration/test_rollout_cli.py.)"""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner
from support.rollout_fakes import Crash, FakeClock, FakeCluster, RecordingAliases, ScriptedObserver

from shipyard.cli import main
from shipyard.rollout.controller import Ports
from shipyard.rollout.gates import Observation

GOOD = Observation(error_rate=0.0, p99_latency_ms=20)
BAD = Observation(error_rate=0.5, p99_latency_ms=20)
POLICY = {"steps": [{"weight": 20, "pause_seconds": 30}, {"weight": 100, "pause_seconds": 30}],
          "gates": {"max_error_rate": 0.01, "max_p99_latency_ms": 100},
          "check_interval_seconds": 30}


class World:
    """One fake cluster and registry shared by every command a test runs."""

    def __init__(self, observations: list[Observation], holder: str | None = None):
        self.cluster = FakeCluster(stable=1, holder=holder)
        self.aliases = RecordingAliases(champion=1)
        self.observer = ScriptedObserver(observations)
        self.clock = FakeClock()

    def ports(self, name: str, namespace: str, policy) -> Ports:
        return Ports(self.cluster, self.observer, self.aliases, clock=self.clock,
                     sleep=self.clock.sleep)

    def run(self, *args: str):
        return CliRunner().invoke(main, list(args), obj={"rollout_ports": self.ports})


@pytest.fixture
def policy_file(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(POLICY))
    return str(path)


def test_start_promotes_and_prints_the_final_state(policy_file):
    world = World([GOOD])
    result = world.run("rollout", "start", "--name", "m", "--version", "2", "--policy",
                       policy_file, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["phase"] == "promoted" and doc["pending"] == []
    assert doc["reason"] == "all 2 step(s) passed their gates"
    assert world.cluster.stable == 2 and world.aliases.champion_version == 2
    status = world.run("rollout", "status", "--name", "m")
    assert status.exit_code == 0
    assert "m: version 2 over stable 1, promoted" in status.stdout


def test_failing_gates_roll_back_with_exit_8(policy_file):
    world = World([GOOD, BAD])
    result = world.run("rollout", "start", "--name", "m", "--version", "2", "--policy",
                       policy_file)
    assert result.exit_code == 8
    assert "ended rolled_back: gates failed: error_rate 0.5 is outside max_error_rate 0.01" \
        in result.stderr
    assert world.cluster.weight == 0 and world.cluster.canary is None
    assert world.aliases.champion_version == 1


def test_a_rollout_held_elsewhere_exits_9_naming_the_holder(policy_file):
    world = World([GOOD], holder="nightly-run-12")
    result = world.run("rollout", "start", "--name", "m", "--version", "2", "--policy",
                       policy_file)
    assert result.exit_code == 9
    assert "rollout of m is held by nightly-run-12" in result.stderr


def test_abort_of_a_stopped_rollout_rolls_it_back_here(policy_file):
    world = World([GOOD])
    world.cluster.crash_on = ("set_weight", 100)
    with pytest.raises(Crash):  # the controller's process dies mid-rollout
        world.run("rollout", "start", "--name", "m", "--version", "2", "--policy", policy_file)
    result = world.run("rollout", "abort", "--name", "m", "--reason", "error budget spent",
                       "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["phase"] == "aborted" and doc["reason"] == "aborted: error budget spent"
    assert world.cluster.calls[-2:] == [("set_weight", 0), ("remove_canary",)]
    again = world.run("rollout", "promote", "--name", "m")
    assert again.exit_code == 2
    assert "no rollout of m is in progress (the last one ended aborted" in again.stderr


def test_bad_policy_and_unknown_rollout_exit_2(tmp_path):
    world = World([GOOD])
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"steps": [{"weight": 50}, {"weight": 10}]}))
    result = world.run("rollout", "start", "--name", "m", "--version", "2", "--policy",
                       str(bad))
    assert result.exit_code == 2
    assert f"{bad}: the rollout policy is invalid" in result.stderr
    assert "weights must not decrease, got [50, 10]" in result.stderr
    status = world.run("rollout", "status", "--name", "m")
    assert status.exit_code == 2
    assert "--name m: no rollout of m is recorded in namespace shipyard" in status.stderr


def test_without_a_cluster_the_error_says_how_to_configure_one(policy_file, tmp_path,
                                                                monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    result = CliRunner().invoke(main, ["rollout", "start", "--name", "m", "--version", "2",
                                       "--policy", policy_file])
    assert result.exit_code == 1
    assert "no Kubernetes cluster configured: set KUBECONFIG" in result.stderr


def test_approve_stores_the_approval_for_the_waiting_step(tmp_path):
    from shipyard.rollout import machine
    from shipyard.rollout.policy import parse_policy

    world = World([GOOD])
    refused = world.run("rollout", "approve", "--name", "m", "--reason", "ok")
    assert refused.exit_code == 2
    assert "name m: no rollout of m is in progress" in refused.stderr
    waiting = machine.begin("m", 2, 1, parse_policy({"steps": [{"approval": True}]}),
                            world.clock())
    world.cluster.states["m"] = waiting.to_json()
    blank = world.run("rollout", "approve", "--name", "m", "--reason", " ")
    assert blank.exit_code == 2 and "reason: say why the step is approved" in blank.stderr

    result = world.run("rollout", "approve", "--name", "m", "--reason", "load test passed",
                       "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["phase"] == "awaiting_approval" and doc["requested"] == "approve"
    stored = world.cluster.requests["m"]
    assert stored["what"] == "approve" and stored["step"] == 0
    assert stored["reason"] == "load test passed" and "@" in stored["by"]


def test_plan_checks_a_policy_without_a_cluster(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"steps": [{"mirror": 10, "pause_seconds": 30},
                                              {"approval": True}, {"weight": 50}],
                                    "gates": {"min_requests": 20, "max_error_rate": 0.01}}))
    result = CliRunner().invoke(main, ["rollout", "plan", "--policy", str(good), "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [s["kind"] for s in doc["steps"]] == ["mirror", "approval", "weight", "promote"]
    text = CliRunner().invoke(main, ["rollout", "plan", "--policy", str(good)])
    assert "3. stop mirroring; canary weight 50% for 60 s" in text.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"steps": [{"weight": 50}, {"mirror": 10}]}))
    refused = CliRunner().invoke(main, ["rollout", "plan", "--policy", str(bad)])
    assert refused.exit_code == 2
    assert "steps: mirror steps come before the first weight step" in refused.stderr


def test_start_and_approve_send_the_rollout_s_events_to_the_policy_s_and_the_flag_s_targets(
        tmp_path, monkeypatch):
    """A real receiver on 127.0.0.1 (support/event_receiver.py) gets each change once, as
    CloudEvents the SDK parses, signed; the policy's `notify:` and --notify both count."""
    from support.event_receiver import SECRET, Receiver

    from shipyard.notify import EVENT_TYPES
    from shipyard.rollout import events as rollout_events

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHIPYARD_NOTIFY_SECRET", SECRET)
    monkeypatch.delenv("SHIPYARD_NOTIFY", raising=False)
    from_policy, from_flag = Receiver(), Receiver()
    try:
        world = World([GOOD])

        def approve():  # someone approves once the rollout waits
            state = world.cluster.states.get("m")
            if state and state["phase"] == "awaiting_approval" and not world.cluster.requests:
                result = world.run("rollout", "approve", "--name", "m", "--reason", "ok",
                                   "--notify", from_flag.url)
                assert result.exit_code == 0, result.stderr
        world.observer.hooks = {i: approve for i in range(10)}
        path = tmp_path / "policy.yaml"
        path.write_text(yaml.safe_dump({
            "steps": [{"approval": True}, {"weight": 50, "pause_seconds": 30}],
            "gates": {"max_error_rate": 0.01}, "check_interval_seconds": 30,
            "notify": [from_policy.url]}))
        result = world.run("rollout", "start", "--name", "m", "--version", "2", "--policy",
                           str(path), "--notify", from_flag.url)
        assert result.exit_code == 0, result.stderr

        sent = [e.get_type() for e in from_policy.events()]
        assert sent == ["io.shipyard.rollout.started", "io.shipyard.rollout.approval_requested",
                        "io.shipyard.rollout.step", "io.shipyard.rollout.promoted"]
        assert all(signed for _, _, signed in from_policy.requests + from_flag.requests)
        by_flag = [e.get_type() for e in from_flag.events()]
        assert by_flag == ["io.shipyard.rollout.started", "io.shipyard.rollout.approval_requested",
                           "io.shipyard.rollout.approved", "io.shipyard.rollout.step",
                           "io.shipyard.rollout.promoted"]
        promoted = from_policy.events()[-1]
        assert promoted.get_subject() == "m"
        assert promoted.get_data()["approvals"][0]["reason"] == "ok"
    finally:
        from_policy.close()
        from_flag.close()
    # Every type the rollout tells is one notify knows: both take them from core.event_types.
    told = {value for value in vars(rollout_events).values()
            if isinstance(value, str) and value.startswith("io.shipyard.")}
    assert told <= set(EVENT_TYPES) and len(told) == 8
