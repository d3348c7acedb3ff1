"""The fleet as every operator command sees it: read once, validated once, selected.

The inventory is read by pyinfra itself (`debug-inventory --json`, in a child process):
group data and `--data` apply exactly as in a deploy, and pyinfra's CLI (which
monkey-patches the standard library with gevent) stays out of this process. Every
host's data is then validated like deploy.py does, so a bad inventory stops a
command before it touches any host.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ollama_fleet.tasks.kit.fleet import Fleet, build
from ollama_fleet.tasks.kit.paths import CONFIG
from ollama_fleet.tasks.kit.settings import SettingsError

READ_TIMEOUT_S = 300
# pyinfra's CLI run by this very Python, whatever put the packages where (a virtualenv,
# `pip install --user`, a system package): the `pyinfra` script may be elsewhere. The
# interpreter's first path entry (the working folder, for -c) is dropped, as a script's
# would be its own folder: a ./pyinfra.py of the operator's must not shadow pyinfra.
PYINFRA = [sys.executable, "-c", "import os, sys; "
           "sys.path[0] in ('', os.getcwd()) and sys.path.pop(0); sys.argv[0] = 'pyinfra'; "
           "from pyinfra_cli.main import main; sys.exit(main())"]


class UsageError(Exception):
    """Bad arguments or inventory: one line for the operator, exit 2, no host touched."""


def parse_value(text: str) -> Any:
    """A --data value read the way pyinfra's CLI reads it: bool, int, JSON, else text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for parse in (int, json.loads):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def parse_data(items: Sequence[str]) -> dict[str, Any]:
    """`--data KEY=VALUE` arguments as a dict."""
    data = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--data {item!r}: expected KEY=VALUE")
        data[key] = parse_value(value)
    return data


def data_args(data: dict[str, Any]) -> list[str]:
    """pyinfra --data arguments for DATA (values as JSON, which pyinfra reads back)."""
    args = []
    for key, value in data.items():
        args += ["--data", f"{key}={json.dumps(value)}"]
    return args


def read_inventory(inventory: str, data: dict[str, Any] | None = None,
                   timeout: float = READ_TIMEOUT_S) -> list[dict[str, Any]]:
    """INVENTORY's hosts (name, groups, merged data) as pyinfra reads them, in order.
    Raises UsageError with a one-line reason."""
    path = Path(inventory)
    if not path.is_file():
        raise UsageError(f"{inventory}: no such inventory file")
    try:
        proc = subprocess.run([*PYINFRA, "--config", str(CONFIG), os.path.abspath(path),
                               "debug-inventory", "--json", *data_args(data or {})],
                              stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UsageError(f"{inventory}: pyinfra did not read it within {timeout:g}s") from None
    try:
        hosts = json.loads(proc.stdout)
        if not isinstance(hosts, list):
            raise ValueError(hosts)
    except ValueError:
        raise UsageError(f"{inventory}: pyinfra cannot read it: "
                         f"{pyinfra_reason(proc.stderr, proc.returncode)}") from None
    return hosts


EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Warning)\b:?")
WHERE_LINE = re.compile(r'^\s*File "([^"]+)", line (\d+)')


def pyinfra_reason(stderr: str, returncode: int) -> str:
    """Why pyinfra could not read an inventory, in one line: the exception it caught (and
    where, in the operator's file), not its closing advice to file a bug report."""
    lines = [line.rstrip() for line in stderr.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if EXCEPTION_LINE.match(line)]
    if errors:
        at = errors[-1]
        where = [m for m in (WHERE_LINE.match(line) for line in lines[:at]) if m]
        place = f"{Path(where[-1].group(1)).name} line {where[-1].group(2)}: " if where else ""
        return place + lines[at].strip()
    said = [line for line in lines if not line.startswith("-->")]
    return (said or [line.removeprefix("--> ") for line in lines] or
            [f"exit {returncode}"])[-1]


def load(inventory: str, data: dict[str, Any] | None = None) -> Fleet:
    """The fleet of INVENTORY with DATA (--data) applied, every host validated."""
    data = data or {}
    hosts = read_inventory(inventory, data)
    try:
        return build(((h["name"], h["groups"], h["data"]) for h in hosts),
                     inventory=inventory, path=os.path.abspath(inventory), data=data)
    except SettingsError as exc:
        raise UsageError(f"{inventory}: invalid inventory data, no host was changed: "
                         + "; ".join(exc.problems)) from None
