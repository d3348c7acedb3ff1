"""The NVIDIA stand-ins' live GPU state between deploys. No Docker, no packages built.

Each stand-in is rendered as its package would carry it (lab.nvidia.packages.render_standin:
the shared code inlined, versions baked in) into a temporary directory and run against a
simulated host root named by FLEETLAB_ROOT; containers are bundle directories the hook or
the runtime writes into, as in tests/lab/test_cuda_init.py.

- Fabric Manager takes "fabric_init_seconds" (gpus.json) to bring the fabric up: host
  nvidia-smi shows Fabric State "In Progress" / Status "N/A", then "Completed" / "Success";
  CUDA in a container started before that answers 802.
- A container's nvidia-smi reads the host's live state (/etc/fleetlab/live.env), which the
  host side keeps: the fabric, and GPU_ACCESS=lost after a `systemctl daemon-reload` that
  took the container's devices (NVIDIA/nvidia-container-toolkit#48), when every nvidia-smi
  command fails with "Failed to initialize NVML: Unknown Error", exit status 255.
- Which reloads cut which containers: the hook's (legacy) injection under Docker's systemd
  cgroup driver; not the runtime's CDI edits (jit-cdi, the runtime's "auto" from 1.18.0);
  nothing under native.cgroupdriver=cgroupfs; a restarted container has its GPUs again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.fleet import Lab
from lab.nvidia import packages
from lab.nvidia.hardware import board_doc, gpus_json

DRIVER = packages.DRIVER_BRANCHES["570"]
NVML_UNKNOWN = "Failed to initialize NVML: Unknown Error\n"
NOT_READY = {"init_error": 802, "name": "CUDA_ERROR_SYSTEM_NOT_READY",
             "message": "system not yet initialized"}


# ---------------------------------------------------------------- rendered stand-ins

@pytest.fixture(scope="module")
def bins(tmp_path_factory):
    """The stand-ins as the packages carry them, by program name."""
    out = tmp_path_factory.mktemp("standins")
    made = {}
    for name, source, kw in (
            ("nvidia-smi", "nvidia_smi.py", {"driver_version": DRIVER}),
            ("nv-fabricmanager", "nv_fabricmanager.py", {"driver_version": DRIVER}),
            ("hook", "nvidia_container_runtime_hook.py", {"toolkit_version": "1.17.8"}),
            ("runtime-1.17.8", "nvidia_container_runtime.py", {"toolkit_version": "1.17.8"}),
            ("runtime-1.18.1", "nvidia_container_runtime.py", {"toolkit_version": "1.18.1"}),
            ("reset", "nvidia_device_cgroup_reset.py", {"toolkit_version": "1.18.1"}),
            ("generator", "nvidia-daemon-reload-generator.sh", {})):
        path = out / name
        path.write_text(packages.render_standin(source, package="test", **kw))
        path.chmod(0o755)
        made[name] = path
    return made


def run(bins, root: Path, program: str, *args: str, stdin: str | None = None,
        env: dict | None = None) -> subprocess.CompletedProcess:
    """Run stand-in PROGRAM (sh for the generator, else python) on host ROOT."""
    cmd = ["sh" if program == "generator" else sys.executable, str(bins[program])]
    return subprocess.run([*cmd, *args], input=stdin, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "FLEETLAB_ROOT": str(root),
                                           **(env or {})})


def make_host(root: Path, smi: Path, model: str = "H100", count: int = 4,
              delay: float | None = None) -> Path:
    """A host root with the driver loaded, nvidia-smi installed and the board's gpus.json
    (with DELAY as its fabric_init_seconds)."""
    doc = board_doc("gpu-1", count, model)
    if delay is not None:
        doc["fabric_init_seconds"] = delay
    (root / "etc/fleetlab").mkdir(parents=True)
    (root / "etc/fleetlab/gpus.json").write_text(json.dumps(doc))
    (root / "usr/lib/fleetlab").mkdir(parents=True)
    (root / "usr/lib/fleetlab/libnvidia-ml.version").write_text(DRIVER + "\n")
    (root / "run/fleetlab").mkdir(parents=True)
    (root / "run/fleetlab/nvidia-driver-loaded").write_text(DRIVER + "\n")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/nvidia-smi").write_text(smi.read_text())
    (root / "usr/bin/nvidia-smi").chmod(0o755)
    (root / "usr/share/nvidia/nvswitch").mkdir(parents=True)
    (root / "usr/share/nvidia/nvswitch/fabricmanager.cfg").write_text(
        "LOG_FILE_NAME=/var/log/fabricmanager.log\nDAEMONIZE=1\n")
    return root


@pytest.fixture
def host(tmp_path, bins):
    roots = []

    def make(*args, **kwargs) -> Path:
        root = make_host(tmp_path / f"host{len(roots)}", bins["nvidia-smi"], *args, **kwargs)
        roots.append(root)
        return root

    yield make
    for root in roots:
        stop_fm(root, check=False)


def start_fm(bins, root: Path) -> None:
    result = run(bins, root, "nv-fabricmanager", "-c",
                 "/usr/share/nvidia/nvswitch/fabricmanager.cfg")
    assert result.returncode == 0, result.stderr


def stop_fm(root: Path, check: bool = True) -> None:
    pid_file = root / "run/fleetlab/fabricmanager.pid"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        assert not check, "no Fabric Manager"
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def make_bundle(path: Path, devices: str = "all", python: bool = True) -> Path:
    (path / "rootfs/usr/bin").mkdir(parents=True)
    if python:  # what the hook looks for (the image's python3)
        (path / "rootfs/usr/bin/python3").symlink_to("python3.13")
        (path / "rootfs/usr/bin/python3.13").write_text("")
    (path / "config.json").write_text(json.dumps({
        "ociVersion": "1.2.0", "root": {"path": "rootfs"},
        "process": {"args": ["ollama", "serve"],
                    "env": ["PATH=/usr/bin:/bin", f"NVIDIA_VISIBLE_DEVICES={devices}"]}}))
    return path


def hook(bins, root: Path, bundle: Path, expect: int = 0) -> subprocess.CompletedProcess:
    state = json.dumps({"ociVersion": "1.2.0", "id": bundle.name, "status": "creating",
                        "pid": 4242, "bundle": str(bundle)})
    result = run(bins, root, "hook", "prestart", stdin=state)
    assert result.returncode == expect, result.stderr
    return result


def inside(bins, bundle: Path, *args: str, sh: bool = False) -> subprocess.CompletedProcess:
    """nvidia-smi in the container: the copy the hook wrote, its root as FLEETLAB_ROOT."""
    rootfs = bundle / "rootfs"
    cmd = ["sh"] if sh else [sys.executable]
    return subprocess.run([*cmd, str(rootfs / "usr/bin/nvidia-smi"), *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "FLEETLAB_ROOT": str(rootfs)})


def cuda(bundle: Path) -> dict:
    return json.loads((bundle / "rootfs/etc/fleetlab/cuda.json").read_text())


def fabric_block(text: str) -> list[str]:
    """The lines of the first GPU's Fabric section of `nvidia-smi -q`."""
    lines = text.splitlines()
    start = lines.index("    Fabric")
    return [" ".join(line.split()) for line in lines[start:start + 5]]


