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
  cannot find stops the host at this step, named, before any reboot (install.sh); the
  flavour's headers meta-package too, so that DKMS builds the module for every new kernel;
- with DKMS modules and Secure Boot on, a host stops before anything is installed unless
  a key enrolled in MOK signs them (nvidia_driver_mok_key, installed where DKMS signs
  with it, or the host's own DKMS key): it never reboots into a module the kernel refuses;
- the branch is kept without blocking its own updates or the next kernel's module: by
  NVIDIA's pinning package (held), by an apt preferences file on Ubuntu (nothing held:
  the precompiled module meta-package brings each new kernel's module), or, for the
  branch-named Debian 12 packages that have neither, by holding them; Fabric Manager
  follows the driver's version;
- a new driver, or one installed but not loaded (a run that died before its reboot, an
  update whose module waits for the next boot), is rebooted into when reboots are
  allowed, else the run stops and says so. Hosts whose driver serves already (a branch
  change, or a loaded module older than its userspace) reboot one at a time unless the
  operator asks for all at once; fresh hosts reboot together;
- an NVLink 5 board (HGX B100/B200/B300) gets NVIDIA's NVLink Subnet Manager (nvlsm,
  from NVIDIA's CUDA repository, which on Ubuntu serves nothing else) with Fabric
  Manager, and ib_umad loaded at every boot: Fabric Manager does not start without them;
  on Ubuntu the archive's multiverse component, where Fabric Manager is, is ensured;
- afterwards nvidia-smi must list `gpu_count` GPUs on the branch; Fabric Manager, where
  the board has NVSwitch, of the driver's version, running; nvidia-persistenced enabled
  and, with nvidia_persistence_mode, every GPU in persistence mode (a drop-in where the
  packaged unit runs `--no-persistence-mode`, as Ubuntu's does).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from io import BytesIO, StringIO

from pyinfra import host
from pyinfra.api import OperationError, operation
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus
from pyinfra.operations import files, server, systemd

from ollama_fleet.tasks.kit import distributions
from ollama_fleet.tasks.kit.compose import secret_file
from ollama_fleet.tasks.kit.facts import (
    NvidiaGpus,
    NvidiaHost,
    PersistencedUnit,
    SecureBoot,
    persistence_dropin,
    planning,
)
from ollama_fleet.tasks.kit.report import fail_command
from ollama_fleet.tasks.kit.scripts import script_command
from ollama_fleet.tasks.kit.settings import Settings
from ollama_fleet.tasks.steps import packages as apt_packages

NOUVEAU_BLACKLIST = "blacklist nouveau\noptions nouveau modeset=0\n"
FABRICMANAGER_UNIT = "nvidia-fabricmanager"
PERSISTENCED_UNIT = "nvidia-persistenced"
PERSISTENCE_DROPIN = (f"/etc/systemd/system/{PERSISTENCED_UNIT}.service.d/"
                      "ollama-fleet-persistence-mode.conf")
# nvidia-smi's answer while the loaded module is not the installed userspace's (an update
# that waits for a reboot): the old module still serves the running containers
MISMATCH = "Driver/library version mismatch"

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
# HGX B100/B200/B300's NVSwitches are not PCI devices on the host: their SXM GPUs say it
# (pci.ids: 2901 GB100 [B200], 2920 GB100 [TS4 / B100], 29bc GB102 [B100], 3182 B300),
# and that the board is an NVLink 5 one, whose Fabric Manager needs NVLSM.
HGX_BLACKWELL_GPUS = (0x2901, 0x2920, 0x29BC, 0x3182)
NVLINK5_GPUS = HGX_BLACKWELL_GPUS
# ib_umad at every boot (Fabric Manager's start on NVLink 5 boards needs it loaded)
NVLSM_MODULES_LOAD = "/etc/modules-load.d/ollama-fleet-nvlsm.conf"
# where Ubuntu's kernels keep ib_umad: not in linux-modules-K but in
# linux-modules-extra-K, which cloud images leave out (NVIDIA/gpu-operator#2781)
UBUNTU_MODULES_EXTRA = "linux-modules-extra"


@dataclass(frozen=True)
class DriverPlan:
    """What the driver step installs on one host."""

    flavour: str  # "open" or "proprietary"
    headers: str  # the running kernel's headers package ('' precompiled modules)
    headers_meta: str  # the headers of the kernels to come ('' none)
    pin: str  # the package that holds the branch ('' none)
    packages: tuple[str, ...]  # the driver's (and Fabric Manager's) packages
    fabricmanager: str  # Fabric Manager's package ('' none)
    keep_branch: str = "pin"  # "pin", "hold" or "preferences" (distributions.DriverPackages)
    branch_packages: tuple[str, ...] = ()  # "preferences": the names pinned to the branch
    driver_version: str = ""  # the package whose version is the driver's
    nvlsm: str = ""  # NVLink Subnet Manager's package (NVLink 5 boards; '' none)

    @property
    def held(self) -> tuple[str, ...]:
        """What `apt-mark hold` keeps: the pin package where there is one (its preferences
        keep the branch, Fabric Manager included, and let the branch's own updates and
        each new kernel's module through); the branch's packages where nothing else
        keeps them (Debian 12's branch-named ones, Fabric Manager with them); nothing on
        Ubuntu, whose apt preferences file keeps the branch (a hold there would keep the
        next kernel's module out)."""
        if self.keep_branch == "pin" and self.pin:
            return (self.pin,)
        if self.keep_branch == "hold":
            return self.packages
        return ()

    @property
    def released(self) -> tuple[str, ...]:
        """The plan's packages that must not be held (an older deploy held them)."""
        return tuple(p for p in (*self.packages, self.headers_meta)
                     if p and p not in self.held)

    @property
    def dkms(self) -> bool:
        """Whether DKMS builds the module on the host (Secure Boot needs a key for it)."""
        return bool(self.headers)

    @property
    def wanted(self) -> tuple[str, ...]:
        """Every package the plan must have installed (the headers meta-package is taken
        where apt has it: a kernel of no known flavour has none)."""
        return tuple(p for p in (self.headers, self.pin, *self.packages, self.nvlsm) if p)


def gpu_devices(devices: list[dict]) -> list[int]:
    """The device ids of the NVIDIA GPUs among the host's PCI DEVICES."""
    return [d["device"] for d in devices if d["class"] >> 16 == DISPLAY_CLASS]


def needs_fabricmanager(devices: list[dict]) -> bool:
    """Whether the board is an NVSwitch one (HGX/DGX), where Fabric Manager must run."""
    return any(d["class"] >> 8 == NVSWITCH_CLASS and d["device"] in NVSWITCH_DEVICES
               for d in devices) or any(d in HGX_BLACKWELL_GPUS for d in gpu_devices(devices))


def needs_nvlsm(devices: list[dict]) -> bool:
    """Whether the board is an NVLink 5 one (HGX B100/B200/B300): Fabric Manager starts
    there only with the NVLink Subnet Manager."""
    return any(d in NVLINK5_GPUS for d in gpu_devices(devices))


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
    settings = distributions.with_branch(dist, settings)
    scheme = distributions.driver_packages(dist, settings)
    flavour = choose_flavour(settings, devices)
    values = {"branch": str(settings.nvidia_driver_branch), "kernel": kernel,
              "flavour": distributions.kernel_flavour(dist, kernel)}
    fill = lambda shape: distributions.fill(shape, **values)  # noqa: E731
    fm = settings.nvidia_fabricmanager == "always" or \
        (settings.nvidia_fabricmanager == "auto" and needs_fabricmanager(devices))
    fabricmanager = fill(scheme.fabricmanager) if fm else ""
    packages = tuple(fill(p) for p in getattr(scheme, flavour))
    version = scheme.driver_version[0 if flavour == "open" else 1]
    return DriverPlan(flavour=flavour, headers=fill(scheme.headers) if scheme.headers else "",
                      headers_meta=fill(scheme.headers_meta) if scheme.headers_meta else "",
                      pin=fill(scheme.pin) if scheme.pin else "",
                      packages=packages + ((fabricmanager,) if fabricmanager else ()),
                      fabricmanager=fabricmanager, keep_branch=scheme.keep_branch,
                      branch_packages=tuple(fill(p) for p in scheme.branch_packages),
                      driver_version=fill(version) if version else "",
                      nvlsm=distributions.NVLSM_PACKAGE
                      if fabricmanager and needs_nvlsm(devices) else "")


def branch_preferences(plan: DriverPlan, branch: int) -> str:
    """The apt preferences that keep PLAN's branch-named packages on BRANCH: only their
    `BRANCH.*` versions are candidates, so in-branch updates come and a retired branch's
    transitional packages (versioned as the next branch) do not."""
    return (f"Explanation: ollama-fleet: NVIDIA driver branch {branch} (nvidia_driver_branch); "
            "its own updates pass\n"
            f"Package: {' '.join(plan.branch_packages)}\n"
            f"Pin: version {branch}.*\n"
            "Pin-Priority: 1000\n")


def driver_answers(gpus: dict, branch: int) -> bool:
    """True when nvidia-smi works and reports a driver of BRANCH."""
    return gpus["working"] and all(
        g["driver_version"].split(".")[0] == str(branch) for g in gpus["gpus"])


def driver_serves(gpus: dict) -> bool:
    """True when a driver module is loaded: nvidia-smi answers, or says the module is not
    the installed userspace's (containers started before the update still use it)."""
    return gpus["working"] or MISMATCH in gpus["error"]


def read_mok(settings: Settings) -> tuple[bytes, bytes] | None:
    """The operator's MOK key (PEM) and certificate (DER; a PEM one is converted), read on
    the operator's machine; None when the knobs are empty. ValueError naming the knob."""
    if not settings.nvidia_driver_mok_key:
        return None
    found = []
    for knob in ("nvidia_driver_mok_key", "nvidia_driver_mok_cert"):
        path = os.path.expanduser(getattr(settings, knob))
        try:
            with open(path, "rb") as handle:
                found.append(handle.read())
        except OSError as exc:
            raise ValueError(f"{knob}: {path}: {exc.strerror}") from None
    key, cert = found
    if b"PRIVATE KEY-----" not in key:
        raise ValueError(f"nvidia_driver_mok_key: {settings.nvidia_driver_mok_key}: not a "
                         "private key in PEM (-----BEGIN PRIVATE KEY-----)")
    if cert.lstrip().startswith(b"-----BEGIN CERTIFICATE-----"):
        body = cert.split(b"-----BEGIN CERTIFICATE-----", 1)[1].split(b"-----END", 1)[0]
        try:
            cert = base64.b64decode(b"".join(body.split()), validate=True)
        except ValueError:
            cert = b""
    if not cert.startswith(b"\x30"):  # an X.509 certificate is a DER SEQUENCE
        raise ValueError(f"nvidia_driver_mok_cert: {settings.nvidia_driver_mok_cert}: not "
                         "an X.509 certificate (DER, or PEM -----BEGIN CERTIFICATE-----)")
    return key, cert


def _mok_said(test: dict | None) -> str:
    """What mokutil said of a certificate, without the file's name it starts with."""
    if test is None:
        return "mokutil is not installed to test it"
    said = test["said"]
    return said.split(" ", 1)[1] if said.startswith("/") and " " in said else said


def secure_boot_problem(secure_boot: dict, plan: DriverPlan, settings: Settings,
                        dist: distributions.Distribution) -> str | None:
    """Why PLAN cannot go on this host under SECURE_BOOT (facts.SecureBoot), as
    `knob: problem`; None when it can: no DKMS, Secure Boot off, or the key DKMS will
    sign with (the operator's, else the host's own) enrolled in MOK."""
    if not plan.dkms or not secure_boot["enabled"]:
        return None
    if settings.nvidia_driver_mok_cert:
        if secure_boot["given"] and secure_boot["given"]["enrolled"]:
            return None
        return (f"nvidia_driver_mok_cert: Secure Boot is on and "
                f"{settings.nvidia_driver_mok_cert} is not enrolled in MOK (mokutil --test-key: "
                f"{_mok_said(secure_boot['given'])}); enroll it (mokutil --import, confirmed "
                "at the console on the next boot) before the driver, or the kernel refuses "
                "the modules DKMS signs with it")
    if secure_boot["host"] and secure_boot["host"]["enrolled"]:
        return None
    other = (", or take Canonical's signed modules (nvidia_driver_ubuntu_modules: "
             "precompiled)" if dist.os_id == "ubuntu" else "")
    return ("nvidia_driver_mok_key: Secure Boot is on and the kernel refuses the NVIDIA "
            "modules DKMS builds unless they are signed by a key enrolled in MOK; enroll one "
            "(mokutil --import, confirmed at the console on the next boot) and give it in "
            f"nvidia_driver_mok_key and nvidia_driver_mok_cert{other}")


def signing_key(settings: Settings, dist: distributions.Distribution,
                plan: DriverPlan) -> tuple[bytes, bytes] | None:
    """The MOK key and certificate to install where DKMS signs with them (None: none), once
    Secure Boot allows PLAN; OperationError naming the host and the knob, before any change,
    where the kernel would refuse the modules DKMS builds."""
    if not plan.dkms:
        return None
    try:
        mok = read_mok(settings)
    except ValueError as exc:
        raise OperationError(f"{host.name}: {exc}") from None
    cert = base64.b64encode(mok[1]).decode() if mok else ""
    found = host.get_fact(SecureBoot, host_cert=dist.dkms_mok[1], cert_base64=cert)
    problem = secure_boot_problem(found, plan, settings, dist)
    if problem:
        raise OperationError(f"{host.name}: {problem}")
    return mok


def install_driver(settings: Settings, dist: distributions.Distribution) -> None:
    """Install, reboot into and verify the driver (GPU hosts only)."""
    if settings.gpu_count == 0:
        return
    settings = distributions.with_branch(dist, settings)  # the knob's, else the distribution's
    plan = host_plan(settings, dist)  # a knob this host cannot have stops it here
    mok = signing_key(settings, dist, plan)  # as does Secure Boot refusing DKMS's modules

    files.put(name="Blacklist nouveau", src=StringIO(NOUVEAU_BLACKLIST),
              dest="/etc/modprobe.d/blacklist-nouveau.conf", mode="644")
    components = archive_components(dist, plan)
    if components:
        apt_packages.archive_components(
            name=f"{dist.name} archive: {', '.join(components)}",
            components=list(components), codename=dist.codename)
    cuda = distributions.repository(dist, distributions.CUDA, settings)
    if cuda is not None:
        apt_packages.repository(name="NVIDIA CUDA apt repository", **cuda.repository_args())
    if plan.nvlsm:
        # where the driver is the distribution's, NVIDIA's repository serves nvlsm alone
        nvlsm = distributions.repository(dist, dist.nvlsm_repository, settings)
        if nvlsm is not None and dist.nvlsm_repository != distributions.CUDA:
            apt_packages.repository(name="NVIDIA CUDA apt repository, for nvlsm only",
                                    **nvlsm.repository_args())
        files.put(name="ib_umad loaded at boot (Fabric Manager's NVLink Subnet Manager)",
                  src=StringIO("".join(f"{m}\n" for m in distributions.NVLSM_MODULES)),
                  dest=NVLSM_MODULES_LOAD, mode="644")

    branch = settings.nvidia_driver_branch
    if plan.branch_packages:
        files.put(name=f"NVIDIA driver branch {branch} kept by apt preferences",
                  src=StringIO(branch_preferences(plan, branch)),
                  dest=distributions.BRANCH_PREFERENCES, mode="644")
    if mok:
        key, cert = dist.dkms_mok
        # a private key: root's alone from its first byte, never shown by --diff
        secret_file(name="MOK key DKMS signs the driver's modules with (mode 600, not shown)",
                    dest=key, content=mok[0].decode())
        files.put(name="MOK certificate DKMS signs with", src=BytesIO(mok[1]), dest=cert,
                  mode="644", user="root", group="root")

    gpus = host.get_fact(NvidiaGpus)
    if driver_answers(gpus, branch):
        # the branch's module is loaded: what is missing (Fabric Manager for a board that
        # needs it since, nvidia-persistenced, the headers) goes in without a reboot
        apt_packages.installed(name=f"NVIDIA driver {branch}: its packages in place",
                               packages=list(plan.wanted))
        fabricmanager_in_step(plan)
    else:
        install = driver(name=f"NVIDIA driver {branch} ({plan.flavour})", settings=settings,
                         dist=dist.name)
        fabricmanager_in_step(plan)
        # installed but not answering: a run that died before its reboot, a lost module,
        # an update whose module waits for the next boot
        unloaded = not apt_packages.missing_packages(
            list(plan.wanted), host.get_fact(DebPackages) or {})
        if settings.nvidia_driver_allow_reboot:
            reboot_args = {"delay": 5, "interval": 2,
                           "reboot_timeout": settings.nvidia_driver_reboot_timeout,
                           "_if": lambda: install.did_change() or unloaded}
            if driver_serves(gpus) and not settings.nvidia_driver_reboot_all_at_once:
                # a driver serves now (a branch change, an update waiting for its module):
                # one host down at a time
                server.reboot(name="Reboot into the new driver, one host at a time",
                              _serial=True, **reboot_args)
            else:
                server.reboot(name="Reboot into the new driver", **reboot_args)
    held(name="NVIDIA driver branch held", packages=list(plan.held),
         released=list(plan.released))
    verify_driver(name="nvidia-smi answers with every GPU", gpu_count=settings.gpu_count,
                  branch=branch, reboot_allowed=settings.nvidia_driver_allow_reboot,
                  fabricmanager=plan.fabricmanager)
    if plan.fabricmanager:
        fabricmanager_started(
            name="Fabric Manager enabled and started (NVSwitch board)",
            modules=list(distributions.NVLSM_MODULES) if plan.nvlsm else [],
            modules_package=UBUNTU_MODULES_EXTRA if plan.nvlsm and dist.os_id == "ubuntu"
            else "")
    if settings.nvidia_persistence_mode:
        persistence_mode_kept(name="nvidia-persistenced keeps persistence mode on")
    systemd.service(name="nvidia-persistenced", service=PERSISTENCED_UNIT,
                    running=settings.nvidia_persistence_mode,
                    enabled=settings.nvidia_persistence_mode)
    if settings.nvidia_persistence_mode:
        verify_persistence(name="Persistence mode on every GPU", gpu_count=settings.gpu_count)


def archive_components(dist: distributions.Distribution, plan: DriverPlan) -> tuple[str, ...]:
    """The components of DIST's own archive PLAN needs: the driver's, and Fabric Manager's
    where the plan has it (Ubuntu's multiverse)."""
    extra = dist.fabricmanager_components if plan.fabricmanager else ()
    return dist.archive_components + tuple(c for c in extra
                                           if c not in dist.archive_components)


def fabricmanager_in_step(plan: DriverPlan) -> None:
    """Fabric Manager at the driver's version, where the plan has one."""
    if plan.fabricmanager and plan.driver_version:
        fabricmanager_follows_driver(name="Fabric Manager at the driver's version",
                                     fabricmanager=plan.fabricmanager,
                                     driver=plan.driver_version)


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
    table = distributions.by_name(dist)
    settings = distributions.with_branch(table, settings)
    plan = host_plan(settings, table)
    missing = apt_packages.missing_packages(list(plan.wanted), host.get_fact(DebPackages) or {})
    if not missing:
        host.noop(f"driver {settings.nvidia_driver_branch} packages installed")
        return
    yield script_command("nvidia_driver/install.sh", plan.headers, plan.headers_meta, plan.pin,
                         *plan.packages, *((plan.nvlsm,) if plan.nvlsm else ()))


@operation()
def held(packages: list[str], released: list[str] | None = None):
    """
    Hold PACKAGES, so that no upgrade changes the branch (a new branch is the deploy's
    choice); release RELEASED where an older deploy held them (a held module meta-package
    or Fabric Manager keeps the next kernel's module, or the branch's own updates, out).

    + packages: what keeps the branch (the pin package, or the branch's packages)
    + released: the plan's other packages
    """
    current = set(host.get_fact(NvidiaHost)["held"])
    unheld = [p for p in packages if p not in current]  # installed by now: the step before
    stale = [p for p in released or [] if p in current]
    if not unheld and not stale:
        host.noop(f"held: {', '.join(packages) or 'nothing'}")
        return
    if stale:
        yield "apt-mark unhold " + " ".join(stale)
    if unheld:
        yield "apt-mark hold " + " ".join(unheld)


def _upstream(version: str) -> str:
    """A Debian version's upstream part: 1:580.95.05-0ubuntu1 -> 580.95.05."""
    version = version.split(":", 1)[-1]
    return version.rsplit("-", 1)[0] if "-" in version else version


@operation()
def fabricmanager_follows_driver(fabricmanager: str, driver: str):
    """
    Install Fabric Manager at the version of the installed driver where it is another
    (templates/nvidia_driver/fabricmanager-version.sh): it refuses to start otherwise.

    + fabricmanager: Fabric Manager's package
    + driver: the package whose version is the driver's
    """
    installed = host.get_fact(DebPackages) or {}
    want = {_upstream(v) for v in installed.get(driver) or ()}
    have = {_upstream(v) for v in installed.get(fabricmanager) or ()}
    if want and want == have:
        host.noop(f"{fabricmanager} {', '.join(sorted(have))}, the driver's version")
        return
    yield script_command("nvidia_driver/fabricmanager-version.sh", driver, fabricmanager)


@operation()
def persistence_mode_kept():
    """
    Where the packaged nvidia-persistenced unit runs `--no-persistence-mode` (Ubuntu's),
    a drop-in runs it without (templates/nvidia_driver/persistence-mode.sh); decided from
    the unit's text once the driver's packages are installed.
    """
    if planning():
        host.noop("the packaged nvidia-persistenced unit is read once the driver is installed")
        return
    unit = host.get_fact(PersistencedUnit, unit=f"{PERSISTENCED_UNIT}.service",
                         dropin=PERSISTENCE_DROPIN)
    wanted = persistence_dropin(unit["exec"])
    if unit["dropin"] == wanted:
        host.noop(f"{unit['unit'] or PERSISTENCED_UNIT}: persistence mode "
                  + ("kept on by the drop-in" if wanted else "on as packaged"))
        return
    yield script_command("nvidia_driver/persistence-mode.sh", f"{PERSISTENCED_UNIT}.service",
                         PERSISTENCE_DROPIN, wanted or "")


@operation()
def verify_persistence(gpu_count: int):
    """
    Fail unless every GPU is in persistence mode (nvidia_persistence_mode: the driver stays
    loaded between jobs).

    + gpu_count: GPUs the inventory says the host has
    """
    if planning():
        host.noop("persistence mode is checked after nvidia-persistenced runs")
        return
    gpus = host.get_fact(NvidiaGpus)
    off = [str(g["index"]) for g in gpus["gpus"] if not g["persistence_mode"]]
    if not gpus["working"] or off:
        which = f"GPU {', '.join(off)}" if off else "no GPU answers"
        yield fail_command(f"nvidia_persistence_mode: persistence mode is off ({which}; "
                           "nvidia-smi -q: Persistence Mode Disabled); check "
                           f"`systemctl status {PERSISTENCED_UNIT}` and its ExecStart")
        return
    host.noop(f"persistence mode on {len(gpus['gpus'])} of {gpu_count} GPUs")


@operation()
def fabricmanager_started(modules: list[str] | None = None, modules_package: str = ""):
    """
    Enable and start Fabric Manager where it is not running; a start that fails stops the
    host here, named (templates/nvidia_driver/fabricmanager.sh): without it CUDA does not
    initialise, and Docker waits for it at every boot.

    + modules: kernel modules loaded first where they are not loaded (ib_umad on NVLink 5
      boards); a running kernel without one, or one that will not load, stops the host
    + modules_package: the package that ships them, `-$(uname -r)` appended, named in that
      line ('' the kernel's own; Ubuntu: linux-modules-extra)
    """
    unit = f"{FABRICMANAGER_UNIT}.service"
    running = (host.get_fact(SystemdStatus, services=unit) or {}).get(unit)
    enabled = (host.get_fact(SystemdEnabled, services=unit) or {}).get(unit)
    if running and enabled:
        host.noop(f"{unit} running")
        return
    package = ["-p", modules_package] if modules and modules_package else []
    yield script_command("nvidia_driver/fabricmanager.sh", *package, FABRICMANAGER_UNIT,
                         *(modules or []))


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
