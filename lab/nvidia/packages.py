"""The lab's stand-in NVIDIA packages: what each .deb contains, and building them.

Package names, versions and dependencies are those of NVIDIA's repositories; the
contents are the stand-ins of ``lab/nvidia/standins`` (Python 3 / sh), clearly
described as lab stand-ins in every control file.

Per repository (see lab/nvidia/repo.py for the layout):

- toolkit: the NVIDIA Container Toolkit, TOOLKIT_VERSIONS;
- debian12 (NVIDIA's CUDA repository for Debian 12): the branch in the names, up to 580:
  ``cuda-drivers-<branch>`` (proprietary modules), ``nvidia-open-<branch>`` (open
  modules), ``nvidia-fabricmanager-<branch>``, and ``nvidia-persistenced``;
- debian13 (its repository for Debian 13): 590 and later, no branch in the names:
  ``nvidia-driver-pinning-<branch>`` holds the branch; ``nvidia-driver-cuda`` (nvidia-smi)
  with ``nvidia-kernel-open-dkms`` or ``nvidia-kernel-dkms``, ``nvidia-persistenced``,
  ``nvidia-fabricmanager``;
- kernel (the Debian archive's headers): ``linux-headers-<kernel>`` for the kernel the lab
  hosts run (the building machine's: lab hosts are containers sharing its kernel), and
  ``mokutil`` (Secure Boot's state and MOK keys as the lab simulates them);
- updates (what arrives later, served apart so that a fresh deploy installs what it always
  did; a test enables them on a host, see ``update_packages``): the next 590 driver
  (UPDATE_VERSION) for debian13, and the next kernel of the running one's flavour
  (``next_kernel``): ``linux-image-<next>``, ``linux-headers-<next>`` and the flavour's
  meta-packages at its version.

The packages that carry the kernel module build it with the lab's DKMS stand-in in
postinst, only where the running kernel's headers are installed (they only recommend
them, as NVIDIA's do through dkms).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

STANDINS = Path(__file__).resolve().parent / "standins"

# 1.17.x: the runtime's "auto" mode is legacy (the prestart hook); from 1.18.0 it is
# jit-cdi (CDI edits runc knows about), see standins/nvidia_container_runtime.py
TOOLKIT_VERSIONS = ("1.17.8", "1.18.0", "1.18.1", "1.18.2", "1.19.1")
# debian12: cuda-drivers-<branch> of every branch; open modules, Fabric Manager and
# nvidia-persistenced of OPEN_BRANCH
DRIVER_BRANCHES = {"550": "550.163.01", "570": "570.172.08"}
OPEN_BRANCH = "570"
# debian13: the 590 scheme (no branch in the names but the pinning package's)
PINNED_BRANCH = "590"
PINNED_VERSION = "590.44.01"
PINNED_PACKAGES = ("nvidia-driver-cuda", "nvidia-kernel-open-dkms", "nvidia-kernel-dkms",
                   "nvidia-persistenced", "nvidia-fabricmanager")
# the in-branch release after PINNED_VERSION in NVIDIA's debian13 repository (both are
# there upstream: NVIDIA never prunes); the lab serves it from its updates tree only
UPDATE_VERSION = "590.48.01"
# what dkms recommends (Debian's dkms package): never the lab's headers package, so that
# apt does not bring the running kernel's headers by itself
HEADERS_RECOMMENDS = "linux-headers-amd64 | linux-headers-generic"
DEB_REVISION = "1"
ARCH = "amd64"
MAINTAINER = "Fleet lab <lab@localhost>"
MTIME = 1_735_689_600  # 2025-01-01, for reproducible packages

COMMON_BEGIN = "# fleetlab:common-begin"
COMMON_END = "# fleetlab:common-end"


def deb_version(upstream: str) -> str:
    return f"{upstream}-{DEB_REVISION}"


@dataclass
class Package:
    name: str
    version: str  # Debian version, e.g. 1.17.8-1
    summary: str
    description: str
    section: str = "utils"
    arch: str = ARCH
    depends: list[str] = field(default_factory=list)
    recommends: list[str] = field(default_factory=list)
    provides: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    replaces: list[str] = field(default_factory=list)
    homepage: str = ""
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # path -> (data, mode)
    symlinks: dict[str, str] = field(default_factory=dict)  # path -> target
    conffiles: list[str] = field(default_factory=list)  # paths among files
    scripts: dict[str, str] = field(default_factory=dict)  # postinst/postrm -> text

    @property
    def filename(self) -> str:
        return f"{self.name}_{self.version}_{self.arch}.deb"

    def control(self) -> str:
        size = sum(math.ceil(len(data) / 1024) for data, _ in self.files.values())
        lines = [
            f"Package: {self.name}",
            f"Version: {self.version}",
            f"Architecture: {self.arch}",
            f"Maintainer: {MAINTAINER}",
            f"Installed-Size: {size}",
        ]
        for key, values in (("Depends", self.depends), ("Recommends", self.recommends),
                            ("Provides", self.provides), ("Conflicts", self.conflicts),
                            ("Replaces", self.replaces)):
            if values:
                lines.append(f"{key}: {', '.join(values)}")
        lines += [f"Section: {self.section}", "Priority: optional"]
        if self.homepage:
            lines.append(f"Homepage: {self.homepage}")
        lines.append(f"Description: {self.summary} (fleet lab stand-in)")
        for paragraph in self.description.strip().split("\n\n"):
            if not lines[-1].startswith("Description:"):
                lines.append(" .")
            lines += [f" {line}" for line in paragraph.strip().splitlines()]
        return "\n".join(lines) + "\n"


def render_standin(source: str, *, toolkit_version: str | None = None,
                   driver_version: str | None = None, package: str = "",
                   values: dict[str, str] | None = None) -> str:
    """A stand-in with the shared code inlined and build-time values filled in.

    VALUES fills further ``@NAME@`` placeholders; a shell script or unit left with one
    is an error (the Python stand-ins keep theirs where a value does not apply)."""
    text = (STANDINS / source).read_text()
    if COMMON_BEGIN in text:
        head, rest = text.split(COMMON_BEGIN, 1)
        _, tail = rest.split(COMMON_END, 1)
        common = (STANDINS / "fleetlab_common.py").read_text()
        text = (f"{head}# ---- shared fleet lab code (lab/nvidia/standins/fleetlab_common.py)\n"
                f"{common}# ---- end of shared code{tail}")
    if toolkit_version:
        text = text.replace("@FLEETLAB_TOOLKIT_VERSION@", toolkit_version)
    if driver_version:
        text = text.replace("@FLEETLAB_DRIVER_VERSION@", driver_version)
    text = text.replace("@PACKAGE@", package)
    for name, value in (values or {}).items():
        text = text.replace(f"@{name}@", value)
    if source.endswith(".py"):
        compile(text, source, "exec")
    elif re.search(r"@[A-Z][A-Z_]*@", text):
        raise ValueError(f"{source}: placeholder left: {re.search(r'@[A-Z][A-Z_]*@', text)[0]}")
    return text


def _readme(package: str, what: str) -> bytes:
    return (
        f"{package} -- fleet lab stand-in\n\n"
        "This package is NOT NVIDIA software. It is part of the ollama-fleet lab, which\n"
        "simulates GPU servers without GPUs: the package carries the real name and\n"
        "version so that deployments install it exactly as in production, and the\n"
        "programs in it behave as NVIDIA documents them, on simulated GPUs\n"
        "(/etc/fleetlab/gpus.json). There is no kernel driver and no device.\n\n"
        f"{what}\n"
    ).encode()


LAB_NOTE = ("This is NOT NVIDIA software: a stand-in of the ollama-fleet lab, which\n"
            "simulates GPU servers (no GPU, no kernel driver). It carries the real\n"
            "package name and version and behaves as NVIDIA documents on the\n"
            "simulated GPUs of /etc/fleetlab/gpus.json.")

TOOLKIT_HOME = "https://github.com/NVIDIA/nvidia-container-toolkit"
# the lab's systemd generator (systemd runs generators at boot and at every daemon-reload)
RELOAD_GENERATOR = "/usr/lib/systemd/system-generators/fleetlab-nvidia-daemon-reload"


def toolkit_packages(upstream: str) -> list[Package]:
    v = deb_version(upstream)

    def script(source: str, package: str) -> tuple[bytes, int]:
        return render_standin(source, toolkit_version=upstream, package=package).encode(), 0o755

    lib = Package(
        "libnvidia-container1", v, "NVIDIA container runtime library",
        "Marker standing for libnvidia-container.so.1 (no library code).\n\n" + LAB_NOTE,
        section="libs", homepage="https://github.com/NVIDIA/libnvidia-container",
        files={"/usr/lib/fleetlab/libnvidia-container.version": (f"{upstream}\n".encode(), 0o644)},
    )
    tools = Package(
        "libnvidia-container-tools", v, "NVIDIA container runtime library (command-line tools)",
        "nvidia-container-cli stand-in: --version and info.\n\n" + LAB_NOTE,
        homepage="https://github.com/NVIDIA/libnvidia-container",
        depends=[f"libnvidia-container1 (= {v})", "python3"],
        files={"/usr/bin/nvidia-container-cli":
               script("nvidia_container_cli.py", "libnvidia-container-tools")},
    )
    base = Package(
        "nvidia-container-toolkit-base", v, "NVIDIA Container Toolkit Base",
        "nvidia-ctk (runtime configure, cdi generate/list) and nvidia-container-runtime\n"
        "stand-ins.\n\n" + LAB_NOTE,
        homepage=TOOLKIT_HOME, depends=["python3"],
        files={
            "/usr/bin/nvidia-ctk": script("nvidia_ctk.py", "nvidia-container-toolkit-base"),
            "/usr/bin/nvidia-container-runtime":
                script("nvidia_container_runtime.py", "nvidia-container-toolkit-base"),
        },
    )
    def unit(source: str) -> tuple[bytes, int]:
        return render_standin(source, toolkit_version=upstream,
                              package="nvidia-container-toolkit").encode(), 0o644

    toolkit = Package(
        "nvidia-container-toolkit", v, "NVIDIA Container toolkit",
        "nvidia-container-runtime-hook stand-in, which dockerd runs as a prestart hook\n"
        "for containers that request GPUs; and, standing for systemd, what a\n"
        "`systemctl daemon-reload` does to containers whose devices the hook injected\n"
        "(a generator, fleetlab-nvidia-device-cgroup.path and its service).\n\n" + LAB_NOTE,
        homepage=TOOLKIT_HOME,
        depends=[f"nvidia-container-toolkit-base (= {v})",
                 "libnvidia-container-tools (>= 1.17.8-1)",
                 "libnvidia-container-tools (<< 2.0.0)", "python3"],
        files={"/usr/bin/nvidia-container-runtime-hook":
               script("nvidia_container_runtime_hook.py", "nvidia-container-toolkit"),
               RELOAD_GENERATOR: script("nvidia-daemon-reload-generator.sh",
                                        "nvidia-container-toolkit"),
               "/usr/lib/fleetlab/nvidia-device-cgroup-reset":
               script("nvidia_device_cgroup_reset.py", "nvidia-container-toolkit"),
               "/usr/lib/systemd/system/fleetlab-nvidia-device-cgroup.path":
               unit("fleetlab-nvidia-device-cgroup.path"),
               "/usr/lib/systemd/system/fleetlab-nvidia-device-cgroup.service":
               unit("fleetlab-nvidia-device-cgroup.service")},
        scripts={"postinst": render_standin("nvidia-container-toolkit.postinst",
                                            package="nvidia-container-toolkit")},
    )
    for pkg in (lib, tools, base, toolkit):
        pkg.files[f"/usr/share/doc/{pkg.name}/README.fleetlab"] = (
            _readme(pkg.name, pkg.description.split("\n\n")[0]), 0o644)
    return [lib, tools, base, toolkit]


CUDA_HOME = "https://developer.nvidia.com/cuda-downloads"


def _driver_scripts(name: str, upstream: str, *, dkms: str = "", unit: str = "",
                    reboot_note: bool = False) -> dict[str, str]:
    """postinst/postrm of a driver package: DKMS ("open"/"proprietary": the package
    carries the module), UNIT to enable for the next boot, the reboot note."""
    values = {"FLEETLAB_DKMS": "yes" if dkms else "no", "FLEETLAB_UNIT": unit,
              "FLEETLAB_REBOOT_NOTE": "yes" if reboot_note else "no"}
    # prerm: what dh_dkms's prerm does (the module's version out of every kernel)
    return {script: render_standin(f"nvidia.{script}", driver_version=upstream,
                                   package=name, values=values)
            for script in ("postinst", "postrm", *(("prerm",) if dkms else ()))}


# dkms's kernel hooks (Debian's dkms installs one script under both names)
KERNEL_HOOKS = ("/etc/kernel/postinst.d/dkms", "/etc/kernel/header_postinst.d/dkms")


def _module_files(name: str, upstream: str, flavour: str) -> dict[str, tuple[bytes, int]]:
    """The lab's DKMS stand-in for a package carrying the FLAVOUR kernel module, with
    dkms's kernel hooks, which build it for a kernel (or headers) installed later."""
    script = render_standin("nvidia-dkms.sh", driver_version=upstream, package=name,
                            values={"FLEETLAB_MODULE_FLAVOUR": flavour})
    hook = render_standin("dkms-kernel-hook.sh", package=name).encode()
    return {"/usr/lib/fleetlab/nvidia-dkms": (script.encode(), 0o755),
            **{path: (hook, 0o755) for path in KERNEL_HOOKS},
            f"/usr/src/nvidia-{upstream}/dkms.conf": (
                (f"# fleet lab stand-in (not NVIDIA's module source; nothing is compiled)\n"
                 f'PACKAGE_NAME="nvidia"\nPACKAGE_VERSION="{upstream}"\n'
                 f'BUILT_MODULE_NAME[0]="nvidia"\nDEST_MODULE_LOCATION[0]="/updates/dkms"\n'
                 f'AUTOINSTALL="yes"\n# flavour: {flavour} kernel modules\n').encode(), 0o644)}


