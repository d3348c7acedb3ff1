"""The roll's plan: canary alone first, then batches in inventory order."""

from __future__ import annotations

import re

import pytest

from ollama_fleet.fleetctl.inventory import UsageError
from ollama_fleet.fleetctl.roll import (
    Roll,
    RollError,
    RollHost,
    Smoke,
    batch_size,
    batches,
    roll_hosts,
    smoke_result,
    tag_version,
)
from ollama_fleet.tasks.kit.fleet import Fleet, Member, build
from ollama_fleet.tasks.kit.settings import settings_for


def hosts(n: int) -> list[RollHost]:
    return [RollHost(f"gpu-{i}", "http://127.0.0.1:80", "tinyllama", "ollama/ollama:0.6.8")
            for i in range(1, n + 1)]


@pytest.mark.parametrize("n, size, plan", [
    (1, 1, [["gpu-1"]]),
    (3, 1, [["gpu-1"], ["gpu-2"], ["gpu-3"]]),
    (5, 2, [["gpu-1"], ["gpu-2", "gpu-3"], ["gpu-4", "gpu-5"]]),
    (4, 10, [["gpu-1"], ["gpu-2", "gpu-3", "gpu-4"]]),
    (0, 1, []),
])
def test_canary_first_then_batches_in_inventory_order(n, size, plan):
    assert [[h.name for h in b] for b in batches(hosts(n), size)] == plan


@pytest.mark.parametrize("text, n, size", [
    ("1", 10, 1), ("3", 10, 3), ("50%", 11, 5), ("25%", 10, 3), ("1%", 10, 1),
    ("100%", 10, 9), ("100%", 1, 1),
])
def test_batch_size_is_hosts_or_a_share_of_those_after_the_canary(text, n, size):
    assert batch_size(text, n) == size


@pytest.mark.parametrize("text", ["0", "-1", "0%", "101%", "half", "%"])
def test_a_bad_batch_size_is_refused(text):
    with pytest.raises(UsageError, match=f"--batch-size {text}: "):
        batch_size(text, 10)


def test_the_smoke_test_asks_each_host_its_own_nginx_from_loopback():
    fleet = build([("gpu-1", ["gpu_servers"], {"gpu_count": 1, "ssh_hostname": "10.0.0.1",
                                               "ollama_models": ["tinyllama"]}),
                   ("gpu-2", ["gpu_servers"], {"gpu_count": 1, "ssh_hostname": "10.0.0.2",
                                               "nginx_tls": "self_signed",
                                               "nginx_tls_port": 8443})])
    assert roll_hosts(list(fleet.gpu_servers)) == [
        RollHost("gpu-1", "http://127.0.0.1:80", "tinyllama", "ollama/ollama:0.32.15"),
        RollHost("gpu-2", "https://127.0.0.1:8443", None, "ollama/ollama:0.32.15")]


# -- the steps of each batch ---------------------------------------------------------------

class RecordedRoll(Roll):
    """A roll whose pyinfra runs and smoke tests are recorded; FAIL = (step, host) fails."""

    def __init__(self, fail: tuple[str, str] | None = None,
                 held: dict[str, str] | None = None) -> None:
        lb = Member("lb-1", ("lb_servers",), {}, settings_for("lb-1", {}))
        self.lines: list[str] = []  # what the roll logged
        super().__init__(Fleet((lb,), inventory="inv.py", path="/inv.py"), log=self.lines.append)
        self.steps: list[str] = []
        self.fail = fail
        self.held = dict(held or {})  # what the front door holds out before the roll, and why
        self.rolled: list[list[str]] = []  # front_door_out_roll of each front door run

    def read_held_out(self):
        return self.held

    def pyinfra(self, limit, data, step, host, deploy="deploy.py"):
        self.steps.append(f"{step} {','.join(limit)}" + (
            f" drained={','.join(data['front_door_out']) or '-'}"
            if "front_door_out" in data else "") + f" ({deploy})")
        if "front_door_out_roll" in data:
            self.rolled.append(data["front_door_out_roll"])
        if self.fail == (step, host):
            raise RollError(host, step, "boom")

    def running_image(self, host):
        return "ollama/ollama:0.6.5"  # what runs before the roll (hosts() roll to 0.6.8)

    def smoke(self, h):
        self.steps.append(f"smoke {h.name}" + (f" ({h.image})" if self.fail else ""))
        return Smoke("0.7.0", None, None)


