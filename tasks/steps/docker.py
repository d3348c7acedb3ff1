"""Docker engine with Compose v2, and /etc/docker/daemon.json: its one writer, merged.

Guarantees: the engine comes from Docker's apt repository (deb822, signed-by) or
from the distribution; daemon.json is written by `daemon_json` alone, with Docker's own
keys merged in (every key the deploy does not own is kept) and, on GPU servers, the
nvidia runtime registered by NVIDIA's `nvidia-ctk runtime configure` on the staged copy;
the new file is checked by `dockerd --validate` and replaces the live one in one
rename, the previous kept as daemon.json.previous; Docker restarts once per run, and
only when daemon.json or its runtime changed.
"""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

from pyinfra import host
from pyinfra.api import OperationError, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from ollama_fleet.tasks.engine.probe import fact
from ollama_fleet.tasks.kit import distributions
from ollama_fleet.tasks.kit.facts import DockerSwarmState, JsonFile
from ollama_fleet.tasks.kit.report import fail_command
from ollama_fleet.tasks.kit.scripts import script_command
from ollama_fleet.tasks.kit.settings import Settings
from ollama_fleet.tasks.steps import nvidia_toolkit
from ollama_fleet.tasks.steps import packages as apt_packages
from ollama_fleet.tasks.steps.nvidia_toolkit import runtime_configure_flags

DAEMON_JSON = "/etc/docker/daemon.json"
# Maps other tools add their own entries to (runsc's runtime, other features): the deploy
# owns its entries in them, not the whole map.
SHARED_MAPS = ("runtimes", "features")


def engine_packages(dist: distributions.Distribution, settings: Settings) -> list[str]:
    """Docker engine and Compose v2, from Docker's repository or the OS's own archive."""
    if settings.docker_package_source == "docker":
        return list(distributions.repository(dist, distributions.DOCKER, settings).packages)
    packages = distributions.archive_packages(dist, distributions.DOCKER, settings)
    if packages is None:
        raise OperationError(f"docker_package_source: {dist.name} has no Compose v2 package; "
                             "use docker_package_source 'docker'")
    return packages


def owned_daemon_settings(settings: Settings, *contributions: dict[str, Any]) -> dict[str, Any]:
    """The daemon.json keys this deploy owns: Docker's, then those other tasks CONTRIBUTE.

    Every other key is left as found. A key two tasks claim is a bug, refused here."""
    owned: dict[str, Any] = {
        "log-driver": "json-file",
        "log-opts": {"max-size": settings.docker_log_max_size,
                     "max-file": str(settings.docker_log_max_file)},
        # a dockerd restart (a changed daemon.json) leaves the stack serving
        "live-restore": settings.docker_live_restore,
    }
    if settings.docker_registry_mirrors:
        owned["registry-mirrors"] = list(settings.docker_registry_mirrors)
    for contribution in contributions:
        for key, value in contribution.items():
            if key in SHARED_MAPS:
                entries = owned.setdefault(key, {})
                if not entries.keys().isdisjoint(value):
                    raise ValueError(f"daemon.json: an entry of {key!r} is claimed twice")
                entries.update(value)
            elif key in owned:
                raise ValueError(f"daemon.json: {key!r} is claimed twice")
            else:
                owned[key] = value
    return owned


def merge_daemon_json(current: dict[str, Any] | None, owned: dict[str, Any]) -> dict[str, Any]:
    """CURRENT with OWNED keys set; in the shared maps only the deploy's own entries."""
    merged = dict(current or {})
    for key, value in owned.items():
        if key in SHARED_MAPS and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


@operation()
def daemon_json(owned: dict[str, Any], nvidia_runtime: dict[str, bool] | None = None,
                path: str = DAEMON_JSON):
    """
    Merge OWNED keys into Docker's daemon.json, keeping every other key; register the
    nvidia runtime with nvidia-ctk while it is missing.

    The file's only writer in the deploy. The new file is staged beside the live one,
    completed by `nvidia-ctk runtime configure --config=<staged>` when the runtime is
    missing, validated by `dockerd --validate`, then renamed over the live file.

    + owned: the keys and values this deploy owns
    + nvidia_runtime: `{"default_runtime": bool, "cdi": bool}` on GPU servers, else None
    + path: daemon.json's path
    """
    current = fact(JsonFile, path=path)
    if current and "__invalid__" in current:
        yield fail_command(f"{path}: not valid JSON; fix or remove it (nothing was changed)")
        return
    # Swarm refuses live-restore; asked only when turning it on (`docker info` is costly)
    if owned.get("live-restore") and not (current or {}).get("live-restore") \
            and host.get_fact(DockerSwarmState) == "active":
        yield fail_command("docker_live_restore: this host is a Swarm node, and Docker "
                           "refuses to start with live-restore in Swarm mode; set "
                           "docker_live_restore: false for it (nothing was changed)")
        return
    merged = merge_daemon_json(current, owned)
    flags = runtime_configure_flags(merged, **nvidia_runtime) if nvidia_runtime else []
    if current == merged and not flags:
        host.noop(f"{path} already has the deploy's settings")
        return
    staged = f"{path}.staged"
    text = json.dumps(merged, indent=4, sort_keys=True) + "\n"
    yield from files.put._inner(src=StringIO(text), dest=staged, mode="644")
    yield script_command("docker/daemon-json.sh", staged, path, *flags)


def install_docker(settings: Settings, dist: distributions.Distribution) -> None:
    """Install the engine and Compose v2, running and enabled."""
    if settings.docker_package_source == "docker":
        repo = distributions.repository(dist, distributions.DOCKER, settings)
        apt_packages.repository(name="Docker's apt repository (deb822)",
                                **repo.repository_args())
    apt_packages.installed(name="Docker engine and Compose v2",
                           packages=engine_packages(dist, settings))
    systemd.service(name="Docker running and enabled", service="docker", running=True,
                    enabled=True)


def configure_daemon(settings: Settings) -> OperationMeta:
    """Write daemon.json once: Docker's keys merged, the nvidia runtime on GPU servers."""
    runtime = nvidia_toolkit.runtime_wanted(settings)
    # CDI is one key of `features`, which other tools share: merged here, entry by entry;
    # nvidia-ctk's --cdi.enabled would replace the whole map
    cdi = {"features": {"cdi": True}} if runtime and runtime["cdi"] else {}
    return daemon_json(name="daemon.json: log rotation, registry mirrors, nvidia runtime",
                       owned=owned_daemon_settings(settings, cdi),
                       nvidia_runtime={**runtime, "cdi": False} if runtime else None)


def restart_docker(changes: list[OperationMeta]) -> None:
    """One restart for everything that changed Docker's configuration, and only then.

    A reload first: the running daemon takes the reloadable keys, live-restore among them,
    so the restart that follows leaves the containers running even the first time
    live-restore is turned on (without it, stopping dockerd stops every container)."""
    systemd.service(name="Reload Docker (live-restore before the restart)", service="docker",
                    reloaded=True, _if=any_changed(*changes))
    systemd.service(name="Restart Docker for its new configuration", service="docker",
                    restarted=True, _if=any_changed(*changes))
