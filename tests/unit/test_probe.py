"""tasks.engine.probe: many facts' commands in one program, split back exactly per fact."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from pyinfra.facts.files import File, Sha1File

from ollama_fleet.tasks.engine.probe import _command, batch_program, split_batch

MARK = "__fleet_fact_test"


def run(program: str, env: dict[str, str] | None = None) -> list[str]:
    out = subprocess.run(program, shell=True, capture_output=True, text=True, timeout=60,
                         check=True, env=env).stdout
    return out.splitlines()


COMMANDS = [("echo a; echo b", None), ("echo partial; exit 3", None),
            ("printf 'no newline'", None), ("echo never", "no-such-binary-here"),
            ("true", None), ("echo 'a line'; echo >&2 ignored", "sh")]
PARTS = [("ok", ["a", "b"]), ("failed", ["partial"]), ("ok", ["no newline"]),
         ("missing", []), ("ok", []), ("ok", ["a line"])]


def test_each_command_gets_its_own_lines_and_status(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    assert split_batch(run(batch_program(COMMANDS, MARK), env), MARK, len(COMMANDS)) == PARTS
    assert list(tmp_path.iterdir()) == []  # the outputs' directory is gone


def test_without_a_temporary_directory_the_commands_run_in_turn(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path / "absent")}
    assert split_batch(run(batch_program(COMMANDS, MARK), env), MARK, len(COMMANDS)) == PARTS


def test_the_commands_run_at_once(tmp_path):
    """Each of two commands waits (bounded) for the other to have started: in turn, the
    first would give up."""
    def waits_for(mine: str, other: str) -> str:
        return (f"touch {tmp_path / mine}; i=0; while [ $i -lt 100 ]; do "
                f"[ -e {tmp_path / other} ] && echo {mine} && exit 0; sleep 0.05; "
                "i=$((i + 1)); done; exit 1")
    commands = [(waits_for("a", "b"), None), (waits_for("b", "a"), None)]
    assert split_batch(run(batch_program(commands, MARK)), MARK, 2) == [("ok", ["a"]),
                                                                        ("ok", ["b"])]


def test_quotes_and_dollars_in_fact_commands_stay_theirs(tmp_path):
    odd = tmp_path / "it's $HOME \"quoted\""
    odd.write_text("x")
    facts = [(File(), {"path": str(odd)}), (Sha1File(), {"path": str(odd)}),
             (File(), {"path": str(tmp_path / "absent")})]
    commands = [_command(fact, kwargs) for fact, kwargs in facts]
    parts = split_batch(run(batch_program(commands, MARK)), MARK, len(commands))
    for (fact, _kwargs), (status, lines), (command, _) in zip(facts, parts, commands,
                                                             strict=True):
        alone = subprocess.run(command, shell=True, capture_output=True, text=True,
                               timeout=60)
        assert status == ("ok" if alone.returncode == 0 else "failed")
        assert lines == alone.stdout.splitlines(), command
        if lines:  # processed as pyinfra processes the fact run alone
            assert fact.process(lines) == fact.process(alone.stdout.splitlines())
    assert parts[1][1][0].startswith("11f6ad8ec52a2984abaafd7c3b516503785c2072")  # sha1("x")


def test_a_batch_of_none_is_harmless():
    assert split_batch(run(batch_program([], MARK)), MARK, 0) == []


def test_a_fact_is_known_by_its_arguments_defaults_filled_global_ones_dropped():
    from pyinfra.facts.systemd import SystemdStatus

    from ollama_fleet.tasks.engine.probe import _key

    assert _key(File, {"path": "/x"}) == _key(File, {"path": "/x", "_sudo": True})
    assert _key(File, {"path": "/x"}) != _key(File, {"path": "/y"})
    assert _key(SystemdStatus, {"services": ["docker.service"]}) == _key(
        SystemdStatus, {"user_mode": False, "machine": None, "user_name": None,
                        "services": ["docker.service"]})


class _Host:
    def __init__(self, name: str, address: str) -> None:
        self.name, self.data, self.state = name, {"ssh_hostname": address}, object()


def test_remembered_facts_come_back_as_the_facts_asked(tmp_path, monkeypatch):
    from ollama_fleet.tasks.engine import probe

    monkeypatch.setenv(probe.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(probe, "_asked", {})
    host = _Host("gpu-1", "10.0.0.1")
    probe._remember(host, File, (), {"path": "/etc/x", "_sudo": True})
    probe._remember(host, Sha1File, (), {"path": "/etc/x"})
    probe._remember(host, File, (), {"path": "/etc/x"})  # asked twice: remembered once
    probe._write_asked()
    assert probe.remembered(host) == [(File, {"path": "/etc/x"}), (Sha1File, {"path": "/etc/x"})]
    # hosts that share a name in two fleets do not share a memory
    assert probe.memory_file(_Host("gpu-1", "10.9.9.9")) != probe.memory_file(host)
    assert probe.memory_file(host).stat().st_mode & 0o777 == 0o600
    assert probe.memory_file(host).parent.stat().st_mode & 0o777 == 0o700
    probe.memory_file(host).write_text('[["no.such.Fact", {}], "junk", ' + \
                                       '["pyinfra.facts.files.File", {"path": "/y"}]]')
    assert probe.remembered(host) == [(File, {"path": "/y"})]  # the rest forgotten


def _prefetched(host, cls, kwargs, value):
    from ollama_fleet.tasks.engine import probe

    probe._host_cache(host)[probe._key(cls, kwargs)] = value
    probe._taken[(id(host.state), host.name)] = probe.time.monotonic()


def test_an_operation_command_drops_the_hosts_prefetched_facts():
    from ollama_fleet.tasks.engine import probe

    host = _Host("gpu-1", "10.0.0.1")
    _prefetched(host, File, {"path": "/x"}, {"size": 1})
    assert probe._cached(host, File, (), {"path": "/x"}) == (True, {"size": 1})
    ran = []
    execute = probe._forgetting(lambda self, state, h, args: ran.append(h))
    execute(None, host.state, host, {})
    assert ran == [host] and probe._cached(host, File, (), {"path": "/x"}) == (False, None)


def test_prefetched_facts_age_out_and_answer_only_as_the_host_itself(monkeypatch):
    from ollama_fleet.tasks.engine import probe

    host = _Host("gpu-2", "10.0.0.2")
    _prefetched(host, File, {"path": "/x"}, {"size": 1})
    # asked as another user than the one the batch ran as: the host is asked
    assert probe._cached(host, File, (), {"path": "/x", "_sudo_user": "ollama"}) == (
        False, None)
    assert probe._cached(host, File, (), {"path": "/x", "_sudo": False})[0]
    # inside an operation pyinfra passes its defaults along (the shell among them): still
    # the host as the batch read it; another shell is not
    host.current_op_global_arguments = {"_sudo": False, "_sudo_user": None, "_env": {},
                                        "_chdir": None, "_shell_executable": "sh"}
    assert probe._cached(host, File, (), {"path": "/x"}) == (True, {"size": 1})
    host.current_op_global_arguments["_shell_executable"] = "bash"
    assert probe._cached(host, File, (), {"path": "/x"}) == (False, None)
    del host.current_op_global_arguments
    later = probe.time.monotonic() + probe.MAX_AGE_S + 1
    monkeypatch.setattr(probe.time, "monotonic", lambda: later)
    assert probe._cached(host, File, (), {"path": "/x"}) == (False, None)


def test_a_remembered_list_cannot_name_a_command(tmp_path, monkeypatch):
    from pyinfra.facts.server import Command

    from ollama_fleet.tasks.engine import probe

    monkeypatch.setenv(probe.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(probe, "_asked", {})
    host = _Host("gpu-3", "10.0.0.3")
    probe._remember(host, Command, (), {"command": "id"})  # never remembered
    probe._write_asked()
    assert probe.remembered(host) == []
    plant(probe.memory_file(host), '[["pyinfra.facts.server.Command", '
                                   '{"command": "touch /tmp/pwned"}]]')
    assert probe.remembered(host) == []  # a planted one is not run either


def plant(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


@pytest.mark.parametrize("name", [
    "ollama_fleet.tasks.engine.probe.FactBatch",  # ours, and it runs its text verbatim
    "tasks.engine.probe.FactBatch",  # the old prefix rule's spelling
    "ollama_fleet.tasks.kit.facts.Nothing",
    "pyinfra.facts.server.Command",
])
def test_a_planted_fact_that_runs_its_text_is_refused(tmp_path, monkeypatch, name):
    """Only an exact allow-list is replayed: the classes whose commands quote every
    argument (FactBatch runs its program as given, so it is never one)."""
    from ollama_fleet.tasks.engine import probe

    monkeypatch.setenv(probe.CACHE_ENV, str(tmp_path))
    host = _Host("gpu-5", "10.0.0.5")
    plant(probe.memory_file(host), json.dumps([[name, {"program": "id", "command": "id"}],
                                               ["pyinfra.facts.files.File", {"path": "/y"}]]))
    assert probe.remembered(host) == [(File, {"path": "/y"})]
    assert "ollama_fleet.tasks.engine.probe.FactBatch" not in probe.REMEMBERABLE


HOSTILE = ["x; touch {mark} #", "$(touch {mark})", "`touch {mark}`", "x' ; touch {mark} ; '",
           "x\ntouch {mark}"]


@pytest.mark.parametrize("name", sorted(
    __import__("ollama_fleet.tasks.engine.probe", fromlist=["x"]).REMEMBERABLE))
def test_no_allowed_fact_runs_a_hostile_argument(tmp_path, name):
    """Every argument an allowed class may carry, given shell text, is run here as the
    batch would run it on a host: the text stays data (or is refused), nothing runs."""
    import importlib
    import inspect

    from ollama_fleet.tasks.engine import probe

    module, _, cls_name = name.rpartition(".")
    cls = getattr(importlib.import_module(module), cls_name)
    params = inspect.signature(cls().command).parameters
    allowed = probe.REMEMBERABLE[name]
    assert allowed <= set(params), f"{name}: allows arguments its command has not"
    for arg in sorted(allowed):
        for n, text in enumerate(HOSTILE):
            mark = tmp_path / f"{cls_name}-{arg}-{n}"
            lists = ("components", "manifests", "images", "paths", "services")
            kwargs = {a: (params[a].default if isinstance(params[a].default, bool) else
                          ["x"] if a in lists else "x") for a in allowed}
            hostile = text.format(mark=mark)
            kwargs[arg] = [hostile] if arg in lists else hostile
            if not probe.replayable(name, kwargs):
                continue  # refused before it could run
            try:
                command, _ = probe._command(cls(), kwargs)
            except (ValueError, TypeError):
                continue  # refused: a port must be a number
            subprocess.run(["sh", "-c", command], cwd=tmp_path, capture_output=True,
                           timeout=20, env={**os.environ, "PATH": os.environ["PATH"]})
            assert not mark.exists(), f"{name}({arg}={hostile!r}) ran a command"


def test_systemd_facts_may_not_name_a_machine_or_user():
    """pyinfra's systemd facts put `machine` and `user_name` into the command unquoted."""
    from ollama_fleet.tasks.engine import probe

    name = "pyinfra.facts.systemd.SystemdStatus"
    assert probe.replayable(name, {"services": ["docker.service"], "user_mode": False})
    assert not probe.replayable(name, {"machine": "x; id #"})
    assert not probe.replayable(name, {"services": ["a"], "user_name": "x; id #"})
    assert not probe.replayable(name, {"services": [{"nested": 1}]})


