"""apt, the one way: vendor repositories added with their keys, and packages installed only
when missing. apt's lists are refreshed only when a repository changed or a package is
missing."""

from __future__ import annotations

import hashlib
import posixpath
import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import OperationError, operation
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import File, Sha1File
from pyinfra.operations import apt, files

from ollama_fleet.tasks.kit.facts import MissingArchiveComponents
from ollama_fleet.tasks.kit.scripts import script_command

# Minimal server images lack these; Docker's and NVIDIA's guides install them first (the
# vendor keys are fetched with curl and dearmored with gpg, over https).
PREREQUISITES = ("curl", "gnupg", "ca-certificates")


def prerequisites() -> None:
    """What fetching the vendors' keys needs, before any vendor repository."""
    installed(name=f"Prerequisites: {', '.join(PREREQUISITES)}", packages=list(PREREQUISITES))


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


def sources_entry(sources_file: str, uri: str, suite: str, components: list[str],
                  keyring: str) -> str:
    """The sources file's text: deb822 for `.sources`, one-line for `.list`, signed-by KEYRING."""
    if sources_file.endswith(".sources"):
        text = f"Types: deb\nURIs: {uri}\nSuites: {suite}\n"
        if components:
            text += f"Components: {' '.join(components)}\n"
        return text + f"Signed-By: {keyring}\n"
    if sources_file.endswith(".list"):
        return f"deb [signed-by={keyring}] {' '.join([uri, suite, *components])}\n"
    raise OperationError(f"{sources_file}: a sources file ends in .sources or .list")


def pin_file(sources_file: str) -> str:
    """Where the pin of the repository in SOURCES_FILE lives."""
    stem = posixpath.basename(sources_file).rsplit(".", 1)[0]
    return f"/etc/apt/preferences.d/{stem}.pref"


def _file_holds(path: str, text: str, mode: int = 644) -> bool:
    info = host.get_fact(File, path=path)
    return bool(info) and info["mode"] == mode and \
        host.get_fact(Sha1File, path=path) == hashlib.sha1(text.encode()).hexdigest()  # noqa: S324 (pyinfra's Sha1File: change detection)


def _fetch_key(key_url: str, keyring: str):
    yield from files.directory._inner(path=posixpath.dirname(keyring), mode="755")
    if keyring.endswith(".asc"):  # apt reads it armored: stored as published (curl or wget)
        yield from files.download._inner(src=key_url, dest=keyring, mode="644")
        return
    url, tmp, dest = shlex.quote(key_url), shlex.quote(f"{keyring}.tmp"), shlex.quote(keyring)
    yield (f"curl -fsSL --retry 3 {url} | gpg --batch --yes --dearmor -o {tmp} "
           f"&& chmod 644 {tmp} && mv {tmp} {dest}")


@operation()
def repository(key_url: str, keyring: str, sources_file: str, uri: str, suite: str,
               components: list[str] | None = None, pin: str = "",
               stale_sources: list[str] | None = None):
    """
    Add a vendor's apt repository: its key, a sources file signed by it, an optional pin.

    apt's lists are refreshed only when something here changed. A key already in place
    is kept (it is not fetched again); the sources and pin files are rewritten when their
    content or mode differs.

    + key_url: where the vendor publishes its signing key
    + keyring: the key on the host; `.asc` stored armored as published, `.gpg` dearmored
    + sources_file: `.sources` (deb822) or `.list` (one-line), naming KEYRING as signed-by
    + uri: the repository's URI
    + suite: the suite (`/` for a flat repository)
    + components: the components, if any
    + pin: an apt preferences stanza, written to `/etc/apt/preferences.d/<name>.pref`
    + stale_sources: older sources files of the vendor, removed (their Signed-By conflicts)

    **Example:**

    .. code:: python

        repository(
            name="NVIDIA Container Toolkit apt repository",
            key_url="https://nvidia.github.io/libnvidia-container/gpgkey",
            keyring="/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg",
            sources_file="/etc/apt/sources.list.d/nvidia-container-toolkit.list",
            uri="https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH)",
            suite="/",
        )
    """
    if not keyring.endswith((".asc", ".gpg")):
        raise OperationError(f"{keyring}: a keyring ends in .asc (armored) or .gpg")
    sources = sources_entry(sources_file, uri, suite, components or [], keyring)
    key_missing = not host.get_fact(File, path=keyring)
    sources_stale = not _file_holds(sources_file, sources)
    pin_stale = bool(pin) and not _file_holds(pin_file(sources_file), pin)
    stale = [path for path in stale_sources or [] if host.get_fact(File, path=path)]
    if not (key_missing or sources_stale or pin_stale or stale):
        host.noop(f"apt repository {sources_file} already in place")
        return
    for path in stale:
        yield from files.file._inner(path=path, present=False)
    if key_missing:
        yield from _fetch_key(key_url, keyring)
    if sources_stale:
        yield from files.put._inner(src=StringIO(sources), dest=sources_file, mode="644")
    if pin_stale:
        yield from files.put._inner(src=StringIO(pin), dest=pin_file(sources_file), mode="644")
    yield from apt.update._inner()


@operation()
def archive_components(components: list[str], codename: str):
    """
    Add COMPONENTS (e.g. Debian's contrib) to the entries of the OS's own archive, suite
    CODENAME and its updates, in sources.list and deb822 .sources files; refresh apt.

    + components: the components the archive entries must have
    + codename: the release's codename, e.g. trixie
    """
    files_missing = host.get_fact(MissingArchiveComponents, codename=codename,
                                  components=components)
    if not files_missing:
        host.noop(f"the {codename} archive has {', '.join(components)}")
        return
    yield script_command("apt/archive-components.sh", "apply", codename, *components)
    yield from apt.update._inner()
