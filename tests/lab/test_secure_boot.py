"""Secure Boot on a GPU host whose driver DKMS builds (Debian 13, NVIDIA's repository), an
HGX B200 board: NVLink 5, so its Fabric Manager runs only with NVIDIA's NVLink Subnet
Manager (nvlsm), which the driver step installs with it.

The kernel refuses a module that no key enrolled in MOK signed. The deploy reads
Secure Boot (the lab's mokutil, installed as shim-signed brings it) before it installs
anything: without an enrolled key it stops that host in one line, untouched; with the
operator's enrolled key (nvidia_driver_mok_key/_cert) it installs the key where DKMS signs
with it, and the signed module loads at the reboot.

The lab simulates the firmware: /etc/fleetlab/secureboot ("enabled") and the enrolled
certificates in /etc/fleetlab/mok-enrolled/ (lab/nvidia/standins/mokutil.py,
nvidia_kmod_load.py).
"""

from __future__ import annotations

import base64
import hashlib
import subprocess

import pytest

from lab.nvidia.packages import MOKUTIL_VERSION, NVLSM_VERSION
from tests.conftest import running_lab

pytestmark = pytest.mark.lab

NAME = "fleetlab-secureboot"
DRIVER = "tests/lab/deploys/driver.py"
STATE = "dpkg-query -W | md5sum; apt-mark showhold | md5sum; ls /var/lib/dkms 2>&1 | md5sum"


@pytest.fixture(scope="module")
def fleet():
    with running_lab(NAME, "--gpu-hosts", "1", "--gpus-per-host", "1", "--gpu-model", "B200",
                     "--registry-port", "5075") as lab:
        # a Secure Boot machine has mokutil (shim-signed depends on it); the lab's stands in
        # (named by its version: the Debian mirror has the real one, which finds no EFI here)
        lab.ssh("gpu-1", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
                         f"apt-get install -y -qq mokutil={MOKUTIL_VERSION} >/dev/null")
        lab.ssh("gpu-1", "echo enabled > /etc/fleetlab/secureboot")
        yield lab


@pytest.fixture(scope="module")
def mok(tmp_path_factory):
    """A MOK pair as `openssl req` makes one for DKMS (key PEM, certificate DER)."""
    where = tmp_path_factory.mktemp("mok")
    subprocess.run(["openssl", "req", "-new", "-x509", "-nodes", "-days", "2",
                    "-subj", "/CN=fleet lab module signing key", "-newkey", "rsa:2048",
                    "-keyout", str(where / "mok.key"), "-outform", "DER",
                    "-out", str(where / "mok.der")], check=True, capture_output=True)
    return where / "mok.key", where / "mok.der"


def test_secure_boot_without_an_enrolled_key_stops_before_anything_is_installed(fleet):
    assert fleet.ssh("gpu-1", "mokutil --sb-state")[1] == "SecureBoot enabled\n"
    before = fleet.ssh("gpu-1", STATE)[1]
    proc = fleet.pyinfra("deploy.py")
    assert proc.returncode != 0, proc.output[-3000:]
    lines = [line for line in proc.output.splitlines()
             if "gpu-1: nvidia_driver_mok_key: Secure Boot is on" in line]
    assert lines, proc.output[-3000:]
    assert "enroll one (mokutil --import" in lines[0]
    assert fleet.ssh("gpu-1", STATE)[1] == before


def test_a_key_that_is_not_enrolled_stops_it_too(fleet, mok):
    key, cert = mok
    before = fleet.ssh("gpu-1", STATE)[1]
    proc = fleet.pyinfra(DRIVER, "--data", f"nvidia_driver_mok_key={key}",
                         "--data", f"nvidia_driver_mok_cert={cert}")
    assert proc.returncode != 0, proc.output[-3000:]
    assert (f"gpu-1: nvidia_driver_mok_cert: Secure Boot is on and {cert} is not enrolled in "
            "MOK (mokutil --test-key: is not enrolled)") in proc.output, proc.output[-3000:]
    assert fleet.ssh("gpu-1", STATE)[1] == before