def _userspace_files(name: str, upstream: str) -> dict[str, tuple[bytes, int]]:
    """nvidia-smi, the library marker, and the simulated module loading at boot."""
    def render(source: str) -> bytes:
        return render_standin(source, driver_version=upstream, package=name).encode()

    return {
        "/usr/bin/nvidia-smi": (render("nvidia_smi.py"), 0o755),
        "/usr/lib/fleetlab/nvidia-kmod-load": (render("nvidia_kmod_load.py"), 0o755),
        "/usr/lib/systemd/system/fleetlab-nvidia-kmod.service":
            (render("fleetlab-nvidia-kmod.service"), 0o644),
        "/usr/lib/fleetlab/libnvidia-ml.version": (f"{upstream}\n".encode(), 0o644),
    }


def _with_readme(pkg: Package, what: str) -> Package:
    pkg.files[f"/usr/share/doc/{pkg.name}/README.fleetlab"] = (_readme(pkg.name, what), 0o644)
    return pkg


MODULE_NOTE = ("The package carries the kernel module ({flavour} modules): its postinst has\n"
               "the lab's DKMS stand-in build it for the running kernel, only where that\n"
               "kernel's headers (linux-headers-$(uname -r), recommended, not required)\n"
               "are installed; without them the build is skipped, the install succeeds\n"
               "and the module is missing at the next boot. A newer kernel installed is\n"
               "built for too, and so is one installed later (dkms's kernel hooks).")
