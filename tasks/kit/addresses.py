"""Where the fleet's hosts and services are reached: one answer for every task and command.

A host is reached at its `ssh_hostname` (what pyinfra connects to), else at its inventory
name; a service that listens on every address is reached from its own host at loopback;
an IPv6 address in a URL or an nginx `server` line goes in brackets.
"""

from __future__ import annotations

from typing import Any

WILDCARDS = ("0.0.0.0", "::")  # noqa: S104 (names them, binds nothing)


def host_address(name: str, data: Any) -> str:
    """Where the fleet reaches the inventory host NAME whose host data is DATA (a dict, or
    pyinfra's host.data)."""
    return data.get("ssh_hostname") or name


def local_address(bind: str) -> str:
    """Where a service listening on BIND is reached from its own host."""
    return "127.0.0.1" if bind in WILDCARDS else bind


def url_host(address: str) -> str:
    """ADDRESS as the host part of a URL or of an nginx `server host:port`: an IPv6
    address in brackets, anything else as it is."""
    return f"[{address}]" if ":" in address and not address.startswith("[") else address
