"""CUDA initialisation on NVSwitch boards, as the lab simulates it. No Docker needed.

The NVIDIA hook stand-in (run here from the source tree against a simulated host root
named by FLEETLAB_ROOT) decides what cuInit answers in a container: 802
CUDA_ERROR_SYSTEM_NOT_READY on an HGX board (NVSwitches on the PCI bus, or HGX
Blackwell GPUs) while Fabric Manager is not running, success otherwise. The Ollama
stand-in (a local subprocess, as in test_ollama_standin.py) reads that at start and,
like upstream's GPU discovery (discover/gpu.go, v0.6.x/v0.7.x), logs the init failure
and runs on CPU: loaded models have size_vram 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.nvidia.hardware import gpus_json, simulated_gpus
from tests.lab.test_ollama_standin import FakeRegistry, Server, wait_for

REPO = Path(__file__).resolve().parents[2]
HOOK = REPO / "lab/nvidia/standins/nvidia_container_runtime_hook.py"
DRIVER = "570.172.08"
NOT_READY = {"init_error": 802, "name": "CUDA_ERROR_SYSTEM_NOT_READY",
             "message": "system not yet initialized"}


# ---------------------------------------------------------------- simulated host and hook

def make_host(root: Path, model: str = "H100", count: int = 8, doc: str | None = None) -> Path:
    """A host root with the driver loaded and gpus.json as the lab writes it (or DOC)."""
    (root / "etc/fleetlab").mkdir(parents=True, exist_ok=True)
    (root / "etc/fleetlab/gpus.json").write_text(doc or gpus_json("gpu-1", count, model))
    (root / "usr/lib/fleetlab").mkdir(parents=True, exist_ok=True)
    (root / "usr/lib/fleetlab/libnvidia-ml.version").write_text(DRIVER + "\n")
    (root / "run/fleetlab").mkdir(parents=True, exist_ok=True)
    (root / "run/fleetlab/nvidia-driver-loaded").write_text(DRIVER + "\n")
    return root


def write_fm_pid(root: Path, pid: int | str) -> None:
    (root / "run/fleetlab/fabricmanager.pid").write_text(f"{pid}\n")


def make_bundle(path: Path, devices: str = "all") -> Path:
    (path / "rootfs/usr/bin").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({
        "ociVersion": "1.2.0", "root": {"path": "rootfs"},
        "process": {"args": ["ollama", "serve"],
                    "env": ["PATH=/usr/bin:/bin", f"NVIDIA_VISIBLE_DEVICES={devices}"]}}))
    return path


def run_hook(root: Path, bundle: Path) -> dict:
    """Run the prestart hook for BUNDLE on host ROOT; the container's cuda.json."""
    state = json.dumps({"ociVersion": "1.2.0", "id": bundle.name, "status": "creating",
                        "pid": 4242, "bundle": str(bundle)})
    result = subprocess.run([sys.executable, str(HOOK), "prestart"], input=state,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "FLEETLAB_ROOT": str(root)})
    assert result.returncode == 0, result.stderr
    return json.loads((bundle / "rootfs/etc/fleetlab/cuda.json").read_text())