BOOT_NOTE = ("nvidia-smi, and fleetlab-nvidia-kmod.service, which stands for the kernel\n"
             "loading the module at boot. The package enables that service but does not\n"
             "start it: nvidia-smi works after the next reboot.")


def driver_package(branch: str) -> Package:
    """cuda-drivers-<branch> of NVIDIA's debian12 repository (proprietary modules)."""
    upstream = DRIVER_BRANCHES[branch]
    name = f"cuda-drivers-{branch}"
    what = ("Simulated NVIDIA driver, proprietary kernel modules:\n" + BOOT_NOTE + "\n\n"
            + MODULE_NOTE.format(flavour="proprietary"))
    pkg = Package(
        name, deb_version(upstream), f"CUDA Driver meta-package, branch {branch}",
        what + "\n\n" + LAB_NOTE, homepage=CUDA_HOME,
        depends=["python3", "nvidia-persistenced"], recommends=[HEADERS_RECOMMENDS],
        provides=["cuda-drivers"], conflicts=["cuda-drivers", "nvidia-open"],
        replaces=["cuda-drivers", "nvidia-open"],
        files={**_userspace_files(name, upstream),
               **_module_files(name, upstream, "proprietary")},
        scripts=_driver_scripts(name, upstream, dkms="proprietary",
                                unit="fleetlab-nvidia-kmod.service", reboot_note=True),
    )
    return _with_readme(pkg, what)


