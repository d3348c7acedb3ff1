"""The stand-in Ollama on a GPU that breaks under it, and on the CPU. No Docker: the
server's handler on a loopback port, its container's files under FLEETLAB_ROOT as the
lab's NVIDIA hook writes them, the host side's live view (/etc/fleetlab/live.env)
changed by the test as `python -m lab fault` changes it.

- A loaded model sits on one GPU; its memory (model + a CUDA context) is written to
  /tmp/.fleetlab-gpu-usage.json for the host's nvidia-smi.
- Its GPU breaks (GPU_LOST: Xid 79; GPU_RESET_REQUIRED: Xid 48): the runner aborts at its
  next step, a request ends with "an error was encountered while running the model: CUDA
  error" (a stream with an error line after HTTP 200, else HTTP 500), the next load on
  that GPU fails ("llama runner process has terminated: CUDA error"); v0.32 wording too.
- The server on the CPU (SIGUSR1, the lab's `cpu` fault): /api/ps size_vram 0, no GPU
  memory held, tokens slower; SIGUSR2 (its clear) puts it back.
- Fabric Manager dead on an NVSwitch board: a new runner computes on the CPU.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
from pathlib import Path

import pytest

from lab.nvidia.hardware import board_doc
from lab.ollama.standin import discover, scheduler, state

MODEL_BYTES = 3 * 1024 * 1024 + 5  # a model of 4 MiB (rounded up) in the GPU's memory


def _blob(models: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (models / "blobs").mkdir(parents=True, exist_ok=True)
    (models / "blobs" / f"sha256-{digest}").write_bytes(data)
    return f"sha256:{digest}"


def make_model(models: Path, name: str = "tiny") -> None:
    config = json.dumps({"model_format": "gguf", "model_family": "llama",
                         "model_type": "1B", "file_type": "Q4_0"}).encode()
    weights = b"\0" * MODEL_BYTES
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": _blob(models, config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.ollama.image.model",
                    "digest": _blob(models, weights), "size": len(weights)}]}
    path = models / "manifests/registry.ollama.ai/library" / name / "latest"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(manifest))


class Container:
    """The container's files the lab writes (gpus.json, cuda.json, live.env)."""

    def __init__(self, root: Path, count: int = 2, fm_required: bool = False):
        self.root = root
        self.gpus = [{**g, "index": i} for i, g in enumerate(board_doc("gpu-1", count)["gpus"])]
        fleetlab = root / "etc/fleetlab"
        fleetlab.mkdir(parents=True)
        (fleetlab / "gpus.json").write_text(json.dumps({"gpus": self.gpus}))
        (fleetlab / "cuda.json").write_text('{"init_error": 0}')
        (root / "run/fleetlab").mkdir(parents=True)
        (root / "run/fleetlab/nvidia-driver-loaded").write_text("570.172.08\n")
        (root / "tmp").mkdir()
        self.values = {"GPU_ACCESS": "ok", "FM_REQUIRED": "1" if fm_required else "0",
                       "FM_RUNNING": "1"}
        self.live()

    def live(self, **values: str) -> None:
        self.values.update(values)
        path = self.root / "etc/fleetlab/live.env"
        path.with_suffix(".tmp").write_text("".join(f"{k}={v}\n" for k, v in
                                                    sorted(self.values.items())))
        path.with_suffix(".tmp").replace(path)  # a new inode, as the host side writes it

    def usage(self) -> dict:
        return json.loads((self.root / "tmp/.fleetlab-gpu-usage.json").read_text())


