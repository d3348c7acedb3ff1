"""The lab's Secure Boot: mokutil's stand-in, DKMS signing with the MOK pair and the module
loading that refuses what no enrolled key signed (lab/UPSTREAM.md), run in a scratch root
($FLEETLAB_ROOT) as installed, and read by the deploy's own fact script."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from lab.nvidia import packages
from ollama_fleet.tasks.kit.facts import parse_secure_boot
from ollama_fleet.tasks.kit.paths import TEMPLATES
from ollama_fleet.tasks.kit.scripts import script_command
from tests.unit.stubs import run_with_stubs

KERNEL = os.uname().release
CERT = bytes.fromhex("3082010a0282010100") + b"\x01" * 40


@pytest.fixture
def root(tmp_path):
    """A scratch host: the stand-ins in bin/, the running kernel's headers, one H100."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for source, name, values in (
            ("mokutil.py", "mokutil", {"FLEETLAB_MOKUTIL_VERSION": packages.MOKUTIL_VERSION}),
            ("nvidia-dkms.sh", "nvidia-dkms", {"FLEETLAB_MODULE_FLAVOUR": "open"}),
            ("nvidia_kmod_load.py", "nvidia-kmod-load", {})):
        text = packages.render_standin(source, driver_version="590.44.01", package="x",
                                       values=values)
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    host = tmp_path / "root"
    (host / f"lib/modules/{KERNEL}/build/include").mkdir(parents=True)
    (host / "etc/fleetlab").mkdir(parents=True)
    (host / "etc/fleetlab/gpus.json").write_text(
        '{"gpus": [{"index": 0, "uuid": "GPU-1", "name": "NVIDIA H100 80GB HBM3", '
        '"pci_bus_id": "00000000:18:00.0", "device_id": "0x2330"}]}\n')
    return tmp_path


def run(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLEETLAB_ROOT": str(root / "root"),
           "PATH": f"{root / 'bin'}:{os.environ['PATH']}"}
    return subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=60)


def secure_boot(root: Path, on: bool = True) -> None:
    (root / "root/etc/fleetlab/secureboot").write_text("enabled\n" if on else "disabled\n")


def enroll(root: Path, cert: bytes) -> None:
    (root / "root/etc/fleetlab/mok-enrolled").mkdir(parents=True, exist_ok=True)
    (root / "root/etc/fleetlab/mok-enrolled/fleet.der").write_bytes(cert)


def mok_pair(root: Path) -> Path:
    dkms = root / "root/var/lib/dkms"
    dkms.mkdir(parents=True, exist_ok=True)
    (dkms / "mok.key").write_text("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n")
    (dkms / "mok.pub").write_bytes(CERT)
    return dkms / "mok.pub"


def test_mokutil_says_the_state_as_mokutil_does(root):
    off = run(root, "mokutil", "--sb-state")
    assert (off.returncode, off.stdout) == (0, "SecureBoot disabled\n")
    secure_boot(root)
    on = run(root, "mokutil", "--sb-state")
    assert (on.returncode, on.stdout) == (0, "SecureBoot enabled\n")


def test_mokutil_test_key(root):
    cert = mok_pair(root)
    no = run(root, "mokutil", "--test-key", str(cert))
    assert (no.returncode, no.stdout) == (1, f"{cert} is not enrolled\n")
    enroll(root, CERT)
    yes = run(root, "mokutil", "--test-key", str(cert))
    assert (yes.returncode, yes.stdout) == (0, f"{cert} is already enrolled\n")
    missing = run(root, "mokutil", "--test-key", "/nowhere.der")
    assert (missing.returncode, missing.stderr) == (255, "Failed to open /nowhere.der\n")
    pem = root / "cert.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    bad = run(root, "mokutil", "--test-key", str(pem))
    assert (bad.returncode, bad.stderr) == (255, "Not a valid x509 certificate\n")


def test_dkms_signs_only_with_the_mok_pair(root):
    module = root / f"root/lib/modules/{KERNEL}/updates/dkms/nvidia.ko"
    plain = run(root, "nvidia-dkms", "build")
    assert "Signing module" not in plain.stdout
    assert module.read_text() == "590.44.01 open\n"
    mok_pair(root)
    signed = run(root, "nvidia-dkms", "build")
    assert ("Building module(s)... done.\n"
            "Signing module /var/lib/dkms/nvidia/590.44.01/build/nvidia.ko\n"
            f"Installing /lib/modules/{KERNEL}/updates/dkms/nvidia.ko\n") in signed.stdout
    assert module.read_text().split() == ["590.44.01", "open", hashlib.sha256(CERT).hexdigest()]


@pytest.mark.parametrize("signed, enrolled, reason", [
    (False, False, "unsigned module"),
    (True, False, "module with unavailable key"),
    (True, True, None),
])
def test_secure_boot_refuses_what_no_enrolled_key_signed(root, signed, enrolled, reason):
    if signed:
        mok_pair(root)
    if enrolled:
        enroll(root, CERT)
    run(root, "nvidia-dkms", "build")
    secure_boot(root)
    loaded = root / "root/run/fleetlab/nvidia-driver-loaded"
    boot = run(root, "nvidia-kmod-load")
    assert boot.returncode == 0
    if reason:
        assert boot.stderr == (f"Loading of {reason} is rejected\n"
                               "modprobe: ERROR: could not insert 'nvidia': Key was rejected "
                               "by service\n")
        assert not loaded.exists()
    else:
        assert loaded.read_text() == "590.44.01\n"


def test_without_secure_boot_an_unsigned_module_loads(root):
    run(root, "nvidia-dkms", "build")
    secure_boot(root, on=False)
    run(root, "nvidia-kmod-load")
    assert (root / "root/run/fleetlab/nvidia-driver-loaded").read_text() == "590.44.01\n"


def test_the_deploys_fact_reads_the_stand_in(root):
    cert = mok_pair(root)
    secure_boot(root)
    enroll(root, CERT)
    script = str(TEMPLATES / "facts/secure-boot.sh")
    out = run(root, "sh", script, str(cert), base64.b64encode(b"\x30\x82nope").decode())
    found = parse_secure_boot(out.stdout.splitlines())
    assert found["via"] == "mokutil" and found["enabled"]
    assert found["host"] == {"enrolled": True, "said": f"{cert} is already enrolled"}
    assert found["given"]["enrolled"] is False


def test_validation_disabled_in_shim_is_secure_boot_off(tmp_path):
    # MokSBState set: mokutil says both lines, and the kernel enforces no signatures
    stub = ("case \"$1\" in --sb-state) echo 'SecureBoot enabled'; "
            "echo 'SecureBoot validation is disabled in shim' ;; esac\n")
    proc = run_with_stubs(script_command("facts/secure-boot.sh", "/nonexistent"), tmp_path,
                          {"mokutil": stub})
    found = parse_secure_boot(proc.stdout.splitlines())
    assert (found["via"], found["enabled"]) == ("mokutil", False), proc.stdout