def open_package(branch: str = OPEN_BRANCH) -> Package:
    """nvidia-open-<branch> of NVIDIA's debian12 repository (open kernel modules)."""
    upstream = DRIVER_BRANCHES[branch]
    name = f"nvidia-open-{branch}"
    what = ("Simulated NVIDIA driver, open kernel modules:\n" + BOOT_NOTE + "\n\n"
            + MODULE_NOTE.format(flavour="open"))
    pkg = Package(
        name, deb_version(upstream), f"NVIDIA driver with open kernel modules, branch {branch}",
        what + "\n\n" + LAB_NOTE, homepage=CUDA_HOME,
        depends=["python3", "nvidia-persistenced"], recommends=[HEADERS_RECOMMENDS],
        provides=["nvidia-open"], conflicts=["nvidia-open", "cuda-drivers"],
        replaces=["nvidia-open", "cuda-drivers"],
        files={**_userspace_files(name, upstream), **_module_files(name, upstream, "open")},
        scripts=_driver_scripts(name, upstream, dkms="open",
                                unit="fleetlab-nvidia-kmod.service", reboot_note=True),
    )
    return _with_readme(pkg, what)


def persistenced_package(upstream: str) -> Package:
    name = "nvidia-persistenced"
    what = ("nvidia-persistenced stand-in and its unit, enabled for the next boot: it needs\n"
            "the loaded driver, keeps persistence mode on for every GPU while it runs and\n"
            "turns it off when stopped.")
    pkg = Package(
        name, deb_version(upstream), "daemon to maintain persistent software state in the "
        "NVIDIA driver", what + "\n\n" + LAB_NOTE,
        homepage="https://github.com/NVIDIA/nvidia-persistenced", depends=["python3"],
        files={
            "/usr/bin/nvidia-persistenced": (render_standin(
                "nvidia_persistenced.py", driver_version=upstream, package=name).encode(),
                0o755),
            "/usr/lib/systemd/system/nvidia-persistenced.service": (render_standin(
                "nvidia-persistenced.service", driver_version=upstream,
                package=name).encode(), 0o644),
        },
        scripts=_driver_scripts(name, upstream, unit="nvidia-persistenced.service"),
    )
    return _with_readme(pkg, what)