def test_each_batch_pulls_while_serving_then_drains_applies_smokes_undrains():
    roll = RecordedRoll()
    assert roll.run(hosts(4), 2, rollback=False) == 0
    assert roll.steps == [
        "pull gpu-1 (tasks/deploys/pull.py)", "drain lb-1 drained=gpu-1 (deploy.py)",
        "apply gpu-1 (deploy.py)", "smoke gpu-1", "undrain lb-1 drained=- (deploy.py)",
        "pull gpu-2,gpu-3 (tasks/deploys/pull.py)", "drain lb-1 drained=gpu-2,gpu-3 (deploy.py)",
        "apply gpu-2,gpu-3 (deploy.py)", "smoke gpu-2", "smoke gpu-3",
        "undrain lb-1 drained=- (deploy.py)",
        "pull gpu-4 (tasks/deploys/pull.py)", "drain lb-1 drained=gpu-4 (deploy.py)",
        "apply gpu-4 (deploy.py)", "smoke gpu-4", "undrain lb-1 drained=- (deploy.py)"]


def test_what_the_front_door_holds_out_stays_out_through_the_roll():
    roll = RecordedRoll(held={"gpu-9": "drain"})  # another host drained by hand
    assert roll.run(hosts(2), 1, rollback=False) == 0
    assert [s for s in roll.steps if "drained=" in s] == [
        "drain lb-1 drained=gpu-9,gpu-1 (deploy.py)", "undrain lb-1 drained=gpu-9 (deploy.py)",
        "drain lb-1 drained=gpu-9,gpu-2 (deploy.py)", "undrain lb-1 drained=gpu-9 (deploy.py)"]


def test_the_front_door_is_told_which_hosts_a_roll_holds_and_which_an_operator_drained():
    """front_door_out_roll: the rotation view shows a roll's batch as `held`, an operator's
    drain as `drained` (tasks.steps.front_door.Held), and a stopped roll's batch stays a
    roll's until an operator drains it."""
    roll = RecordedRoll(held={"gpu-9": "drain", "gpu-8": "roll"}, fail=("apply", "gpu-2"))
    assert roll.run(hosts(2), 1, rollback=False) == 1
    assert roll.rolled == [["gpu-8", "gpu-1"], ["gpu-8"], ["gpu-8", "gpu-2"]]
    assert [s for s in roll.steps if "drained=" in s][-1] == \
        "drain lb-1 drained=gpu-9,gpu-8,gpu-2 (deploy.py)"
    # a host an operator drained stays the operator's through a roll's drain of it
    again = RecordedRoll(held={"gpu-1": "drain"})
    again.front_door("drain", "gpu-1", out=["gpu-1", "gpu-2"])
    assert again.rolled == [["gpu-2"]]


def test_a_failed_pull_stops_the_roll_before_any_drain():
    roll = RecordedRoll(fail=("pull", "gpu-2"))
    assert roll.run(hosts(3), 1, rollback=False) == 1
    assert roll.steps[-2:] == ["undrain lb-1 drained=- (deploy.py)",
                               "pull gpu-2 (tasks/deploys/pull.py)"]
    assert roll.lines[-1] == ("roll stopped: gpu-2 failed at step 'pull': boom. Nothing of this "
                         "batch was drained or changed; untouched: gpu-2, gpu-3; done: gpu-1. "
                         "Fix the image, then roll again.")


def test_a_failed_batch_stays_out_whole_and_is_named_with_its_roll_back():
    roll = RecordedRoll(fail=("apply", "gpu-2"))
    assert roll.run(hosts(4), 2, rollback=False) == 1
    assert roll.steps[-1] == "apply gpu-2,gpu-3 (deploy.py)"  # no undrain after it
    assert roll.lines[-1] == (
        "roll stopped: gpu-2 failed at step 'apply': boom. gpu-2, gpu-3 stay out of the front "
        "door; untouched: gpu-4; done: gpu-1. Roll back: ollama-fleet inv.py roll -y "
        "--limit gpu-2 --limit gpu-3 --data ollama_image=ollama/ollama:0.6.5")


def test_a_rollback_smoke_tests_the_previous_image_and_puts_the_host_back():
    roll = RecordedRoll(fail=("apply", "gpu-1"))
    assert roll.run(hosts(3), 1, rollback=True) == 1
    assert roll.steps == [
        "pull gpu-1 (tasks/deploys/pull.py)", "drain lb-1 drained=gpu-1 (deploy.py)",
        "apply gpu-1 (deploy.py)", "rollback gpu-1 (deploy.py)",
        "smoke gpu-1 (ollama/ollama:0.6.5)",  # the image it runs again, not the failed one
        "undrain after rollback lb-1 drained=- (deploy.py)"]
    assert roll.lines[-1] == ("roll stopped: gpu-1 failed at step 'apply': boom. Rolled back, in "
                         "the front door again: gpu-1; untouched: gpu-2, gpu-3; done: none.")


