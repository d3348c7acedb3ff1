"""What differs between the distributions the deploy supports: one table each, as data.

Like geerlingguy's setup-<OS> files keep OS differences in one place, every difference
lives here: for each vendor apt repository (Docker's, NVIDIA's CUDA repository, NVIDIA's
Container Toolkit repository) its URL, key, keyring, sources file and packages, and the
packages the distribution's own archive provides. The tasks look values up here; none of
them tests which OS it is on.

Values are shapes that `repository()` and `archive_packages()` fill in:
`{docker_repo_url}`, `{nvidia_driver_repo_url}` and `{nvidia_toolkit_repo_url}` are the
operator's knobs (tasks/kit/settings.py), `{distro}` (inside nvidia_driver_repo_url) is the
name NVIDIA's CUDA repository gives the distribution (`debian12`, `ubuntu2404`) and
`{nvidia_driver_repo_host}` that knob's host (an apt pin's origin); in package names
`{branch}` is the driver branch and `{version}` the toolkit version. The keyring's and
the sources file's extensions say their format, as they do to apt: `.asc` an armored key,
`.gpg` a dearmored one; `.sources` deb822, `.list` one-line entries.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pyinfra import host
from pyinfra.api import OperationError
from pyinfra.facts.server import LinuxDistribution

from ollama_fleet.tasks.kit.settings import Settings

DOCKER = "docker"
CUDA = "cuda"
TOOLKIT = "nvidia_container_toolkit"
# NVIDIA's CUDA repository where the driver comes from elsewhere (Ubuntu): nvlsm only
NVLSM = "nvlsm"

# The knob that, when set, replaces a repository's key URL (Docker's key has none).
KEY_URL_KNOBS = {CUDA: "nvidia_driver_gpgkey_url", NVLSM: "nvidia_driver_gpgkey_url",
                 TOOLKIT: "nvidia_toolkit_gpgkey_url"}

# NVIDIA's NVLink Subnet Manager: Fabric Manager on an NVLink 5 board (HGX B100/B200/
# B300) starts only with it (Fabric Manager user guide, "Systems Using Fourth Generation
# NVSwitches"). NVIDIA's CUDA repositories carry it (its own versions, not the driver's);
# Ubuntu's archive does not. It talks to the NVSwitches through InfiniBand management
# datagrams: the ib_umad kernel module must be loaded before Fabric Manager starts.
NVLSM_PACKAGE = "nvlsm"
NVLSM_MODULES = ("ib_umad",)


@dataclass(frozen=True)
class VendorRepository:
    """One vendor's apt repository on one distribution, as the deploy writes it."""

    url: str  # the sources entry's URI
    suite: str  # "/" for a flat repository
    key_url: str  # where the signing key is published (unless its knob is set)
    keyring: str  # the key on the host, named by signed-by
    sources_file: str
    packages: tuple[str, ...]  # what the deploy installs from it
    components: tuple[str, ...] = ()
    stale_sources: tuple[str, ...] = ()  # older sources files of the vendor (Signed-By conflicts)
    pin: str = ""  # an apt preferences stanza, if the repository needs one

    def repository_args(self) -> dict:
        """The arguments of `ollama_fleet.tasks.steps.packages.repository` for this repository."""
        return {"key_url": self.key_url, "keyring": self.keyring,
                "sources_file": self.sources_file, "uri": self.url, "suite": self.suite,
                "components": list(self.components), "pin": self.pin,
                "stale_sources": list(self.stale_sources)}


