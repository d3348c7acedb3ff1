"""NVIDIA driver of a pinned branch, rebooted into and verified with nvidia-smi.

Guarantees: nothing happens on a host without GPUs; a host whose driver of the
wanted branch already answers is left alone; nouveau is blacklisted; a new
driver is rebooted into only when reboots are allowed (else the run stops and
says so); afterwards nvidia-smi must list `gpu_count` GPUs; persistence mode on.
"""

from __future__ import annotations

from io import StringIO

from pyinfra import host
from pyinfra.api import operation
from pyinfra.operations import files, server

from tasks import distributions
from tasks import packages as apt_packages
from tasks.facts import NvidiaGpus, planning
from tasks.report import fail_command
from tasks.settings import Settings

NOUVEAU_BLACKLIST = "blacklist nouveau\noptions nouveau modeset=0\n"


def driver_packages(dist: distributions.Distribution, settings: Settings) -> list[str]:
    """The branch's packages: from NVIDIA's CUDA repository where the table has one (Debian),
    else from the distribution's archive (Ubuntu: Canonical's server packages)."""
    cuda = distributions.repository(dist, distributions.CUDA, settings)
    if cuda is not None:
        return list(cuda.packages)
    return distributions.archive_packages(dist, distributions.NVIDIA_DRIVER, settings)


def driver_answers(gpus: dict, branch: int) -> bool:
    """True when nvidia-smi works and reports a driver of BRANCH."""
    return gpus["working"] and all(
        g["driver_version"].split(".")[0] == str(branch) for g in gpus["gpus"])


def install_driver(settings: Settings, dist: distributions.Distribution) -> None:
    """Install, reboot into and verify the driver (GPU hosts only)."""
    if settings.gpu_count == 0:
        return
    files.put(name="Blacklist nouveau", src=StringIO(NOUVEAU_BLACKLIST),
              dest="/etc/modprobe.d/blacklist-nouveau.conf", mode="644")
    cuda = distributions.repository(dist, distributions.CUDA, settings)
    if cuda is not None:
        apt_packages.repository(name="NVIDIA CUDA apt repository", **cuda.repository_args())
    install = driver(name=f"NVIDIA driver {settings.nvidia_driver_branch}",
                     packages=driver_packages(dist, settings),
                     branch=settings.nvidia_driver_branch)
    if settings.nvidia_driver_allow_reboot:
        server.reboot(name="Reboot into the new driver", delay=5, interval=2,
                      reboot_timeout=600, _if=install.did_change)
    verify_driver(name="nvidia-smi answers with every GPU", gpu_count=settings.gpu_count,
                  branch=settings.nvidia_driver_branch,
                  reboot_allowed=settings.nvidia_driver_allow_reboot)
    persistence_mode(name="GPU persistence mode", enabled=settings.nvidia_persistence_mode)


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
