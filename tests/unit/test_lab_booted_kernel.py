"""The lab host's booted kernel: the boot picks the newest /boot/vmlinuz-* as GRUB's default
entry would, `uname` reports it, and the NVIDIA stand-ins (DKMS, the module loading) take it
as the running kernel; with no lab kernel installed all of it is the machine's own kernel.
Run in a scratch root ($FLEETLAB_ROOT) with the host image's scripts and the stand-ins as
installed (lab/recipes/host, lab/nvidia/standins)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lab.images import RECIPES
from lab.nvidia import packages

REAL = os.uname().release
OLDER, NEWER = "6.1.0-9-cloud-amd64", "6.1.0-28-cloud-amd64"  # 9 < 28: version order


@pytest.fixture
def root(tmp_path):
    """A scratch host with coreutils' uname diverted (to this machine's) and the image's
    uname in its place; the DKMS and module-loading stand-ins of 590.44.01; one GPU."""
    host = tmp_path / "root"
    (host / "usr/bin").mkdir(parents=True)
    (host / "usr/bin/uname.distrib").symlink_to("/usr/bin/uname")
    for source, target in (("fleetlab-uname", "usr/bin/uname"),
                           ("fleetlab-booted-kernel", "usr/local/sbin/fleetlab-booted-kernel")):
        (host / target).parent.mkdir(parents=True, exist_ok=True)
        (host / target).write_bytes((RECIPES / "host" / source).read_bytes())
        (host / target).chmod(0o755)
    for source, name, values in (
            ("nvidia-dkms.sh", "nvidia-dkms", {"FLEETLAB_MODULE_FLAVOUR": "open"}),
            ("nvidia_kmod_load.py", "nvidia-kmod-load", {})):
        path = host / "usr/lib/fleetlab" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(packages.render_standin(source, driver_version="590.44.01", package="x",
                                                values=values))
        path.chmod(0o755)
    (host / "etc/fleetlab").mkdir(parents=True)
    (host / "etc/fleetlab/gpus.json").write_text(
        '{"gpus": [{"index": 0, "uuid": "GPU-1", "name": "NVIDIA H100 80GB HBM3", '
        '"pci_bus_id": "00000000:18:00.0", "memory_total_mib": 81559, "pci_device_id": "0x2330"}]}')
    return host


def run(root: Path, program: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(root / program), *args], capture_output=True, text=True,
                          env={**os.environ, "FLEETLAB_ROOT": str(root)}, timeout=60)


def install_kernel(root: Path, kernel: str, headers: bool = True) -> None:
    """What linux-image-KERNEL (and its headers) put where the boot and dkms look."""
    (root / "boot").mkdir(exist_ok=True)
    (root / f"boot/vmlinuz-{kernel}").write_text("not a kernel\n")
    (root / f"boot/config-{kernel}").write_text("# no configuration\n")
    (root / f"lib/modules/{kernel}").mkdir(parents=True, exist_ok=True)
    if headers:
        (root / f"lib/modules/{kernel}/build/include").mkdir(parents=True, exist_ok=True)


def boot(root: Path) -> str:
    """A reboot: /run is a tmpfs, the image's early unit picks the kernel."""
    subprocess.run(["rm", "-rf", str(root / "run")], check=True)
    (root / "run/fleetlab").mkdir(parents=True)
    result = run(root, "usr/local/sbin/fleetlab-booted-kernel")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_without_a_lab_kernel_everything_is_the_machines_own(root):
    assert "no kernel in /boot" in boot(root)
    assert not (root / "run/fleetlab/booted-kernel").exists()
    for args in (("-r",), ("-a",), ("-s",), ()):
        assert run(root, "usr/bin/uname", *args).stdout == \
            subprocess.run(["uname", *args], capture_output=True, text=True).stdout


def test_the_newest_kernel_in_boot_is_booted_and_reported(root):
    install_kernel(root, OLDER)
    install_kernel(root, NEWER)
    assert f"booted kernel {NEWER}" in boot(root)
    assert (root / "run/fleetlab/booted-kernel").read_text() == f"{NEWER}\n"
    assert run(root, "usr/bin/uname", "-r").stdout == f"{NEWER}\n"
    assert run(root, "usr/bin/uname", "--kernel-release").stdout == f"{NEWER}\n"
    everything = run(root, "usr/bin/uname", "-a").stdout
    real = subprocess.run(["uname", "-a"], capture_output=True, text=True).stdout
    assert everything == real.replace(f" {REAL} ", f" {NEWER} ")
    assert run(root, "usr/bin/uname", "-s", "-m").stdout == \
        subprocess.run(["uname", "-s", "-m"], capture_output=True, text=True).stdout
    wrong = run(root, "usr/bin/uname", "--no-such-option")
    assert wrong.returncode == 1 and "unrecognized option" in wrong.stderr


def test_the_stand_ins_take_the_booted_kernel_as_the_running_one(root):
    """DKMS builds for the booted kernel; at the next boot the module loads from it. A
    kernel installed but not booted yet only gets the module as the newest kernel."""
    install_kernel(root, OLDER)
    boot(root)
    built = run(root, "usr/lib/fleetlab/nvidia-dkms", "build")
    assert f"Building for {OLDER}\n" in built.stdout, built.stdout
    assert (root / f"lib/modules/{OLDER}/updates/dkms/nvidia.ko").read_text() == "590.44.01 open\n"
    install_kernel(root, NEWER)  # installed, not booted: still the older one's module loads
    loaded = run(root, "usr/lib/fleetlab/nvidia-kmod-load")
    assert "590.44.01 (open) loaded" in loaded.stdout, loaded.stderr
    boot(root)  # no module built for the new kernel: modprobe finds none
    missing = run(root, "usr/lib/fleetlab/nvidia-kmod-load")
    assert missing.stderr == f"modprobe: FATAL: Module nvidia not found in directory " \
                             f"/lib/modules/{NEWER}\n"
    assert not (root / "run/fleetlab/nvidia-driver-loaded").exists()
    again = run(root, "usr/lib/fleetlab/nvidia-dkms", "autoinstall", NEWER)
    assert f"Autoinstall on {NEWER} succeeded" in again.stdout
    boot(root)
    assert "loaded" in run(root, "usr/lib/fleetlab/nvidia-kmod-load").stdout


def test_dkms_builds_for_the_running_and_the_newest_installed_kernel(root):
    install_kernel(root, OLDER)
    boot(root)
    install_kernel(root, NEWER)
    built = run(root, "usr/lib/fleetlab/nvidia-dkms", "build")
    assert f"Building for {OLDER} and {NEWER}\n" in built.stdout, built.stdout
    for kernel in (OLDER, NEWER):
        assert (root / f"lib/modules/{kernel}/updates/dkms/nvidia.ko").is_file()
    # as dkms: the newest /boot/config-* whose modules directory is gone is no kernel to
    # build for, and no other is taken in its place
    (root / "boot/config-6.1.0-30-cloud-amd64").write_text("#\n")
    assert f"Building for {OLDER}\n" in run(root, "usr/lib/fleetlab/nvidia-dkms", "build").stdout
