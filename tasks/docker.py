"""Docker engine with Compose v2, and /etc/docker/daemon.json merged, never overwritten.

Guarantees: the engine comes from Docker's apt repository (deb822, signed-by) or
from the distribution; daemon.json keeps every key the deploy does not own; Docker
restarts once per run, and only when daemon.json or its runtime changed.
"""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

from pyinfra import host
from pyinfra.api import OperationError, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from tasks import packages as apt_packages
from tasks.facts import JsonFile
from tasks.report import fail_command
from tasks.settings import Settings

DAEMON_JSON = "/etc/docker/daemon.json"


def distribution() -> tuple[str, int, str]:
    """(id, major version, codename) of the host's OS, e.g. ("debian", 13, "trixie")."""
    dist = host.get_fact(LinuxDistribution)
    release = dist.get("release_meta") or {}
    ident = (release.get("ID") or dist.get("name") or "").lower()
    major = dist.get("major") or 0
    codename = release.get("VERSION_CODENAME") or ""
    return ident, int(major), codename


def distribution_packages(os_id: str, major: int) -> list[str]:
    """Docker engine and Compose v2 from the OS's own archive."""
    if os_id == "ubuntu":
        return ["docker.io", "docker-compose-v2"]
    if os_id == "debian" and major >= 13:
        # trixie splits the client out of docker.io (and only recommends it)
        return ["docker.io", "docker-cli", "docker-compose"]
    raise OperationError(f"docker_package_source: {os_id} {major} has no Compose v2 package; "
                         "use docker_package_source 'docker'")


def docker_repo_sources(settings: Settings, os_id: str, codename: str) -> str:
    """deb822 sources for Docker's repository, as Docker documents it."""
    return (f"Types: deb\nURIs: {settings.docker_repo_url}/{os_id}\nSuites: {codename}\n"
            "Components: stable\nSigned-By: /etc/apt/keyrings/docker.asc\n")


def owned_daemon_settings(settings: Settings) -> dict[str, Any]:
    """The daemon.json keys this deploy owns; every other key is left as found."""
    owned: dict[str, Any] = {
        "log-driver": "json-file",
        "log-opts": {"max-size": settings.docker_log_max_size,
                     "max-file": str(settings.docker_log_max_file)},
    }
    if settings.docker_registry_mirrors:
        owned["registry-mirrors"] = list(settings.docker_registry_mirrors)
    return owned


def merge_daemon_json(current: dict[str, Any] | None, owned: dict[str, Any]) -> dict[str, Any]:
    merged = dict(current or {})
    merged.update(owned)
    return merged


@operation()
def daemon_json(owned: dict[str, Any], path: str = DAEMON_JSON):
    """
    Merge OWNED keys into Docker's daemon.json, keeping every other key.

    + owned: the keys and values this deploy owns
    + path: daemon.json's path
    """
    current = host.get_fact(JsonFile, path=path)
    if current and "__invalid__" in current:
        yield fail_command(f"{path}: not valid JSON; fix or remove it (nothing was changed)")
        return
    merged = merge_daemon_json(current, owned)
    if current == merged:
        host.noop(f"{path} already has the deploy's settings")
        return
    yield from files.directory._inner(path="/etc/docker", mode="755")
    text = json.dumps(merged, indent=4, sort_keys=True) + "\n"
    yield from files.put._inner(src=StringIO(text), dest=path, mode="644")


def install_docker(settings: Settings) -> list[OperationMeta]:
    """Install the engine and Compose v2; return the operations that need a Docker restart."""
    os_id, major, codename = distribution()
    if settings.docker_package_source == "docker":
        files.directory(name="Keyring directory for Docker's repository",
                        path="/etc/apt/keyrings", mode="755")
        files.download(name="Docker's repository key",
                             src=f"{settings.docker_repo_url}/{os_id}/gpg",
                             dest="/etc/apt/keyrings/docker.asc", mode="644")
        files.put(name="Docker's apt repository (deb822)",
                            src=StringIO(docker_repo_sources(settings, os_id, codename)),
                            dest="/etc/apt/sources.list.d/docker.sources", mode="644")
        packages = ["docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin",
                    "docker-compose-plugin"]
    else:
        packages = distribution_packages(os_id, major)
    apt_packages.installed(name="Docker engine and Compose v2", packages=packages)
    systemd.service(name="Docker running and enabled", service="docker", running=True,
                    enabled=True)
    config = daemon_json(name="daemon.json: log rotation and registry mirrors (merged)",
                         owned=owned_daemon_settings(settings))
    return [config]


def restart_docker(changes: list[OperationMeta]) -> None:
    """One restart for everything that changed Docker's configuration, and only then."""
    systemd.service(name="Restart Docker for its new configuration", service="docker",
                    restarted=True, _if=any_changed(*changes))
