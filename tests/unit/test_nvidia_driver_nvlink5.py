"""NVLink 5 boards (HGX B100/B200/B300): told by their GPUs' PCI ids as pci.ids lists them,
they get NVIDIA's NVLink Subnet Manager (nvlsm) with Fabric Manager, from NVIDIA's CUDA
repository (on Ubuntu that repository serves nvlsm alone), and ib_umad loaded."""

from __future__ import annotations

import pytest

from ollama_fleet.tasks.kit import distributions
from ollama_fleet.tasks.kit.distributions import (
    CUDA,
    DEBIAN_12,
    DEBIAN_13,
    NVLSM,
    UBUNTU_22_04,
    UBUNTU_24_04,
)
from ollama_fleet.tasks.kit.scripts import script_command
from ollama_fleet.tasks.kit.settings import Settings
from ollama_fleet.tasks.steps.nvidia_driver import driver_plan, needs_fabricmanager, needs_nvlsm
from tests.unit.stubs import run_with_stubs

# pci.ids: 2901 GB100 [B200], 2920 GB100 [TS4 / B100], 29bc GB102 [B100]; 3182 B300
NVLINK5 = {"B200": 0x2901, "B100 (TS4)": 0x2920, "B100": 0x29BC, "B300": 0x3182}
H100_HGX = [{"slot": "0000:18:00.0", "device": 0x2330, "class": 0x030200},
            {"slot": "0000:05:00.0", "device": 0x22A3, "class": 0x068000}]


def board(device: int, count: int = 8) -> list[dict]:
    return [{"slot": f"0000:{0x18 + i:02x}:00.0", "device": device, "class": 0x030200}
            for i in range(count)]


@pytest.mark.parametrize("model", NVLINK5)
def test_hgx_blackwell_gpus_mean_an_nvlink5_nvswitch_board(model):
    devices = board(NVLINK5[model])
    assert needs_fabricmanager(devices) and needs_nvlsm(devices)


def test_hopper_and_pcie_boards_need_no_nvlsm():
    assert needs_fabricmanager(H100_HGX) and not needs_nvlsm(H100_HGX)
    l40s = board(0x26B9, 2)
    assert not needs_fabricmanager(l40s) and not needs_nvlsm(l40s)


@pytest.mark.parametrize("dist, branch", [(DEBIAN_13, 590), (DEBIAN_12, 580),
                                          (UBUNTU_24_04, 580), (UBUNTU_22_04, 580)],
                         ids=lambda v: getattr(v, "name", str(v)))
@pytest.mark.parametrize("model", NVLINK5)
def test_an_nvlink5_board_gets_nvlsm_with_fabric_manager(dist, branch, model):
    plan = driver_plan(dist, Settings(gpu_count=8, nvidia_driver_branch=branch),
                       "6.8.0-90-generic", board(NVLINK5[model]))
    assert plan.flavour == "open" and plan.fabricmanager
    assert plan.nvlsm == "nvlsm" and "nvlsm" in plan.wanted
    assert "nvlsm" not in plan.held  # nvlsm's own updates come (its versions are not the driver's)


def test_no_nvlsm_without_fabric_manager_or_on_hopper():
    never = driver_plan(DEBIAN_13, Settings(gpu_count=8, nvidia_driver_branch=590,
                                            nvidia_fabricmanager="never"),
                        "6.12.1-amd64", board(0x2901))
    assert (never.fabricmanager, never.nvlsm) == ("", "")
    hopper = driver_plan(DEBIAN_13, Settings(gpu_count=8, nvidia_driver_branch=590),
                         "6.12.1-amd64", H100_HGX)
    assert hopper.fabricmanager == "nvidia-fabricmanager" and hopper.nvlsm == ""


def test_debian_takes_nvlsm_from_the_cuda_repository_it_has():
    for dist in (DEBIAN_12, DEBIAN_13):
        assert dist.nvlsm_repository == CUDA and NVLSM not in dist.repositories


@pytest.mark.parametrize("dist, distro", [(UBUNTU_22_04, "ubuntu2204"),
                                          (UBUNTU_24_04, "ubuntu2404")],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_ubuntu_takes_nvlsm_alone_from_nvidias_cuda_repository(dist, distro):
    assert dist.nvlsm_repository == NVLSM
    assert distributions.repository(dist, CUDA, Settings()) is None  # the driver is Canonical's
    repo = distributions.repository(dist, NVLSM, Settings(
        nvidia_driver_repo_url="https://cuda.mirror.test/compute/cuda/repos/{distro}/x86_64"))
    assert repo.url == f"https://cuda.mirror.test/compute/cuda/repos/{distro}/x86_64/"
    assert repo.key_url == f"https://cuda.mirror.test/compute/cuda/repos/{distro}/x86_64/3bf863cc.pub"
    assert repo.packages == ("nvlsm",)
    # apt takes nothing else from it: every package at -1, nvlsm at 500, by the knob's host
    stanzas = [dict(line.split(": ", 1) for line in stanza.splitlines())
               for stanza in repo.pin.strip().split("\n\n")]
    assert [(s["Package"], s["Pin"], s["Pin-Priority"]) for s in stanzas] == [
        ("*", 'origin "cuda.mirror.test"', "-1"), ("nvlsm", 'origin "cuda.mirror.test"', "500")]


# -- ib_umad before Fabric Manager (templates/nvidia_driver/fabricmanager.sh) ---------------

def start_fabricmanager(tmp_path, modinfo: str, modprobe: str = "exit 0\n"):
    stubs = {"systemctl": 'echo "$*" >> "${0%/*}/systemctl.log"\n', "modinfo": modinfo,
             "modprobe": 'echo "$*" >> "${0%/*}/modprobe.log"\n' + modprobe}
    proc = run_with_stubs(script_command("nvidia_driver/fabricmanager.sh", "nvidia-fabricmanager",
                                         "ib_umad"), tmp_path, stubs)
    logs = {name: (tmp_path / "stub-bin" / f"{name}.log").read_text().splitlines()
            if (tmp_path / "stub-bin" / f"{name}.log").exists() else []
            for name in ("systemctl", "modprobe")}
    return proc, logs


def test_ib_umad_is_loaded_before_fabric_manager_starts(tmp_path):
    proc, logs = start_fabricmanager(tmp_path, modinfo="exit 0\n")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert logs == {"modprobe": ["ib_umad"],
                    "systemctl": ["enable nvidia-fabricmanager", "start nvidia-fabricmanager"]}


def test_a_kernel_without_ib_umad_leaves_fabric_manager_to_say_so(tmp_path):
    proc, logs = start_fabricmanager(tmp_path, modinfo="exit 1\n")
    assert proc.returncode == 0 and logs["modprobe"] == []
    assert logs["systemctl"][-1] == "start nvidia-fabricmanager"


def test_ib_umad_that_will_not_load_stops_the_host_naming_it(tmp_path):
    proc, logs = start_fabricmanager(tmp_path, modinfo="exit 0\n", modprobe="exit 1\n")
    assert proc.returncode == 1
    assert proc.stderr == ("ib_umad: the kernel module did not load (modprobe ib_umad); "
                           "nvidia-fabricmanager cannot start without it\n")
    assert logs["systemctl"] == []