@pytest.fixture
def live_pid():
    """The pid of a running process (a Fabric Manager as far as the hook can tell)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait(10)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)
    return proc.pid


@pytest.mark.parametrize("model, fm, expected", [
    ("H100", "alive", {"init_error": 0}),
    ("H100", None, NOT_READY),
    ("H100", "stale", NOT_READY),
    ("H100", "garbage", NOT_READY),
    ("A100", None, NOT_READY),
    ("A100", "alive", {"init_error": 0}),
    ("L40S", None, {"init_error": 0}),
    ("B200", None, NOT_READY),  # no NVSwitch on PCI: the HGX Blackwell GPUs say it
    ("B200", "alive", {"init_error": 0}),
])
def test_hook_decides_cuda_init(tmp_path, live_pid, model, fm, expected):
    root = make_host(tmp_path / "host", model)
    if fm is not None:
        write_fm_pid(root, {"alive": live_pid, "stale": dead_pid(), "garbage": "fm"}[fm])
    bundle = make_bundle(tmp_path / "c1", devices="0")
    assert run_hook(root, bundle) == expected
    # nvidia-smi in the container still lists its GPU whatever CUDA says
    inside = json.loads((bundle / "rootfs/etc/fleetlab/gpus.json").read_text())["gpus"]
    assert [g["uuid"] for g in inside] == [simulated_gpus("gpu-1", 8, model)[0]["uuid"]]


def test_hook_a_fabric_manager_that_exited_unreaped_is_not_running(tmp_path):
    root = make_host(tmp_path / "host", "H100")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])  # not waited for: a zombie
    try:
        wait_for(lambda: Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                 == "Z", timeout=10, what="the child to exit")
        write_fm_pid(root, proc.pid)
        assert run_hook(root, make_bundle(tmp_path / "c1")) == NOT_READY
    finally:
        proc.wait(10)


@pytest.mark.parametrize("doc", [
    # older gpus.json files: no board, no nvswitches, no pci_device_id -> a PCIe board
    lambda: json.dumps({"gpus": [{k: v for k, v in g.items() if k != "pci_device_id"}
                                 for g in simulated_gpus("gpu-1", 2)]}),
    lambda: json.dumps(simulated_gpus("gpu-1", 2)),
    lambda: json.dumps({"gpus": simulated_gpus("gpu-1", 2), "board": "hgx"}),
])
def test_hook_reads_older_gpus_json_as_a_pcie_board(tmp_path, doc):
    root = make_host(tmp_path / "host", doc=doc())
    assert run_hook(root, make_bundle(tmp_path / "c1")) == {"init_error": 0}


def test_hook_decides_per_container_start(tmp_path, live_pid):
    """A Fabric Manager started later helps the containers started after it only."""
    root = make_host(tmp_path / "host", "H100")
    before = make_bundle(tmp_path / "before")
    assert run_hook(root, before) == NOT_READY
    write_fm_pid(root, live_pid)
    after = make_bundle(tmp_path / "after")
    assert run_hook(root, after) == {"init_error": 0}
    assert json.loads((before / "rootfs/etc/fleetlab/cuda.json").read_text()) == NOT_READY


# ---------------------------------------------------------------- the Ollama stand-in

@pytest.fixture(scope="module")
def registry():
    reg = FakeRegistry()
    yield reg
    reg.close()


@pytest.fixture
def servers():
    started: list[Server] = []
    yield started
    for s in started:
        s.stop()


def container_root(path: Path, cuda: dict | None, model: str = "H100",
                   count: int = 1) -> Path:
    """A container's root as the hook leaves it: its GPUs, the driver, cuda.json."""
    (path / "etc/fleetlab").mkdir(parents=True)
    gpus = [{**g, "index": i} for i, g in enumerate(simulated_gpus("gpu-1", count, model))]
    (path / "etc/fleetlab/gpus.json").write_text(json.dumps({"gpus": gpus}))
    (path / "run/fleetlab").mkdir(parents=True)
    (path / "run/fleetlab/nvidia-driver-loaded").write_text(DRIVER + "\n")
    if cuda is not None:
        (path / "etc/fleetlab/cuda.json").write_text(json.dumps(cuda))
    return path


def start(servers: list, tmp_path: Path, registry: FakeRegistry, root: Path,
          devices: str = "0", **env) -> Server:
    s = Server(tmp_path / f"models{len(servers)}", OLLAMA_LAB_REGISTRY=registry.url,
               FLEETLAB_ROOT=str(root), NVIDIA_VISIBLE_DEVICES=devices, **env)
    servers.append(s)
    return s


def load(server: Server, model: str = "tinyllama"):
    client = server.client()
    client.pull(model)
    client.generate(model=model, prompt="hi", keep_alive="5m")
    return {m.model: m for m in client.ps().models}


def discovery_lines(server: Server) -> list[str]:
    # the discovery lines follow "Listening on"; wait until the CPU/GPU verdict is out
    wait_for(lambda: any("inference compute" in line for line in server.lines), timeout=10,
             what="GPU discovery")
    return [line for line in server.lines if "source=gpu.go" in line or
            "source=types.go" in line]


