"""NVIDIA driver of a pinned branch, as the vendors document it per distribution, rebooted
into and verified with nvidia-smi.

Guarantees:
- nothing happens on a host without GPUs; a host whose driver of the wanted branch
  already answers is left alone;
- the plan (packages, flavour, Fabric Manager) is made from the distribution's table
  (tasks/kit/distributions.py), the running kernel and the host's PCI devices; a branch the
  distribution's source does not carry, or a flavour the GPUs cannot run, stops the host
  before anything is touched, naming the knob;
- the running kernel's headers go in before any DKMS package; a headers package apt
  cannot find stops the host at this step, named, before any reboot (install.sh);
- the driver's packages are held, so an unattended upgrade cannot change the branch under
  a serving fleet;
- a new driver, or one installed but not loaded (a run that died before its reboot), is
  rebooted into when reboots are allowed, else the run stops and says so. Hosts whose
  driver serves already (a branch change) reboot one at a time unless the operator asks
  for all at once; fresh hosts reboot together;
- afterwards nvidia-smi must list `gpu_count` GPUs on the branch; Fabric Manager, where
  the board has NVSwitch, of the driver's version, running; nvidia-persistenced enabled.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import StringIO

from pyinfra import host
from pyinfra.api import OperationError, operation
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus
from pyinfra.operations import files, server, systemd

from ollama_fleet.tasks.kit import distributions
from ollama_fleet.tasks.kit.facts import NvidiaGpus, NvidiaHost, planning
from ollama_fleet.tasks.kit.report import fail_command
from ollama_fleet.tasks.kit.scripts import script_command
from ollama_fleet.tasks.kit.settings import Settings
from ollama_fleet.tasks.steps import packages as apt_packages

NOUVEAU_BLACKLIST = "blacklist nouveau\noptions nouveau modeset=0\n"
FABRICMANAGER_UNIT = "nvidia-fabricmanager"
PERSISTENCED_UNIT = "nvidia-persistenced"

# PCI (NVIDIA's supportedchips tables, the Fabric Manager user guide, pci.ids): GPUs are
# display controllers (class 0x03xxxx). Up to device 0x1df6 they are Volta or older, which
# only the proprietary modules drive, and no branch after 580. Blackwell (0x2900-0x2fff,
# B300 0x3182, GB300 0x31c2/3) runs only with the open ones, from 570.
PRE_TURING_LAST_DEVICE = 0x1DF6
PRE_TURING_LAST_BRANCH = 580
BLACKWELL_DEVICES = (range(0x2900, 0x3000), range(0x3182, 0x3183), range(0x31C2, 0x31C4))
DISPLAY_CLASS = 0x03
# NVSwitch chips of HGX boards are bridges (class 0x0680xx): HGX-2, HGX A100, HGX
# H100/H200. Other NVIDIA bridges exist (old chipsets), so only these ids count.
NVSWITCH_CLASS = 0x0680
NVSWITCH_DEVICES = (0x1AC2, 0x1AF1, 0x22A3)
# HGX B200/B300's NVSwitches are not PCI devices on the host: their SXM GPUs say it.
HGX_BLACKWELL_GPUS = (0x2901, 0x3182)


@dataclass(frozen=True)
class DriverPlan:
    """What the driver step installs on one host."""

    flavour: str  # "open" or "proprietary"
    headers: str  # the running kernel's headers package ('' precompiled modules)
    headers_meta: str  # the headers of the kernels to come ('' none)
    pin: str  # the package that holds the branch ('' none)
    packages: tuple[str, ...]  # the driver's (and Fabric Manager's) packages
    fabricmanager: str  # Fabric Manager's package ('' none)

    @property
    def held(self) -> tuple[str, ...]:
        """What apt must not change under a serving fleet: the pin where there is one (it
        keeps the branch and lets the branch's own updates through) and Fabric Manager
        (which must match the driver); else the branch's packages themselves."""
        if self.pin:
            return tuple(p for p in (self.pin, self.fabricmanager) if p)
        return self.packages

    @property
    def wanted(self) -> tuple[str, ...]:
        """Every package the plan must have installed (the headers meta-package is taken
        where apt has it: a kernel of no known flavour has none)."""
        return tuple(p for p in (self.headers, self.pin, *self.packages) if p)


def gpu_devices(devices: list[dict]) -> list[int]:
    """The device ids of the NVIDIA GPUs among the host's PCI DEVICES."""
    return [d["device"] for d in devices if d["class"] >> 16 == DISPLAY_CLASS]


def needs_fabricmanager(devices: list[dict]) -> bool:
    """Whether the board is an NVSwitch one (HGX/DGX), where Fabric Manager must run."""
    return any(d["class"] >> 8 == NVSWITCH_CLASS and d["device"] in NVSWITCH_DEVICES
               for d in devices) or any(d in HGX_BLACKWELL_GPUS for d in gpu_devices(devices))


def is_blackwell(device: int) -> bool:
    return any(device in r for r in BLACKWELL_DEVICES)


def choose_flavour(settings: Settings, devices: list[dict]) -> str:
    """The kernel modules' flavour. auto: open from branch 560 on (NVIDIA's default, and
    what Blackwell requires) unless a GPU older than Turing needs the proprietary ones.
    A choice the GPUs cannot run is a ValueError naming the knob."""
    gpus = gpu_devices(devices)
    old = [d for d in gpus if d <= PRE_TURING_LAST_DEVICE]
    blackwell = [d for d in gpus if is_blackwell(d)]
    branch = settings.nvidia_driver_branch
    if blackwell and branch < 570:
        raise ValueError(f"nvidia_driver_branch: {branch} does not drive Blackwell GPUs "
                         f"(device 0x{blackwell[0]:04x}); 570 and later do")
    if old and branch > PRE_TURING_LAST_BRANCH:
        raise ValueError(f"nvidia_driver_branch: {branch} does not drive GPUs older than "
                         f"Turing (device 0x{old[0]:04x}); {PRE_TURING_LAST_BRANCH} is their "
                         "last branch")
    flavour = settings.nvidia_driver_flavour
    if flavour == "auto":
        flavour = "proprietary" if old or branch < 560 else "open"
    if flavour == "proprietary" and blackwell:
        raise ValueError(f"nvidia_driver_flavour: Blackwell GPUs (device 0x{blackwell[0]:04x}) "
                         "run only with the open kernel modules")
    if flavour == "open" and old:
        raise ValueError(f"nvidia_driver_flavour: GPUs older than Turing (device "
                         f"0x{old[0]:04x}) need the proprietary kernel modules")
    return flavour


def driver_plan(dist: distributions.Distribution, settings: Settings, kernel: str,
                devices: list[dict]) -> DriverPlan:
    """The packages for DIST, the running KERNEL and the PCI DEVICES; ValueError naming the
    knob where the distribution or the GPUs rule the settings out."""
    scheme = distributions.driver_packages(dist, settings)
    flavour = choose_flavour(settings, devices)
    values = {"branch": str(settings.nvidia_driver_branch), "kernel": kernel,
              "flavour": distributions.kernel_flavour(dist, kernel)}
    fill = lambda shape: distributions.fill(shape, **values)  # noqa: E731
    fm = settings.nvidia_fabricmanager == "always" or \
        (settings.nvidia_fabricmanager == "auto" and needs_fabricmanager(devices))
    fabricmanager = fill(scheme.fabricmanager) if fm else ""
    packages = tuple(fill(p) for p in getattr(scheme, flavour))
    return DriverPlan(flavour=flavour, headers=fill(scheme.headers) if scheme.headers else "",
                      headers_meta=fill(scheme.headers_meta) if scheme.headers_meta else "",
                      pin=fill(scheme.pin) if scheme.pin else "",
                      packages=packages + ((fabricmanager,) if fabricmanager else ()),
                      fabricmanager=fabricmanager)


def driver_answers(gpus: dict, branch: int) -> bool:
    """True when nvidia-smi works and reports a driver of BRANCH."""
    return gpus["working"] and all(
        g["driver_version"].split(".")[0] == str(branch) for g in gpus["gpus"])


def install_driver(settings: Settings, dist: distributions.Distribution) -> None:
    """Install, reboot into and verify the driver (GPU hosts only)."""
    if settings.gpu_count == 0:
        return
    plan = host_plan(settings, dist)  # a knob this host cannot have stops it here

    files.put(name="Blacklist nouveau", src=StringIO(NOUVEAU_BLACKLIST),
              dest="/etc/modprobe.d/blacklist-nouveau.conf", mode="644")
    if dist.archive_components:
        apt_packages.archive_components(
            name=f"{dist.name} archive: {', '.join(dist.archive_components)}",
            components=list(dist.archive_components), codename=dist.codename)
    cuda = distributions.repository(dist, distributions.CUDA, settings)
    if cuda is not None:
        apt_packages.repository(name="NVIDIA CUDA apt repository", **cuda.repository_args())

    gpus = host.get_fact(NvidiaGpus)
    branch = settings.nvidia_driver_branch
    if driver_answers(gpus, branch):
        # the branch's module is loaded: what is missing (Fabric Manager for a board that
        # needs it since, nvidia-persistenced, the headers) goes in without a reboot
        apt_packages.installed(name=f"NVIDIA driver {branch}: its packages in place",
                               packages=list(plan.wanted))
    else:
        install = driver(name=f"NVIDIA driver {branch} ({plan.flavour})", settings=settings,
                         dist=dist.name)
        # installed but not answering: a run that died before its reboot, a lost module
        unloaded = not apt_packages.missing_packages(
            list(plan.wanted), host.get_fact(DebPackages) or {})
        if settings.nvidia_driver_allow_reboot:
            reboot_args = {"delay": 5, "interval": 2,
                           "reboot_timeout": settings.nvidia_driver_reboot_timeout,
                           "_if": lambda: install.did_change() or unloaded}
            if gpus["working"] and not settings.nvidia_driver_reboot_all_at_once:
                # another branch serves now (a branch change): one host down at a time
                server.reboot(name="Reboot into the new driver, one host at a time",
                              _serial=True, **reboot_args)
            else:
                server.reboot(name="Reboot into the new driver", **reboot_args)
    held(name="NVIDIA driver held", packages=list(plan.held))
    verify_driver(name="nvidia-smi answers with every GPU", gpu_count=settings.gpu_count,
                  branch=branch, reboot_allowed=settings.nvidia_driver_allow_reboot,
                  fabricmanager=plan.fabricmanager)
    if plan.fabricmanager:
        fabricmanager_started(name="Fabric Manager enabled and started (NVSwitch board)")
    systemd.service(name="nvidia-persistenced", service=PERSISTENCED_UNIT,
                    running=settings.nvidia_persistence_mode,
                    enabled=settings.nvidia_persistence_mode)


def host_plan(settings: Settings, dist: distributions.Distribution) -> DriverPlan:
    """This host's plan, from its kernel and PCI devices; OperationError naming the host and
    the knob where the distribution or the GPUs rule the settings out (before any change)."""
    found = host.get_fact(NvidiaHost)
    try:
        return driver_plan(dist, settings, found["kernel"], found["devices"])
    except ValueError as exc:
        raise OperationError(f"{host.name}: {exc}") from None


@operation()
def driver(settings: Settings, dist: str):
    """
    Install the driver's packages for distribution DIST (headers, pin, driver, Fabric
    Manager where the board has NVSwitch) where any is missing.

    + settings: the host's settings (branch, flavour, modules, Fabric Manager)
    + dist: the distribution's name in tasks/kit/distributions.py, e.g. "debian 13"
    """
    plan = host_plan(settings, distributions.by_name(dist))
    missing = apt_packages.missing_packages(list(plan.wanted), host.get_fact(DebPackages) or {})
    if not missing:
        host.noop(f"driver {settings.nvidia_driver_branch} packages installed")
        return
    yield script_command("nvidia_driver/install.sh", plan.headers, plan.headers_meta, plan.pin,
                         *plan.packages)


@operation()
def held(packages: list[str]):
    """
    Hold PACKAGES, so that no upgrade changes them (a new branch is the deploy's choice).

    + packages: the driver's packages
    """
    current = set(host.get_fact(NvidiaHost)["held"])
    unheld = [p for p in packages if p not in current]  # installed by now: the step before
    if not unheld:
        host.noop(f"held: {', '.join(packages)}")
        return
    yield "apt-mark hold " + " ".join(unheld)


@operation()
def fabricmanager_started():
    """
    Enable and start Fabric Manager where it is not running; a start that fails is said,
    not fatal here (templates/nvidia_driver/fabricmanager.sh): the inference proof names it.
    """
    unit = f"{FABRICMANAGER_UNIT}.service"
    running = (host.get_fact(SystemdStatus, services=unit) or {}).get(unit)
    enabled = (host.get_fact(SystemdEnabled, services=unit) or {}).get(unit)
    if running and enabled:
        host.noop(f"{unit} running")
        return
    yield script_command("nvidia_driver/fabricmanager.sh", FABRICMANAGER_UNIT)


@operation()
def verify_driver(gpu_count: int, branch: int, reboot_allowed: bool, fabricmanager: str = ""):
    """
    Fail unless nvidia-smi lists GPU_COUNT GPUs on a driver of BRANCH, and Fabric Manager,
    where the board needs it, is of the driver's version.

    + gpu_count: GPUs the inventory says the host has
    + branch: the driver branch
    + reboot_allowed: whether the deploy may reboot (for the error message)
    + fabricmanager: Fabric Manager's package ('' none)
    """
    if planning():
        host.noop("nvidia-smi is checked after the driver steps run")
        return

    gpus = host.get_fact(NvidiaGpus)
    if not gpus["working"]:
        hint = ("reboot the host, or allow nvidia_driver_allow_reboot" if not reboot_allowed
                else "check the driver install (was the module built? `dkms status`) and "
                     "the kernel log")
        yield fail_command(f"nvidia-smi does not answer (exit {gpus['rc']}: "
                           f"{gpus['error'] or 'no output'}); {hint}")
        return
    if len(gpus["gpus"]) != gpu_count:
        yield fail_command(f"gpu_count: nvidia-smi lists {len(gpus['gpus'])} GPUs, "
                           f"the inventory says {gpu_count}")
        return
    version = gpus["gpus"][0]["driver_version"]
    if not driver_answers(gpus, branch):
        yield fail_command(f"nvidia_driver_branch: driver {version} answers, not {branch}; "
                           "remove it or pin its branch")
        return
    if fabricmanager:
        versions = (host.get_fact(DebPackages) or {}).get(fabricmanager) or set()
        if not any(v.split("-")[0] == version for v in versions):
            have = ", ".join(sorted(versions)) or "none"
            yield fail_command(f"{fabricmanager} {have} is not the driver's version "
                               f"{version}: Fabric Manager refuses to start; install "
                               f"{fabricmanager}={version}-*")
            return
    names = ", ".join(sorted({g["name"] for g in gpus["gpus"]}))
    host.noop(f"{gpu_count} x {names} on driver {version}")
