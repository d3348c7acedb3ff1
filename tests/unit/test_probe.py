"""tasks.probe: many facts' commands in one program, split back exactly per fact."""

from __future__ import annotations

import subprocess

from pyinfra.facts.files import File, Sha1File

from tasks.probe import _command, batch_program, split_batch

MARK = "__fleet_fact_test"


def run(program: str) -> list[str]:
    out = subprocess.run(program, shell=True, capture_output=True, text=True, timeout=60,
                         check=True).stdout
    return out.splitlines()


def test_each_command_gets_its_own_lines_and_status():
    commands = [("echo a; echo b", None), ("echo partial; exit 3", None),
                ("printf 'no newline'", None), ("echo never", "no-such-binary-here"),
                ("true", None), ("echo 'a line'; echo >&2 ignored", "sh")]
    parts = split_batch(run(batch_program(commands, MARK)), MARK, len(commands))
    assert parts == [("ok", ["a", "b"]), ("failed", ["partial"]), ("ok", ["no newline"]),
                     ("missing", []), ("ok", []), ("ok", ["a line"])]


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