def test_ollama_runs_on_cpu_when_cuda_init_fails(tmp_path, registry, servers):
    root = container_root(tmp_path / "rootfs", NOT_READY)
    srv = start(servers, tmp_path, registry, root)
    lines = discovery_lines(srv)
    assert 'source=gpu.go:217 msg="looking for compatible GPUs"' in lines[0]
    assert ("level=INFO source=gpu.go:612 msg=\"Unable to load cudart library "
            f"/usr/lib/x86_64-linux-gnu/libcuda.so.{DRIVER}: cuda driver library init "
            "failure: 802\"") in lines[1]
    assert 'source=gpu.go:377 msg="no compatible GPUs were discovered"' in lines[2]
    assert ('source=types.go:130 msg="inference compute" id=0 library=cpu variant="" '
            'compute="" driver=0.0 name=""') in lines[3]
    assert not any("library=cuda" in line for line in srv.lines)
    m = load(srv)["tinyllama:latest"]
    assert m.size > 0 and m.size_vram == 0
    ps = srv.cli("ps")
    assert ps.returncode == 0 and "100% CPU" in ps.stdout, ps.stdout + ps.stderr


def test_ollama_decides_at_start(tmp_path, registry, servers):
    """A running Ollama stays on CPU until it restarts, whatever CUDA would answer now."""
    root = container_root(tmp_path / "rootfs", NOT_READY)
    srv = start(servers, tmp_path, registry, root)
    discovery_lines(srv)
    (root / "etc/fleetlab/cuda.json").write_text(json.dumps({"init_error": 0}))
    assert load(srv)["tinyllama:latest"].size_vram == 0
    srv.stop()
    again = start(servers, tmp_path, registry, root)
    m = load(again)["tinyllama:latest"]
    assert m.size_vram == m.size > 0


def test_ollama_debug_logs_the_bundled_cudart_failing_too(tmp_path, registry, servers):
    root = container_root(tmp_path / "rootfs", NOT_READY)
    srv = start(servers, tmp_path, registry, root, OLLAMA_DEBUG="1")
    lines = discovery_lines(srv)
    assert any("level=DEBUG source=gpu.go:574 msg=\"Unable to load cudart library "
               "/usr/lib/ollama/cuda_v12/libcudart.so.12.8.90: cudart init failure: 802\""
               in line for line in lines)


@pytest.mark.parametrize("cuda", [{"init_error": 0}, None])
def test_ollama_uses_the_gpus_when_cuda_initialises(tmp_path, registry, servers, cuda):
    root = container_root(tmp_path / "rootfs", cuda, count=2)
    srv = start(servers, tmp_path, registry, root, devices="0,1")
    lines = discovery_lines(srv)
    gpus = simulated_gpus("gpu-1", 2)
    compute = [line for line in lines if "inference compute" in line]
    assert len(compute) == 2
    for line, gpu in zip(compute, gpus, strict=True):
        assert (f'msg="inference compute" id={gpu["uuid"]} library=cuda variant=v12 '
                'compute=9.0 driver=12.8 name="NVIDIA H100 80GB HBM3" total="79.6 GiB" '
                'available="79.1 GiB"') in line
    assert not any("no compatible GPUs" in line or "init failure" in line for line in lines)
    m = load(srv)["tinyllama:latest"]
    assert m.size_vram == m.size > 0
    ps = srv.cli("ps")
    assert "100% GPU" in ps.stdout, ps.stdout + ps.stderr


def test_ollama_without_gpus_ignores_cuda_json(tmp_path, registry, servers):
    root = container_root(tmp_path / "rootfs", NOT_READY)
    srv = start(servers, tmp_path, registry, root, devices="void")
    lines = discovery_lines(srv)
    assert not any("init failure" in line for line in lines)
    assert any("library=cpu" in line for line in lines)
    assert load(srv)["tinyllama:latest"].size_vram == 0