@pytest.mark.parametrize("image, version", [
    ("ollama/ollama:0.7.0", "0.7.0"), ("ollama/ollama:v0.7.0", "0.7.0"),
    ("ollama/ollama:0.7.0-rocm", "0.7.0"), ("ollama/ollama:0.7.0-rc1", "0.7.0-rc1"),
    ("registry.example.com:5000/ollama/ollama:0.12.3", "0.12.3"),
    ("ollama/ollama:0.7.0@sha256:" + "a" * 64, "0.7.0"),
    ("ollama/ollama:latest", None), ("ollama/ollama", None), ("registry:5000/ollama", None),
    ("ollama/ollama:rocm", None),
])
def test_the_version_an_image_tag_names(image, version):
    assert tag_version(image) == version


def test_the_smoke_test_refuses_a_version_other_than_the_tags_and_reports_the_load():
    version = {"version": '{"version":"0.6.8"}'}
    old = RollHost("gpu-1", "http://127.0.0.1:80", None, "ollama/ollama:0.6.8")
    assert smoke_result(old, version) == Smoke("0.6.8", None, None)
    new = RollHost("gpu-1", "http://127.0.0.1:80", None, "ollama/ollama:0.7.0")
    with pytest.raises(RollError, match="gpu-1: smoke: answers version 0.6.8, but its "
                                        "image ollama/ollama:0.7.0 is 0.7.0"):
        smoke_result(new, version)
    # the model's load time, as Ollama reports it, goes into the roll's line
    model = RollHost("gpu-1", "http://127.0.0.1:80", "tinyllama", "ollama/ollama")
    smoked = smoke_result(model, {**version, "status": "200", "generate":
                                  '{"response":"","done":true,"load_duration":1500000000}'})
    assert str(smoked) == "version 0.6.8, tinyllama loaded in 1.50 s"


@pytest.mark.parametrize("answer, problem", [
    (None, "could not ask the host over SSH"),
    ({"error": "curl: (7) Failed to connect to 127.0.0.1 port 80"},
     "http://127.0.0.1:80: curl: (7) Failed to connect"),
    ({"version": '{"version":"0.6.8"}', "status": "404",
      "generate": '{"error":"model \'tinyllama\' not found"}'},
     "generate with tinyllama: HTTP 404"),
    ({"version": "<html>502</html>"}, "unexpected answer"),
])
def test_a_smoke_test_that_gets_no_good_answer_names_what_it_got(answer, problem):
    with pytest.raises(RollError, match=re.escape(problem)):
        smoke_result(RollHost("gpu-1", "http://127.0.0.1:80", "tinyllama", "ollama/ollama"),
                     answer)


def test_drain_and_undrain_keep_why_each_host_is_held(monkeypatch):
    """`ollama-fleet drain` makes the hosts it names the operator's (a roll's stopped batch
    too); the others keep their cause; `undrain` of some keeps the rest as they were."""
    import argparse

    from ollama_fleet.fleetctl import cli, runner

    fleet = Fleet(tuple(Member(n, (g,), {}, settings_for(n, {})) for n, g in (
        ("gpu-1", "gpu_servers"), ("gpu-2", "gpu_servers"), ("gpu-3", "gpu_servers"),
        ("lb-1", "lb_servers"))), inventory="inv.py", path="/inv.py")
    kept = ["gpu-3\troll\t1765000000", "gpu-2\troll\t1765000000"]  # a stopped roll's batch
    monkeypatch.setattr(runner, "read_fact", lambda fleet, hosts, *a, **k: {"lb-1": kept})
    sent: list[dict] = []

    def deploy(fleet, deploy, limit, data, dry=False):  # the front door keeps what it is told
        sent.append(data)
        kept[:] = [f"{n}\t{'roll' if n in data['front_door_out_roll'] else 'drain'}"
                   for n in data["front_door_out"]]
        return runner.Result(0, "")

    monkeypatch.setattr(cli, "run_pyinfra", deploy)

    def args(command, *hosts):
        return argparse.Namespace(command=command, hosts=list(hosts), dry=False, yes=True)

    assert cli.cmd_drain(fleet, args("drain", "gpu-1", "gpu-3")) == 0
    assert cli.cmd_undrain(fleet, args("undrain", "gpu-1")) == 0
    assert [(d["front_door_out"], d["front_door_out_roll"]) for d in sent] == [
        (["gpu-2", "gpu-3", "gpu-1"], ["gpu-2"]),  # in inventory order, as the front door says
        (["gpu-2", "gpu-3"], ["gpu-2"])]