def test_an_enrolled_key_signs_the_module_that_then_loads(fleet, mok):
    key, cert = mok
    der = cert.read_bytes()
    # enrolled as `mokutil --import` and the console's confirmation at a boot would
    fleet.ssh("gpu-1", "mkdir -p /etc/fleetlab/mok-enrolled && echo "
                       f"{base64.b64encode(der).decode()} | base64 -d "
                       ">/etc/fleetlab/mok-enrolled/fleet.der")
    booted = fleet.started_at("gpu-1")
    proc = fleet.pyinfra(DRIVER, "--data", f"nvidia_driver_mok_key={key}",
                         "--data", f"nvidia_driver_mok_cert={cert}")
    assert proc.returncode == 0, proc.output[-4000:]
    assert fleet.started_at("gpu-1") != booted  # rebooted into the signed module
    _, modes, _ = fleet.ssh("gpu-1", "stat -c '%a %n' /var/lib/dkms/mok.key /var/lib/dkms/mok.pub")
    assert modes.split("\n")[:2] == ["600 /var/lib/dkms/mok.key", "644 /var/lib/dkms/mok.pub"]
    kernel = fleet.ssh("gpu-1", "uname -r")[1].strip()
    module = fleet.ssh("gpu-1", f"cat /lib/modules/{kernel}/updates/dkms/nvidia.ko")[1].split()
    assert module[2] == hashlib.sha256(der).hexdigest()  # DKMS signed it with the MOK
    _, smi, _ = fleet.ssh("gpu-1", "nvidia-smi --query-gpu=driver_version,persistence_mode "
                                   "--format=csv,noheader")
    assert smi == "590.44.01, Enabled\n"
    _assert_fabric_manager_runs_with_nvlsm(fleet)
    again = fleet.pyinfra(DRIVER, "--data", f"nvidia_driver_mok_key={key}",
                          "--data", f"nvidia_driver_mok_cert={cert}")
    assert again.returncode == 0, again.output[-3000:]
    grand_total = next(line for line in again.output.split("--> Results:")[-1].splitlines()
                       if "Grand total" in line).split()
    assert grand_total[3:5] == ["-", "-"], again.output[-3000:]


def _assert_fabric_manager_runs_with_nvlsm(fleet):
    """An HGX B200: Fabric Manager of the driver's version with nvlsm, ib_umad loaded at
    every boot, the GPUs registered with the fabric, compute capability 10.0."""
    _, versions, _ = fleet.ssh("gpu-1", "dpkg-query -W -f '${Package} ${Version}\\n' "
                                        "nvidia-fabricmanager nvlsm")
    assert dict(line.split() for line in versions.splitlines()) == {
        "nvidia-fabricmanager": "590.44.01-1", "nvlsm": f"{NVLSM_VERSION}-1"}
    assert fleet.ssh("gpu-1", "cat /etc/modules-load.d/ollama-fleet-nvlsm.conf")[1] == \
        "ib_umad\n"
    assert fleet.ssh("gpu-1", "systemctl is-active nvidia-fabricmanager")[1] == "active\n"
    _, fabric, _ = fleet.ssh("gpu-1", "nvidia-smi --query-gpu=fabric.state,fabric.status,"
                                      "compute_cap --format=csv,noheader")
    assert fabric == "Completed, Success, 10.0\n"


def test_without_nvlsm_fabric_manager_fails_as_upstream_and_the_deploy_restores_it(fleet, mok):
    """NVLink 5 without NVLSM: the unit fails naming the package (what upstream's
    nvidia-fabricmanager-start.sh says), the GPUs stay In Progress with the fabric; the
    next run puts nvlsm back and starts Fabric Manager, without a reboot."""
    key, cert = mok
    fleet.ssh("gpu-1", "systemctl stop nvidia-fabricmanager && dpkg --remove nvlsm >/dev/null")
    booted = fleet.started_at("gpu-1")
    assert fleet.ssh("gpu-1", "systemctl start nvidia-fabricmanager", check=False)[0] != 0
    _, journal, _ = fleet.ssh("gpu-1", "journalctl -u nvidia-fabricmanager --no-pager",
                              check=False)
    assert ('/opt/nvidia/nvlsm/sbin/nvlsm does not exist. Please install "Nvidia NVLink '
            'Subnet Manager" (nvlsm) package') in journal, journal[-2000:]
    _, fabric, _ = fleet.ssh("gpu-1", "nvidia-smi --query-gpu=fabric.state,fabric.status "
                                      "--format=csv,noheader")
    assert fabric == "In Progress, N/A\n"
    proc = fleet.pyinfra(DRIVER, "--data", f"nvidia_driver_mok_key={key}",
                         "--data", f"nvidia_driver_mok_cert={cert}")
    assert proc.returncode == 0, proc.output[-4000:]
    assert fleet.started_at("gpu-1") == booted  # the driver serves: no reboot for nvlsm
    _assert_fabric_manager_runs_with_nvlsm(fleet)
