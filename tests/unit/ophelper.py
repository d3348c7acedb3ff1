"""Run a pyinfra operation on a pretend host: facts in, commands out (pyinfra's own test style).

A case is a JSON file in tests/unit/cases/: the operation, its arguments, the facts
the host reports, and the commands (or the noop, or the error) expected.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

from pyinfra.api import Config
from pyinfra.api.command import FileUploadCommand, StringCommand
from pyinfra.context import ctx_host, ctx_state

CASES = Path(__file__).parent / "cases"


@dataclass
class FakeState:
    is_executing: bool = True
    print_noop_info: bool = False
    config: Any = field(default_factory=Config)


@dataclass
class FakeHost:
    facts: dict[str, Any]
    name: str = "gpu-1"
    noops: list[str] = field(default_factory=list)
    state: FakeState = field(default_factory=FakeState)
    groups: tuple = ("gpu_servers",)
    current_op_global_arguments: dict = field(default_factory=dict)

    def get_fact(self, fact_cls, **kwargs):
        specific = f"{fact_cls.name}:{json.dumps(kwargs, sort_keys=True)}"
        for key in (specific, fact_cls.name):
            if key in self.facts:
                return self.facts[key]
        return fact_cls.default()

    def get_temp_filename(self, hash_key: str | None = None, **kwargs) -> str:
        return f"/tmp/pyinfra-{hash_key or 'tmp'}"

    def noop(self, description: str) -> None:
        self.noops.append(description)

    def log(self, message: str) -> None:
        self.noops.append(f"log: {message}")

    def log_styled(self, message: str, **kwargs) -> None:
        self.noops.append(f"log: {message}")


def as_text(command) -> str:
    if isinstance(command, StringCommand):
        return command.get_raw_value()
    if isinstance(command, FileUploadCommand):
        src = command.src
        content = src.getvalue() if isinstance(src, StringIO) else str(src)
        return f"upload {command.dest}\n{content}"
    return str(command)


def run_op(op_path: str, args: dict, facts: dict, executing: bool = True,
           host_name: str = "gpu-1") -> tuple[list[str], list[str]]:
    module, _, name = op_path.rpartition(".")
    op = getattr(importlib.import_module(module), name)
    fake = FakeHost(facts=facts, name=host_name, state=FakeState(is_executing=executing))
    with ctx_host.use(fake), ctx_state.use(fake.state):
        commands = [as_text(c) for c in op._inner(**args)]
    return commands, fake.noops


def load_cases() -> list[tuple[str, dict]]:
    return [(p.stem, json.loads(p.read_text())) for p in sorted(CASES.glob("*.json"))]
