"""tasks.kit.lock: which holders a run from this machine may end (the rest is in the lab)."""

from __future__ import annotations

import os
import socket
import subprocess

from ollama_fleet.tasks.kit.lock import _gone_from_here, held_answer, owner


def _line(machine: str, pid: int) -> str:
    return f"ops@{machine} pid {pid}: deploy.py since 2026-11-30T06:00:00Z (holder 4242, " \
           "connection 4200)"


def test_only_a_run_of_this_machine_that_is_gone_may_be_ended():
    dead = subprocess.Popen(["true"])  # noqa: S607 (a pid that has exited)
    dead.wait()
    here = socket.gethostname()
    assert _gone_from_here(_line(here, dead.pid)) == "4242"
    assert _gone_from_here(_line(here, os.getppid())) is None  # alive
    assert _gone_from_here(_line("elsewhere", dead.pid)) is None  # not ours to judge
    assert _gone_from_here("another run (its owner not recorded)") is None


def test_the_owner_says_who_runs_what_since_when():
    assert f"@{socket.gethostname()} pid {os.getpid()}: deploy.py since " in owner("deploy.py")


def test_only_hold_sh_s_answer_for_a_held_lock_reads_as_busy():
    """Anything else (sudo asking for a password, a missing shell) is told as what it is,
    not as "another run holds this host"."""
    line = owner("deploy") + " (holder 412, connection 77)"
    assert held_answer(line)
    assert held_answer("another run (its owner not recorded)")
    assert held_answer("ollama-fleet-health on gpu-1: restart ollama-0 since "
                       "2026-12-06T22:00:00Z (agent pid 731)")  # the agent's, as it writes it
    for said in ("sudo: a password is required", "", "sh: 1: setsid: not found",
                 "holder 412, connection 77"):
        assert not held_answer(said), said
