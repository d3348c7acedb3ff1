"""A GPU host comes back serving after a reboot, a kernel update or an in-branch driver
update (issue 26): what keeps the branch without keeping the next kernel's module out,
Fabric Manager at the driver's version, persistence mode on Ubuntu, Secure Boot before
DKMS, and the reasons a host must reboot.

Ubuntu's plans are checked against package relations recorded from upstream
(fixtures/ubuntu/noble-nvidia-580-server.Packages says where each came from); the
persistenced units are upstream's files: Canonical's nvidia-graphics-drivers
(580-server-noble at 24d7353e, 570-server-jammy at f57ac99f) and NVIDIA's sample
(NVIDIA/nvidia-persistenced init/systemd/nvidia-persistenced.service.template).
"""

from __future__ import annotations

import base64
import fnmatch
import re
from pathlib import Path

import pytest
from pyinfra.api import OperationError
from pyinfra.context import ctx_host

from ollama_fleet.tasks.kit import distributions
from ollama_fleet.tasks.kit.distributions import DEBIAN_12, DEBIAN_13, UBUNTU_22_04, UBUNTU_24_04
from ollama_fleet.tasks.kit.facts import (
    parse_reboot_state,
    parse_secure_boot,
    persistence_dropin,
    reboot_required,
)
from ollama_fleet.tasks.kit.settings import Settings
from ollama_fleet.tasks.steps import nvidia_driver
from ollama_fleet.tasks.steps.nvidia_driver import (
    branch_preferences,
    driver_plan,
    read_mok,
    secure_boot_problem,
)
from tests.unit.ophelper import FakeHost
from tests.unit.test_nvidia_driver import reboots, run_step, smi

FIXTURES = Path(__file__).parent / "fixtures"
H100 = [{"slot": "0000:18:00.0", "device": 0x2330, "class": 0x030200}]
HGX = H100 + [{"slot": "0000:05:00.0", "device": 0x22A3, "class": 0x068000}]
NOBLE_KERNEL = "6.8.0-90-generic"


def packages_file(path: Path) -> dict[str, dict[str, str]]:
    """An apt Packages file: name -> its fields."""
    stanzas = {}
    for block in re.split(r"\n\s*\n", "\n".join(
            line for line in path.read_text().splitlines() if not line.startswith("#"))):
        fields = dict(line.split(": ", 1) for line in block.strip().splitlines() if line)
        if fields:
            stanzas[fields["Package"]] = fields
    return stanzas


def relations(field: str) -> list[tuple[str, str]]:
    """Depends -> [(name, version constraint or '')] (alternatives flattened)."""
    found = []
    for part in re.split(r"[,|]", field):
        match = re.match(r"\s*([a-z0-9.+-]+)\s*(?:\((.*)\))?", part)
        if match:
            found.append((match.group(1), (match.group(2) or "").strip()))
    return found


NOBLE = packages_file(FIXTURES / "ubuntu" / "noble-nvidia-580-server.Packages")


def noble_plan(flavour: str = "auto", modules: str = "precompiled", devices=HGX):
    return driver_plan(UBUNTU_24_04, Settings(
        gpu_count=1, nvidia_driver_branch=580, nvidia_driver_flavour=flavour,
        nvidia_driver_ubuntu_modules=modules), NOBLE_KERNEL, devices)


# -- Ubuntu: nothing held, the branch kept by apt preferences ----------------------------

@pytest.mark.parametrize("flavour", ["open", "proprietary"])
@pytest.mark.parametrize("modules", ["precompiled", "dkms"])
def test_ubuntu_plans_name_packages_canonical_publishes(flavour, modules):
    plan = noble_plan(flavour, modules)
    assert set(plan.packages) <= set(NOBLE), set(plan.packages) - set(NOBLE)