def test_hook_then_ollama(tmp_path, registry, servers, live_pid):
    """End to end: the hook's verdict for an HGX H100 host, read by Ollama in the container."""
    host = make_host(tmp_path / "host", "H100")
    cold = make_bundle(tmp_path / "cold", devices="0")
    run_hook(host, cold)
    srv = start(servers, tmp_path, registry, cold / "rootfs")
    assert load(srv)["tinyllama:latest"].size_vram == 0
    write_fm_pid(host, live_pid)
    warm = make_bundle(tmp_path / "warm", devices="0")
    run_hook(host, warm)
    srv2 = start(servers, tmp_path, registry, warm / "rootfs")
    m = load(srv2)["tinyllama:latest"]
    assert m.size_vram == m.size > 0
    assert any(f"id={simulated_gpus('gpu-1', 1)[0]['uuid']} library=cuda" in line
               for line in srv2.lines)


# ---------------------------------------------------------------- GPU access lost (#48)

def lose_gpus(root: Path) -> None:
    """What the host side writes into a container cut off its GPUs by a daemon-reload."""
    (root / "etc/fleetlab/live.env").write_text("GPU_ACCESS=lost\n")


def test_ollama_after_its_container_lost_the_gpus(tmp_path, registry, servers):
    """v0.6.8 once the device nodes are gone: a loaded runner keeps its open device files
    and answers; a new load refreshes the GPU list, which fails (the GPUs stay listed with
    their old free memory), so the model is placed on the GPU; its runner cannot initialise
    CUDA and computes on the CPU, while /api/ps reports the server's estimate (100% GPU)."""
    root = container_root(tmp_path / "rootfs", {"init_error": 0})
    (root / "etc/fleetlab/live.env").write_text("GPU_ACCESS=ok\n")
    srv = start(servers, tmp_path, registry, root)
    assert load(srv)["tinyllama:latest"].size_vram > 0
    client = srv.client()
    client.pull("qwen2.5:0.5b")
    before = len(srv.lines)
    lose_gpus(root)
    answer = client.generate(model="tinyllama", prompt="still there?")
    assert answer.done and answer.response
    assert not any("gpu.go" in line for line in srv.lines[before:])
    client.generate(model="qwen2.5:0.5b", prompt="hi", keep_alive="5m")
    lines = srv.lines[before:]
    assert any(line.startswith("cuda driver library failed to get device context 800time=")
               and 'level=WARN source=gpu.go:434 msg="error looking up nvidia GPU memory"'
               in line for line in lines), "".join(lines)
    assert "ggml_cuda_init: failed to initialize CUDA: unknown error\n" in lines
    models = {m.model: m for m in client.ps().models}
    assert models["qwen2.5:0.5b"].size_vram == models["qwen2.5:0.5b"].size > 0
    assert models["tinyllama:latest"].size_vram == models["tinyllama:latest"].size
    ps = srv.cli("ps")
    assert "CPU" not in ps.stdout, ps.stdout


def test_an_unload_after_the_gpus_are_lost_waits_for_vram_that_never_comes_back(
        tmp_path, registry, servers):
    root = container_root(tmp_path / "rootfs", {"init_error": 0})
    srv = start(servers, tmp_path, registry, root)
    load(srv)
    lose_gpus(root)
    started = time.monotonic()
    srv.client().generate(model="tinyllama", prompt="", keep_alive=0)  # unload now
    wait_for(lambda: any("gpu VRAM usage didn't recover within timeout" in line
                         for line in srv.lines), timeout=15, what="the VRAM recovery timeout")
    assert time.monotonic() - started >= 4.5
    line = next(line for line in srv.lines if "didn't recover" in line)
    assert "level=WARN source=sched.go:655" in line and "model=" in line


def test_a_cpu_instance_loses_nothing(tmp_path, registry, servers):
    root = container_root(tmp_path / "rootfs", NOT_READY)
    lose_gpus(root)
    srv = start(servers, tmp_path, registry, root)
    assert load(srv)["tinyllama:latest"].size_vram == 0
    assert not any("gpu.go:434" in line or "ggml_cuda_init" in line for line in srv.lines)