@pytest.fixture(params=["0.6.8", "0.32.15"])
def ollama(request, tmp_path, monkeypatch):
    from lab.ollama.standin import server
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("OLLAMA_LAB_VERSION", request.param)
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("FLEETLAB_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("OLLAMA_LAB_LOAD_SECONDS", "0")
    monkeypatch.setenv("OLLAMA_LAB_TOKEN_DELAY", "0")
    monkeypatch.setenv("OLLAMA_NO_CLOUD", "1")
    monkeypatch.setattr(discover, "LAB_DIR", str(tmp_path / "no-lab-dir"))
    make_model(tmp_path / "models")
    container = Container(tmp_path / "root")
    monkeypatch.setattr(state, "STATE", state.ServerState())
    state.STATE.sched.publish_usage()
    srv = server._bind("127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()

    class Client:
        port = srv.server_port
        version = request.param
        files = container
        sched = state.STATE.sched

        @staticmethod
        def call(method: str, path: str, doc: dict | None = None):
            conn = http.client.HTTPConnection("127.0.0.1", srv.server_port, timeout=30)
            conn.request(method, path, json.dumps(doc) if doc is not None else None,
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            return resp.status, data

        def generate(self, stream: bool = False, prompt: str = "hello"):
            status, data = self.call("POST", "/api/generate",
                                     {"model": "tiny", "prompt": prompt, "stream": stream})
            lines = [json.loads(x) for x in data.splitlines() if x.strip()]
            return status, lines

    yield Client()
    srv.shutdown()
    srv.server_close()


def _errors(version: str) -> tuple[str, str]:
    if version == "0.6.8":
        return ("an error was encountered while running the model: CUDA error",
                "llama runner process has terminated: CUDA error")
    return ("an error was encountered while running the model: CUDA error\n"
            "CUDA error: uncorrectable ECC error encountered",
            "llama-server process has terminated: signal: aborted: CUDA error\n"
            "CUDA error: uncorrectable ECC error encountered")


def test_a_loaded_model_holds_its_gpus_memory(ollama):
    assert ollama.files.usage()["gpus"] == {}
    status, lines = ollama.generate()
    assert status == 200 and lines[-1]["done"] is True
    usage = ollama.files.usage()
    assert usage["gpus"] == {ollama.files.gpus[0]["uuid"]: 4 + 512}
    assert usage["name"] == "/usr/bin/ollama"
    _, ps = ollama.call("GET", "/api/ps")
    assert json.loads(ps)["models"][0]["size_vram"] > MODEL_BYTES


def test_a_gpu_that_needs_a_reset_fails_its_requests_until_it_has_one(ollama):
    in_flight, load = _errors(ollama.version)
    assert ollama.generate()[0] == 200
    ollama.files.live(GPU_RESET_REQUIRED=ollama.files.gpus[0]["uuid"],
                      GPU_ECC_DBE=f"{ollama.files.gpus[0]['uuid']}:1")
    assert ollama.generate() == (500, [{"error": in_flight}])
    assert ollama.files.usage()["gpus"] == {}  # the runner is gone, and what it held
    # the next request reloads it on the same GPU: the new runner aborts
    assert ollama.generate() == (500, [{"error": load}])
    assert ollama.generate(stream=True) == (500, [{"error": load}])
    _, ps = ollama.call("GET", "/api/ps")
    assert json.loads(ps)["models"] == []
    ollama.files.live(GPU_RESET_REQUIRED="", GPU_ECC_DBE="")  # reset (and restarted)
    assert ollama.generate()[0] == 200


def test_a_stream_ends_with_the_error_when_its_gpu_falls_off_the_bus(ollama, monkeypatch):
    in_flight = ("an error was encountered while running the model: CUDA error"
                 if ollama.version == "0.6.8" else
                 "an error was encountered while running the model: CUDA error\n"
                 "CUDA error: unknown error")
    monkeypatch.setenv("OLLAMA_LAB_TOKEN_DELAY", "0.05")
    conn = http.client.HTTPConnection("127.0.0.1", ollama.port, timeout=30)
    conn.request("POST", "/api/generate", json.dumps({"model": "tiny",
                                                      "prompt": "lab:tokens=60"}))
    resp = conn.getresponse()
    assert resp.status == 200
    first = json.loads(resp.readline())
    assert first["done"] is False
    ollama.files.live(GPU_LOST=ollama.files.gpus[0]["uuid"])
    rest = [json.loads(x) for x in resp.read().splitlines() if x.strip()]
    conn.close()
    assert rest[-1] == {"error": in_flight}
    assert len(rest) < 20
    # the other GPU takes the next load: a model holds the GPU its models use least
    ollama.files.live(GPU_LOST="")
    assert ollama.generate()[0] == 200


def test_on_the_cpu_until_the_process_restarts(ollama, monkeypatch):
    assert ollama.generate()[0] == 200
    ollama.sched.set_cpu_fallback(True)
    _, ps = ollama.call("GET", "/api/ps")
    assert [m["size_vram"] for m in json.loads(ps)["models"]] == [0]
    assert ollama.files.usage()["gpus"] == {}
    monkeypatch.setenv("OLLAMA_LAB_TOKEN_DELAY", "0.01")
    monkeypatch.setenv("OLLAMA_LAB_CPU_SLOWDOWN", "10")
    started = time.monotonic()
    status, lines = ollama.generate(prompt="lab:tokens=5")
    assert status == 200 and time.monotonic() - started >= 0.5  # 5 tokens of 0.1 s
    ollama.sched.set_cpu_fallback(False)
    _, ps = ollama.call("GET", "/api/ps")
    assert json.loads(ps)["models"][0]["size_vram"] > 0
    assert ollama.files.usage()["gpus"] == {ollama.files.gpus[0]["uuid"]: 516}


def test_without_fabric_manager_a_new_runner_computes_on_the_cpu(ollama):
    ollama.files.live(FM_REQUIRED="1", FM_RUNNING="0")
    assert ollama.generate()[0] == 200
    runner = next(iter(ollama.sched.runners.values()))
    assert runner.cuda_failed and runner.gpu is None
    _, ps = ollama.call("GET", "/api/ps")  # as v0.6.8's PsHandler: the server's estimate
    assert json.loads(ps)["models"][0]["size_vram"] > 0
    assert ollama.files.usage()["gpus"] == {}


def test_error_texts_by_release():
    assert scheduler.runner_error("0.7.0", "lost") == \
        "an error was encountered while running the model: CUDA error"
    assert scheduler.load_error("0.32.15", "lost") == (
        "llama-server process has terminated: signal: aborted: CUDA error\n"
        "CUDA error: unknown error")