FM_CONFIG = "/usr/share/nvidia/nvswitch/fabricmanager.cfg"


def fabricmanager_package(name: str, upstream: str) -> Package:
    what = ("nv-fabricmanager stand-in, nvidia-fabricmanager.service (enabled, not\n"
            "started) and its config file. It starts only with the driver of its own\n"
            "version loaded, on a board with NVSwitch (HGX/DGX), and on an NVLink 5 board\n"
            "(HGX B100/B200/B300) only where nvlsm is installed.")

    def render(source: str) -> bytes:
        return render_standin(source, driver_version=upstream, package=name).encode()

    # the same files under the other scheme's name
    conflicts = [n for n in ("nvidia-fabricmanager", f"nvidia-fabricmanager-{OPEN_BRANCH}")
                 if n != name]
    pkg = Package(
        name, deb_version(upstream), "Fabric Manager for NVSwitch based systems",
        what + "\n\n" + LAB_NOTE, homepage="https://docs.nvidia.com/datacenter/tesla/",
        depends=["python3"], conflicts=conflicts, replaces=conflicts,
        files={
            "/usr/bin/nv-fabricmanager": (render("nv_fabricmanager.py"), 0o755),
            "/usr/lib/systemd/system/nvidia-fabricmanager.service":
                (render("nvidia-fabricmanager.service"), 0o644),
            FM_CONFIG: (render("fabricmanager.cfg"), 0o644),
        },
        conffiles=[FM_CONFIG],
        scripts=_driver_scripts(name, upstream, unit="nvidia-fabricmanager.service"),
    )
    return _with_readme(pkg, what)


# NVIDIA's NVLink Subnet Manager, in the CUDA repositories beside Fabric Manager (its own
# version scheme, not the driver's): Fabric Manager on an NVLink 5 board (HGX B100/B200/
# B300) starts only where it is installed
NVLSM_VERSION = "2025.10.14"
NVLSM_BINARY = "/opt/nvidia/nvlsm/sbin/nvlsm"
NVLSM_CONFIG = "/usr/share/nvidia/nvlsm/nvlsm.conf"


def nvlsm_package(upstream: str = NVLSM_VERSION) -> Package:
    """nvlsm: the binary whose presence Fabric Manager's start checks on NVLink 5 boards,
    and its config file. Nothing here manages a subnet: the lab has no NVSwitch."""
    what = ("nvlsm stand-in (" + NVLSM_BINARY + ") and its config file. On an NVLink 5\n"
            "board (HGX B100/B200/B300) Fabric Manager's start requires it and starts it\n"
            "first; without it Fabric Manager refuses to start.")
    binary = ("#!/bin/sh\n"
              "# Fleet lab stand-in for NVIDIA's NVLink Subnet Manager (package nvlsm);\n"
              "# not NVIDIA software: there is no NVSwitch to manage in the lab.\n"
              f'echo "OpenSM {upstream} (fleet lab stand-in, not NVIDIA software)"\n'
              "exit 0\n")
    config = ("# NVLink Subnet Manager configuration -- fleet lab stand-in (not NVIDIA "
              "software)\nlog_file /var/log/nvlsm.log\n")
    pkg = Package(
        "nvlsm", deb_version(upstream), "NVIDIA NVLink Subnet Manager",
        what + "\n\n" + LAB_NOTE, section="net", homepage=CUDA_HOME,
        files={NVLSM_BINARY: (binary.encode(), 0o755), NVLSM_CONFIG: (config.encode(), 0o644)},
        conffiles=[NVLSM_CONFIG],
    )
    return _with_readme(pkg, what)


PINNING_FILE = "/etc/apt/preferences.d/nvidia-driver-pin"  # the path NVIDIA's packages use


def pinning_text(branch: str = PINNED_BRANCH) -> str:
    return (f"Explanation: nvidia-driver-pinning-{branch} -- fleet lab "
            "stand-in (not NVIDIA software)\n"
            f"Explanation: holds NVIDIA's driver packages, whose names carry no branch, on "
            f"branch {branch}\n"
            f"Package: {' '.join(PINNED_PACKAGES)}\n"
            f"Pin: version {branch}.*\n"
            "Pin-Priority: 1000\n")


def pinning_package(branch: str = PINNED_BRANCH, upstream: str = PINNED_VERSION) -> Package:
    """nvidia-driver-pinning-<branch>, built with every release of the branch (its
    content is the same: the branch's versions)."""
    name = f"nvidia-driver-pinning-{branch}"
    path = PINNING_FILE
    what = (f"apt preferences ({path}) pinning NVIDIA's driver packages to\n"
            f"branch {branch}: {', '.join(PINNED_PACKAGES)},\n"
            f"version {branch}.*, priority 1000.")
    pkg = Package(
        name, deb_version(upstream), f"APT driver pinning file for driver branch {branch}",
        what + "\n\n" + LAB_NOTE, arch="all", section="admin", homepage=CUDA_HOME,
        files={path: (pinning_text(branch).encode(), 0o644)}, conffiles=[path],
    )
    return _with_readme(pkg, what)