@dataclass(frozen=True)
class DriverPackages:
    """One way a distribution ships the NVIDIA driver, for the branches FIRST..LAST.

    Shapes: `{branch}` is the driver branch, `{kernel}` the running kernel (`uname -r`),
    `{flavour}` its flavour (`amd64`, `cloud-amd64`; Ubuntu `generic`, `generic-hwe-22.04`):
    the meta-packages that follow kernel upgrades, so the module is there after the next
    kernel's reboot too.
    """

    first: int  # the branches this scheme carries
    last: int
    pin: str  # installed first, holds the branch where the names do not ('' none)
    open: tuple[str, ...]  # the packages with the open kernel modules
    proprietary: tuple[str, ...]  # ... with the proprietary ones
    fabricmanager: str  # Fabric Manager of the same branch
    headers: str  # what the module is built against ('' precompiled: none)
    headers_meta: str = ""  # the headers of the kernels to come (their flavour's package)
    modules: str = ""  # "precompiled" or "dkms" where the knob chooses (Ubuntu); '' any
    # How the branch is kept while its own updates (and each new kernel's module) come in:
    # "pin" (the pin package's apt preferences), "hold" (`apt-mark hold` of the branch's
    # packages: their dependencies do not hold the branch otherwise) or "preferences" (an
    # apt preferences file of the deploy's pinning `branch_packages` to `{branch}.*`)
    keep_branch: str = "pin"
    branch_packages: tuple[str, ...] = ()  # what the apt preferences file pins to the branch
    # the package whose version is the driver's (open, proprietary): Fabric Manager follows it
    driver_version: tuple[str, str] = ("", "")


@dataclass(frozen=True)
class Distribution:
    """One supported distribution: its vendor repositories and its own archive's packages."""

    os_id: str  # os-release ID
    major: int
    codename: str  # os-release VERSION_CODENAME
    repositories: dict[str, VendorRepository]  # DOCKER, CUDA, TOOLKIT; absent: not used here
    archive: dict[str, tuple[str, ...]] = field(default_factory=dict)  # DOCKER
    drivers: tuple[DriverPackages, ...] = ()  # the driver's package schemes, by branch
    driver_source: str = ""  # where the driver comes from, for messages
    archive_components: tuple[str, ...] = ()  # components of the OS archive the driver needs
    ga_kernel: str = ""  # Ubuntu: the release's own kernel series; others are HWE kernels
    # the key and certificate (DER) DKMS signs modules with when none is configured (dkms's
    # prepare_mok: Ubuntu's update-secureboot-policy pair, else /var/lib/dkms/mok.*)
    dkms_mok: tuple[str, str] = ("/var/lib/dkms/mok.key", "/var/lib/dkms/mok.pub")
    # the branch installed when nvidia_driver_branch is not set: one the driver's source
    # carries as a supported (not transitional) branch
    default_branch: int = 580
    cuda_distro: str = ""  # NVIDIA's CUDA repository's name for it ('' os_id + major)
    # the repository nvlsm comes from on NVLink 5 boards (CUDA, or NVLSM where the driver
    # comes from the distribution)
    nvlsm_repository: str = CUDA
    # components of the OS archive Fabric Manager needs (Ubuntu: multiverse)
    fabricmanager_components: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.os_id} {self.major}"


# -- shared by every distribution ------------------------------------------------------

DOCKER_KEYRING = "/etc/apt/keyrings/docker.asc"
DOCKER_SOURCES = "/etc/apt/sources.list.d/docker.sources"
DOCKER_CE = ("docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin",
             "docker-compose-plugin")

CUDA_KEYRING = "/usr/share/keyrings/cuda-archive-keyring.gpg"
CUDA_SOURCES = "/etc/apt/sources.list.d/cuda.list"

# One generic repository for every distribution (FIELD.md: the toolkit's apt repository);
# its four packages pinned together.
TOOLKIT_REPOSITORY = VendorRepository(
    url="{nvidia_toolkit_repo_url}/stable/deb/$(ARCH)", suite="/",
    key_url="{nvidia_toolkit_repo_url}/gpgkey",
    keyring="/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg",
    sources_file="/etc/apt/sources.list.d/nvidia-container-toolkit.list",
    packages=("nvidia-container-toolkit={version}-1", "nvidia-container-toolkit-base={version}-1",
              "libnvidia-container-tools={version}-1", "libnvidia-container1={version}-1"),
    stale_sources=("/etc/apt/sources.list.d/nvidia-docker.list",),
)

