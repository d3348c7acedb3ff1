"""NVIDIA driver of a pinned branch, rebooted into and verified with nvidia-smi.

Guarantees: nothing happens on a host without GPUs; a host whose driver of the
wanted branch already answers is left alone; nouveau is blacklisted; a new
driver is rebooted into only when reboots are allowed (else the run stops and
says so); afterwards nvidia-smi must list `gpu_count` GPUs; persistence mode on.
"""

from __future__ import annotations

from io import StringIO

from pyinfra import host
from pyinfra.api import OperationError, operation
from pyinfra.operations import files, server

from tasks import packages as apt_packages
from tasks.docker import distribution
from tasks.facts import NvidiaGpus, planning
from tasks.report import fail_command
from tasks.settings import Settings

NOUVEAU_BLACKLIST = "blacklist nouveau\noptions nouveau modeset=0\n"
CUDA_KEYRING = "/usr/share/keyrings/cuda-archive-keyring.gpg"


def driver_packages(os_id: str, branch: int) -> list[str]:
    """Ubuntu: Canonical's server packages of the branch; Debian: NVIDIA's CUDA repository."""
    if os_id == "ubuntu":
        return [f"nvidia-headless-{branch}-server", f"nvidia-utils-{branch}-server"]
    return [f"cuda-drivers-{branch}"]


def cuda_repo_url(settings: Settings, os_id: str, major: int) -> str:
    return settings.nvidia_driver_repo_url.replace("{distro}", f"{os_id}{major}")


def driver_answers(gpus: dict, branch: int) -> bool:
    """True when nvidia-smi works and reports a driver of BRANCH."""
    return gpus["working"] and all(
        g["driver_version"].split(".")[0] == str(branch) for g in gpus["gpus"])


def install_driver(settings: Settings) -> None:
    """Install, reboot into and verify the driver (GPU hosts only)."""
    if settings.gpu_count == 0:
        return
    os_id, major, _ = distribution()
    if os_id not in ("ubuntu", "debian"):
        raise OperationError(f"{host.name}: {os_id} {major} is not supported (Ubuntu or Debian)")
    files.put(name="Blacklist nouveau", src=StringIO(NOUVEAU_BLACKLIST),
              dest="/etc/modprobe.d/blacklist-nouveau.conf", mode="644")
    if os_id == "debian":
        repo = cuda_repo_url(settings, os_id, major)
        key_url = settings.nvidia_driver_gpgkey_url or f"{repo}/3bf863cc.pub"
        repo_key(name="NVIDIA CUDA repository key", url=key_url, keyring=CUDA_KEYRING)
        files.put(name="NVIDIA CUDA apt repository",
                  src=StringIO(f"deb [signed-by={CUDA_KEYRING}] {repo}/ /\n"),
                  dest="/etc/apt/sources.list.d/cuda.list", mode="644")
    install = driver(name=f"NVIDIA driver {settings.nvidia_driver_branch}",
                     packages=driver_packages(os_id, settings.nvidia_driver_branch),
                     branch=settings.nvidia_driver_branch)
    if settings.nvidia_driver_allow_reboot:
        server.reboot(name="Reboot into the new driver", delay=5, interval=2,
                      reboot_timeout=600, _if=install.did_change)
    verify_driver(name="nvidia-smi answers with every GPU", gpu_count=settings.gpu_count,
                  branch=settings.nvidia_driver_branch,
                  reboot_allowed=settings.nvidia_driver_allow_reboot)
    persistence_mode(name="GPU persistence mode", enabled=settings.nvidia_persistence_mode)


@operation()
def repo_key(url: str, keyring: str):
    """
    Install an apt repository's (ASCII-armored) key as a dearmored keyring, once.

    + url: where the key is published
    + keyring: the keyring file apt's signed-by names
    """
    from pyinfra.facts.files import File

    if host.get_fact(File, path=keyring):
        host.noop(f"{keyring} present")
        return
    yield (f"curl -fsSL --retry 3 {url} | gpg --batch --yes --dearmor -o {keyring}.tmp "
           f"&& chmod 644 {keyring}.tmp && mv {keyring}.tmp {keyring}")


@operation()
def driver(packages: list[str], branch: int):
    """
    Install the driver PACKAGES unless a driver of BRANCH already answers.

    + packages: the branch's driver packages
    + branch: the driver branch
    """
    if driver_answers(host.get_fact(NvidiaGpus), branch):
        host.noop(f"driver {branch} already answers")
        return
    yield from apt_packages.installed._inner(packages=packages)


@operation()
def verify_driver(gpu_count: int, branch: int, reboot_allowed: bool):
    """
    Fail unless nvidia-smi lists GPU_COUNT GPUs on a driver of BRANCH.

    + gpu_count: GPUs the inventory says the host has
    + branch: the driver branch
    + reboot_allowed: whether the deploy may reboot (for the error message)
    """
    if planning():
        host.noop("nvidia-smi is checked after the driver steps run")
        return

    gpus = host.get_fact(NvidiaGpus)
    if not gpus["working"]:
        hint = ("reboot the host, or allow nvidia_driver_allow_reboot" if not reboot_allowed
                else "check the driver install and the kernel log")
        yield fail_command(f"nvidia-smi does not answer (exit {gpus['rc']}: "
                           f"{gpus['error'] or 'no output'}); {hint}")
    elif len(gpus["gpus"]) != gpu_count:
        yield fail_command(f"gpu_count: nvidia-smi lists {len(gpus['gpus'])} GPUs, "
                           f"the inventory says {gpu_count}")
    elif not driver_answers(gpus, branch):
        version = gpus["gpus"][0]["driver_version"]
        yield fail_command(f"nvidia_driver_branch: driver {version} answers, not {branch}; "
                           "remove it or pin its branch")
    else:
        names = ", ".join(sorted({g["name"] for g in gpus["gpus"]}))
        host.noop(f"{gpu_count} x {names} on driver {gpus['gpus'][0]['driver_version']}")


@operation()
def persistence_mode(enabled: bool):
    """
    Set GPU persistence mode where it differs.

    + enabled: whether the driver stays loaded with no client
    """
    gpus = host.get_fact(NvidiaGpus)["gpus"]
    wrong = [g for g in gpus if g["persistence_mode"] != enabled]
    if not wrong:
        host.noop(f"persistence mode {'on' if enabled else 'off'} on every GPU")
        return
    yield f"nvidia-smi -pm {1 if enabled else 0}"