def pinned_driver_packages(upstream: str = PINNED_VERSION) -> list[Package]:
    """NVIDIA's debian13 repository: branch 590, no branch in the names (release
    UPSTREAM of the branch)."""
    v = deb_version(upstream)
    cuda_what = ("Simulated NVIDIA driver for compute-only (headless) systems:\n" + BOOT_NOTE
                 + "\n\nThe kernel module comes from nvidia-kernel-open-dkms or "
                 "nvidia-kernel-dkms.")
    cuda = _with_readme(Package(
        "nvidia-driver-cuda", v, "NVIDIA driver CUDA integration components",
        cuda_what + "\n\n" + LAB_NOTE, homepage=CUDA_HOME,
        depends=["python3", f"nvidia-kernel-open-dkms (= {v}) | nvidia-kernel-dkms (= {v})"],
        files=_userspace_files("nvidia-driver-cuda", upstream),
        scripts=_driver_scripts("nvidia-driver-cuda", upstream,
                                unit="fleetlab-nvidia-kmod.service", reboot_note=True),
    ), cuda_what)
    kernels = []
    for name, flavour, other, summary in (
            ("nvidia-kernel-open-dkms", "open", "nvidia-kernel-dkms",
             "NVIDIA binary kernel module DKMS source (open kernel modules)"),
            ("nvidia-kernel-dkms", "proprietary", "nvidia-kernel-open-dkms",
             "NVIDIA binary kernel module DKMS source")):
        what = MODULE_NOTE.format(flavour=flavour)
        kernels.append(_with_readme(Package(
            name, v, summary, what + "\n\n" + LAB_NOTE, section="kernel", homepage=CUDA_HOME,
            recommends=[HEADERS_RECOMMENDS], conflicts=[other], replaces=[other],
            files=_module_files(name, upstream, flavour),
            scripts=_driver_scripts(name, upstream, dkms=flavour),
        ), what))
    return [pinning_package(PINNED_BRANCH, upstream), cuda, *kernels,
            persistenced_package(upstream),
            fabricmanager_package("nvidia-fabricmanager", upstream), nvlsm_package()]


def branched_driver_packages() -> list[Package]:
    """NVIDIA's debian12 repository: the branch in the names."""
    upstream = DRIVER_BRANCHES[OPEN_BRANCH]
    return [*(driver_package(b) for b in DRIVER_BRANCHES), open_package(OPEN_BRANCH),
            fabricmanager_package(f"nvidia-fabricmanager-{OPEN_BRANCH}", upstream),
            persistenced_package(upstream), nvlsm_package()]


def kernel_package_name(kernel: str, kind: str = "headers") -> str:
    """linux-<kind>-<kernel> (headers, image), in the characters a Debian package name may
    have."""
    return f"linux-{kind}-" + re.sub(r"[^a-z0-9.+-]", "-", kernel.lower())


def kernel_flavour(kernel: str) -> str:
    """The release's words after its version, numbers left out (Debian's naming of the
    flavour meta-packages: 6.1.0-28-cloud-amd64 is cloud-amd64)."""
    return "-".join(w for w in kernel.split("-")[1:] if not w.isdigit()) or "lab"


def kernel_package_version(kernel: str) -> str:
    """The lab's Debian version of KERNEL's packages: its numeric version and, as the
    revision, its ABI number where the release has one (6.1.0-28-cloud-amd64: 6.1.0-28),
    else 1 (6.18.44-fc-v1272: 6.18.44-1). The next kernel's version is always higher."""
    numeric = re.match(r"\d+(\.\d+)*", kernel)
    abi = next((w for w in kernel.split("-")[1:] if w.isdigit()), "1")
    return f"{numeric[0] if numeric else '0'}-{abi}"


def next_kernel(kernel: str | None = None) -> str:
    """The lab's next kernel of KERNEL's flavour, as the Debian archive's next one would be
    named: its ABI number one up where the release has one (6.1.0-28-cloud-amd64 ->
    6.1.0-29-cloud-amd64), else the last number of its version (6.18.44-fc-v1272 ->
    6.18.45-fc-v1272, 6.12.48+deb13-amd64 -> 6.12.49+deb13-amd64)."""
    kernel = kernel or os.uname().release
    words = kernel.split("-")
    for i, word in enumerate(words[1:], 1):
        if word.isdigit():
            words[i] = str(int(word) + 1)
            return "-".join(words)
    m = re.match(r"^(.*?)(\d+)(\D*)$", words[0].split("+")[0])
    if m is None:
        raise ValueError(f"{kernel}: no version number to count up")
    rest = words[0][len(words[0].split("+")[0]):]
    words[0] = f"{m[1]}{int(m[2]) + 1}{m[3]}{rest}"
    return "-".join(words)


