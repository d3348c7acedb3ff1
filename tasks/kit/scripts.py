"""Shell that runs on hosts: the programs in templates/<task>/<name>.sh, called as one command.

A script's text comes from its file and is never built from data: every value it needs
(paths, names, ports, addresses, a registry's digests) is a positional argument, quoted
one by one. The result is a single command, `/bin/sh -c '<script>' <name> 'arg' ...`, so
a fact or an operation still runs it in one round trip and nothing is installed on the
host first. The interpreter is the script's own first line (`#!/bin/sh`, `#!/bin/bash`);
shellcheck checks every script (`make lint`).
"""

from __future__ import annotations

import shlex
from functools import cache
from pathlib import PurePosixPath

from ollama_fleet.tasks.kit.paths import TEMPLATES


@cache
def script_text(name: str) -> str:
    """The text of templates/NAME (e.g. `backup/backup.sh`)."""
    return (TEMPLATES / name).read_text()


def interpreter(text: str) -> str:
    """The absolute path on a script's `#!` line (a script without one is a mistake)."""
    first = text.split("\n", 1)[0]
    if not first.startswith("#!/"):
        raise ValueError(f"no `#!/...` line: {first[:40]!r}")
    return first[2:].split()[0]


def script_command(name: str, *args: object) -> str:
    """One shell command that runs templates/NAME with ARGS as $1, $2, ... (each quoted;
    $0 is the script's file name, so its own messages name it)."""
    text = script_text(name)
    words = [interpreter(text), "-c", text, PurePosixPath(name).name, *map(str, args)]
    return " ".join(shlex.quote(w) for w in words)