# NVIDIA's CUDA repository for Debian (its driver installation guide, compute-only
# systems): up to 580 the branch is in the meta-package's name; from 590 the names
# carry none and `nvidia-driver-pinning-<branch>` holds the branch. The kernel module is
# built by DKMS against the running kernel's headers (only recommended by the packages).
# Nothing but a hold keeps these names on their branch's versions: they are held, Fabric
# Manager with them (both at the version installed together). DKMS still builds the held
# module for every new kernel whose headers come (the flavour's headers meta-package).
CUDA_BRANCHED = DriverPackages(
    first=550, last=579, pin="", open=("nvidia-open-{branch}",),
    proprietary=("cuda-drivers-{branch}",), fabricmanager="nvidia-fabricmanager-{branch}",
    headers="linux-headers-{kernel}", headers_meta="linux-headers-{flavour}",
    keep_branch="hold", driver_version=("nvidia-open-{branch}", "cuda-drivers-{branch}"))
# From 580 the meta-packages depend on `>=` versions: without the pin a branch-named one
# pulls the newest branch in (NVIDIA's guide: version locking, from 580). The pin names
# nvidia-fabricmanager too, so `apt upgrade` moves driver and Fabric Manager together
# within the branch: only the pin is held. Our own preferences file keeps Fabric Manager
# on the branch as well, whatever the pin names (not read from a real host here).
CUDA_PINNED = DriverPackages(
    first=580, last=999, pin="nvidia-driver-pinning-{branch}",
    open=("nvidia-driver-cuda", "nvidia-kernel-open-dkms", "nvidia-persistenced"),
    proprietary=("nvidia-driver-cuda", "nvidia-kernel-dkms", "nvidia-persistenced"),
    fabricmanager="nvidia-fabricmanager", headers="linux-headers-{kernel}",
    headers_meta="linux-headers-{flavour}", branch_packages=("nvidia-fabricmanager",),
    driver_version=("nvidia-driver-cuda", "nvidia-driver-cuda"))

# Ubuntu's GPU servers take Canonical's server packages from the archive: by default its
# signed precompiled modules for the running kernel (what `ubuntu-drivers install --gpgpu`
# picks; they load under Secure Boot and need no headers), or DKMS as an option.
# Nothing is held (tests/unit/fixtures/ubuntu/noble-nvidia-580-server.Packages): the flavour
# meta-package brings each new kernel's module, which needs `nvidia-kernel-common-<branch>
# (>= the version it was built with)`; the userspace packages depend on each other with `=`
# and Fabric Manager on `nvidia-kernel-common-<branch>-server-<version>`, so a hold anywhere
# keeps the next kernel's module (or Canonical's in-branch fixes) out. The names keep the
# branch; only a retired branch's transitional packages, whose versions are the next
# branch's, would move it: an apt preferences file pins these names to `{branch}.*`.
UBUNTU_BRANCH_PACKAGES = (
    "nvidia-headless-no-dkms-{branch}-server", "nvidia-headless-no-dkms-{branch}-server-open",
    "nvidia-headless-{branch}-server", "nvidia-headless-{branch}-server-open",
    "nvidia-dkms-{branch}-server", "nvidia-dkms-{branch}-server-open",
    "nvidia-kernel-source-{branch}-server", "nvidia-kernel-source-{branch}-server-open",
    "nvidia-kernel-common-{branch}-server", "nvidia-compute-utils-{branch}-server",
    "libnvidia-compute-{branch}-server", "libnvidia-cfg1-{branch}-server",
    "nvidia-utils-{branch}-server", "nvidia-fabricmanager-{branch}", "libnvidia-nscq-{branch}")
UBUNTU_PRECOMPILED = DriverPackages(
    first=550, last=999, pin="", modules="precompiled",
    open=("linux-modules-nvidia-{branch}-server-open-{kernel}",
          "linux-modules-nvidia-{branch}-server-open-{flavour}",
          "nvidia-headless-no-dkms-{branch}-server-open", "nvidia-utils-{branch}-server"),
    proprietary=("linux-modules-nvidia-{branch}-server-{kernel}",
                 "linux-modules-nvidia-{branch}-server-{flavour}",
                 "nvidia-headless-no-dkms-{branch}-server", "nvidia-utils-{branch}-server"),
    fabricmanager="nvidia-fabricmanager-{branch}", headers="",
    keep_branch="preferences", branch_packages=UBUNTU_BRANCH_PACKAGES,
    driver_version=("nvidia-kernel-common-{branch}-server",) * 2)