# ---------------------------------------------------------------- the fabric takes time

def test_fabric_is_in_progress_until_fabric_manager_has_brought_it_up(bins, host, tmp_path):
    root = host(delay=2)
    assert fabric_block(run(bins, root, "nvidia-smi", "-q").stdout) == [
        "Fabric", "State : In Progress", "Status : N/A", "CliqueId : N/A", "ClusterUUID : N/A"]
    started = time.monotonic()
    start_fm(bins, root)  # the forking unit is active at once
    assert time.monotonic() - started < 1.5
    query = run(bins, root, "nvidia-smi", "--query-gpu=fabric.state,fabric.status",
                "--format=csv")
    assert query.stdout == "fabric.state, fabric.status\n" + "In Progress, N/A\n" * 4
    early = make_bundle(tmp_path / "early")
    hook(bins, root, early)
    assert cuda(early) == NOT_READY
    deadline = time.monotonic() + 10
    while "Completed" not in run(bins, root, "nvidia-smi", "-q").stdout:
        assert time.monotonic() < deadline, "the fabric never completed"
        time.sleep(0.2)
    assert time.monotonic() - started >= 1.5
    assert fabric_block(run(bins, root, "nvidia-smi", "-q").stdout) == [
        "Fabric", "State : Completed", "Status : Success", "CliqueId : 0",
        "ClusterUUID : 00000000-0000-0000-0000-000000000000"]
    query = run(bins, root, "nvidia-smi", "--query-gpu=index,fabric.state,fabric.status",
                "--format=csv,noheader")
    assert query.stdout == "".join(f"{i}, Completed, Success\n" for i in range(4))
    late = make_bundle(tmp_path / "late")
    hook(bins, root, late)
    assert cuda(late) == {"init_error": 0}
    # CUDA decides at a program's start: the early container stays on 802 ...
    assert cuda(early) == NOT_READY
    # ... while its nvidia-smi shows the fabric as it is now
    assert "State : Completed" in fabric_block(inside(bins, early, "-q").stdout)