@pytest.mark.parametrize("modules", ["precompiled", "dkms"])
def test_ubuntu_holds_nothing_that_a_new_kernel_or_an_update_needs(modules):
    """The flavour meta-package depends on its kernel's module package (=) and on
    nvidia-kernel-common (>= the driver it was built with); the userspace packages tie one
    another with `=` and Fabric Manager to nvidia-kernel-common-<branch>-server-<version>:
    holding any of them keeps the next kernel's module out (or Canonical's in-branch
    fixes). So nothing is held, and what an older deploy held is released."""
    plan = noble_plan(modules=modules)
    meta = NOBLE["linux-modules-nvidia-580-server-open-generic"]
    needs = dict(relations(meta["Depends"]))
    assert needs["linux-modules-nvidia-580-server-open-6.8.0-90-generic"] == "= 6.8.0-90.91+1"
    assert needs["nvidia-kernel-common-580-server"].startswith(">= ")
    assert ("nvidia-kernel-common-580-server-580.126.20", "") in relations(
        NOBLE["nvidia-fabricmanager-580"]["Depends"])
    assert plan.held == ()
    assert set(plan.released) >= {p for p in plan.packages if p.startswith("linux-modules-")}
    assert "nvidia-fabricmanager-580" in plan.released
    if modules == "precompiled":
        assert "linux-modules-nvidia-580-server-open-generic" in plan.packages
    else:  # DKMS builds each new kernel's module from its headers
        assert (plan.headers, plan.headers_meta) == (f"linux-headers-{NOBLE_KERNEL}",
                                                     "linux-headers-generic")


def test_ubuntu_branch_preferences_cover_the_branchs_driver_versioned_packages():
    """Every package of the branch whose version is the driver's is pinned to `580.*`;
    none versioned as a kernel (the modules must follow each kernel)."""
    plan = noble_plan()
    upstream = "580.126.20"
    driver_versioned = {name for name, fields in NOBLE.items()
                        if fields["Version"].startswith(upstream) and "-580" in name
                        and not name.endswith(upstream)}  # the firmware names its version
    assert "nvidia-fabricmanager-580" in driver_versioned
    assert driver_versioned <= set(plan.branch_packages), driver_versioned - set(
        plan.branch_packages)
    assert not [p for p in plan.branch_packages if p.startswith("linux-")]
    text = branch_preferences(plan, 580)
    assert text.splitlines()[1:] == [f"Package: {' '.join(plan.branch_packages)}",
                                     "Pin: version 580.*", "Pin-Priority: 1000"]


def test_the_pin_lets_in_branch_updates_through_and_keeps_transitional_ones_out():
    """A retired branch's packages become transitional ones versioned as the next branch
    (nvidia-fabricmanager-dev-535 at 580.126.20-0ubuntu3): `Pin: version 580.*` matches
    the branch's own updates only."""
    transitional = NOBLE["nvidia-fabricmanager-dev-535"]
    assert transitional["Depends"] == "nvidia-fabricmanager-dev-580"
    assert not fnmatch.fnmatch(transitional["Version"], "535.*")
    for version, kept in (("580.126.20-0ubuntu0.24.04.2", True), ("580.142.03-0ubuntu1", True),
                          ("590.48.01-0ubuntu0.24.04.1", False)):
        assert fnmatch.fnmatch(version, "580.*") is kept


def test_ubuntu_writes_the_preferences_and_holds_nothing(monkeypatch):
    rec = run_ubuntu(monkeypatch)
    puts = [kwargs for name, kwargs in rec.calls if name == "put"]
    assert [p["dest"] for p in puts] == ["/etc/modprobe.d/blacklist-nouveau.conf",
                                         distributions.BRANCH_PREFERENCES]
    assert "Pin: version 580.*" in puts[1]["src"].getvalue()
    held = dict(rec.calls)["held"]
    assert held["packages"] == []
    # (run_step's kernel is a Debian one: the names' shapes are what counts here)
    assert {"nvidia-fabricmanager-580", "nvidia-utils-580-server"} <= set(held["released"])
    assert len([p for p in held["released"] if p.startswith("linux-modules-nvidia-")]) == 2


def run_ubuntu(monkeypatch, gpus=None):
    from tests.unit import test_nvidia_driver as base

    monkeypatch.setattr(base, "DEBIAN_13", UBUNTU_24_04)
    monkeypatch.setattr(base, "H100_HGX", HGX)
    return run_step(monkeypatch, gpus or smi(None), (), Settings(gpu_count=1))