UBUNTU_DKMS = DriverPackages(
    first=550, last=999, pin="", modules="dkms",
    open=("nvidia-headless-{branch}-server-open", "nvidia-utils-{branch}-server"),
    proprietary=("nvidia-headless-{branch}-server", "nvidia-utils-{branch}-server"),
    fabricmanager="nvidia-fabricmanager-{branch}", headers="linux-headers-{kernel}",
    headers_meta="linux-headers-{flavour}",
    keep_branch="preferences", branch_packages=UBUNTU_BRANCH_PACKAGES,
    driver_version=("nvidia-kernel-common-{branch}-server",) * 2)
# Where the deploy writes that apt preferences file (Ubuntu)
BRANCH_PREFERENCES = "/etc/apt/preferences.d/ollama-fleet-nvidia-branch"
UBUNTU_DOCKER = ("docker.io", "docker-compose-v2")


# -- one table per distribution ----------------------------------------------------------

def _debian(major: int, codename: str, archive: dict[str, tuple[str, ...]],
            cuda_key: str, drivers: tuple[DriverPackages, ...],
            default_branch: int) -> Distribution:
    """Debian MAJOR: Docker's repository for its CODENAME, NVIDIA's CUDA and toolkit ones."""
    return Distribution(
        os_id="debian", major=major, codename=codename,
        repositories={
            DOCKER: VendorRepository(
                url="{docker_repo_url}/debian", suite=codename, components=("stable",),
                key_url="{docker_repo_url}/debian/gpg", keyring=DOCKER_KEYRING,
                sources_file=DOCKER_SOURCES, packages=DOCKER_CE),
            CUDA: VendorRepository(
                url="{nvidia_driver_repo_url}/", suite="/",
                key_url="{nvidia_driver_repo_url}/" + cuda_key, keyring=CUDA_KEYRING,
                sources_file=CUDA_SOURCES, packages=()),
            TOOLKIT: TOOLKIT_REPOSITORY,
        },
        archive=archive, drivers=drivers, driver_source=f"NVIDIA's debian{major} repository",
        # NVIDIA's guide: the driver's dependencies need Debian's contrib component
        archive_components=("contrib",), default_branch=default_branch,
    )


# bookworm's archive has no Compose v2 package: Docker comes from Docker's repository
DEBIAN_12 = _debian(12, "bookworm", archive={}, cuda_key="3bf863cc.pub",
                    drivers=(CUDA_BRANCHED, CUDA_PINNED), default_branch=580)
# trixie splits the client out of docker.io (and only recommends it). NVIDIA signs its
# debian13 repository with another key (the old one's SHA-1 binding is refused by trixie's
# apt) and carries 590 and later only.
DEBIAN_13 = _debian(13, "trixie", archive={DOCKER: ("docker.io", "docker-cli", "docker-compose")},
                    cuda_key="8793F200.pub", drivers=(dataclasses.replace(CUDA_PINNED, first=590),),
                    default_branch=590)