def test_without_a_delay_the_fabric_is_up_when_fabric_manager_runs(bins, host, tmp_path):
    root = host()  # no fabric_init_seconds: 0
    start_fm(bins, root)
    assert "State : Completed" in fabric_block(run(bins, root, "nvidia-smi", "-q").stdout)
    bundle = make_bundle(tmp_path / "c")
    hook(bins, root, bundle)
    assert cuda(bundle) == {"init_error": 0}
    stop_fm(root)  # Fabric Manager stopped: the running container sees it
    assert "State : In Progress" in fabric_block(inside(bins, bundle, "-q").stdout)
    assert "State : In Progress" in fabric_block(run(bins, root, "nvidia-smi", "-q").stdout)


@pytest.mark.parametrize("model", ["L40S", "A100"])
def test_gpus_without_a_fabric_probe_show_n_a(bins, host, model):
    """A PCIe card has no fabric; an A100 (NVLink 3) does not register with one, although its
    HGX board still needs Fabric Manager for CUDA."""
    root = host(model=model, delay=30)
    assert fabric_block(run(bins, root, "nvidia-smi", "-q").stdout) == [
        "Fabric", "State : N/A", "Status : N/A", "CliqueId : N/A", "ClusterUUID : N/A"]
    query = run(bins, root, "nvidia-smi", "--query-gpu=fabric.state,fabric.status",
                "--format=csv,noheader")
    assert query.stdout == "N/A, N/A\n" * 4


def test_a_container_sees_a_fabric_manager_started_after_it(bins, host, tmp_path):
    root = host(delay=1)
    for python in (True, False):
        bundle = make_bundle(tmp_path / f"c{python}", devices="0", python=python)
        hook(bins, root, bundle)
        assert cuda(bundle) == NOT_READY
        assert "State : In Progress" in fabric_block(inside(bins, bundle, "-q",
                                                            sh=not python).stdout)
    start_fm(bins, root)
    time.sleep(2.1)
    for python in (True, False):
        bundle = tmp_path / f"c{python}"
        smi = inside(bins, bundle, "-q", sh=not python)
        assert "State : Completed" in fabric_block(smi.stdout), smi.stdout + smi.stderr
        query = inside(bins, bundle, "--query-gpu=fabric.state,fabric.status",
                       "--format=csv,noheader", sh=not python)
        assert query.stdout == "Completed, Success\n"


# ---------------------------------------------------------------- daemon-reload

def fake_runc(tmp_path: Path, version: str) -> dict:
    """PATH with a runc that says it is VERSION."""
    stub = tmp_path / f"runc-{version}"
    stub.mkdir(exist_ok=True)
    (stub / "runc").write_text(f"#!/bin/sh\necho 'runc version {version}'\n")
    (stub / "runc").chmod(0o755)
    return {"PATH": f"{stub}:{os.environ['PATH']}"}


def daemon_reload(bins, root: Path, runc: str = "1.2.5") -> None:
    """What systemd does at `systemctl daemon-reload`: the generator, then the path unit's
    service (with a runc of version RUNC on PATH)."""
    assert run(bins, root, "generator").returncode == 0
    result = run(bins, root, "reset", env=fake_runc(root.parent, runc))
    assert result.returncode == 0, result.stderr


def boot(bins, root: Path) -> None:
    assert run(bins, root, "generator").returncode == 0


def set_daemon_json(root: Path, doc: dict) -> None:
    (root / "etc/docker").mkdir(parents=True, exist_ok=True)
    (root / "etc/docker/daemon.json").write_text(json.dumps(doc))


def lost(bundle: Path) -> bool:
    return "GPU_ACCESS=lost" in (bundle / "rootfs/etc/fleetlab/live.env").read_text()


def test_the_generator_tells_boot_from_reload(bins, host):
    root = host()
    boot(bins, root)
    assert (root / "run/fleetlab/systemd-generator-ran").exists()
    assert list((root / "run/fleetlab/daemon-reloads").iterdir()) == []
    assert run(bins, root, "generator").returncode == 0
    assert len(list((root / "run/fleetlab/daemon-reloads").iterdir())) == 1
    run(bins, root, "reset", env=fake_runc(root.parent, "1.2.5"))  # consumes it
    assert list((root / "run/fleetlab/daemon-reloads").iterdir()) == []


