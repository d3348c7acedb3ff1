"""The lab hosts' modinfo/modprobe (lab/recipes/host/fleetlab-kmod): the fabric modules a
GPU server's kernel ships (ib_umad) are there unless the lab says the kernel lacks them,
with kmod's own errors then; every other module goes to kmod."""

from __future__ import annotations

import subprocess
from pathlib import Path

SHIM = Path(__file__).resolve().parents[2] / "lab/recipes/host/fleetlab-kmod"


def run(root: Path, tool: str, *args: str) -> subprocess.CompletedProcess:
    link = root / "usr/local/sbin" / tool
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(SHIM)
    return subprocess.run([str(link), *args], capture_output=True, text=True, timeout=10,
                          env={"PATH": "/usr/bin:/bin", "FLEETLAB_ROOT": str(root)})


def test_ib_umad_is_found_and_loads_unless_the_kernel_lacks_it(tmp_path):
    assert run(tmp_path, "modprobe", "ib_umad").returncode == 0
    found = run(tmp_path, "modinfo", "ib_umad")
    assert found.returncode == 0 and "/kernel/drivers/infiniband/core/ib_umad.ko" in found.stdout
    (tmp_path / "etc/fleetlab").mkdir(parents=True)
    (tmp_path / "etc/fleetlab/kernel-modules-missing").write_text("ib_umad\n")
    missing = run(tmp_path, "modinfo", "ib_umad")
    assert (missing.returncode, missing.stderr) == (
        1, "modinfo: ERROR: Module ib_umad not found.\n")
    refused = run(tmp_path, "modprobe", "ib_umad")
    assert refused.returncode == 1
    assert refused.stderr.startswith("modprobe: FATAL: Module ib_umad not found in directory "
                                     "/lib/modules/")


def test_every_other_module_goes_to_kmod(tmp_path):
    real = tmp_path / "usr/sbin/modprobe"
    real.parent.mkdir(parents=True)
    real.write_text('#!/bin/sh\necho "kmod $*"\nexit 3\n')
    real.chmod(0o755)
    proc = run(tmp_path, "modprobe", "-q", "nvidia_uvm")
    assert (proc.returncode, proc.stdout) == (3, "kmod -q nvidia_uvm\n")
