"""The lab's GPU faults as the NVIDIA stand-ins show them. No Docker, no packages built.

The stand-ins are rendered as their packages carry them and run on a simulated host root
(FLEETLAB_ROOT), containers as bundle directories the hook writes into, as in
test_standin_live_gpu_state.py; the fault script (lab/nvidia/standins/fleetlab_fault.py,
which `python -m lab fault` pipes into a lab host) runs on the same root with a `docker`
that lists no container.

- Xid 79, a GPU off the bus: NVRM's records in /dev/kmsg; nvidia-smi prints "Unable to
  determine the device handle for GPU0000:3B:00.0: Unknown Error" in place of its line
  (-L: "gpu 0000:..."), the other GPUs' lines still, exit 255; the plain table and -q only
  the error; `-r` cannot reset it; no container is given GPUs (nvidia-container-cli's
  device information walks every GPU); a container that has it sees the same.
- Xid 48, a double-bit ECC error: ecc.errors.uncorrected.volatile.total rises (host and
  container); `nvidia-smi -r -i N` is refused while a container holds the GPU ("In use by
  another client", exit 255) and clears it once none does.
- memory.used and the process list: what the stand-in Ollama's loaded models hold, read
  from each GPU container's /tmp/.fleetlab-gpu-usage.json through /proc/PID/root, only
  while the process that wrote it runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.nvidia import packages
from lab.nvidia.hardware import board_doc
from tests.unit.test_standin_live_gpu_state import (
    DRIVER,
    hook,
    inside,
    make_bundle,
    make_host,
    run,
)

sys.path.insert(0, str(packages.STANDINS))
import fleetlab_common as common  # noqa: E402 (the stand-ins' shared code, as they import it)

QUERY = ["--query-gpu=index,uuid,pci.bus_id,ecc.errors.uncorrected.volatile.total,memory.used,"
         "memory.total", "--format=csv,noheader,nounits"]


@pytest.fixture(scope="module")
def bins(tmp_path_factory):
    """nvidia-smi and the toolkit's hook as their packages carry them."""
    out = tmp_path_factory.mktemp("standins")
    made = {}
    for name, source, kw in (("nvidia-smi", "nvidia_smi.py", {"driver_version": DRIVER}),
                             ("hook", "nvidia_container_runtime_hook.py",
                              {"toolkit_version": "1.17.8"})):
        path = out / name
        path.write_text(packages.render_standin(source, package="test", **kw))
        path.chmod(0o755)
        made[name] = path
    return made


@pytest.fixture
def host(tmp_path, bins):
    """A 2-GPU H100 host root with its kernel log (/dev/kmsg as the lab makes it at boot)."""
    root = make_host(tmp_path / "host", bins["nvidia-smi"], count=2)
    (root / "dev").mkdir()
    (root / "dev/kmsg").write_text("5,0,0,-;Linux version 6.1.0-28-cloud-amd64 (fleet lab)\n")
    (root / "proc").mkdir()
    (root / "proc/uptime").write_text("12.50 12.50\n")
    return root


@pytest.fixture
def fault(tmp_path):
    """Run the fault script on a host root, with a `docker` that lists no container."""
    script = tmp_path / "fleetlab-fault"
    script.write_text(packages.render_standin("fleetlab_fault.py", package="test"))
    stub = tmp_path / "stub-bin"
    stub.mkdir()
    (stub / "docker").write_text("#!/bin/sh\nexit 0\n")
    (stub / "docker").chmod(0o755)

    def do(root: Path, *args: str, expect: int = 0) -> dict:
        proc = subprocess.run([sys.executable, str(script), *args], capture_output=True,
                              text=True, timeout=60,
                              env={**os.environ, "FLEETLAB_ROOT": str(root),
                                   "PATH": f"{stub}:{os.environ['PATH']}"})
        assert proc.returncode == expect, proc.stderr
        return json.loads(proc.stdout) if expect == 0 else {"error": proc.stderr}
    return do


def gpus(root: Path) -> list[dict]:
    return json.loads((root / "etc/fleetlab/gpus.json").read_text())["gpus"]