def headers_package(kernel: str | None = None, *, with_image: bool = False) -> Package:
    """linux-headers-<kernel>: stands for the Debian archive's headers of a kernel; what
    DKMS needs to build the NVIDIA module. WITH_IMAGE: it depends on the kernel's image at
    the same version, as Debian's do; the running kernel's headers do not (the lab hosts
    run the machine's own kernel, which no package installed)."""
    kernel = kernel or os.uname().release
    version = kernel_package_version(kernel)
    src = f"/usr/src/linux-headers-{kernel}"
    what = (f"Stands for the headers of kernel {kernel}:\n"
            f"/lib/modules/{kernel}/build, a link to\n"
            f"{src},\n"
            "with an include directory, which is what dkms checks for (one header, no\n"
            "others). Its postinst runs the /etc/kernel/header_postinst.d hooks, as\n"
            "Debian's does: dkms's builds the installed NVIDIA module for this kernel.")
    note = ("This is NOT Debian's package: a stand-in of the ollama-fleet lab (one\n"
            "placeholder header). It carries the name apt looks for on a host running\n"
            "this kernel.")
    name = kernel_package_name(kernel)
    readme = (f"{name} -- fleet lab stand-in\n\n{note}\n\n{what}\n").encode()
    return Package(
        name, version, f"Header files for Linux {kernel}", what + "\n\n" + note,
        section="kernel",
        depends=[f"{kernel_package_name(kernel, 'image')} (= {version})"] if with_image else [],
        files={f"{src}/README.fleetlab": (readme, 0o644),
               f"{src}/include/generated/utsrelease.h":
                   (f'#define UTS_RELEASE "{kernel}"\n'.encode(), 0o644)},
        symlinks={f"/lib/modules/{kernel}/build": src},
        scripts={"postinst": render_standin("linux-headers.postinst",
                                            values={"FLEETLAB_KERNEL": kernel})},
    )


def image_package(kernel: str) -> Package:
    """linux-image-<kernel>: stands for the Debian archive's kernel image: /boot/vmlinuz-K
    (which the lab's boot picks as GRUB would: the newest), /boot/config-K (how dkms finds
    the newest kernel), /lib/modules/K; its postinst runs the /etc/kernel/postinst.d hooks
    as Debian's does (dkms's builds the NVIDIA module for K where K's headers are there)."""
    version = kernel_package_version(kernel)
    what = (f"Stands for the image of kernel {kernel}: /boot/vmlinuz-{kernel} (no kernel\n"
            f"in it), /boot/config-{kernel} and /lib/modules/{kernel}. A lab host boots\n"
            "the newest /boot/vmlinuz-* (as GRUB's default entry): `uname -r` says so\n"
            "after its next reboot. Its postinst runs the /etc/kernel/postinst.d hooks\n"
            "with the version and the image's path, as Debian's does.")
    note = ("This is NOT Debian's package: a stand-in of the ollama-fleet lab. Lab hosts\n"
            "are containers: the kernel that runs is the machine's, whatever they boot.")
    name = kernel_package_name(kernel, "image")
    text = f"fleet lab stand-in of Linux {kernel}: not a kernel\n".encode()
    pkg = Package(
        name, version, f"Linux {kernel} kernel image", what + "\n\n" + note,
        section="kernel",
        files={f"/boot/vmlinuz-{kernel}": (text, 0o644),
               f"/boot/config-{kernel}": (b"# fleet lab stand-in: no kernel configuration\n",
                                          0o644),
               f"/boot/System.map-{kernel}": (text, 0o644),
               f"/lib/modules/{kernel}/modules.order": (b"", 0o644)},
        scripts={"postinst": render_standin("linux-image.postinst",
                                            values={"FLEETLAB_KERNEL": kernel})},
    )
    pkg.files[f"/usr/share/doc/{pkg.name}/README.fleetlab"] = (
        f"{pkg.name} -- fleet lab stand-in\n\n{note}\n\n{what}\n".encode(), 0o644)
    return pkg


def flavour_package(kernel: str | None = None, kind: str = "headers") -> Package:
    """linux-<kind>-<flavour> (headers, image): stands for Debian's meta-package that
    follows the kernel's flavour (`linux-headers-amd64`, `linux-image-cloud-amd64`), at the
    version of KERNEL, the flavour's current kernel, on whose package it depends: each new
    kernel of the flavour comes with the meta-package's next version."""
    kernel = kernel or os.uname().release
    flavour = kernel_flavour(kernel)
    target = kernel_package_name(kernel, kind)
    what = f"Depends on {target}: the {kind} of the flavour's current kernel."
    note = "This is NOT Debian's package: a stand-in of the ollama-fleet lab."
    title = "Header files" if kind == "headers" else "Linux"
    pkg = Package(f"linux-{kind}-{flavour}", kernel_package_version(kernel),
                  f"{title} for the {flavour} kernel flavour (meta-package)",
                  what + "\n\n" + note, section="kernel", depends=[target])
    pkg.files[f"/usr/share/doc/{pkg.name}/README.fleetlab"] = (
        f"{pkg.name} -- fleet lab stand-in\n\n{note}\n\n{what}\n".encode(), 0o644)
    return pkg


