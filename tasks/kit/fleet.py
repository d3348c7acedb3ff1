"""The fleet: every inventory host with its groups, address and validated settings.

Built once, where the inventory is validated, and handed to the steps that need other
hosts (peers, front doors, upstreams), so no step reads pyinfra's global inventory for
who is in the fleet. The deploy builds it from pyinfra's inventory (`current_fleet`);
the operator's commands from `pyinfra debug-inventory --json` (fleetctl/inventory.py);
both with `build`, so a host is validated and described the same way on either side:
one fleet class, one host record (`Member`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Any

from pyinfra.api.exceptions import PyinfraError

from ollama_fleet.tasks.kit.addresses import host_address
from ollama_fleet.tasks.kit.settings import Settings, SettingsError, validate_fleet

GPU_SERVERS = "gpu_servers"
LB_SERVERS = "lb_servers"


@dataclass(frozen=True)
class Member:
    """One inventory host: its groups, its pyinfra data and its validated settings."""

    name: str
    groups: tuple[str, ...]
    data: dict[str, Any] = field(repr=False)
    settings: Settings = field(repr=False)

    @property
    def address(self) -> str:
        """Where the fleet reaches it (what pyinfra connects to; tasks.kit.addresses)."""
        return host_address(self.name, self.data)

    @property
    def gpu_server(self) -> bool:
        return GPU_SERVERS in self.groups

    @property
    def front_door(self) -> bool:
        return LB_SERVERS in self.groups


class FleetError(ValueError):
    """A host or pattern the fleet does not have: one line for the operator."""


@dataclass(frozen=True)
class Fleet:
    """Every host of the inventory, in inventory order: the one fleet of the deploy and of
    the operator's commands. Empty: rendering outside a deploy."""

    members: tuple[Member, ...] = ()
    inventory: str = "the inventory"  # as the operator named it, for messages
    path: str = ""  # the inventory file, absolute, for pyinfra's command line
    data: dict[str, Any] = field(default_factory=dict, repr=False)  # the --data it was read with

    @property
    def gpu_servers(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.gpu_server)

    @property
    def lb_servers(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.front_door)

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        known = ", ".join(m.name for m in self.members) or "none"
        raise FleetError(f"{name}: not a host of {self.inventory} (hosts: {known})")

    def select(self, limits: Sequence[str], among: Sequence[Member] | None = None,
               what: str = "host or group", option: str = "--limit") -> list[Member]:
        """The hosts (of AMONG, default all) that LIMITS name, in inventory order.

        As pyinfra 3's --limit: each pattern is a group name when the inventory has that
        group, else a glob over host names (`gpu-*`); a comma is part of the pattern.
        Unlike pyinfra, a pattern that matches nothing is an error, not a warning: a roll
        must not quietly do less."""
        pool = list(self.members if among is None else among)  # AMONG: of WHAT, for errors
        if not limits:
            return pool
        groups = {g for m in self.members for g in m.groups}
        wanted: set[str] = set()
        for pattern in limits:
            matched = {m.name for m in pool if pattern in m.groups} if pattern in groups \
                else {m.name for m in pool if fnmatch(m.name, pattern)}
            if not matched:
                hint = " (one pattern per --limit: pyinfra reads a comma as part of " \
                    "the name)" if "," in pattern else ""
                raise FleetError(f"{option} {pattern}: matches no {what} of "
                                 f"{self.inventory}{hint}")
            wanted |= matched
        return [m for m in pool if m.name in wanted]


def build(hosts: Iterable[tuple[str, Sequence[str], Mapping[str, Any]]],
          **where: Any) -> Fleet:
    """The fleet of HOSTS (name, groups, merged data; in inventory order), every host's data
    validated with the cross-host checks; SettingsError lists every problem. WHERE: the
    Fleet's inventory, path and data, for the operator's commands."""
    rows = [(name, tuple(groups), dict(data)) for name, groups, data in hosts]
    gpu = [name for name, groups, _ in rows if GPU_SERVERS in groups]
    lb = [name for name, groups, _ in rows if LB_SERVERS in groups]
    settings = validate_fleet({name: data for name, _, data in rows}, gpu, lb)
    return Fleet(tuple(Member(name, groups, data, settings[name])
                       for name, groups, data in rows), **where)


class InventoryError(PyinfraError):
    """Raised from deploy.py at prepare time: pyinfra prints it and exits 1, before any op runs."""


_current: tuple[object, Fleet] | None = None  # (pyinfra's inventory, its fleet)


def current_fleet() -> Fleet:
    """The fleet of pyinfra's inventory; built and validated on the first call of a run."""
    global _current
    from pyinfra.context import ctx_inventory

    inventory = ctx_inventory.get()
    if _current is None or _current[0] is not inventory:
        try:
            fleet = build((h.name, h.groups, h.data.dict()) for h in inventory)
        except SettingsError as exc:
            lines = "\n".join(f"    {p}" for p in exc.problems)
            raise InventoryError(f"invalid inventory data, no host was changed:\n{lines}") from None
        _current = (inventory, fleet)
    return _current[1]


def current_settings() -> Settings:
    """The current host's settings; the first call validates every host of the inventory."""
    from pyinfra import host

    return current_fleet().member(host.name).settings
