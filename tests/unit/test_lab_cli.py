"""`python -m lab` rejects bad input with one line and a non-zero exit, before touching Docker."""

from __future__ import annotations

import pytest

from tests.labfleet import lab_cli


@pytest.mark.parametrize("args, code, message", [
    (["up", "--gpus", "3"], 2, "unrecognized arguments: --gpus 3"),
    (["up", "--gpu-hosts", "two"], 2, "'two' is not a whole number"),
    (["up", "--gpu-hosts", "-1"], 2, "-1 is negative"),
    (["up", "--gpu-hosts", "0"], 1, "zero hosts"),
    (["up", "--gpu-hosts", "1", "--gpus-per-host", "0"], 1, "--gpus-per-host 0"),
    (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
    (["cut"], 2, "the following arguments are required: host"),
])
def test_bad_input_is_one_line(args, code, message):
    proc = lab_cli(*args, name="fleetlab-badinput", check=False, timeout=60)
    assert proc.returncode == code
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr


def test_no_docker_engine_is_one_line():
    proc = lab_cli("up", "--cpu-hosts", "1", name="fleetlab-noengine", check=False, timeout=60,
                   env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "lab: error: no Docker engine answers (start dockerd, or run `make machine`, which "
        "installs and starts one)"]
