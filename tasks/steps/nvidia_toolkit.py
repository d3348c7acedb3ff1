"""NVIDIA Container Toolkit from its documented repository, wired into Docker.

Guarantees: the four toolkit packages at one pinned version, kept there between deploys
by an apt preferences file; stale nvidia-docker
sources removed; the nvidia runtime (and the wanted default-runtime/CDI setting)
registered in Docker's daemon.json by NVIDIA's own `nvidia-ctk runtime configure
--runtime=docker`, only while it is missing, so Docker restarts only then. nvidia-ctk
never edits the live file: `tasks.steps.docker.daemon_json`, the file's one writer, runs it on
the staged copy (`runtime_configure_flags` says with which flags, or not at all).
"""

from __future__ import annotations

from io import StringIO
from typing import Any

from pyinfra import host
from pyinfra.api import operation
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files

from ollama_fleet.tasks.kit import distributions
from ollama_fleet.tasks.kit.settings import Settings
from ollama_fleet.tasks.steps import packages as apt_packages


def runtime_wanted(settings: Settings) -> dict[str, bool] | None:
    """How the nvidia runtime should be registered with Docker (None without GPUs)."""
    if settings.gpu_count == 0:
        return None
    return {"default_runtime": settings.nvidia_toolkit_default_runtime,
            "cdi": settings.nvidia_toolkit_cdi}


def runtime_configure_flags(daemon: dict[str, Any] | None, default_runtime: bool,
                            cdi: bool) -> list[str]:
    """nvidia-ctk flags that bring DAEMON (daemon.json) in line; [] when it already is.

    What `nvidia-ctk runtime configure` writes (FIELD.md): `runtimes.nvidia` with path
    nvidia-container-runtime; `default-runtime: nvidia` with --set-as-default;
    `features.cdi: true` with --cdi.enabled."""
    daemon = daemon or {}
    runtime = (daemon.get("runtimes") or {}).get("nvidia") or {}
    missing = runtime.get("path") != "nvidia-container-runtime"
    if default_runtime and daemon.get("default-runtime") != "nvidia":
        missing = True
    if cdi and not (daemon.get("features") or {}).get("cdi"):
        missing = True
    if not missing:
        return []
    flags = ["--runtime=docker"]
    if default_runtime:
        flags.append("--set-as-default")
    if cdi:
        flags.append("--cdi.enabled")
    return flags


TOOLKIT_PREFERENCES = "/etc/apt/preferences.d/ollama-fleet-nvidia-toolkit"


def toolkit_preferences(packages: tuple[str, ...]) -> str:
    """apt preferences that keep the toolkit's PACKAGES (`name=version` each) at their
    version, so no upgrade between deploys moves them."""
    pins = [p.partition("=") for p in packages]
    return "".join(f"Explanation: ollama-fleet: nvidia_toolkit_version\n"
                   f"Package: {name}\nPin: version {version}\nPin-Priority: 1000\n\n"
                   for name, _, version in pins).rstrip("\n") + "\n"


def install_container_toolkit(settings: Settings,
                              dist: distributions.Distribution) -> list[OperationMeta]:
    """Install the toolkit; return the operations that need a Docker restart."""
    if settings.gpu_count == 0:
        return []
    repo = distributions.repository(dist, distributions.TOOLKIT, settings)
    apt_packages.repository(name="NVIDIA Container Toolkit apt repository",
                            **repo.repository_args())
    # `apt upgrade` between deploys (unattended-upgrades) must not move the toolkit: the
    # version is the deploy's (a reload cuts GPUs under 1.17, not under 1.18)
    files.put(name=f"NVIDIA Container Toolkit kept at {settings.nvidia_toolkit_version}",
              src=StringIO(toolkit_preferences(repo.packages)), dest=TOOLKIT_PREFERENCES,
              mode="644")
    packages = apt_packages.installed(
        name=f"NVIDIA Container Toolkit {settings.nvidia_toolkit_version}",
        packages=list(repo.packages))
    changes = [packages]
    if settings.nvidia_toolkit_cdi:
        changes.append(cdi_spec(name="CDI specification of the GPUs"))
    return changes


@operation()
def cdi_spec(path: str = "/var/run/cdi/nvidia.yaml"):
    """
    Generate the CDI specification when it is missing.

    + path: where Docker looks for it
    """
    from pyinfra.facts.files import File

    if host.get_fact(File, path=path):
        host.noop(f"{path} present")
        return
    yield f"nvidia-ctk cdi generate --output={path}"