# -- Debian: the pin (or the hold) keeps the branch, headers follow the kernel -----------

def test_debian_pinned_scheme_holds_only_the_pin_and_builds_for_every_kernel():
    plan = driver_plan(DEBIAN_13, Settings(gpu_count=1, nvidia_driver_branch=590),
                       "6.12.48+deb13-cloud-amd64", HGX)
    assert plan.held == ("nvidia-driver-pinning-590",)
    assert plan.headers_meta == "linux-headers-cloud-amd64"
    assert plan.driver_version == "nvidia-driver-cuda"
    assert "nvidia-fabricmanager" in plan.released


def test_debian12_branch_named_packages_stay_held_with_fabric_manager():
    """Below 580 nothing but a hold keeps these names on their branch; Fabric Manager is
    held with the driver, at the version installed together."""
    plan = driver_plan(DEBIAN_12, Settings(gpu_count=1, nvidia_driver_branch=570),
                       "6.1.0-40-amd64", HGX)
    assert plan.held == ("nvidia-open-570", "nvidia-fabricmanager-570")
    assert plan.driver_version == "nvidia-open-570"
    assert plan.released == ("linux-headers-amd64",)


# -- an update waiting for its module: the host serves, so it reboots alone --------------

def test_a_driver_update_waiting_for_its_module_reboots_one_host_at_a_time(monkeypatch):
    mismatch = {"installed": True, "working": False, "rc": 18, "gpus": [],
                "error": "Failed to initialize NVML: Driver/library version mismatch "
                         "NVML library version: 590.48"}
    packages = ("linux-headers-6.12.48+deb13-amd64", "nvidia-driver-pinning-590",
                "nvidia-driver-cuda", "nvidia-kernel-open-dkms", "nvidia-persistenced",
                "nvidia-fabricmanager")
    rec = run_step(monkeypatch, mismatch, packages, Settings(gpu_count=1,
                                                             nvidia_driver_branch=590),
                   install_changes=False)
    (reboot,) = reboots(rec)
    assert reboot["_serial"] is True and reboot["_if"]() is True


# -- persistence mode --------------------------------------------------------------------

def unit_exec(name: str) -> list[str]:
    text = (FIXTURES / "nvidia-persistenced" / name).read_text()
    return [line for line in text.splitlines() if line.startswith("ExecStart=")]


@pytest.mark.parametrize("unit", ["ubuntu-noble-580-server.service",
                                  "ubuntu-jammy-570-server.service"])
def test_ubuntus_unit_gets_a_drop_in_without_no_persistence_mode(unit):
    assert persistence_dropin(unit_exec(unit)) == (
        "# ollama-fleet (nvidia_persistence_mode): the packaged unit turns persistence mode "
        "off\n[Service]\nExecStart=\nExecStart=/usr/bin/nvidia-persistenced --user "
        "nvidia-persistenced --verbose\n")


@pytest.mark.parametrize("exec_lines", [
    unit_exec("nvidia-sample.service.template"),
    ["ExecStart=/usr/bin/nvidia-persistenced --user root --persistence-mode --verbose"],
    ["ExecStart=/usr/bin/nvidia-persistenced --user nvidia-persistenced --verbose"],  # the lab's
    [],
])
def test_a_unit_that_keeps_persistence_mode_gets_no_drop_in(exec_lines):
    assert persistence_dropin(exec_lines) is None


# -- Secure Boot ---------------------------------------------------------------------------

def sb(state: str = "SecureBoot enabled", host: str | None = None, given: str | None = None):
    lines = ["via=mokutil", f"sb={state}"]
    lines += [f"host={host}"] if host else []
    lines += [f"given={given}"] if given else []
    return parse_secure_boot(lines)


def test_secure_boot_as_mokutil_and_the_variables_say():
    assert sb()["enabled"] and not sb("SecureBoot disabled")["enabled"]
    assert not parse_secure_boot(["via=none", "sb="])["enabled"]
    assert sb(given="0 /tmp/tmp.x is already enrolled")["given"]["enrolled"]
    assert sb(given="0 /tmp/tmp.x is already in db")["given"]["enrolled"]
    assert not sb(given="1 /tmp/tmp.x is not enrolled")["given"]["enrolled"]
    # a pending request is no enrolled key yet; neither is a blocked one
    assert not sb(given="0 /tmp/tmp.x is already in the enrollment request")["given"]["enrolled"]
    assert not sb(given="0 /tmp/tmp.x is blocked in dbx")["given"]["enrolled"]


