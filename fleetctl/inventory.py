"""The fleet as every operator command sees it: read once, validated once, selected.

The inventory is read by pyinfra itself (`debug-inventory --json`, in a child process):
group data and `--data` apply exactly as in a deploy, and pyinfra's CLI (which
monkey-patches the standard library with gevent) stays out of this process. Every
host's data is then validated like deploy.py does, so a bad inventory stops a
command before it touches any host.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from ollama_fleet.tasks.kit.fleet import Member, build
from ollama_fleet.tasks.kit.paths import CONFIG
from ollama_fleet.tasks.kit.settings import SettingsError

READ_TIMEOUT_S = 300
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))  # the one beside this Python


class UsageError(Exception):
    """Bad arguments or inventory: one line for the operator, exit 2, no host touched."""


# One inventory host: the deploy's own member type (name, groups, data, validated settings;
# its address, gpu_server, front_door), so both sides describe a host the same way.
FleetHost = Member


@dataclass(frozen=True)
class Fleet:
    """INVENTORY's hosts in inventory order, with the --data they were read with."""

    inventory: str  # as the operator named it, for messages
    path: str  # absolute, for pyinfra
    hosts: tuple[FleetHost, ...]
    data: dict[str, Any]

    @property
    def gpu_servers(self) -> list[FleetHost]:
        return [h for h in self.hosts if h.gpu_server]

    @property
    def front_doors(self) -> list[FleetHost]:
        return [h for h in self.hosts if h.front_door]

    def host(self, name: str) -> FleetHost:
        for h in self.hosts:
            if h.name == name:
                return h
        known = ", ".join(h.name for h in self.hosts) or "none"
        raise UsageError(f"{name}: not a host of {self.inventory} (hosts: {known})")

    def select(self, limits: Sequence[str], among: Sequence[FleetHost] | None = None,
               what: str = "host or group", option: str = "--limit") -> list[FleetHost]:
        """The hosts (of AMONG, default all) that LIMITS name, in inventory order.

        As pyinfra 3's --limit: each pattern is a group name when the inventory has that
        group, else a glob over host names (`gpu-*`); a comma is part of the pattern.
        Unlike pyinfra, a pattern that matches nothing is an error, not a warning: a roll
        must not quietly do less."""
        pool = list(self.hosts if among is None else among)  # AMONG: of WHAT, for errors
        if not limits:
            return pool
        groups = {g for h in self.hosts for g in h.groups}
        wanted: set[str] = set()
        for pattern in limits:
            matched = {h.name for h in pool if pattern in h.groups} if pattern in groups \
                else {h.name for h in pool if fnmatch(h.name, pattern)}
            if not matched:
                hint = " (one pattern per --limit: pyinfra reads a comma as part of " \
                    "the name)" if "," in pattern else ""
                raise UsageError(f"{option} {pattern}: matches no {what} of "
                                 f"{self.inventory}{hint}")
            wanted |= matched
        return [h for h in pool if h.name in wanted]


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
        proc = subprocess.run([PYINFRA, "--config", str(CONFIG), str(path.resolve()),
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
        members = build((h["name"], h["groups"], h["data"]) for h in hosts).members
    except SettingsError as exc:
        raise UsageError(f"{inventory}: invalid inventory data, no host was changed: "
                         + "; ".join(exc.problems)) from None
    return Fleet(inventory, str(Path(inventory).resolve()), members, data)
