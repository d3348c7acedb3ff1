"""What the deploy installs where the lab cannot go: real os-release files and nvidia-smi
output in, package names, repositories and parsed GPUs out."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pyinfra.api import OperationError
from pyinfra.context import ctx_host
from pyinfra.facts.server import LinuxDistribution

from tasks import distributions
from tasks.distributions import CUDA, DISTRIBUTIONS, DOCKER, TOOLKIT, distribution, os_release
from tasks.docker import engine_packages, owned_daemon_settings
from tasks.facts import NvidiaGpus
from tasks.nvidia_driver import driver_answers, driver_packages
from tasks.nvidia_toolkit import runtime_configure_flags, runtime_wanted
from tasks.packages import sources_entry
from tasks.settings import Settings
from tests.unit.ophelper import FakeHost

FIXTURES = Path(__file__).parent / "fixtures"


def os_facts(name: str) -> dict:
    lines = ["/etc/os-release", *(FIXTURES / "os-release" / name).read_text().splitlines(), "---"]
    return {"server.LinuxDistribution": LinuxDistribution().process(lines)}


def table(os_id: str, major: int) -> distributions.Distribution:
    return DISTRIBUTIONS[(os_id, major)]


def sources(repo: distributions.VendorRepository) -> str:
    return sources_entry(repo.sources_file, repo.url, repo.suite, list(repo.components),
                         repo.keyring)


@pytest.mark.parametrize("release, expected", [
    ("ubuntu-22.04", ("ubuntu", 22, "jammy")),
    ("ubuntu-24.04", ("ubuntu", 24, "noble")),
    ("debian-12", ("debian", 12, "bookworm")),
    ("debian-13", ("debian", 13, "trixie")),
])
def test_distribution_from_os_release(release, expected):
    with ctx_host.use(FakeHost(facts=os_facts(release))):
        assert os_release() == expected
        assert distribution() is table(*expected[:2])
    assert table(*expected[:2]).codename == expected[2]


def test_an_os_outside_the_table_stops_the_run_naming_the_host():
    facts = {"server.LinuxDistribution": {"name": "Ubuntu", "major": 20,
                                          "release_meta": {"ID": "ubuntu"}}}
    with ctx_host.use(FakeHost(facts=facts)), pytest.raises(
            OperationError, match=r"gpu-1: ubuntu 20 is not supported \(Debian 12/13, Ubuntu"):
        distribution()


@pytest.mark.parametrize("dist", DISTRIBUTIONS.values(), ids=lambda d: d.name)
def test_every_table_names_formats_apt_reads(dist):
    """Keyring and sources file extensions say their format to apt, and to the operation."""
    assert DOCKER in dist.repositories and TOOLKIT in dist.repositories
    assert (CUDA in dist.repositories) != (distributions.NVIDIA_DRIVER in dist.archive)
    for repo in dist.repositories.values():
        assert repo.keyring.endswith((".asc", ".gpg"))
        assert repo.sources_file.startswith("/etc/apt/sources.list.d/")
        assert repo.sources_file.endswith((".sources", ".list"))
        assert repo.packages


@pytest.mark.parametrize("os_id, major, packages", [
    ("ubuntu", 22, ["docker.io", "docker-compose-v2"]),
    ("ubuntu", 24, ["docker.io", "docker-compose-v2"]),
    ("debian", 13, ["docker.io", "docker-cli", "docker-compose"]),
])
def test_distribution_docker_packages_bring_compose_v2(os_id, major, packages):
    settings = Settings(docker_package_source="distribution")
    assert engine_packages(table(os_id, major), settings) == packages


def test_debian_12_has_no_compose_v2_package():
    with pytest.raises(OperationError, match="docker_package_source: debian 12 has no Compose v2"):
        engine_packages(table("debian", 12), Settings(docker_package_source="distribution"))


@pytest.mark.parametrize("os_id, major, codename", [
    ("ubuntu", 22, "jammy"), ("ubuntu", 24, "noble"),
    ("debian", 12, "bookworm"), ("debian", 13, "trixie"),
])
def test_docker_repository_is_deb822_with_signed_by(os_id, major, codename):
    repo = distributions.repository(table(os_id, major), DOCKER, Settings())
    assert sources(repo) == (f"Types: deb\nURIs: https://download.docker.com/linux/{os_id}\n"
                             f"Suites: {codename}\nComponents: stable\n"
                             "Signed-By: /etc/apt/keyrings/docker.asc\n")
    assert repo.key_url == f"https://download.docker.com/linux/{os_id}/gpg"
    assert (repo.keyring, repo.sources_file) == ("/etc/apt/keyrings/docker.asc",
                                                 "/etc/apt/sources.list.d/docker.sources")
    assert engine_packages(table(os_id, major), Settings()) == [
        "docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin",
        "docker-compose-plugin"]


@pytest.mark.parametrize("os_id, major, packages, repo", [
    ("ubuntu", 22, ["nvidia-headless-570-server", "nvidia-utils-570-server"], None),
    ("ubuntu", 24, ["nvidia-headless-570-server", "nvidia-utils-570-server"], None),
    ("debian", 12, ["cuda-drivers-570"],
     "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64"),
    ("debian", 13, ["cuda-drivers-570"],
     "https://developer.download.nvidia.com/compute/cuda/repos/debian13/x86_64"),
])
def test_driver_packages_by_distribution(os_id, major, packages, repo):
    settings = Settings(nvidia_driver_branch=570)
    assert driver_packages(table(os_id, major), settings) == packages
    cuda = distributions.repository(table(os_id, major), CUDA, settings)
    if repo is None:
        assert cuda is None
        return
    keyring = "/usr/share/keyrings/cuda-archive-keyring.gpg"
    assert sources(cuda) == f"deb [signed-by={keyring}] {repo}/ /\n"
    assert cuda.key_url == f"{repo}/3bf863cc.pub"  # debian13: known wrong, see the table
    assert (cuda.keyring, cuda.sources_file) == (keyring, "/etc/apt/sources.list.d/cuda.list")


def test_key_url_knobs_replace_the_tables_key():
    settings = Settings(nvidia_driver_repo_url="https://127.0.0.1:8443/cuda/{distro}",
                        nvidia_driver_gpgkey_url="https://127.0.0.1:8443/cuda/key.pub",
                        nvidia_toolkit_gpgkey_url="https://127.0.0.1:8443/tk/key")
    cuda = distributions.repository(table("debian", 13), CUDA, settings)
    assert (cuda.url, cuda.key_url) == ("https://127.0.0.1:8443/cuda/debian13/",
                                        "https://127.0.0.1:8443/cuda/key.pub")
    toolkit = distributions.repository(table("debian", 13), TOOLKIT, settings)
    assert toolkit.key_url == "https://127.0.0.1:8443/tk/key"


@pytest.mark.parametrize("dist", DISTRIBUTIONS.values(), ids=lambda d: d.name)
def test_toolkit_packages_pinned_together_from_the_documented_repository(dist):
    settings = Settings(nvidia_toolkit_version="1.17.8")
    repo = distributions.repository(dist, TOOLKIT, settings)
    assert list(repo.packages) == [
        "nvidia-container-toolkit=1.17.8-1", "nvidia-container-toolkit-base=1.17.8-1",
        "libnvidia-container-tools=1.17.8-1", "libnvidia-container1=1.17.8-1"]
    assert sources(repo) == (
        "deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] "
        "https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /\n")
    assert repo.key_url == "https://nvidia.github.io/libnvidia-container/gpgkey"
    assert repo.stale_sources == ("/etc/apt/sources.list.d/nvidia-docker.list",)


def test_the_toolkit_runtime_is_registered_by_nvidia_ctk_only_while_missing():
    wanted = {"default_runtime": True, "cdi": True}
    assert runtime_wanted(Settings(gpu_count=2, nvidia_toolkit_default_runtime=True,
                                   nvidia_toolkit_cdi=True)) == wanted
    assert runtime_wanted(Settings()) is None  # a CPU host: no NVIDIA software
    assert runtime_configure_flags({}, **wanted) == [
        "--runtime=docker", "--set-as-default", "--cdi.enabled"]
    # what `nvidia-ctk runtime configure --runtime=docker --set-as-default --cdi.enabled`
    # writes (FIELD.md): then nothing is left to do
    registered = {"runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}},
                  "default-runtime": "nvidia", "features": {"cdi": True}}
    assert runtime_configure_flags(registered, **wanted) == []
    assert runtime_configure_flags(registered, default_runtime=False, cdi=False) == []
    assert runtime_configure_flags({**registered, "default-runtime": "runc"}, **wanted) == [
        "--runtime=docker", "--set-as-default", "--cdi.enabled"]


def test_the_engine_keeps_containers_running_through_its_restarts():
    assert owned_daemon_settings(Settings(gpu_count=1))["live-restore"] is True
    assert owned_daemon_settings(Settings(docker_live_restore=False))["live-restore"] is False


def test_a_daemon_json_key_claimed_twice_is_refused():
    settings = Settings(gpu_count=1)
    with pytest.raises(ValueError, match="'log-driver' is claimed twice"):
        owned_daemon_settings(settings, {"log-driver": "journald"})
    runtime = {"runtimes": {"runsc": {"path": "/usr/local/bin/runsc"}}}
    with pytest.raises(ValueError, match="an entry of 'runtimes' is claimed twice"):
        owned_daemon_settings(settings, runtime, runtime)


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


def test_daemon_json_is_written_by_tasks_docker_alone():
    """One owner per file on the host: no other task names the file or runs nvidia-ctk's
    runtime configuration, which rewrites it."""
    root = Path(__file__).parents[2]
    sources = [*(root / "tasks").glob("*.py"), *(root / "templates").rglob("*.*")]
    writers = sorted(p.relative_to(root).as_posix() for p in sources
                     if "/etc/docker/daemon.json" in p.read_text()
                     or re.search(r"[\"']nvidia-ctk runtime", p.read_text()))
    # tasks/docker.py writes it, through its script: nvidia-ctk on the staged copy
    assert writers == ["tasks/docker.py", "templates/docker/daemon-json.sh"]
