"""What the deploy installs where the lab cannot go: real os-release files and nvidia-smi
output in, package names, repositories and parsed GPUs out."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pyinfra.api import OperationError
from pyinfra.context import ctx_host
from pyinfra.facts.server import LinuxDistribution

from ollama_fleet.tasks.kit import distributions
from ollama_fleet.tasks.kit.distributions import (
    CUDA,
    DISTRIBUTIONS,
    DOCKER,
    TOOLKIT,
    distribution,
    os_release,
)
from ollama_fleet.tasks.kit.facts import NvidiaGpus
from ollama_fleet.tasks.kit.settings import Settings
from ollama_fleet.tasks.steps.docker import engine_packages, owned_daemon_settings
from ollama_fleet.tasks.steps.nvidia_driver import driver_answers, driver_plan
from ollama_fleet.tasks.steps.nvidia_toolkit import (
    runtime_configure_flags,
    runtime_wanted,
    toolkit_preferences,
)
from ollama_fleet.tasks.steps.packages import sources_entry
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
    assert dist.drivers and dist.driver_source
    for repo in dist.repositories.values():
        assert repo.keyring.endswith((".asc", ".gpg"))
        assert repo.sources_file.startswith("/etc/apt/sources.list.d/")
        assert repo.sources_file.endswith((".sources", ".list"))
        assert repo.packages or repo is dist.repositories.get(CUDA)


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


@pytest.mark.parametrize("os_id, major, key", [
    ("debian", 12, "3bf863cc.pub"),
    ("debian", 13, "8793F200.pub"),  # NVIDIA's new key: trixie's apt refuses the old one
])
def test_cuda_repository_and_key_by_debian_release(os_id, major, key):
    repo = f"https://developer.download.nvidia.com/compute/cuda/repos/debian{major}/x86_64"
    cuda = distributions.repository(table(os_id, major), CUDA, Settings())
    keyring = "/usr/share/keyrings/cuda-archive-keyring.gpg"
    assert sources(cuda) == f"deb [signed-by={keyring}] {repo}/ /\n"
    assert cuda.key_url == f"{repo}/{key}"
    assert (cuda.keyring, cuda.sources_file) == (keyring, "/etc/apt/sources.list.d/cuda.list")


@pytest.mark.parametrize("os_id", ["ubuntu"])
@pytest.mark.parametrize("major", [22, 24])
def test_ubuntu_takes_the_driver_from_its_archive(os_id, major):
    assert distributions.repository(table(os_id, major), CUDA, Settings()) is None


H100 = [{"slot": "0000:18:00.0", "device": 0x2330, "class": 0x030200}]
B200 = [{"slot": "0000:1b:00.0", "device": 0x2901, "class": 0x030200}]
V100 = [{"slot": "0000:3b:00.0", "device": 0x1DB1, "class": 0x030200}]
NVSWITCH = [{"slot": "0000:05:00.0", "device": 0x22A3, "class": 0x068000}]


@pytest.mark.parametrize("os_id, major, knobs, devices, message", [
    ("debian", 13, {"nvidia_driver_branch": 580}, H100,
     "nvidia_driver_branch: 580 is not in NVIDIA's debian13 repository (590 and later)"),
    ("debian", 13, {"nvidia_driver_branch": 590, "nvidia_driver_flavour": "proprietary"}, B200,
     "nvidia_driver_flavour: Blackwell GPUs (device 0x2901) run only with the open kernel "
     "modules"),
    ("ubuntu", 24, {"nvidia_driver_branch": 550}, B200,
     "nvidia_driver_branch: 550 does not drive Blackwell GPUs (device 0x2901); 570 and later "
     "do"),
    ("debian", 12, {"nvidia_driver_branch": 590}, V100,
     "nvidia_driver_branch: 590 does not drive GPUs older than Turing (device 0x1db1); 580 "
     "is their last branch"),
    ("debian", 12, {"nvidia_driver_branch": 580, "nvidia_driver_flavour": "open"}, V100,
     "nvidia_driver_flavour: GPUs older than Turing (device 0x1db1) need the proprietary "
     "kernel modules"),
])
def test_driver_plan_refuses_what_the_host_cannot_have(os_id, major, knobs, devices, message):
    with pytest.raises(ValueError) as err:
        driver_plan(table(os_id, major), Settings(gpu_count=1, **knobs), "6.1.0-1-amd64",
                    devices)
    assert str(err.value) == message


OLD_BRIDGE = [{"slot": "0000:00:01.0", "device": 0x005E, "class": 0x068000}]  # nForce


@pytest.mark.parametrize("knob, devices, fabricmanager", [
    ("auto", H100 + NVSWITCH, "nvidia-fabricmanager"),
    ("auto", H100 + OLD_BRIDGE, ""),  # an NVIDIA bridge that is no NVSwitch
    ("auto", B200, "nvidia-fabricmanager"),  # HGX B200: its NVSwitches are not on PCI
    ("auto", H100, ""),
    ("always", H100, "nvidia-fabricmanager"),
    ("never", H100 + NVSWITCH, ""),
])
def test_fabric_manager_follows_the_nvswitch_devices(knob, devices, fabricmanager):
    plan = driver_plan(table("debian", 13), Settings(
        gpu_count=1, nvidia_driver_branch=590, nvidia_fabricmanager=knob), "6.12.1-amd64",
        devices)
    assert plan.fabricmanager == fabricmanager
    assert (fabricmanager in plan.packages) == bool(fabricmanager)
    # the pin keeps the branch, Fabric Manager included: only the pin is held, so that
    # apt moves driver and Fabric Manager together within the branch
    assert plan.held == ("nvidia-driver-pinning-590",)
    assert (fabricmanager in plan.released) == bool(fabricmanager)


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
                               "driver_version": "570.172.08", "persistence_mode": True,
                               "compute_cap": "9.0"}
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
    sources = [*(root / "tasks").rglob("*.py"), *(root / "templates").rglob("*.*")]
    writers = sorted(p.relative_to(root).as_posix() for p in sources
                     if "/etc/docker/daemon.json" in p.read_text()
                     or re.search(r"[\"']nvidia-ctk runtime", p.read_text()))
    # tasks/steps/docker.py writes it, through its script: nvidia-ctk on the staged copy
    assert writers == ["tasks/steps/docker.py", "templates/docker/daemon-json.sh"]


def test_the_toolkit_stays_at_its_version_between_deploys():
    repo = distributions.repository(table("debian", 13), TOOLKIT,
                                    Settings(nvidia_toolkit_version="1.18.2"))
    text = toolkit_preferences(repo.packages)
    stanzas = text.strip().split("\n\n")
    assert len(stanzas) == 4
    assert stanzas[0] == ("Explanation: ollama-fleet: nvidia_toolkit_version\n"
                          "Package: nvidia-container-toolkit\nPin: version 1.18.2-1\n"
                          "Pin-Priority: 1000")