@pytest.mark.parametrize("how", ["mode 0644", "mode 0660", "a link", "another user's"])
def test_a_fact_list_not_the_operators_own_is_not_read(tmp_path, monkeypatch, how):
    from ollama_fleet.tasks.engine import probe

    monkeypatch.setenv(probe.CACHE_ENV, str(tmp_path))
    host = _Host("gpu-6", "10.0.0.6")
    path = probe.memory_file(host)
    text = '[["pyinfra.facts.files.File", {"path": "/y"}]]'
    plant(path, text)
    assert probe.remembered(host) == [(File, {"path": "/y"})]  # the operator's own: read
    if how.startswith("mode"):
        path.chmod(int(how.split()[1], 8))
    elif how == "a link":
        target = tmp_path / "elsewhere.json"
        plant(target, text)
        path.unlink()
        path.symlink_to(target)
    else:
        uid = os.getuid() + 1
        monkeypatch.setattr(probe.os, "getuid", lambda: uid)
    assert probe.remembered(host) == []


def test_the_memory_can_be_turned_off(tmp_path, monkeypatch):
    from ollama_fleet.tasks.engine import probe

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(probe.CACHE_ENV, "off")
    monkeypatch.setattr(probe, "_asked", {})
    host = _Host("gpu-7", "10.0.0.7")
    probe._remember(host, File, (), {"path": "/etc/x"})
    probe._write_asked()
    assert probe._asked == {} and not any(tmp_path.rglob("*.json"))
    assert probe.remembered(host) == []


def test_a_short_fact_is_left_to_pyinfra():
    from pyinfra.facts.docker import DockerContainerEnvs

    from ollama_fleet.tasks.engine import probe

    host = _Host("gpu-4", "10.0.0.4")
    _prefetched(host, File, {"path": "/x"}, {})
    assert probe._cached(host, DockerContainerEnvs, (), {}) == (False, None)


def test_a_part_without_its_end_line_is_failed_not_empty():
    """What the batch prints for a command whose output could not be written whole (a full
    disk): its begin line and what was written, no end line. pyinfra is then asked."""
    lines = [f"{MARK}:0:begin", "partial", f"{MARK}:1:begin", "b", "", f"{MARK}:1:end:0"]
    assert split_batch(lines, MARK, 2) == [("failed", []), ("ok", ["b"])]
