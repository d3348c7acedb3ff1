"""Operation cases: facts in, commands out (tests/unit/cases/*.json)."""

from __future__ import annotations

import pytest

from ollama_fleet.tasks.kit.report import fail_command
from ollama_fleet.tasks.kit.scripts import script_command
from ollama_fleet.tasks.kit.settings import Settings
from tests.unit.ophelper import load_cases, run_op


class _Done:
    """A finished operation, as `_if`/`did_change` see it."""

    def __init__(self, changed: bool) -> None:
        self.changed = changed

    def is_complete(self) -> bool:
        return True

    def did_change(self) -> bool:
        return self.changed


def _args(raw: dict) -> dict:
    args = dict(raw)
    if "settings" in args:
        args["settings"] = Settings(**args["settings"])
    if "files_op" in args:
        args["files_op"] = _Done(args["files_op"] == "changed")
    return args


def _command(expected: str | dict) -> str:
    """A command as a case writes it: the text, or `{"script": "<task>/<name>.sh", "args":
    [...]}` for a script of templates/ run with those arguments (ollama_fleet.tasks.kit.scripts)."""
    if isinstance(expected, dict):
        return script_command(expected["script"], *expected.get("args", []))
    return expected


@pytest.mark.parametrize("name, case", load_cases(), ids=[n for n, _ in load_cases()])
def test_operation_case(name, case):
    commands, noops = run_op(case["op"], _args(case["args"]), case["facts"])
    if "fails" in case:  # the host fails alone, with the message as its error output
        assert commands == [fail_command(case["fails"])]
        return
    if case.get("commands_match") == "uploads":
        uploads = [c for c in commands if c.startswith("upload ")]
        assert uploads == [_command(c) for c in case["commands"]]
    elif "commands_contain" in case:
        for fragment in case["commands_contain"]:
            assert any(fragment in c for c in commands), (fragment, commands)
        assert len(commands) == case["commands_count"]
    else:
        assert commands == [_command(c) for c in case["commands"]]
    if "noop" in case:
        assert noops == [case["noop"]]
