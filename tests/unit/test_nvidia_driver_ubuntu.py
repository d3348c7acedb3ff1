"""Ubuntu's driver plans against the archive's own names: the precompiled module package of
each kernel flavour (GA, HWE and cloud kernels), Fabric Manager's multiverse component,
and the module of the running kernel checked with `apt-cache policy` before anything is
installed (fixtures/ubuntu/ says where the names and the policy output come from)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ollama_fleet.tasks.kit import distributions
from ollama_fleet.tasks.kit.distributions import (
    DEBIAN_12,
    DEBIAN_13,
    UBUNTU_22_04,
    UBUNTU_24_04,
)
from ollama_fleet.tasks.kit.scripts import script_command
from ollama_fleet.tasks.kit.settings import Settings
from ollama_fleet.tasks.steps.nvidia_driver import archive_components, driver_plan
from tests.unit.stubs import run_with_stubs

FIXTURES = Path(__file__).parent / "fixtures" / "ubuntu"
ARCHIVE_NAMES = {line.strip() for line in
                 (FIXTURES / "linux-modules-nvidia-580-server.names").read_text().splitlines()
                 if line.strip() and not line.startswith("#")}
H100 = [{"slot": "0000:18:00.0", "device": 0x2330, "class": 0x030200}]
HGX = H100 + [{"slot": "0000:05:00.0", "device": 0x22A3, "class": 0x068000}]


def plan_for(dist, kernel: str, flavour: str = "open", devices=H100, **knobs):
    return driver_plan(dist, Settings(gpu_count=1, nvidia_driver_branch=580,
                                      nvidia_driver_flavour=flavour, **knobs), kernel, devices)


@pytest.mark.parametrize("dist, kernel, meta", [
    (UBUNTU_24_04, "6.8.0-90-generic", "generic"),  # GA
    (UBUNTU_24_04, "6.17.0-14-generic", "generic-hwe-24.04"),  # HWE
    (UBUNTU_22_04, "5.15.0-160-generic", "generic"),  # GA
    (UBUNTU_22_04, "6.8.0-90-generic", "generic-hwe-22.04"),  # HWE
    (UBUNTU_24_04, "6.8.0-1015-aws", "aws"),
    (UBUNTU_24_04, "6.14.0-1012-aws", "aws"),  # a cloud kernel of a newer series
    (UBUNTU_22_04, "6.8.0-1015-aws", "aws"),  # ... has no -hwe- name
    (UBUNTU_24_04, "6.8.0-1020-gcp", "gcp"),
    (UBUNTU_22_04, "6.8.0-1020-gcp", "gcp"),
    (UBUNTU_24_04, "6.8.0-1017-azure", "azure"),
    (UBUNTU_24_04, "6.8.0-1022-oracle", "oracle"),
])
@pytest.mark.parametrize("flavour", ["open", "proprietary"])
def test_the_module_meta_package_is_the_one_the_archive_names(dist, kernel, meta, flavour):
    plan = plan_for(dist, kernel, flavour)
    open_part = "open-" if flavour == "open" else ""
    name = f"linux-modules-nvidia-580-server-{open_part}{meta}"
    per_kernel = f"linux-modules-nvidia-580-server-{open_part}{kernel}"
    assert plan.packages[:2] == (per_kernel, name)
    if name not in ARCHIVE_NAMES:  # the fixture lists the open aws/gcp names it found
        assert f"linux-modules-nvidia-580-server-open-{meta}" in ARCHIVE_NAMES
    assert "-hwe-" not in name or meta.startswith("generic")


def test_dkms_follows_the_cloud_flavours_headers():
    plan = plan_for(UBUNTU_22_04, "6.8.0-1015-aws", nvidia_driver_ubuntu_modules="dkms")
    assert (plan.headers, plan.headers_meta) == ("linux-headers-6.8.0-1015-aws",
                                                 "linux-headers-aws")


# -- the running kernel's module, asked of apt before anything is installed ----------------

def install(tmp_path, kernel: str, *packages: str):
    stubs = {
        "apt-get": 'echo "$*" >> "${0%/*}/apt-get.log"\n',
        "apt-cache": (f'd={FIXTURES / "apt-cache-policy"}\ncase "$1" in\n'
                      '  policy) f="$d/$2"; [ -f "$f" ] && cat "$f"; exit 0 ;;\n'
                      '  show) exit 0 ;;\nesac\n'),
        "uname": f"echo {kernel}\n",
    }
    proc = run_with_stubs(script_command("nvidia_driver/install.sh", "", "", "", *packages),
                          tmp_path, stubs)
    log = tmp_path / "stub-bin" / "apt-get.log"
    return proc, (log.read_text().splitlines() if log.exists() else [])


def test_a_kernel_canonical_built_a_module_for_installs(tmp_path):
    plan = plan_for(UBUNTU_24_04, "6.8.0-1015-aws")
    proc, calls = install(tmp_path, "6.8.0-1015-aws", *plan.packages)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert calls[-1].endswith(" ".join(plan.packages))


def test_a_kernel_without_a_module_stops_in_one_line_naming_it(tmp_path):
    kernel = "6.8.0-1099-custom"
    plan = plan_for(UBUNTU_24_04, kernel)
    proc, calls = install(tmp_path, kernel, *plan.packages)
    assert proc.returncode == 1
    assert proc.stderr == (
        f"linux-modules-nvidia-580-server-open-{kernel}: not in this host's apt sources; no "
        f"precompiled NVIDIA module for the running kernel {kernel} (boot a kernel the "
        "archive builds modules for, or take nvidia_driver_ubuntu_modules: dkms)\n")
    assert calls == ["update -qq"]  # nothing installed


# -- the archive's components --------------------------------------------------------------

@pytest.mark.parametrize("dist", [UBUNTU_22_04, UBUNTU_24_04], ids=lambda d: d.name)
def test_ubuntu_ensures_multiverse_where_fabric_manager_comes(dist):
    with_fm = plan_for(dist, "6.8.0-90-generic", devices=HGX)
    assert with_fm.fabricmanager == "nvidia-fabricmanager-580"
    assert archive_components(dist, with_fm) == ("multiverse",)
    assert archive_components(dist, plan_for(dist, "6.8.0-90-generic")) == ()


@pytest.mark.parametrize("dist", [DEBIAN_12, DEBIAN_13], ids=lambda d: d.name)
def test_debian_needs_contrib_with_or_without_fabric_manager(dist):
    branch = 590 if dist is DEBIAN_13 else 580
    for devices in (H100, HGX):
        plan = driver_plan(dist, Settings(gpu_count=1, nvidia_driver_branch=branch),
                           "6.12.48+deb13-amd64", devices)
        assert archive_components(dist, plan) == ("contrib",)


# -- the default branch ----------------------------------------------------------------------

@pytest.mark.parametrize("dist, branch", [(DEBIAN_12, 580), (DEBIAN_13, 590),
                                          (UBUNTU_22_04, 580), (UBUNTU_24_04, 580)],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_the_default_branch_is_one_each_distribution_carries(dist, branch):
    settings = Settings(gpu_count=1)
    assert settings.nvidia_driver_branch is None
    assert distributions.driver_branch(dist, settings) == branch
    assert distributions.with_branch(dist, settings).nvidia_driver_branch == branch
    distributions.driver_packages(dist, settings)  # a scheme carries it: no ValueError
    plan = driver_plan(dist, settings, "6.8.0-90-generic", H100)
    assert any(str(branch) in p for p in (plan.pin, *plan.packages))
    # an explicit branch wins
    assert distributions.driver_branch(dist, Settings(nvidia_driver_branch=570)) == 570
