"""`ollama-fleet`: one exit-code convention, one line for bad input, --limit as pyinfra's,
a question before a serving fleet changes. Nothing here reaches a host: every case stops
before the first connection (the lab tests drive the commands against real hosts)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fleetctl.cli import COMMANDS, confirm, main
from fleetctl.inventory import Fleet, FleetHost, UsageError, parse_data
from tasks.settings import Settings
from tests.unit.test_backup import WEIGHTS, back_up, flip_byte_in, make_store, sha

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def inventory(tmp_path) -> Path:
    path = tmp_path / "fleet.py"
    path.write_text("gpu_servers = [('gpu-1', {'gpu_count': 1, 'ssh_hostname': '192.0.2.1'}),\n"
                    "               ('gpu-2', {'gpu_count': 1, 'ssh_hostname': '192.0.2.2'})]\n"
                    "lb_servers = [('lb-1', {'ssh_hostname': '192.0.2.9'})]\n")
    return path


def run_main(capsys, *args: str) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def program(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleetctl", *args], cwd=cwd, input=stdin,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)},
                          stdin=None if stdin is not None else subprocess.DEVNULL)


def test_help_lists_every_command_from_any_directory(tmp_path):
    proc = program("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for command in COMMANDS:
        assert f"    {command} " in proc.stdout, command
    assert "2 bad arguments or inventory" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["INV"], "ollama-fleet: the following arguments are required: COMMAND"),
    (["INV", "backup"], "backup: the following arguments are required: HOST"),
    (["INV", "restore", "gpu-2"], "restore: the following arguments are required: TARBALL"),
    (["INV", "backup", "gpu-1", "--to", "d", "--on-host"],
     "backup: argument --on-host: not allowed with argument --to"),
    (["INV", "backup", "gpu-1", "--data", "ollama_models"],
     "backup: --data 'ollama_models': expected KEY=VALUE"),
    (["INV", "copy", "gpu-1"], "ollama-fleet: argument COMMAND: invalid choice: 'copy' "
                                 "(choose from 'roll', 'status', 'backup', 'restore', 'drain', "
                                 "'undrain')"),
    (["nope/inv.py", "backup", "gpu-1"], "backup: nope/inv.py: no such inventory file"),
    (["INV", "backup", "gpu-9"], "backup: gpu-9: not a host of INV (hosts: gpu-1, gpu-2, lb-1)"),
    (["INV", "backup", "lb-1"], "backup: lb-1: not a gpu_servers host: it has no Ollama model "
                                "store"),
    (["INV", "status", "--limit", "gpu-9"], "status: --limit gpu-9: matches no host or group "
                                            "of INV"),
    (["INV", "status", "--timeout", "0"], "status: argument --timeout: 0: must be more than 0"),
    (["INV", "status", "--bogus"], "status: unrecognized arguments: --bogus"),
    (["INV", "roll", "--batch-size", "0"], "roll: --batch-size 0: must be 1 or more"),
    (["INV", "roll", "--limit", "lb_servers"], "roll: --limit lb_servers: matches no "
                                               "gpu_servers host of INV"),
    (["INV", "drain", "cpu-*"], "drain: drain cpu-*: matches no gpu_servers host of INV"),
    (["INV", "roll", "--data", "ollama_topology=mesh"],
     "roll: INV: invalid inventory data, no host was changed: gpu-1: ollama_topology: Input "
     "should be 'per_gpu', 'shared' or 'cpu' (got 'mesh'); gpu-2: ollama_topology: Input "
     "should be 'per_gpu', 'shared' or 'cpu' (got 'mesh'); lb-1: ollama_topology: Input "
     "should be 'per_gpu', 'shared' or 'cpu' (got 'mesh')"),
])
def test_bad_arguments_or_inventory_exit_2_with_one_line(args, message, inventory, capsys):
    args = [str(inventory) if a == "INV" else a for a in args]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert unquoted_choices(captured.err) == unquoted_choices(
        message.replace("INV", str(inventory)) + "\n")


def unquoted_choices(text: str) -> str:
    """argparse quotes its `choose from` list up to Python 3.12.7 and not after."""
    return re.sub(r"\(choose from [^)]*\)", lambda m: m.group(0).replace("'", ""), text)


def test_the_roll_asks_and_a_no_changes_nothing(inventory, tmp_path):
    proc = program(str(inventory), "roll", "--limit", "gpu-*", cwd=tmp_path, stdin="n\n")
    assert proc.returncode == 1, proc.stderr
    assert "Roll 2 serving hosts? [y/N]" in proc.stdout
    assert proc.stderr.splitlines()[-1] == "roll: not confirmed; nothing was changed"
    assert "canary: gpu-1" in proc.stderr and "batch 2/2: gpu-2" in proc.stderr
    # no answer at all (a script without -y) is a no too
    proc = program(str(inventory), "undrain", cwd=tmp_path)
    assert proc.returncode == 1
    assert "pass -y to go ahead without asking" in proc.stderr


def test_confirm():
    assert confirm("go?", yes=True, ask=lambda _: "")
    assert confirm("go?", yes=False, ask=lambda _: " Yes\n")
    assert not confirm("go?", yes=False, ask=lambda _: "")

    def closed(_: str) -> str:
        raise EOFError

    assert not confirm("go?", yes=False, ask=closed)


def fleet() -> Fleet:
    def host(name: str, *groups: str) -> FleetHost:
        return FleetHost(name, groups, {}, Settings())

    return Fleet("inv.py", "/inv.py", (
        host("gpu-a1", "gpu_servers", "h100"), host("gpu-a2", "gpu_servers", "h100"),
        host("gpu-b1", "gpu_servers"), host("cpu-1", "gpu_servers", "cpu"),
        host("lb-1", "lb_servers")), {})


@pytest.mark.parametrize("limits, names", [
    ([], ["gpu-a1", "gpu-a2", "gpu-b1", "cpu-1", "lb-1"]),
    (["h100"], ["gpu-a1", "gpu-a2"]),  # a group
    (["gpu-*1"], ["gpu-a1", "gpu-b1"]),  # a glob
    (["lb_servers", "cpu"], ["cpu-1", "lb-1"]),  # inventory order, whatever the order given
    (["gpu-b1,h100", "gpu-a1"], ["gpu-a1", "gpu-a2", "gpu-b1"]),  # comma-separated, once
    (["gpu-a[12]"], ["gpu-a1", "gpu-a2"]),
])
def test_limit_takes_hosts_groups_and_globs(limits, names):
    assert [h.name for h in fleet().select(limits)] == names


def test_limit_that_matches_nothing_is_an_error():
    with pytest.raises(UsageError, match=r"--limit GPU-\*: matches no host or group of inv.py"):
        fleet().select(["GPU-*"])  # case matters, as in host names


def test_data_is_parsed_like_pyinfra():
    assert parse_data(["ollama_image=ollama/ollama:0.7.0", "ollama_health_timeout=20",
                       'front_door_drained=["gpu-1"]', "nginx_gzip=false", "a=b=c"]) == {
        "ollama_image": "ollama/ollama:0.7.0", "ollama_health_timeout": 20,
        "front_door_drained": ["gpu-1"], "nginx_gzip": False, "a": "b=c"}


def test_restore_checks_the_tarball_before_any_host(tmp_path, inventory, capsys):
    code, line = run_main(capsys, inventory, "restore", "gpu-2", tmp_path / "no.tar", "-y")
    assert (code, line) == (2, f"restore: gpu-2: {tmp_path / 'no.tar'}: no such file")

    _, tarball = back_up(tmp_path, make_store(tmp_path / "store"))
    sums = tarball.with_name(tarball.name + ".sha256")
    sums.rename(tmp_path / "aside")
    code, line = run_main(capsys, inventory, "restore", "gpu-2", tarball, "-y")
    assert code == 2 and line.startswith(f"restore: gpu-2: {sums}: no such file")

    sums.write_text(f"{'0' * 64}  {tarball.name}\n")
    code, line = run_main(capsys, inventory, "restore", "gpu-2", tarball, "-y")
    assert code == 2 and line == (
        f"restore: gpu-2: {tarball}: sha256 is {sha(tarball.read_bytes())}, {sums.name} says "
        f"{'0' * 64}; the tarball is damaged or not the one backed up; no host was changed")

    flip_byte_in(tarball, f"models/blobs/sha256-{sha(WEIGHTS)}")
    sums.write_text(f"{sha(tarball.read_bytes())}  {tarball.name}\n")
    code, line = run_main(capsys, inventory, "restore", "gpu-2", tarball, "-y")
    assert code == 2 and line.startswith(f"restore: gpu-2: {tarball}: blob sha256-{sha(WEIGHTS)}")
    assert line.endswith("tampered with or damaged; no host was changed")