def test_xid79_the_gpu_has_no_handle_the_others_answer(bins, host, fault):
    g0, g1 = gpus(host)
    assert g0["pci_bus_id"] == "00000000:18:00.0"  # lab/nvidia/hardware.py _bus_id(0)
    fault(host, "xid79", "--gpu", "0")
    records = common.kmsg_records((host / "dev/kmsg").read_text())
    assert [r[1] for r in records] == [0, 1, 2, 3, 4]  # SEQ goes on from the boot's record
    assert records[-1][2] == 12_500_000  # USEC: the boot's uptime
    assert records[3][3] == ("NVRM: Xid (PCI:0000:18:00): 79, pid='<unknown>', "
                             "name=<unknown>, GPU has fallen off the bus.")
    assert records[1][3] == f"NVRM: GPU at PCI:0000:18:00: {g0['uuid']}"

    query = run(bins, host, "nvidia-smi", *QUERY)
    assert query.returncode == 255
    assert query.stdout.splitlines() == [
        "Unable to determine the device handle for GPU0000:18:00.0: Unknown Error",
        f"1, {g1['uuid']}, 00000000:{g1['pci_bus_id'].split(':', 1)[1]}, 0, 1, 81559"]
    listing = run(bins, host, "nvidia-smi", "-L")
    assert (listing.returncode, listing.stdout.splitlines()[0]) == (
        255, "Unable to determine the device handle for gpu 0000:18:00.0: Unknown Error")
    assert listing.stdout.splitlines()[1].startswith("GPU 1: NVIDIA H100 80GB HBM3")
    for args in ([], ["-q"]):
        smi = run(bins, host, "nvidia-smi", *args)
        assert (smi.returncode, smi.stdout) == (
            255, "Unable to determine the device handle for GPU0000:18:00.0: Unknown Error\n")
    assert run(bins, host, "nvidia-smi", "-i", "1", "-L").returncode == 0
    assert run(bins, host, "nvidia-smi", "--version").returncode == 0
    reset = run(bins, host, "nvidia-smi", "-r", "-i", "0")
    assert (reset.returncode, reset.stdout) == (
        255, "Unable to determine the device handle for GPU0000:18:00.0: Unknown Error\n")
    # nvidia-container-cli walks every GPU: no GPU container starts, even one for GPU 1
    bundle = make_bundle(host.parent / "c1", devices="1")
    refused = hook(bins, host, bundle, expect=1)
    assert refused.stderr == "nvidia-container-cli: detection error: nvml error: unknown error\n"
    # a second xid79 on it changes nothing
    assert "already" in fault(host, "xid79", "--gpu", "0")["result"]
    assert len(common.kmsg_records((host / "dev/kmsg").read_text())) == 5


def test_a_container_sees_its_gpu_fall_off_the_bus(bins, host, fault):
    g0, _ = gpus(host)
    with_python = make_bundle(host.parent / "py", devices="0")
    without = make_bundle(host.parent / "sh", devices="0", python=False)
    for bundle in (with_python, without):
        hook(bins, host, bundle)
    fault(host, "xid79", "--gpu", "0")
    live = (with_python / "rootfs/etc/fleetlab/live.env").read_text()
    assert f"GPU_LOST={g0['uuid']}\n" in live
    for bundle, sh in ((with_python, False), (without, True)):
        listing = inside(bins, bundle, "-L", sh=sh)
        assert (listing.returncode, listing.stdout) == (
            255, "Unable to determine the device handle for gpu 0000:18:00.0: Unknown Error\n")
        query = inside(bins, bundle, "--query-gpu=index,name", "--format=csv", sh=sh)
        assert (query.returncode, query.stdout) == (
            255, "index, name\n"
                 "Unable to determine the device handle for GPU0000:18:00.0: Unknown Error\n")


def test_xid48_counts_until_a_reset_no_container_holds_the_gpu(bins, host, fault):
    g0, g1 = gpus(host)
    bundle = make_bundle(host.parent / "c0", devices="0")
    hook(bins, host, bundle)
    fault(host, "xid48", "--gpu", "0")
    fault(host, "xid48", "--gpu", "0")
    line = common.kmsg_records((host / "dev/kmsg").read_text())[-1][3]
    assert line == ("NVRM: Xid (PCI:0000:18:00): 48, pid='<unknown>', name=<unknown>, An "
                    "uncorrectable double bit error (DBE) has been detected on GPU in the "
                    "framebuffer at partition 0, subpartition 0.")
    query = run(bins, host, "nvidia-smi", "--query-gpu=index,ecc.errors.uncorrected.volatile."
                "total", "--format=csv,noheader")
    assert (query.returncode, query.stdout) == (0, "0, 2\n1, 0\n")
    for sh in (False, True):
        if sh:
            bundle = make_bundle(host.parent / "sh0", devices="0", python=False)
            hook(bins, host, bundle)
        smi = inside(bins, bundle, "--query-gpu=ecc.errors.uncorrected.volatile.total",
                     "--format=csv", sh=sh)
        assert smi.stdout == "ecc.errors.uncorrected.volatile.total\n2\n", sh
    table = run(bins, host, "nvidia-smi").stdout.splitlines()
    first = next(line for line in table if "NVIDIA H100" in line)
    assert first.split("|")[3].strip() == "2"  # Volatile Uncorr. ECC
    # the containers still run: the GPU is in use
    refused = run(bins, host, "nvidia-smi", "-r", "-i", "0")
    assert refused.returncode == 255
    assert refused.stdout.startswith(
        "The following GPUs could not be reset:\n  GPU 00000000:18:00.0: In use by another "
        "client\n\n1 device is currently being used by one or more other processes (e.g., "
        "Fabric Manager, CUDA application, graphics application such as an X server, or a "
        "monitoring application such as another instance of nvidia-smi).")
    # the containers stopped: a stopped container's root is unmounted (no live.env)
    for c in ("c0", "sh0"):
        (host.parent / c / "rootfs/etc/fleetlab/live.env").unlink()
    done = run(bins, host, "nvidia-smi", "-r", "-i", "0")
    assert (done.returncode, done.stdout) == (0, "GPU 00000000:18:00.0 was successfully reset.\n")
    query = run(bins, host, "nvidia-smi", "--query-gpu=ecc.errors.uncorrected.volatile.total",
                "--format=csv,noheader")
    assert query.stdout == "0\n0\n"


