"""apt packages installed only when missing: the apt cache is refreshed only then."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt


def missing_packages(wanted: list[str], installed: dict[str, set[str]]) -> list[str]:
    """WANTED entries (`name` or `name=version`) that INSTALLED does not satisfy."""
    missing = []
    for entry in wanted:
        name, _, version = entry.partition("=")
        versions = installed.get(name) or set()
        if not versions or (version and version not in versions):
            missing.append(entry)
    return missing


@operation()
def installed(packages: list[str]):
    """
    Install PACKAGES (pins as `name=version`), refreshing apt's lists first, when missing.

    + packages: package names, optionally pinned
    """
    missing = missing_packages(packages, host.get_fact(DebPackages) or {})
    if not missing:
        host.noop(f"already installed: {', '.join(packages)}")
        return
    yield from apt.update._inner()
    yield from apt.packages._inner(packages=packages, no_recommends=True, allow_downgrades=True)