DEBIAN_PLAN = driver_plan(DEBIAN_13, Settings(gpu_count=1, nvidia_driver_branch=590),
                          "6.12.48+deb13-amd64", H100)
KEYED = Settings(gpu_count=1, nvidia_driver_branch=590, nvidia_driver_mok_key="/k",
                 nvidia_driver_mok_cert="/c.der")


def test_dkms_under_secure_boot_stops_without_an_enrolled_key():
    problem = secure_boot_problem(sb(), DEBIAN_PLAN, Settings(gpu_count=1), DEBIAN_13)
    assert problem.startswith("nvidia_driver_mok_key: Secure Boot is on and the kernel "
                              "refuses the NVIDIA modules DKMS builds")
    assert "\n" not in problem and "precompiled" not in problem
    ubuntu = driver_plan(UBUNTU_22_04, Settings(gpu_count=1, nvidia_driver_ubuntu_modules="dkms"),
                         "5.15.0-100-generic", H100)
    assert "nvidia_driver_ubuntu_modules: precompiled" in secure_boot_problem(
        sb(), ubuntu, Settings(gpu_count=1), UBUNTU_22_04)
    # the host's own DKMS key, enrolled, signs them
    assert secure_boot_problem(sb(host="0 /var/lib/dkms/mok.pub is already enrolled"),
                               DEBIAN_PLAN, Settings(gpu_count=1), DEBIAN_13) is None


def test_the_operators_key_must_be_enrolled():
    problem = secure_boot_problem(sb(given="1 /tmp/tmp.x is not enrolled"), DEBIAN_PLAN, KEYED,
                                  DEBIAN_13)
    assert problem.startswith("nvidia_driver_mok_cert: Secure Boot is on and /c.der is not "
                              "enrolled in MOK (mokutil --test-key: is not enrolled)")
    assert secure_boot_problem(sb(given="0 /tmp/tmp.x is already enrolled"), DEBIAN_PLAN,
                               KEYED, DEBIAN_13) is None


@pytest.mark.parametrize("state", ["SecureBoot disabled", ""])
def test_no_secure_boot_no_problem(state):
    assert secure_boot_problem(sb(state), DEBIAN_PLAN, Settings(gpu_count=1), DEBIAN_13) is None


def test_precompiled_modules_are_signed_by_canonical():
    assert secure_boot_problem(sb(), noble_plan(), Settings(gpu_count=1), UBUNTU_24_04) is None


DER = bytes.fromhex("3082010a0282010100") + b"\x00" * 32
PEM_KEY = b"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


