"""NVIDIA Container Toolkit from its documented repository, wired into Docker.

Guarantees: the four toolkit packages at one pinned version; stale
nvidia-docker sources removed; `nvidia-ctk runtime configure --runtime=docker`
run only while Docker's daemon.json lacks the nvidia runtime (or the wanted
default-runtime/CDI setting), so Docker restarts only when something changed.
"""

from __future__ import annotations

from io import StringIO

from pyinfra import host
from pyinfra.api import operation
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files

from tasks import packages as apt_packages
from tasks.docker import DAEMON_JSON
from tasks.facts import JsonFile
from tasks.nvidia_driver import repo_key
from tasks.settings import Settings

KEYRING = "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"
PACKAGES = ("nvidia-container-toolkit", "nvidia-container-toolkit-base",
            "libnvidia-container-tools", "libnvidia-container1")


def toolkit_packages(version: str) -> list[str]:
    return [f"{name}={version}-1" for name in PACKAGES]


def toolkit_sources(settings: Settings) -> str:
    return (f"deb [signed-by={KEYRING}] {settings.nvidia_toolkit_repo_url}/stable/deb/$(ARCH) /\n")


def runtime_configure_flags(daemon: dict | None, default_runtime: bool, cdi: bool) -> list[str]:
    """nvidia-ctk flags needed to bring DAEMON (daemon.json) in line; [] when it already is."""
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


@operation()
def runtime_configured(default_runtime: bool, cdi: bool):
    """
    Register the nvidia runtime in daemon.json with nvidia-ctk, only when it is missing.

    + default_runtime: also make it Docker's default runtime
    + cdi: also enable CDI in Docker
    """
    flags = runtime_configure_flags(host.get_fact(JsonFile, path=DAEMON_JSON), default_runtime,
                                    cdi)
    if not flags:
        host.noop("nvidia runtime already registered in daemon.json")
        return
    yield f"nvidia-ctk runtime configure {' '.join(flags)}"


def install_container_toolkit(settings: Settings) -> list[OperationMeta]:
    """Install the toolkit and register it with Docker; return ops that need a Docker restart."""
    if settings.gpu_count == 0:
        return []
    files.file(name="No stale nvidia-docker sources",
               path="/etc/apt/sources.list.d/nvidia-docker.list", present=False)
    key_url = settings.nvidia_toolkit_gpgkey_url or f"{settings.nvidia_toolkit_repo_url}/gpgkey"
    repo_key(name="NVIDIA Container Toolkit repository key", url=key_url, keyring=KEYRING)
    files.put(name="NVIDIA Container Toolkit apt repository",
              src=StringIO(toolkit_sources(settings)),
              dest="/etc/apt/sources.list.d/nvidia-container-toolkit.list", mode="644")
    packages = apt_packages.installed(
        name=f"NVIDIA Container Toolkit {settings.nvidia_toolkit_version}",
        packages=toolkit_packages(settings.nvidia_toolkit_version))
    runtime = runtime_configured(name="nvidia runtime registered with Docker",
                                 default_runtime=settings.nvidia_toolkit_default_runtime,
                                 cdi=settings.nvidia_toolkit_cdi)
    changes = [packages, runtime]
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
