"""A Debian 12 GPU host runs the driver steps from NVIDIA's debian12 repository.

One lab host on bookworm (an HGX H100 board). Docker on Debian 12 stays refused by the
deploy (no Compose v2 in bookworm's archive, and the lab reaches no Docker repository):
tests/lab/deploys/driver.py runs the steps deploy.py runs up to the driver.
"""

from __future__ import annotations

import pytest

from tests.conftest import running_lab

pytestmark = pytest.mark.lab

NAME = "fleetlab-bookworm"
DRIVER = "tests/lab/deploys/driver.py"
BRANCH = ("--data", "nvidia_driver_branch=570")  # debian12 names its branches up to 579


@pytest.fixture(scope="module")
def fleet():
    with running_lab(NAME, "--gpu-hosts", "1", "--gpus-per-host", "1", "--gpu-suites",
                     "bookworm", "--registry-port", "5062") as lab:
        yield lab


def test_the_deploy_refuses_docker_on_debian_12_before_touching_it(fleet):
    before = fleet.ssh("gpu-1", "dpkg-query -W | md5sum")[1]
    proc = fleet.pyinfra("deploy.py", *BRANCH)
    assert proc.returncode != 0
    assert "docker_package_source: debian 12 has no Compose v2" in proc.output, \
        proc.output[-3000:]
    assert fleet.ssh("gpu-1", "dpkg-query -W | md5sum")[1] == before


def test_the_driver_steps_converge_from_the_debian12_repository(fleet):
    assert "VERSION_CODENAME=bookworm" in fleet.ssh("gpu-1", "cat /etc/os-release")[1]
    booted = fleet.started_at("gpu-1")
    proc = fleet.pyinfra(DRIVER, *BRANCH)
    assert proc.returncode == 0, proc.output[-4000:]
    assert fleet.started_at("gpu-1") != booted  # rebooted into the new driver
    _, sources, _ = fleet.ssh("gpu-1", "cat /etc/apt/sources.list.d/cuda.list")
    assert "/compute/cuda/repos/debian12/x86_64/ /" in sources
    _, colons, _ = fleet.ssh("gpu-1", "gpg --show-keys --with-colons "
                                      "/usr/share/keyrings/cuda-archive-keyring.gpg")
    assert [line.split(":")[9] for line in colons.splitlines()
            if line.startswith("fpr")][:1] == [fleet.info["nvidia_keys"]["debian12"]]
    assert "bookworm main contrib" in fleet.ssh("gpu-1", "cat /etc/apt/sources.list")[1]
    kernel = fleet.ssh("gpu-1", "uname -r")[1].strip()
    _, versions, _ = fleet.ssh("gpu-1", "dpkg-query -W -f '${Package} ${Version}\\n' "
                                        f"nvidia-open-570 nvidia-fabricmanager-570 "
                                        f"linux-headers-{kernel}")
    installed = dict(line.split() for line in versions.splitlines())
    assert installed["nvidia-open-570"] == installed["nvidia-fabricmanager-570"] == \
        "570.172.08-1"
    # no pinning package below 580: the branch-named packages themselves are held
    assert set(fleet.ssh("gpu-1", "apt-mark showhold")[1].split()) == {
        "nvidia-open-570", "nvidia-fabricmanager-570"}
    _, smi, _ = fleet.ssh("gpu-1", "nvidia-smi --query-gpu=driver_version,persistence_mode "
                                   "--format=csv,noheader")
    assert smi == "570.172.08, Enabled\n"
    _, active, _ = fleet.ssh("gpu-1", "systemctl is-active nvidia-fabricmanager "
                                      "nvidia-persistenced", check=False)
    assert active.split() == ["active", "active"]


def test_a_second_driver_run_changes_nothing(fleet):
    proc = fleet.pyinfra(DRIVER, *BRANCH)
    assert proc.returncode == 0, proc.output[-3000:]
    results = proc.output.split("--> Results:")[-1]
    grand_total = next(line for line in results.splitlines() if "Grand total" in line).split()
    assert grand_total[3:5] == ["-", "-"], results
