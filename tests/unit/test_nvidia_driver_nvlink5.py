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
# Upstream's nvidia-fabricmanager-start.sh (570+) refuses on an NVLink 5 board without it:
# 'Kernel module "ib_umad" has not been loaded, fabric manager cannot be started'
# (spectrocloud/CanvOS#700); Ubuntu's cloud kernels keep it in linux-modules-extra-K, which
# their images leave out (NVIDIA/gpu-operator#2781).

KERNEL = "6.8.0-1015-aws"


def start_fabricmanager(tmp_path, modinfo: str, modprobe: str = "exit 0\n",
                        package: str = ""):
    stubs = {"systemctl": 'echo "$*" >> "${0%/*}/systemctl.log"\n', "modinfo": modinfo,
             "modprobe": 'echo "$*" >> "${0%/*}/modprobe.log"\n' + modprobe,
             "uname": f"echo {KERNEL}\n"}
    options = ("-p", package) if package else ()
    proc = run_with_stubs(script_command("nvidia_driver/fabricmanager.sh", *options,
                                         "nvidia-fabricmanager", "ib_umad"), tmp_path, stubs)
    logs = {name: (tmp_path / "stub-bin" / f"{name}.log").read_text().splitlines()
            if (tmp_path / "stub-bin" / f"{name}.log").exists() else []
            for name in ("systemctl", "modprobe")}
    return proc, logs


def test_ib_umad_is_loaded_before_fabric_manager_starts(tmp_path):
    proc, logs = start_fabricmanager(tmp_path, modinfo="exit 0\n")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert logs == {"modprobe": ["ib_umad"],
                    "systemctl": ["enable nvidia-fabricmanager", "start nvidia-fabricmanager"]}


def test_nvlink5_a_kernel_without_ib_umad_stops_the_host_naming_the_package(tmp_path):
    """Ubuntu: one line naming the module, the running kernel and linux-modules-extra-K;
    Fabric Manager is neither enabled nor started (it would only fail)."""
    proc, logs = start_fabricmanager(tmp_path, modinfo="exit 1\n",
                                     package="linux-modules-extra")
    assert proc.returncode == 1
    assert proc.stderr == (
        f"ib_umad: the running kernel {KERNEL} has no such module (modinfo ib_umad); it "
        f"ships in linux-modules-extra-{KERNEL} (apt-get install linux-modules-extra-"
        f"{KERNEL}); nvidia-fabricmanager cannot start on this NVLink 5 board without it "
        "loaded\n")
    assert logs == {"modprobe": [], "systemctl": []}


def test_nvlink5_a_kernel_without_ib_umad_stops_the_host_elsewhere_too(tmp_path):
    """Debian (the kernel's own package ships it): the line names the module and kernel."""
    proc, logs = start_fabricmanager(tmp_path, modinfo="exit 1\n")
    assert proc.returncode == 1
    assert proc.stderr == (
        f"ib_umad: the running kernel {KERNEL} has no such module (modinfo ib_umad); "
        "nvidia-fabricmanager cannot start on this NVLink 5 board without it loaded\n")
    assert logs == {"modprobe": [], "systemctl": []}


def test_ib_umad_that_will_not_load_stops_the_host_naming_it(tmp_path):
    proc, logs = start_fabricmanager(tmp_path, modinfo="exit 0\n", modprobe="exit 1\n")
    assert proc.returncode == 1
    assert proc.stderr == ("ib_umad: the kernel module did not load (modprobe ib_umad); "
                           "nvidia-fabricmanager cannot start without it\n")
    assert logs["systemctl"] == []


def test_nvlink5_modprobes_reason_is_folded_into_the_one_line(tmp_path):
    fail = ('echo "modprobe: ERROR: could not insert \'ib_umad\': Key was rejected by '
            'service" >&2\nexit 1\n')
    proc, logs = start_fabricmanager(tmp_path, modinfo="exit 0\n", modprobe=fail,
                                     package="linux-modules-extra")
    assert proc.returncode == 1
    assert proc.stderr == (
        "ib_umad: the kernel module did not load (modprobe ib_umad: modprobe: ERROR: could "
        "not insert 'ib_umad': Key was rejected by service); it ships in "
        f"linux-modules-extra-{KERNEL} (apt-get install linux-modules-extra-{KERNEL}); "
        "nvidia-fabricmanager cannot start without it\n")
    assert logs["systemctl"] == []


@pytest.mark.parametrize("dist, kernel, package", [
    (UBUNTU_24_04, "6.8.0-1015-aws", "linux-modules-extra"),
    (UBUNTU_22_04, "5.15.0-130-generic", "linux-modules-extra"),
    (DEBIAN_12, "6.1.0-28-amd64", ""), (DEBIAN_13, "6.12.48+deb13-amd64", "")],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_nvlink5_the_deploy_names_ubuntus_modules_extra(monkeypatch, dist, kernel, package):
    """install_driver passes ib_umad to Fabric Manager's start, with the package that ships
    it on Ubuntu (linux-modules-extra, `-$(uname -r)` appended by the script)."""
    from ollama_fleet.tasks.steps import nvidia_driver
    from tests.unit.test_nvidia_driver import FakeHost, Recorder, ctx_host, smi

    rec = Recorder()
    for target, name in ((nvidia_driver.files, "put"), (nvidia_driver.server, "reboot"),
                         (nvidia_driver.systemd, "service"),
                         (nvidia_driver.apt_packages, "repository"),
                         (nvidia_driver.apt_packages, "installed"),
                         (nvidia_driver.apt_packages, "archive_components")):
        monkeypatch.setattr(target, name, rec.op(name))
    for name in ("held", "verify_driver", "fabricmanager_started", "fabricmanager_follows_driver",
                 "persistence_mode_kept", "verify_persistence", "driver"):
        monkeypatch.setattr(nvidia_driver, name, rec.op(name))
    facts = {"ollama_fleet.tasks.kit.facts.NvidiaHost": {
        "kernel": kernel, "devices": board(0x2901), "held": []},
             "ollama_fleet.tasks.kit.facts.NvidiaGpus": smi(None), "deb.DebPackages": {}}
    with ctx_host.use(FakeHost(facts=facts)):
        nvidia_driver.install_driver(Settings(gpu_count=8), dist)  # the distribution's branch
    started = dict(rec.calls)["fabricmanager_started"]
    assert started["modules"] == ["ib_umad"] and started["modules_package"] == package


def test_nvlink5_fabricmanager_started_passes_the_package_to_the_script():
    from tests.unit.ophelper import run_op

    unit = "nvidia-fabricmanager.service"
    facts = {f'systemd.SystemdStatus:{{"services": "{unit}"}}': {unit: False},
             f'systemd.SystemdEnabled:{{"services": "{unit}"}}': {unit: False}}
    op = "ollama_fleet.tasks.steps.nvidia_driver.fabricmanager_started"
    commands, _ = run_op(op, {"modules": ["ib_umad"],
                              "modules_package": "linux-modules-extra"}, facts)
    assert commands == [script_command("nvidia_driver/fabricmanager.sh", "-p",
                                       "linux-modules-extra", "nvidia-fabricmanager", "ib_umad")]
    commands, _ = run_op(op, {"modules": [], "modules_package": "linux-modules-extra"}, facts)
    assert commands == [script_command("nvidia_driver/fabricmanager.sh", "nvidia-fabricmanager")]
