"""What differs between the distributions the deploy supports: one table each, as data.

Like geerlingguy's setup-<OS> files keep OS differences in one place, every difference
lives here: for each vendor apt repository (Docker's, NVIDIA's CUDA repository, NVIDIA's
Container Toolkit repository) its URL, key, keyring, sources file and packages, and the
packages the distribution's own archive provides. The tasks look values up here; none of
them tests which OS it is on.

Values are shapes that `repository()` and `archive_packages()` fill in:
`{docker_repo_url}`, `{nvidia_driver_repo_url}` and `{nvidia_toolkit_repo_url}` are the
operator's knobs (tasks/settings.py), `{distro}` (inside nvidia_driver_repo_url) is the
distribution's id and major version (`debian12`); in package names `{branch}` is the
driver branch and `{version}` the toolkit version. The keyring's and the sources file's
extensions say their format, as they do to apt: `.asc` an armored key, `.gpg` a
dearmored one; `.sources` deb822, `.list` one-line entries.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pyinfra import host
from pyinfra.api import OperationError
from pyinfra.facts.server import LinuxDistribution

from tasks.settings import Settings

DOCKER = "docker"
CUDA = "cuda"
TOOLKIT = "nvidia_container_toolkit"
NVIDIA_DRIVER = "nvidia_driver"

# The knob that, when set, replaces a repository's key URL (Docker's key has none).
KEY_URL_KNOBS = {CUDA: "nvidia_driver_gpgkey_url", TOOLKIT: "nvidia_toolkit_gpgkey_url"}


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
        """The arguments of `tasks.packages.repository` for this repository."""
        return {"key_url": self.key_url, "keyring": self.keyring,
                "sources_file": self.sources_file, "uri": self.url, "suite": self.suite,
                "components": list(self.components), "pin": self.pin,
                "stale_sources": list(self.stale_sources)}


@dataclass(frozen=True)
class Distribution:
    """One supported distribution: its vendor repositories and its own archive's packages."""

    os_id: str  # os-release ID
    major: int
    codename: str  # os-release VERSION_CODENAME
    repositories: dict[str, VendorRepository]  # DOCKER, CUDA, TOOLKIT; absent: not used here
    archive: dict[str, tuple[str, ...]] = field(default_factory=dict)  # DOCKER, NVIDIA_DRIVER

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

# Ubuntu's GPU servers take Canonical's server driver packages from the archive.
UBUNTU_DRIVER = ("nvidia-headless-{branch}-server", "nvidia-utils-{branch}-server")
UBUNTU_DOCKER = ("docker.io", "docker-compose-v2")


# -- one table per distribution ----------------------------------------------------------

def _debian(major: int, codename: str, archive: dict[str, tuple[str, ...]]) -> Distribution:
    """Debian MAJOR: Docker's repository for its CODENAME, NVIDIA's CUDA and toolkit ones."""
    return Distribution(
        os_id="debian", major=major, codename=codename,
        repositories={
            DOCKER: VendorRepository(
                url="{docker_repo_url}/debian", suite=codename, components=("stable",),
                key_url="{docker_repo_url}/debian/gpg", keyring=DOCKER_KEYRING,
                sources_file=DOCKER_SOURCES, packages=DOCKER_CE),
            # Known wrong for debian13, kept as the deploy has it until the driver issue
            # fixes it (FIELD.md, "Production facts", NVIDIA): that repository is signed
            # with 8793F200.pub, not 3bf863cc.pub, and carries 590 and later only, whose
            # meta-packages have no branch in their names (no cuda-drivers-<branch>).
            CUDA: VendorRepository(
                url="{nvidia_driver_repo_url}/", suite="/",
                key_url="{nvidia_driver_repo_url}/3bf863cc.pub", keyring=CUDA_KEYRING,
                sources_file=CUDA_SOURCES, packages=("cuda-drivers-{branch}",)),
            TOOLKIT: TOOLKIT_REPOSITORY,
        },
        archive=archive,
    )


# bookworm's archive has no Compose v2 package: Docker comes from Docker's repository
DEBIAN_12 = _debian(12, "bookworm", archive={})
# trixie splits the client out of docker.io (and only recommends it)
DEBIAN_13 = _debian(13, "trixie", archive={DOCKER: ("docker.io", "docker-cli", "docker-compose")})

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
        },
        archive={DOCKER: UBUNTU_DOCKER, NVIDIA_DRIVER: UBUNTU_DRIVER},
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


def _fill(shape: str, values: dict[str, str]) -> str:
    # in order: a knob's own value may hold a placeholder filled later ({distro})
    for name, value in values.items():
        shape = shape.replace("{" + name + "}", value)
    return shape


def _values(dist: Distribution, settings: Settings) -> dict[str, str]:
    return {"docker_repo_url": settings.docker_repo_url,
            "nvidia_driver_repo_url": settings.nvidia_driver_repo_url,
            "nvidia_toolkit_repo_url": settings.nvidia_toolkit_repo_url,
            "distro": f"{dist.os_id}{dist.major}",
            "branch": str(settings.nvidia_driver_branch),
            "version": settings.nvidia_toolkit_version}


def repository(dist: Distribution, vendor: str, settings: Settings) -> VendorRepository | None:
    """DIST's repository of VENDOR with the operator's knobs filled in; None if not used."""
    shape = dist.repositories.get(vendor)
    if shape is None:
        return None
    values = _values(dist, settings)
    knob = KEY_URL_KNOBS.get(vendor)
    key_url = (knob and getattr(settings, knob)) or _fill(shape.key_url, values)
    return dataclasses.replace(shape, url=_fill(shape.url, values), key_url=key_url,
                               packages=tuple(_fill(p, values) for p in shape.packages))


def archive_packages(dist: Distribution, purpose: str, settings: Settings) -> list[str] | None:
    """The packages of DIST's own archive for PURPOSE (DOCKER, NVIDIA_DRIVER); None: none."""
    packages = dist.archive.get(purpose)
    if packages is None:
        return None
    values = _values(dist, settings)
    return [_fill(p, values) for p in packages]