MOKUTIL_VERSION = "0.7.2-1+fleetlab1"  # Debian 13's 0.7.2-1, told apart: a host picks it by version


def mokutil_package() -> Package:
    """mokutil: stands for the Debian archive's package (a Secure Boot machine has it:
    shim-signed depends on it). Answers --sb-state and --test-key from the lab's
    simulated firmware (/etc/fleetlab/secureboot, /etc/fleetlab/mok-enrolled/)."""
    what = ("mokutil stand-in: --sb-state says whether the lab switched Secure Boot on\n"
            "for this host (/etc/fleetlab/secureboot), --test-key whether a certificate\n"
            "is enrolled in MOK (/etc/fleetlab/mok-enrolled/), in mokutil's words.")
    note = "This is NOT Debian's package: a stand-in of the ollama-fleet lab (its mokutil)."
    pkg = Package(
        "mokutil", MOKUTIL_VERSION, "tools for manipulating machine owner keys",
        what + "\n\n" + note, section="admin", depends=["python3"],
        homepage="https://github.com/lcp/mokutil",
        files={"/usr/bin/mokutil": (render_standin(
            "mokutil.py", package="mokutil",
            values={"FLEETLAB_MOKUTIL_VERSION": MOKUTIL_VERSION}).encode(), 0o755)})
    pkg.files[f"/usr/share/doc/{pkg.name}/README.fleetlab"] = (
        f"{pkg.name} -- fleet lab stand-in\n\n{note}\n\n{what}\n".encode(), 0o644)
    return pkg


def all_packages(kernel: str | None = None) -> dict[str, list[Package]]:
    """Packages per repository: {"toolkit", "debian12", "debian13", "kernel"}."""
    toolkit = [p for v in TOOLKIT_VERSIONS for p in toolkit_packages(v)]
    return {"toolkit": toolkit, "debian12": branched_driver_packages(),
            "debian13": pinned_driver_packages(),
            "kernel": [headers_package(kernel), flavour_package(kernel),
                       mokutil_package()]}


def update_packages(kernel: str | None = None) -> dict[str, list[Package]]:
    """What arrives after a deploy, per repository of the lab's updates tree: "debian13",
    the branch's next release (UPDATE_VERSION, every 590-scheme package); "kernel", the
    next kernel of the running one's flavour (next_kernel): its image, its headers (which
    depend on the image, as Debian's) and the flavour's meta-packages at its version, so
    that `apt upgrade` (new packages allowed) brings it where linux-headers-<flavour> is
    installed, as the deploy leaves a DKMS host."""
    upcoming = next_kernel(kernel)
    return {"debian13": [p for p in pinned_driver_packages(UPDATE_VERSION) if p.name != "nvlsm"],
            "kernel": [image_package(upcoming), headers_package(upcoming, with_image=True),
                       flavour_package(upcoming), flavour_package(upcoming, "image")]}


def build_deb(pkg: Package, out_dir: Path) -> Path:
    """Build one .deb with dpkg-deb (files owned by root)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / pkg.filename
    with tempfile.TemporaryDirectory(prefix=f".{pkg.name}-", dir=out_dir) as tmp:
        root = Path(tmp) / "root"
        debian = root / "DEBIAN"
        debian.mkdir(parents=True)
        (debian / "control").write_text(pkg.control())
        if pkg.conffiles:
            (debian / "conffiles").write_text("".join(f"{c}\n" for c in pkg.conffiles))
        for name, text in pkg.scripts.items():
            (debian / name).write_text(text)
            (debian / name).chmod(0o755)
        for path, (data, mode) in pkg.files.items():
            dest = root / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            dest.chmod(mode)
        for path, link_target in pkg.symlinks.items():
            dest = root / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(link_target)
        for dirpath, dirnames, filenames in os.walk(root):
            os.chmod(dirpath, 0o755)  # noqa: S103 (a package's directory)
            for name in filenames + dirnames:
                os.utime(os.path.join(dirpath, name), (MTIME, MTIME), follow_symlinks=False)
            os.utime(dirpath, (MTIME, MTIME))
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(MTIME)}
        built = Path(tmp) / pkg.filename
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root),
                        str(built)], check=True, capture_output=True, text=True, env=env)
        shutil.move(str(built), target)
    return target