# The release's own (GA) kernel series: another series of these flavours is a
# hardware-enablement kernel, whose meta-packages are named `<flavour>-hwe-<release>`
# (linux-modules-nvidia-580-server-open-generic-hwe-24.04). Cloud kernels (aws, gcp,
# azure, oracle...) roll to newer series under their own flavour's name, with no -hwe-
# meta-package: linux-modules-nvidia-580-server-open-aws follows the newest aws kernel
# (its -aws-6.8 or -aws-lts-22.04 variants pin a series, which the running kernel does
# not tell; tests/unit/fixtures/ubuntu/ holds the names as the archive lists them).
UBUNTU_GA_KERNEL = {22: "5.15", 24: "6.8"}
UBUNTU_HWE_FLAVOURS = ("generic", "generic-64k", "lowlatency", "lowlatency-64k")
# NVIDIA's CUDA repository for Ubuntu, where the driver is Canonical's: nvlsm alone is
# taken from it (apt preferences: its other packages never)
UBUNTU_NVLSM_PIN = (
    "Explanation: ollama-fleet: only nvlsm from NVIDIA's CUDA repository (the driver is "
    "Canonical's)\n"
    "Package: *\nPin: origin \"{nvidia_driver_repo_host}\"\nPin-Priority: -1\n\n"
    "Package: " + NVLSM_PACKAGE + "\nPin: origin \"{nvidia_driver_repo_host}\"\n"
    "Pin-Priority: 500\n")


def _ubuntu(major: int, codename: str) -> Distribution:
    """Ubuntu MAJOR: Docker's repository for its CODENAME; the driver from the archive."""
    return Distribution(
        os_id="ubuntu", major=major, codename=codename,
        repositories={
            DOCKER: VendorRepository(
                url="{docker_repo_url}/ubuntu", suite=codename, components=("stable",),
                key_url="{docker_repo_url}/ubuntu/gpg", keyring=DOCKER_KEYRING,
                sources_file=DOCKER_SOURCES, packages=DOCKER_CE),
            TOOLKIT: TOOLKIT_REPOSITORY,
            NVLSM: VendorRepository(
                url="{nvidia_driver_repo_url}/", suite="/",
                key_url="{nvidia_driver_repo_url}/3bf863cc.pub", keyring=CUDA_KEYRING,
                sources_file=CUDA_SOURCES, packages=(NVLSM_PACKAGE,), pin=UBUNTU_NVLSM_PIN),
        },
        archive={DOCKER: UBUNTU_DOCKER}, drivers=(UBUNTU_PRECOMPILED, UBUNTU_DKMS),
        driver_source=f"Ubuntu {major}.04's archive", ga_kernel=UBUNTU_GA_KERNEL[major],
        dkms_mok=("/var/lib/shim-signed/mok/MOK.priv", "/var/lib/shim-signed/mok/MOK.der"),
        # 580 is the long-term branch; Canonical's 590-server packages are transitional
        # (to 595), which the deploy refuses
        default_branch=580, cuda_distro=f"ubuntu{major}04", nvlsm_repository=NVLSM,
        # Canonical's nvidia-fabricmanager-<branch> is in multiverse
        fabricmanager_components=("multiverse",),
    )


UBUNTU_22_04 = _ubuntu(22, "jammy")
UBUNTU_24_04 = _ubuntu(24, "noble")

DISTRIBUTIONS = {(d.os_id, d.major): d for d in (DEBIAN_12, DEBIAN_13, UBUNTU_22_04,
                                                 UBUNTU_24_04)}
SUPPORTED = "Debian 12/13, Ubuntu 22.04/24.04"


# -- looking values up -------------------------------------------------------------------

def os_release() -> tuple[str, int, str]:
    """(id, major version, codename) of the host's OS, e.g. ("debian", 13, "trixie")."""
    dist = host.get_fact(LinuxDistribution)
    release = dist.get("release_meta") or {}
    ident = (release.get("ID") or dist.get("name") or "").lower()
    major = dist.get("major") or 0
    codename = release.get("VERSION_CODENAME") or ""
    return ident, int(major), codename


def distribution() -> Distribution:
    """The host's row of the table; an unsupported OS stops the run before any change."""
    os_id, major, _ = os_release()
    try:
        return DISTRIBUTIONS[(os_id, major)]
    except KeyError:
        raise OperationError(f"{host.name}: {os_id} {major} is not supported "
                             f"({SUPPORTED})") from None


def by_name(name: str) -> Distribution:
    """The table named NAME ("debian 13"), as `Distribution.name` spells it."""
    return next(d for d in DISTRIBUTIONS.values() if d.name == name)