def test_memory_used_is_what_the_loaded_models_hold(bins, host):
    g0, g1 = gpus(host)
    bundle = make_bundle(host.parent / "c0", devices="0")
    hook(bins, host, bundle)
    log = (host / "var/lib/fleetlab/gpu-assignments.jsonl").read_text()
    record = json.loads(log.splitlines()[-1])
    rootfs = bundle / "rootfs"
    # the container's one process, as the host's /proc shows it
    proc = host / "proc/4242"
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text(f"0::/system.slice/docker-{record['container_id']}.scope\n")
    (proc / "status").write_text("Name:\tpython3\nNSpid:\t4242\t1\n")
    (proc / "stat").write_text("4242 (python3) S " + " ".join(["0"] * 18) + " 777 0 0\n")
    (proc / "root").symlink_to(rootfs)
    (rootfs / "tmp").mkdir()
    usage = {"pid": 1, "starttime": 777, "name": "/usr/bin/ollama", "gpus": {g0["uuid"]: 1150}}
    (rootfs / "tmp/.fleetlab-gpu-usage.json").write_text(json.dumps(usage))
    query = run(bins, host, "nvidia-smi", "--query-gpu=memory.used,memory.free",
                "--format=csv,noheader,nounits")
    assert query.stdout == f"1151, {81559 - 1151}\n1, 81558\n"
    table = run(bins, host, "nvidia-smi").stdout
    row = next(line for line in table.splitlines() if "/usr/bin/ollama" in line)
    assert row.split() == ["|", "0", "N/A", "N/A", "4242", "C", "/usr/bin/ollama", "1150MiB",
                           "|"]
    assert len(row) == 91
    # in the container: its own models (it sees no other process)
    assert inside(bins, bundle, "--query-gpu=memory.used", "--format=csv,noheader").stdout == \
        "1151 MiB\n"
    # a file an earlier process wrote counts for nothing
    (proc / "stat").write_text("4242 (python3) S " + " ".join(["0"] * 18) + " 900 0 0\n")
    query = run(bins, host, "nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader")
    assert query.stdout == "1 MiB\n1 MiB\n"
    assert "No running processes found" in run(bins, host, "nvidia-smi").stdout


def test_kmsg_records_and_appends():
    text = ("5,0,0,-;Linux version x\n6,1,100,-,caller=T1;second\n continuation\n"
            "garbage\n")
    assert common.kmsg_records(text) == [(5, 0, 0, "Linux version x"), (6, 1, 100, "second")]


@pytest.mark.parametrize("bus, plain, listed", [
    ("00000000:3B:00.0", "GPU0000:3B:00.0", "gpu 0000:3B:00.0"),
    ("00000000:c1:00.0", "GPU0000:C1:00.0", "gpu 0000:C1:00.0"),
])
def test_the_handle_error_names_the_bus_as_nvidia_smi_does(bus, plain, listed):
    gpu = {"pci_bus_id": bus}
    assert common.handle_error_line(gpu) == \
        f"Unable to determine the device handle for {plain}: Unknown Error\n"
    assert common.handle_error_line(gpu, list_form=True) == \
        f"Unable to determine the device handle for {listed}: Unknown Error\n"
    assert common.kmsg_pci(gpu) == bus[4:].rsplit(".", 1)[0].lower()


def test_fault_live_values_round_trip():
    doc = board_doc("gpu-1", 3, "H100")
    u = [g["uuid"] for g in doc["gpus"]]
    faults = {u[0]: {"lost": True, "reset_required": False, "ecc_dbe_volatile": 0},
              u[1]: {"lost": False, "reset_required": True, "ecc_dbe_volatile": 3}}
    live = common.fault_live_values(u, faults)
    assert live == {"GPU_LOST": u[0], "GPU_RESET_REQUIRED": u[1], "GPU_ECC_DBE": f"{u[1]}:3"}
    assert common.faults_from_live(live) == faults
    assert common.fault_live_values([u[2]], faults) == {
        "GPU_LOST": "", "GPU_RESET_REQUIRED": "", "GPU_ECC_DBE": ""}
