"""What the deploy installs where the lab cannot go: real os-release files and nvidia-smi
output in, package names, repositories and parsed GPUs out."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyinfra.api import OperationError
from pyinfra.context import ctx_host
from pyinfra.facts.server import LinuxDistribution

from tasks.docker import distribution, distribution_packages, docker_repo_sources
from tasks.facts import NvidiaGpus
from tasks.nvidia_driver import cuda_repo_url, driver_answers, driver_packages
from tasks.nvidia_toolkit import toolkit_packages, toolkit_sources
from tasks.settings import Settings
from tests.unit.ophelper import FakeHost

FIXTURES = Path(__file__).parent / "fixtures"


def os_facts(name: str) -> dict:
    lines = ["/etc/os-release", *(FIXTURES / "os-release" / name).read_text().splitlines(), "---"]
    return {"server.LinuxDistribution": LinuxDistribution().process(lines)}


@pytest.mark.parametrize("release, expected", [
    ("ubuntu-22.04", ("ubuntu", 22, "jammy")),
    ("ubuntu-24.04", ("ubuntu", 24, "noble")),
    ("debian-12", ("debian", 12, "bookworm")),
    ("debian-13", ("debian", 13, "trixie")),
])
def test_distribution_from_os_release(release, expected):
    with ctx_host.use(FakeHost(facts=os_facts(release))):
        assert distribution() == expected


@pytest.mark.parametrize("os_id, major, packages", [
    ("ubuntu", 22, ["docker.io", "docker-compose-v2"]),
    ("ubuntu", 24, ["docker.io", "docker-compose-v2"]),
    ("debian", 13, ["docker.io", "docker-cli", "docker-compose"]),
])
def test_distribution_docker_packages_bring_compose_v2(os_id, major, packages):
    assert distribution_packages(os_id, major) == packages


def test_debian_12_has_no_compose_v2_package():
    with pytest.raises(OperationError, match="docker_package_source: debian 12 has no Compose v2"):
        distribution_packages("debian", 12)


@pytest.mark.parametrize("os_id, codename", [("ubuntu", "noble"), ("debian", "bookworm")])
def test_docker_repository_is_deb822_with_signed_by(os_id, codename):
    sources = docker_repo_sources(Settings(), os_id, codename)
    assert sources == (f"Types: deb\nURIs: https://download.docker.com/linux/{os_id}\n"
                       f"Suites: {codename}\nComponents: stable\n"
                       "Signed-By: /etc/apt/keyrings/docker.asc\n")


@pytest.mark.parametrize("os_id, major, packages, repo", [
    ("ubuntu", 22, ["nvidia-headless-570-server", "nvidia-utils-570-server"], None),
    ("ubuntu", 24, ["nvidia-headless-570-server", "nvidia-utils-570-server"], None),
    ("debian", 12, ["cuda-drivers-570"],
     "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64"),
    ("debian", 13, ["cuda-drivers-570"],
     "https://developer.download.nvidia.com/compute/cuda/repos/debian13/x86_64"),
])
def test_driver_packages_by_distribution(os_id, major, packages, repo):
    assert driver_packages(os_id, 570) == packages
    if repo:
        assert cuda_repo_url(Settings(), os_id, major) == repo


def test_toolkit_packages_pinned_together_from_the_documented_repository():
    settings = Settings(nvidia_toolkit_version="1.17.8")
    assert toolkit_packages(settings.nvidia_toolkit_version) == [
        "nvidia-container-toolkit=1.17.8-1", "nvidia-container-toolkit-base=1.17.8-1",
        "libnvidia-container-tools=1.17.8-1", "libnvidia-container1=1.17.8-1"]
    assert toolkit_sources(settings) == (
        "deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] "
        "https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /\n")


def parse(name: str) -> dict:
    return NvidiaGpus().process((FIXTURES / "nvidia-smi" / name).read_text().splitlines())


def test_nvidia_smi_two_h100():
    gpus = parse("query-2xH100.txt")
    assert gpus["working"] and [g["index"] for g in gpus["gpus"]] == [0, 1]
    assert gpus["gpus"][0] == {"index": 0, "uuid": "GPU-2b6c3e7a-5f1d-9a3e-8c41-7d0e6f9b2a15",
                               "name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559,
                               "driver_version": "570.172.08", "persistence_mode": True}
    assert gpus["gpus"][1]["persistence_mode"] is False
    assert driver_answers(gpus, 570) and not driver_answers(gpus, 550)


@pytest.mark.parametrize("name, rc, working", [
    ("query-driver-not-loaded.txt", 9, False),
    ("query-version-mismatch.txt", 18, False),
    ("query-L40S-550.txt", 0, True),
])
def test_nvidia_smi_states(name, rc, working):
    gpus = parse(name)
    assert (gpus["rc"], gpus["working"]) == (rc, working)
    if not working:
        assert gpus["gpus"] == [] and gpus["error"]


def test_nvidia_smi_not_installed():
    gpus = parse("not-installed.txt")
    assert gpus == {"installed": False, "working": False, "rc": None, "gpus": [], "error": ""}