def _fill(shape: str, values: dict[str, str]) -> str:
    # in order: a knob's own value may hold a placeholder filled later ({distro})
    for name, value in values.items():
        shape = shape.replace("{" + name + "}", value)
    return shape


def _values(dist: Distribution, settings: Settings) -> dict[str, str]:
    return {"docker_repo_url": settings.docker_repo_url,
            "nvidia_driver_repo_url": settings.nvidia_driver_repo_url,
            "nvidia_toolkit_repo_url": settings.nvidia_toolkit_repo_url,
            "nvidia_driver_repo_host": urlsplit(settings.nvidia_driver_repo_url).hostname or "",
            "distro": dist.cuda_distro or f"{dist.os_id}{dist.major}",
            "branch": str(driver_branch(dist, settings)),
            "version": settings.nvidia_toolkit_version}


def driver_branch(dist: Distribution, settings: Settings) -> int:
    """The driver branch for DIST: nvidia_driver_branch, else the distribution's default."""
    return settings.nvidia_driver_branch or dist.default_branch


def with_branch(dist: Distribution, settings: Settings) -> Settings:
    """SETTINGS with nvidia_driver_branch set to the branch for DIST (the knob's, else the
    distribution's default), so that every step names the same branch."""
    branch = driver_branch(dist, settings)
    if settings.nvidia_driver_branch == branch:
        return settings
    return settings.model_copy(update={"nvidia_driver_branch": branch})


def repository(dist: Distribution, vendor: str, settings: Settings) -> VendorRepository | None:
    """DIST's repository of VENDOR with the operator's knobs filled in; None if not used."""
    shape = dist.repositories.get(vendor)
    if shape is None:
        return None
    values = _values(dist, settings)
    knob = KEY_URL_KNOBS.get(vendor)
    key_url = (knob and getattr(settings, knob)) or _fill(shape.key_url, values)
    return dataclasses.replace(shape, url=_fill(shape.url, values), key_url=key_url,
                               packages=tuple(_fill(p, values) for p in shape.packages),
                               pin=_fill(shape.pin, values))


def archive_packages(dist: Distribution, purpose: str, settings: Settings) -> list[str] | None:
    """The packages of DIST's own archive for PURPOSE (DOCKER); None: none."""
    packages = dist.archive.get(purpose)
    if packages is None:
        return None
    values = _values(dist, settings)
    return [_fill(p, values) for p in packages]


def driver_packages(dist: Distribution, settings: Settings) -> DriverPackages:
    """DIST's driver scheme for the branch (and, on Ubuntu, the modules knob); a branch the
    distribution's source does not carry is a ValueError naming the knob."""
    branch = driver_branch(dist, settings)
    for scheme in dist.drivers:
        if scheme.first <= branch <= scheme.last and \
                scheme.modules in ("", settings.nvidia_driver_ubuntu_modules):
            return scheme
    first = min((s.first for s in dist.drivers), default=0)
    raise ValueError(f"nvidia_driver_branch: {branch} is not in {dist.driver_source} "
                     f"({first} and later)")


def fill(shape: str, **values: str) -> str:
    """SHAPE with `{name}` replaced by VALUES (package name shapes)."""
    return _fill(shape, values)


def kernel_flavour(dist: Distribution, kernel: str) -> str:
    """The flavour of KERNEL (`uname -r`) as DIST names its meta-packages: Debian's
    `6.1.0-40-cloud-amd64` and `6.12.48+deb13-amd64` are `cloud-amd64` and `amd64`; Ubuntu's
    `6.8.0-49-generic` on 24.04 is `generic`, a 6.8 kernel on 22.04 `generic-hwe-22.04`; a
    cloud kernel is its own flavour whatever its series (`6.8.0-1015-aws` on 22.04: `aws`)."""
    words = kernel.split("-")
    flavour = "-".join(w for w in words[1:] if not w.isdigit())
    if dist.ga_kernel and flavour in UBUNTU_HWE_FLAVOURS and \
            ".".join(words[0].split(".")[:2]) != dist.ga_kernel:
        flavour += f"-hwe-{dist.major}.04"
    return flavour