def test_the_mok_files_are_read_on_the_operators_machine(tmp_path):
    (tmp_path / "mok.key").write_bytes(PEM_KEY)
    (tmp_path / "mok.pem").write_text("-----BEGIN CERTIFICATE-----\n"
                                      + base64.encodebytes(DER).decode()
                                      + "-----END CERTIFICATE-----\n")
    settings = Settings(nvidia_driver_mok_key=str(tmp_path / "mok.key"),
                        nvidia_driver_mok_cert=str(tmp_path / "mok.pem"))
    assert read_mok(settings) == (PEM_KEY, DER)  # PEM is given to DKMS and mokutil as DER
    (tmp_path / "mok.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match=r"^nvidia_driver_mok_cert: .*: not an X.509"):
        read_mok(settings)
    missing = Settings(nvidia_driver_mok_key=str(tmp_path / "none"),
                       nvidia_driver_mok_cert=str(tmp_path / "mok.pem"))
    with pytest.raises(ValueError, match=r"^nvidia_driver_mok_key: .*none: No such file"):
        read_mok(missing)
    assert read_mok(Settings()) is None


def test_secure_boot_stops_the_host_at_prepare_naming_it():
    facts = {"ollama_fleet.tasks.kit.facts.SecureBoot": sb()}
    with ctx_host.use(FakeHost(facts=facts)), pytest.raises(OperationError) as error:
        nvidia_driver.signing_key(Settings(gpu_count=1), DEBIAN_13, DEBIAN_PLAN)
    assert str(error.value).startswith("gpu-1: nvidia_driver_mok_key: Secure Boot is on")


def test_an_enrolled_key_is_installed_where_dkms_signs_before_the_driver(monkeypatch, tmp_path):
    (tmp_path / "mok.key").write_bytes(PEM_KEY)
    (tmp_path / "mok.der").write_bytes(DER)
    settings = Settings(gpu_count=1, nvidia_driver_branch=590,
                        nvidia_driver_mok_key=str(tmp_path / "mok.key"),
                        nvidia_driver_mok_cert=str(tmp_path / "mok.der"))
    from tests.unit import test_nvidia_driver as base

    cert = base64.b64encode(DER).decode()
    real = base.FakeHost

    def with_secure_boot(facts):
        facts[f"ollama_fleet.tasks.kit.facts.SecureBoot:"
              f'{{"cert_base64": "{cert}", "host_cert": "/var/lib/dkms/mok.pub"}}'] = \
            sb(given="0 /tmp/tmp.x is already enrolled")
        return real(facts=facts)

    monkeypatch.setattr(base, "FakeHost", with_secure_boot)
    rec = run_step(monkeypatch, smi(None), (), settings)
    names = [(name, kwargs.get("dest")) for name, kwargs in rec.calls]
    # a private key: written as a secret (mode 600 from the start, never shown by --diff)
    assert names.index(("secret_file", "/var/lib/dkms/mok.key")) < names.index(("driver", None))
    key = next(k for n, k in rec.calls if n == "secret_file")
    assert key["content"] == PEM_KEY.decode()
    assert ("put", "/var/lib/dkms/mok.key") not in names
    pub = next(k for n, k in rec.calls if n == "put" and k["dest"] == "/var/lib/dkms/mok.pub")
    assert pub["src"].getvalue() == DER
    assert UBUNTU_24_04.dkms_mok == ("/var/lib/shim-signed/mok/MOK.priv",
                                     "/var/lib/shim-signed/mok/MOK.der")


# -- reboot required -----------------------------------------------------------------------

def test_nothing_to_reboot_for():
    assert reboot_required(["running=6.8.0-90-generic", "kernel=6.8.0-90-generic",
                            "kernel=6.8.0-88-generic", "module=6.8.0-90-generic",
                            "loaded=580.126.20", "library=580.126.20", "smi_rc=0",
                            "smi=580.126.20"]) == []


def test_every_reason_to_reboot():
    lines = ["running=6.8.0-99-generic", "kernel=6.8.0-99-generic", "kernel=6.8.0-100-generic",
             "flag=yes", "pkg=linux-image-6.8.0-100-generic", "pkg=dbus",
             "loaded=580.126.20", "library=580.142.03"]
    assert reboot_required(lines) == [
        "/run/reboot-required (linux-image-6.8.0-100-generic, dbus)",
        "kernel 6.8.0-100-generic installed, 6.8.0-99-generic running",
        "NVIDIA module 580.126.20 loaded, driver 580.142.03 installed"]


def test_nvidia_smis_mismatch_says_it_without_the_versions():
    lines = ["running=6.12.48+deb13-amd64", "smi_rc=18",
             "smi=Failed to initialize NVML: Driver/library version mismatch"]
    assert reboot_required(lines) == [
        "nvidia-smi: Driver/library version mismatch (the loaded NVIDIA module is not the "
        "installed driver's)"]
    assert parse_reboot_state(lines)["smi_rc"] == 18


def test_debian_kernel_releases_compare_by_number():
    lines = ["running=6.12.48+deb13-amd64", "kernel=6.12.48+deb13-amd64",
             "kernel=6.12.57+deb13-amd64", "kernel=6.1.0-40-amd64"]
    assert reboot_required(lines) == ["kernel 6.12.57+deb13-amd64 installed, "
                                      "6.12.48+deb13-amd64 running"]