def test_a_reload_cuts_containers_the_hook_gave_gpus(bins, host, tmp_path):
    root = host(model="L40S")
    boot(bins, root)
    set_daemon_json(root, {"runtimes": {"nvidia": {"path": "nvidia-container-runtime",
                                                   "args": []}}})
    with_python = make_bundle(tmp_path / "py", devices="0")
    without = make_bundle(tmp_path / "sh", devices="1", python=False)
    cpu = make_bundle(tmp_path / "cpu", devices="void")
    for bundle in (with_python, without, cpu):
        hook(bins, root, bundle)
    assert inside(bins, with_python, "-L").returncode == 0
    daemon_reload(bins, root)
    for bundle, sh in ((with_python, False), (without, True)):
        for args in ([], ["-L"], ["-q"], ["--version"],
                     ["--query-gpu=name,fabric.state", "--format=csv"]):
            smi = inside(bins, bundle, *args, sh=sh)
            assert (smi.returncode, smi.stdout) == (255, NVML_UNKNOWN), (args, sh)
    assert not (cpu / "rootfs/etc/fleetlab").exists()  # a CPU container has no GPU to lose
    # the host keeps its GPUs
    assert run(bins, root, "nvidia-smi", "-L").returncode == 0
    # a restart (the hook runs again) gives the container its GPUs back
    hook(bins, root, with_python)
    assert inside(bins, with_python, "-L").returncode == 0
    log = (root / "var/log/fleetlab-nvidia-device-cgroup.log").read_text()
    assert "lost its GPUs: devices injected by nvidia-container-runtime-hook" in log


def test_at_boot_nothing_is_cut(bins, host, tmp_path):
    root = host(model="L40S")
    bundle = make_bundle(tmp_path / "c")
    hook(bins, root, bundle)
    boot(bins, root)  # the first generator run since /run was empty
    run(bins, root, "reset", env=fake_runc(root.parent, "1.2.5"))
    assert not lost(bundle)


def test_the_cgroupfs_driver_keeps_the_gpus(bins, host, tmp_path):
    root = host(model="L40S")
    boot(bins, root)
    set_daemon_json(root, {"exec-opts": ["native.cgroupdriver=cgroupfs"]})
    bundle = make_bundle(tmp_path / "c")
    hook(bins, root, bundle)
    daemon_reload(bins, root)
    assert inside(bins, bundle, "-L").returncode == 0
    set_daemon_json(root, {"exec-opts": ["native.cgroupdriver=systemd"]})
    daemon_reload(bins, root)
    assert inside(bins, bundle, "-L").returncode == 255


