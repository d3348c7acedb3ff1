"""fleetctl.runner: pyinfra's output streamed as it comes, and a failure named in one line."""

from __future__ import annotations

import sys

from ollama_fleet.fleetctl.runner import Result, _stream, failure_line
from ollama_fleet.tasks.kit.fleet import Fleet
from ollama_fleet.tasks.kit.report import ERROR_MARK


def test_the_hosts_own_error_line_is_the_failure():
    output = ("--> Starting operation: Backup restored\n"
              f"    [gpu-2] {ERROR_MARK}b.tar: blob sha256-ab: content does not match\n"
              "    [gpu-2] Error: executed 3 commands\n--> pyinfra error: No hosts remaining!\n")
    assert failure_line(output, 1, "gpu-2") == "b.tar: blob sha256-ab: content does not match"
    output = "    [gpu-2] Connected\n    [gpu-2] Could not connect (timed out)\n"
    assert failure_line(output, 1, "gpu-2") == "Could not connect (timed out)"
    output = ("    [gpu-2] Error: executed 1 commands\n"
              "--> gpu-2 failed at step 'Ollama healthy': ollama-0 not healthy\n")
    assert failure_line(output, 1, "gpu-2") == \
        "--> gpu-2 failed at step 'Ollama healthy': ollama-0 not healthy"
    # a failed command's own error line, not pyinfra's bookkeeping around it
    output = ("    [gpu-2] Success\n    [gpu-2] ollama-0: unhealthy: \"Error: 500\\n\"\n"
              "    [gpu-2] Error: executed 2 commands\n"
              "--> gpu-2: failed at step \"Every Ollama instance healthy\"; the other hosts "
              "carry on.\n--> pyinfra error: No hosts remaining!\n")
    assert failure_line(output, 1, "gpu-2") == 'ollama-0: unhealthy: "Error: 500\\n"'
    assert Result(1, output).failed_hosts() == ["gpu-2"]
    assert failure_line("--> pyinfra error: No hosts remaining!\n", 1, "gpu-2") == \
        "--> pyinfra error: No hosts remaining!"
    assert failure_line("", 3, "gpu-2") == "pyinfra exited 3"


def test_results_with_no_change_are_recognised():
    assert Result(0, "    Grand total   2   -   -   2\n").changed_nothing
    assert not Result(0, "    Grand total   2   1   -   1\n").changed_nothing
    assert not Result(0, "no results").changed_nothing


def test_output_is_shown_line_by_line_while_the_child_runs(tmp_path):
    """Each line reaches the log before the child has finished (it waits for a file that
    only the log callback creates)."""
    flag = tmp_path / "seen"
    child = ("import pathlib, sys, time\n"
             "print('first', flush=True)\n"
             f"flag = pathlib.Path({str(flag)!r})\n"
             "deadline = time.monotonic() + 20\n"
             "while not flag.exists() and time.monotonic() < deadline:\n"
             "    time.sleep(0.05)\n"
             "print('streamed' if flag.exists() else 'buffered', flush=True)\n")
    seen: list[str] = []

    def log(line: str) -> None:
        seen.append(line)
        flag.touch()

    result = _stream([sys.executable, "-c", child], {}, log, timeout=60)
    assert result.ok and seen == ["    first", "    streamed"], seen


def test_a_silent_hung_child_is_killed_at_the_timeout():
    child = "print('[gpu-1] Success', flush=True); import time; time.sleep(60)"
    result = _stream([sys.executable, "-c", child], {}, print, timeout=1)
    assert not result.ok and "did not finish within 1s" in result.output
    # the timeout is the failure, not the last thing the host said
    assert result.failure("gpu-1").startswith("pyinfra did not finish within 1s (killed")


def test_fleet_is_plain_data():
    fleet = Fleet((), inventory="inv.py", path="/abs/inv.py")
    assert fleet.gpu_servers == () and fleet.lb_servers == ()


def test_what_the_front_doors_hold_out_is_read_from_each_of_them(monkeypatch):
    from ollama_fleet.fleetctl import runner
    from ollama_fleet.tasks.kit.fleet import Member
    from ollama_fleet.tasks.kit.settings import settings_for

    def member(name, group):
        return Member(name, (group,), {}, settings_for(name, {}))

    fleet = Fleet((member("gpu-1", "gpu_servers"), member("gpu-2", "gpu_servers"),
                   member("lb-1", "lb_servers"), member("lb-2", "lb_servers")),
                  inventory="inv.py", path="/inv.py")
    asked = []

    def read_fact(fleet, hosts, fact, args, data, timeout=120):
        asked.append((hosts, fact, args))
        return {"lb-1": ["gpu-2"], "lb-2": ["gpu-1", "gpu-2"]}.get(hosts[0]) and \
            {hosts[0]: {"lb-1": ["gpu-2"], "lb-2": ["gpu-1", "gpu-2"]}[hosts[0]]}

    monkeypatch.setattr(runner, "read_fact", read_fact)
    assert runner.held_out(fleet, {}) == ["gpu-1", "gpu-2"]  # the union, inventory order
    assert asked[0] == (["lb-1"], "ollama_fleet.tasks.kit.facts.Lines",
                        ["path=/opt/ollama-front/held-out"])
    monkeypatch.setattr(runner, "read_fact", lambda *a, **k: None)
    assert runner.held_out(fleet, {}) is None  # unreadable: the caller must not guess
