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

from ollama_fleet.fleetctl.cli import COMMANDS, confirm, main
from ollama_fleet.fleetctl.inventory import parse_data
from ollama_fleet.tasks.kit.fleet import Fleet, FleetError, Member
from ollama_fleet.tasks.kit.settings import Settings
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
    return subprocess.run([sys.executable, "-m", "ollama_fleet", *args], cwd=cwd, input=stdin,
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
                                 "(choose from 'check', 'deploy', 'roll', 'status', 'events', "
                                 "'backup', 'restore', 'drain', 'undrain')"),
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


def on_a_terminal(*args: str, cwd: Path, answer: str) -> tuple[int, str]:
    """Run the program with a terminal as stdin and stderr (a pty), answering ANSWER to
    its question; return its exit status and what the terminal showed."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: the program, with the pty as its terminal
        os.chdir(cwd)
        os.environ["PYTHONPATH"] = str(REPO)
        os.execv(sys.executable, [sys.executable, "-m", "ollama_fleet", *args])  # noqa: S606
    shown, answered = b"", False
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
        if not answered and b"[y/N]" in shown:
            os.write(fd, answer.encode() + b"\n")
            answered = True
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_the_roll_asks_on_the_terminal_and_a_no_changes_nothing(inventory, tmp_path):
    code, shown = on_a_terminal(str(inventory), "roll", "--limit", "gpu-*", cwd=tmp_path,
                                answer="n")
    assert code == 1, shown
    assert "Roll 2 serving hosts? [y/N]" in shown
    assert shown.splitlines()[-1] == "roll: not confirmed; nothing was changed"
    assert "canary: gpu-1" in shown and "batch 2/2: gpu-2" in shown


def test_the_question_goes_to_stderr_and_is_never_asked_without_a_terminal(inventory,
                                                                            tmp_path):
    """Piped input is no answer: a script that forgot -y declines, whatever it sends."""
    proc = program(str(inventory), "roll", "--limit", "gpu-*", cwd=tmp_path, stdin="y\n")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""  # stdout is the command's output, never its questions
    assert "not asked: no terminal to ask on; pass -y (or set PYINFRA_YES=1)" in proc.stderr
    assert proc.stderr.splitlines()[-1] == "roll: not confirmed; nothing was changed"
    proc = program(str(inventory), "undrain", cwd=tmp_path)
    assert proc.returncode == 1
    assert "pass -y" in proc.stderr


@pytest.mark.parametrize("value, yes", [("1", True), ("true", True), ("y", True),
                                        ("0", False), ("", False), ("no", False)])
def test_pyinfra_yes_in_the_environment_is_minus_y(monkeypatch, value, yes):
    from ollama_fleet.fleetctl.cli import build_parser

    monkeypatch.setenv("PYINFRA_YES", value)
    for command in (["roll"], ["deploy"], ["drain", "gpu-1"], ["restore", "gpu-1", "t.tar"]):
        assert build_parser().parse_args(["inv.py", *command]).yes is yes, command


def test_status_takes_minus_y_and_changes_nothing_for_it(inventory, capsys, monkeypatch):
    from ollama_fleet.fleetctl import status

    monkeypatch.setattr(status, "collect", lambda plans, timeout, config: [])
    assert main([str(inventory), "status", "-y", "--json", "--limit", "gpu-9x"]) == 2
    assert main([str(inventory), "status", "-y", "--json", "--limit", "lb_servers"]) == 0


@pytest.mark.parametrize("args, options", [
    (["deploy", "-y"], ["--config"]),
    (["deploy", "-y", "-v"], ["--config", "-v"]),
    (["deploy", "-y", "-vv", "--diff"], ["--config", "-vv", "--diff"]),
    (["roll", "-y", "--diff", "-v"], ["--config", "-v", "--diff"]),
])
def test_verbosity_and_diff_reach_every_pyinfra_run(inventory, monkeypatch, args, options):
    from ollama_fleet.fleetctl import roll, runner

    runs: list[list[str]] = []

    def stream(cmd, env, log, timeout):
        runs.append(cmd)
        return runner.Result(1, "--> gpu-1: failed at step pull\n")

    monkeypatch.setattr(runner, "_stream", stream)
    monkeypatch.setattr(roll.Roll, "read_held_out", lambda self: [])
    assert main([str(inventory), *args]) == 1
    assert runs, "no pyinfra run"
    for cmd in runs:
        assert cmd[:len(runner.PYINFRA)] == runner.PYINFRA
        cmd = cmd[len(runner.PYINFRA):]
        flags = [a for a in cmd if a.startswith("-") and a not in ("-y", "--limit", "--data",
                                                                   "--dry")]
        assert flags == options, cmd
        config = cmd[cmd.index("--config") + 1]
        assert Path(config).resolve() == REPO / "config.py"


def test_pyinfra_yes_does_not_reach_a_dry_run(inventory, monkeypatch):
    """pyinfra reads PYINFRA_YES too: a --dry child that got it would skip its plan."""
    from ollama_fleet.fleetctl import runner

    monkeypatch.setenv("PYINFRA_YES", "1")
    seen: list[tuple[list[str], dict]] = []

    def stream(cmd, env, log, timeout):
        seen.append((cmd, env))
        return runner.Result(0, "")

    monkeypatch.setattr(runner, "_stream", stream)
    assert main([str(inventory), "deploy", "--dry"]) == 0
    cmd, env = seen[0]
    assert "--dry" in cmd and "-y" not in cmd and "PYINFRA_YES" not in env


def test_check_reads_the_inventory_offline(inventory, tmp_path, capsys):
    """`check` connects to nothing: the hosts' addresses are documentation ones, unrouted."""
    assert main([str(inventory), "check"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == (f"{inventory}: 3 hosts valid (2 gpu_servers, 1 lb_servers); no "
                           "host was connected to")
    bad = tmp_path / "bad.py"
    bad.write_text("gpu_servers = [('gpu-1', {'gpu_count': 1, 'nginx_timeout': 'soon'})]\n")
    assert main([str(bad), "check"]) == 2
    assert capsys.readouterr().err.startswith(f"check: {bad}: invalid inventory data, no host "
                                              "was changed: gpu-1: nginx_timeout: ")


@pytest.mark.parametrize("text, line", [
    ("gpu_servers = [('gpu-1', {)]\n", "fleet.py line 1: SyntaxError: closing parenthesis ')' "
     "does not match opening parenthesis '{'"),
    ("import nothing_here_at_all\n", "fleet.py line 1: ModuleNotFoundError: No module named "
     "'nothing_here_at_all'"),
])
def test_a_broken_inventory_says_pythons_reason_in_one_line(tmp_path, text, line):
    (tmp_path / "fleet.py").write_text(text)
    proc = program("fleet.py", "check", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == f"check: fleet.py: pyinfra cannot read it: {line}\n"
    assert "bug report" not in proc.stderr
    if "SyntaxError" in line:  # pyinfra logs the traceback: in the operator's folder
        assert (tmp_path / "pyinfra-debug.log").is_file()


def test_group_data_is_read_from_the_operators_folder(tmp_path):
    """As `pyinfra INV` does: ./group_data beside where the command runs applies."""
    (tmp_path / "fleet.py").write_text("gpu_servers = [('gpu-1', {'gpu_count': 1})]\n")
    (tmp_path / "group_data").mkdir()
    (tmp_path / "group_data" / "gpu_servers.py").write_text("ollama_modles = ['x']\n")
    proc = program("fleet.py", "check", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "gpu-1: ollama_modles: unknown setting (did you mean ollama_models?)" in proc.stderr


def test_confirm():
    def terminal() -> bool:
        return True

    assert confirm("go?", yes=True, ask=lambda _: "")
    assert confirm("go?", yes=False, ask=lambda _: " Yes\n", terminal=terminal)
    assert not confirm("go?", yes=False, ask=lambda _: "", terminal=terminal)
    assert not confirm("go?", yes=False, ask=lambda _: "yes", terminal=lambda: False)

    def closed(_: str) -> str:
        raise EOFError

    assert not confirm("go?", yes=False, ask=closed, terminal=terminal)


def fleet() -> Fleet:
    def host(name: str, *groups: str) -> Member:
        return Member(name, groups, {}, Settings())

    return Fleet((
        host("gpu-a1", "gpu_servers", "h100"), host("gpu-a2", "gpu_servers", "h100"),
        host("gpu-b1", "gpu_servers"), host("cpu-1", "gpu_servers", "cpu"),
        host("lb-1", "lb_servers")), inventory="inv.py", path="/inv.py")


@pytest.mark.parametrize("limits, names", [
    ([], ["gpu-a1", "gpu-a2", "gpu-b1", "cpu-1", "lb-1"]),
    (["h100"], ["gpu-a1", "gpu-a2"]),  # a group
    (["gpu-*1"], ["gpu-a1", "gpu-b1"]),  # a glob
    (["lb_servers", "cpu"], ["cpu-1", "lb-1"]),  # inventory order, whatever the order given
    (["gpu-b1", "h100", "gpu-a1"], ["gpu-a1", "gpu-a2", "gpu-b1"]),  # repeated, each once
    (["gpu-a?"], ["gpu-a1", "gpu-a2"]),
    (["gpu-a[12]"], ["gpu-a1", "gpu-a2"]),
])
def test_limit_takes_hosts_groups_and_globs(limits, names):
    assert [h.name for h in fleet().select(limits)] == names


def test_a_comma_is_part_of_the_pattern_as_in_pyinfra_3():
    """pyinfra 3.10 reads `--limit a,b` as one pattern, which matches no host."""
    with pytest.raises(FleetError, match=r"--limit gpu-b1,h100: matches no host or group of "
                       r"inv.py \(one pattern per --limit"):
        fleet().select(["gpu-b1,h100"])


def test_limit_that_matches_nothing_is_an_error():
    with pytest.raises(FleetError, match=r"--limit GPU-\*: matches no host or group of inv.py"):
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