def runtime_create(bins, root: Path, version: str, bundle: Path, tmp_path: Path,
                   dockerd_hook: bool = True) -> dict:
    """`create` through the NVIDIA runtime as dockerd runs it for a `--gpus` container
    (dockerd's prestart hook in the spec), runc a stub; the runtime's log entry."""
    spec = json.loads((bundle / "config.json").read_text())
    if dockerd_hook:
        spec["hooks"] = {"prestart": [{"path": "/usr/bin/nvidia-container-runtime-hook",
                                       "args": ["nvidia-container-runtime-hook", "prestart"]}]}
    (bundle / "config.json").write_text(json.dumps(spec))
    stub = tmp_path / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "runc").write_text("#!/bin/sh\nexit 0\n")
    (stub / "runc").chmod(0o755)
    result = run(bins, root, f"runtime-{version}", "create", "--bundle", str(bundle),
                 bundle.name, env={"PATH": f"{stub}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    log = (root / "var/log/nvidia-container-runtime.log").read_text().splitlines()
    return json.loads(log[-1])


def test_the_runtime_mode_decides_who_injects(bins, host, tmp_path):
    root = host(model="L40S")
    legacy = make_bundle(tmp_path / "legacy")
    entry = runtime_create(bins, root, "1.17.8", legacy, tmp_path)
    assert (entry["mode"], entry["hook_added"]) == ("legacy", False)  # dockerd's hook stays
    hooks = json.loads((legacy / "config.json").read_text())["hooks"]["prestart"]
    assert [h["path"] for h in hooks] == ["/usr/bin/nvidia-container-runtime-hook"]
    assert not (legacy / "rootfs/etc/fleetlab/live.env").exists()  # the hook injects later

    jit = make_bundle(tmp_path / "jit")
    entry = runtime_create(bins, root, "1.18.1", jit, tmp_path)
    assert (entry["mode"], entry["hooks_removed"], entry["injected"]) == ("jit-cdi", 1, True)
    assert json.loads((jit / "config.json").read_text())["hooks"]["prestart"] == []
    assert inside(bins, jit, "-L").stdout.count("GPU ") == 4
    records = [json.loads(line) for line in
               (root / "var/lib/fleetlab/gpu-assignments.jsonl").read_text().splitlines()]
    assert records[-1]["injection"] == "jit-cdi"
    assert records[-1]["rootfs"] == str(jit / "rootfs")

    # config.toml's mode wins over "auto"
    (root / "etc/nvidia-container-runtime").mkdir(parents=True)
    (root / "etc/nvidia-container-runtime/config.toml").write_text(
        '[nvidia-container-runtime]\n# the hook\nmode = "legacy"\n')
    again = make_bundle(tmp_path / "again")
    assert runtime_create(bins, root, "1.18.1", again, tmp_path)["mode"] == "legacy"


def test_a_reload_leaves_cdi_injected_containers_alone(bins, host, tmp_path):
    root = host(model="L40S")
    boot(bins, root)
    jit = make_bundle(tmp_path / "jit")
    runtime_create(bins, root, "1.18.1", jit, tmp_path)
    hooked = make_bundle(tmp_path / "hooked")
    hook(bins, root, hooked)  # --gpus with runc as the default runtime: dockerd's hook
    daemon_reload(bins, root)
    assert inside(bins, jit, "-L").returncode == 0
    assert inside(bins, hooked, "-L").returncode == 255


def test_runc_1_1_3_to_1_1_6_cut_cdi_devices_without_dev_char_links(bins, host, tmp_path):
    root = host(model="L40S")
    boot(bins, root)
    jit = make_bundle(tmp_path / "jit")
    runtime_create(bins, root, "1.18.1", jit, tmp_path)
    daemon_reload(bins, root, runc="1.1.7")
    assert inside(bins, jit, "-L").returncode == 0
    (root / "dev/char").mkdir(parents=True)
    (root / "dev/char/195:255").symlink_to("../nvidiactl")
    daemon_reload(bins, root, runc="1.1.5")
    assert inside(bins, jit, "-L").returncode == 0  # the link is there
    (root / "dev/char/195:255").unlink()
    daemon_reload(bins, root, runc="1.1.5")
    assert inside(bins, jit, "-L").returncode == 255


def test_the_hook_refuses_when_the_runtime_is_to_inject(bins, host, tmp_path):
    root = host(model="L40S")
    (root / "etc/nvidia-container-runtime").mkdir(parents=True)
    (root / "etc/nvidia-container-runtime/config.toml").write_text(
        '[nvidia-container-runtime]\nmode = "cdi"\n')
    result = hook(bins, root, make_bundle(tmp_path / "c"), expect=1)
    assert result.stderr.strip() == (
        "invoking the NVIDIA Container Runtime Hook directly (e.g. specifying the docker "
        "--gpus flag) is not supported. Please use the NVIDIA Container Runtime (e.g. "
        "specify the --runtime=nvidia flag) instead")
    hook(bins, root, make_bundle(tmp_path / "cpu", devices="void"))  # no GPU: left alone


# ---------------------------------------------------------------- the lab's setter

def test_the_lab_sets_the_fabric_delay_in_place(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETLAB_STATE_DIR", str(tmp_path))
    lab = Lab("t", log=lambda msg: None)
    doc = board_doc("gpu-1", 2, "H100")
    lab.save({"hosts": [{"name": "gpu-1", "role": "gpu", "address": "10.0.0.11",
                         "gpus": doc["gpus"], "board": {"board": "hgx",
                                                        "nvswitches": doc["nvswitches"]}},
                        {"name": "cpu-1", "role": "cpu", "address": "10.0.0.101",
                         "gpus": []}]})
    path = tmp_path / "t/hosts/gpu-1/gpus.json"
    path.parent.mkdir(parents=True)
    path.write_text(gpus_json("gpu-1", 2, "H100"))
    inode = path.stat().st_ino
    lab.set_fabric_init_seconds("gpu-1", 20)
    assert json.loads(path.read_text())["fabric_init_seconds"] == 20
    assert path.stat().st_ino == inode  # the host's bind mount sees it
    lab.set_fabric_init_seconds("gpu-1", 0)
    assert json.loads(path.read_text())["fabric_init_seconds"] == 0
    assert json.loads(path.read_text())["gpus"] == doc["gpus"]
    with pytest.raises(Exception, match="not a GPU host"):
        lab.set_fabric_init_seconds("cpu-1", 5)
