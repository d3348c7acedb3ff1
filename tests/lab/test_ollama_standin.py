"""Contract tests for the lab's Ollama stand-in (lab/ollama/ollama.py).

The stand-in runs as a real subprocess on 127.0.0.1 (port picked by the OS and
read back from its "Listening on" log line) against a model registry started
in-process: the lab's own registry (lab/registry/modelregistry.py) when it is
there, and a minimal fake speaking the same protocol in any case. Every wait is
a bounded poll; every subprocess is stopped at teardown.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import ollama
import openai
import pytest

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
OLLAMA_PY = REPO / "lab" / "ollama" / "ollama.py"
REGISTRY_PY = REPO / "lab" / "registry" / "modelregistry.py"
VERSION = "0.6.8"
# Interpreter for the stand-in (the image has python3.11 or 3.13); override to try another.
STANDIN_PYTHON = os.environ.get("LAB_STANDIN_PYTHON", sys.executable)

# name, tag, model-layer size, family, parameter size, quantization
CATALOG = [
    ("library/tinyllama", "latest", 2_000_000, "llama", "1.1B", "Q4_0"),
    ("library/all-minilm", "latest", 1_000_000, "bert", "23M", "F16"),
    ("library/qwen2.5", "0.5b", 3_000_000, "qwen2", "494.03M", "Q4_K_M"),
]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        threading.Event().wait(interval)


# ---------------------------------------------------------------------------
# registries
# ---------------------------------------------------------------------------


class FakeRegistry:
    """Minimal registry.ollama.ai look-alike: manifests, blobs redirected (307) to a blob
    store on another host name (``localhost`` for the registry's ``127.0.0.1``) that
    serves them Range aware, faults. ``redirect=False``: the registry serves the blob
    itself with a plain 200, as a naive registry would."""

    def __init__(self, redirect: bool = True):
        self.redirect = redirect
        self.manifests: dict[tuple[str, str], bytes] = {}
        self.blobs: dict[str, bytes] = {}
        self.models: dict[str, dict] = {}
        self.fault: dict | None = None
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Range
        for name, tag, size, family, psize, quant in CATALOG:
            self._add(name, tag, size, family, psize, quant)
        handler = type("H", (_FakeHandler,), {"reg": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.blob_url = f"http://localhost:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _put(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return digest

    def _add(self, name, tag, size, family, psize, quant):
        seed = hashlib.sha256(f"{name}:{tag}".encode()).digest()
        model = b"GGUF" + hashlib.shake_256(seed).digest(size - 4)
        template = b"{{ .Prompt }}"
        params = b'{"stop":["<|end|>"]}'
        layers = [
            {"mediaType": "application/vnd.ollama.image.model", "digest": self._put(model),
             "size": len(model)},
            {"mediaType": "application/vnd.ollama.image.template",
             "digest": self._put(template), "size": len(template)},
            {"mediaType": "application/vnd.ollama.image.params", "digest": self._put(params),
             "size": len(params)},
        ]
        config = json.dumps({
            "model_format": "gguf", "model_family": family, "model_families": [family],
            "model_type": psize, "file_type": quant, "architecture": "amd64", "os": "linux",
        }, separators=(",", ":")).encode()
        cdesc = {"mediaType": "application/vnd.docker.container.image.v1+json",
                 "digest": self._put(config), "size": len(config)}
        # served as a distribution registry writes it; Ollama stores its compact re-encoding
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": cdesc, "layers": layers,
        }, indent=3).encode()
        stored = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": cdesc, "layers": layers,
        }, separators=(",", ":")).encode()
        self.manifests[(name, tag)] = manifest
        self.models[f"{name.split('/')[-1]}:{tag}"] = {
            "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
            "manifest": manifest,
            "stored": stored,
            "layers": layers,
            "config": cdesc,
            "size": cdesc["size"] + sum(x["size"] for x in layers),
        }

    def set_fault(self, drop_after_bytes=0, times=1, corrupt=False, digest=None):
        with self.lock:
            self.fault = {"drop_after_bytes": drop_after_bytes, "times": times,
                          "corrupt": corrupt, "digest": digest}

    def reset(self):
        with self.lock:
            self.fault = None
            self.requests.clear()

    def take_fault(self, digest: str, length: int):
        with self.lock:
            f = self.fault
            if not f or f["times"] == 0 or (f["digest"] and f["digest"] != digest):
                return None
            if length <= f["drop_after_bytes"]:
                return None
            if f["times"] > 0:
                f["times"] -= 1
            return dict(f)

    def range_requests(self, digest: str) -> list[str | None]:
        """The Range of every GET of the blob's bytes (the ranged parts)."""
        with self.lock:
            return [r for m, p, r in self.requests
                    if m == "GET" and p.endswith(digest) and r is not None]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    reg: FakeRegistry

    def log_message(self, format, *args):  # noqa: A002
        pass

    def _reply(self, status: int, body: bytes, ctype: str, extra: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        reg = self.reg
        with reg.lock:
            reg.requests.append((self.command, self.path, self.headers.get("Range")))
        m = re.match(r"^/v2/(.+)/manifests/([^/]+)$", self.path)
        if m:
            body = reg.manifests.get((m[1], m[2]))
            if body is None:
                err = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
                return self._reply(404, json.dumps(err).encode(), "application/json")
            return self._reply(
                200, body, "application/vnd.docker.distribution.manifest.v2+json",
                {"Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest()})
        m = re.match(r"^/v2/(.+)/blobs/(sha256:[0-9a-f]{64})$", self.path)
        store = re.match(r"^/store/(sha256:[0-9a-f]{64})$", self.path)
        digest = m[2] if m else store[1] if store else None
        if digest not in reg.blobs:
            err = {"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown to registry"}]}
            return self._reply(404, json.dumps(err).encode(), "application/json")
        if m and reg.redirect:
            return self._reply(307, b"", "text/html",
                               {"Location": f"{reg.blob_url}/store/{digest}"})
        data = reg.blobs[digest]
        start, end, status, extra = 0, len(data) - 1, 200, {}
        rng = re.match(r"^bytes=(\d+)-(\d*)$", self.headers.get("Range") or "")
        if rng:
            start = int(rng[1])
            end = min(int(rng[2]), len(data) - 1) if rng[2] else len(data) - 1
            status = 206
            extra["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        body = data[start:end + 1]
        if self.command == "HEAD":
            return self._reply(status, body, "application/octet-stream", extra)
        fault = reg.take_fault(digest, len(body))
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        if fault and fault["corrupt"]:
            b = bytearray(body)
            b[fault["drop_after_bytes"]] ^= 0xFF
            body = bytes(b)
        elif fault:
            self.wfile.write(body[:fault["drop_after_bytes"]])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    do_HEAD = do_GET  # noqa: N815


class LabRegistry:
    """lab/registry/modelregistry.py run in-process through its public API."""

    def __init__(self, data_dir: Path, redirect_elsewhere: bool = True):
        spec = importlib.util.spec_from_file_location("lab_modelregistry_under_test", REGISTRY_PY)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        catalog = {"models": [
            {"name": n, "tag": t, "size": s, "family": f, "parameter_size": p,
             "quantization_level": q} for n, t, s, f, p, q in CATALOG]}
        built = mod.build_catalog(catalog, data_dir)
        self.models = {}
        for m in built:
            self.models[f"{m['name'].split('/')[-1]}:{m['tag']}"] = {
                "digest": m["digest"], "manifest": m["manifest"].encode(),
                "stored": _go_manifest(m["config"], m["layers"]),
                "layers": m["layers"], "config": m["config"], "size": m["size"],
            }
        self.registry = mod.Registry(built)
        self.httpd = mod.make_server("127.0.0.1", 0, self.registry)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # the blob store under another name of this server, as FLEETLAB_BLOB_URL in the lab;
        # without it the registry redirects to its own host name (and Ollama fails)
        self.blob_url = f"http://localhost:{self.port}" if redirect_elsewhere else None
        self.registry.blob_url = self.blob_url
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _post(self, path: str, body: dict) -> None:
        r = httpx.post(self.url + path, json=body, timeout=10)
        r.raise_for_status()

    def set_fault(self, drop_after_bytes=0, times=1, corrupt=False, digest=None):
        body = {"drop_after_bytes": drop_after_bytes, "times": times, "corrupt": corrupt}
        if digest:
            body["digest"] = digest
        self._post("/_lab/fault", body)

    def reset(self):
        self._post("/_lab/reset", {})

    def stats(self) -> dict:
        return httpx.get(self.url + "/_lab/stats", timeout=10).json()

    def range_requests(self, digest: str) -> list[str]:
        return self.stats()["ranges"].get(digest, [])

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _go_manifest(config: dict, layers: list[dict]) -> bytes:
    """What Ollama writes after a pull: json.Marshal of its Manifest struct."""
    def layer(x):
        return {"mediaType": x["mediaType"], "digest": x["digest"], "size": x["size"]}
    return json.dumps({"schemaVersion": 2,
                       "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                       "config": layer(config), "layers": [layer(x) for x in layers]},
                      separators=(",", ":")).encode()


REGISTRY_KINDS = ["fake", pytest.param("lab", marks=pytest.mark.skipif(
    not REGISTRY_PY.exists(), reason="lab/registry/modelregistry.py not written yet"))]


@pytest.fixture(scope="module", params=REGISTRY_KINDS)
def registry_server(request, tmp_path_factory):
    if request.param == "lab":
        reg = LabRegistry(tmp_path_factory.mktemp("labregistry"))
    else:
        reg = FakeRegistry()
    yield reg
    reg.close()


@pytest.fixture
def registry(registry_server):
    registry_server.reset()
    yield registry_server
    registry_server.reset()


@pytest.fixture
def fake_registry():
    reg = FakeRegistry()
    yield reg
    reg.close()


# ---------------------------------------------------------------------------
# the stand-in as a subprocess
# ---------------------------------------------------------------------------


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OLLAMA_", "NVIDIA_")) and k not in ("HTTP_PROXY", "HTTPS_PROXY",
                                                                    "http_proxy", "https_proxy")}
    env["OLLAMA_LAB_VERSION"] = VERSION
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_cli(*args: str, host: str, timeout: float = 60, **env) -> subprocess.CompletedProcess:
    return subprocess.run([STANDIN_PYTHON, str(OLLAMA_PY), *args], env=_clean_env(
        OLLAMA_HOST=host, **env), stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=timeout)


class Server:
    def __init__(self, models: Path, **env):
        self.models = models
        self.lines: list[str] = []
        self.port: int | None = None
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [STANDIN_PYTHON, str(OLLAMA_PY), "serve"],
            env=_clean_env(**{"OLLAMA_HOST": "127.0.0.1:0", "OLLAMA_MODELS": str(models),
                              "OLLAMA_LAB_TOKEN_DELAY": "0.002", **env}),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._ready.wait(15) or self.port is None:
            self.stop()
            raise AssertionError("stand-in did not start:\n" + "".join(self.lines))
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"

    def _drain(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            m = re.search(r'msg="Listening on 127\.0\.0\.1:(\d+) \(version ', line)
            if m:
                self.port = int(m[1])
                self._ready.set()
        self._ready.set()

    def client(self) -> ollama.Client:
        return ollama.Client(host=self.url, timeout=60)

    def cli(self, *args: str, **env) -> subprocess.CompletedProcess:
        return run_cli(*args, host=self.host, **env)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def start_server(tmp_path):
    servers: list[Server] = []

    def start(models: Path | None = None, **env) -> Server:
        s = Server(models or tmp_path / f"models{len(servers)}", **env)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def pull_lines(url: str, model: str, **extra) -> tuple[int, str, list[dict]]:
    with httpx.stream("POST", url + "/api/pull", json={"model": model, **extra},
                      timeout=60) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line.strip()]
        return r.status_code, r.headers.get("content-type", ""), lines


def model_digest(reg, name: str) -> str:
    return reg.models[name]["layers"][0]["digest"]


def blob(models: Path, digest: str) -> Path:
    return models / "blobs" / ("sha256-" + digest.split(":", 1)[1])


def manifest_file(models: Path, model: str, tag: str = "latest") -> Path:
    return models / "manifests" / "registry.ollama.ai" / "library" / model / tag


def sha256_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------


def test_contract_with_official_client(registry, start_server):
    srv = start_server(OLLAMA_LAB_REGISTRY=registry.url)
    client = srv.client()
    expected = registry.models["tinyllama:latest"]

    progress = list(client.pull("tinyllama", stream=True))
    assert progress[0].status == "pulling manifest"
    assert progress[-1].status == "success"
    statuses = [p.status for p in progress]
    assert statuses.index("verifying sha256 digest") < statuses.index("writing manifest")
    layer_lines = [p for p in progress if p.digest]
    want = {x["digest"]: x["size"] for x in expected["layers"] + [expected["config"]]}
    assert {p.digest for p in layer_lines} == set(want)
    for p in layer_lines:
        assert p.status == f"pulling {p.digest[7:19]}"
        assert p.total == want[p.digest]
        assert (p.completed or 0) <= p.total
    for digest, size in want.items():
        assert [p.completed for p in layer_lines if p.digest == digest][-1] == size
    assert client.pull("all-minilm", stream=False).status == "success"

    listed = {m.model: m for m in client.list().models}
    assert set(listed) == {"tinyllama:latest", "all-minilm:latest"}
    tiny = listed["tinyllama:latest"]
    # the model ID is the sha256 of the manifest Ollama re-encoded, not the registry's
    assert tiny.digest == hashlib.sha256(expected["stored"]).hexdigest()
    assert tiny.digest != expected["digest"].split(":", 1)[1]
    assert tiny.size == expected["size"]
    assert tiny.details.family == "llama"
    assert tiny.details.parameter_size == "1.1B"
    assert tiny.details.quantization_level == "Q4_0"
    assert tiny.modified_at is not None
    manifest = manifest_file(srv.models, "tinyllama")
    assert manifest.read_bytes() == expected["stored"] != expected["manifest"]

    show = client.show("tinyllama")
    assert show.template == "{{ .Prompt }}"
    assert show.capabilities == ["completion"]
    assert show.modelinfo["general.architecture"] == "llama"
    assert show.details.format == "gguf"
    assert "FROM " in show.modelfile and "stop" in show.parameters
    assert client.show("all-minilm").capabilities == ["embedding"]

    chunks = list(client.generate(model="tinyllama", prompt="why is the sky blue?",
                                  stream=True))
    assert len(chunks) > 3
    assert all(not c.done for c in chunks[:-1]) and chunks[-1].done
    assert chunks[-1].done_reason == "stop"
    assert chunks[-1].eval_count == len(chunks) - 1
    assert chunks[-1].context and chunks[-1].total_duration > 0
    text = "".join(c.response for c in chunks)
    assert text.startswith("lab answer to: why is the sky blue?")
    whole = client.generate(model="tinyllama", prompt="why is the sky blue?", stream=False)
    assert whole.response == text and whole.done
    short = client.generate(model="tinyllama", prompt="count", options={"num_predict": 2})
    assert short.done_reason == "length" and short.eval_count == 2
    loaded = client.generate(model="tinyllama", prompt="")
    assert loaded.done_reason == "load" and loaded.response == ""

    messages = [{"role": "user", "content": "hello there"}]
    chat_chunks = list(client.chat(model="tinyllama", messages=messages, stream=True))
    assert len(chat_chunks) > 3 and chat_chunks[-1].done
    assert all(c.message.role == "assistant" for c in chat_chunks)
    chat = client.chat(model="tinyllama", messages=messages, stream=False)
    assert chat.message.content == "".join(c.message.content for c in chat_chunks)
    assert chat.message.content.startswith("lab answer to: hello there")
    assert chat.done_reason == "stop" and chat.eval_count > 0

    emb = client.embed(model="all-minilm", input=["first", "second"])
    assert len(emb.embeddings) == 2 and all(len(v) == 384 for v in emb.embeddings)
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-5 for v in emb.embeddings)
    assert emb.embeddings[0] != emb.embeddings[1]
    assert client.embed(model="all-minilm", input="first").embeddings[0] == emb.embeddings[0]
    assert len(client.embeddings(model="all-minilm", prompt="x").embedding) == 384
    with pytest.raises(ollama.ResponseError) as exc:
        client.generate(model="all-minilm", prompt="hi")
    assert exc.value.status_code == 400

    client.copy("tinyllama", "tinyllama:copy")
    names = {m.model: m.digest for m in client.list().models}
    assert names["tinyllama:copy"] == names["tinyllama:latest"]

    ps = {m.model: m for m in client.ps().models}
    assert {"tinyllama:latest", "all-minilm:latest"} <= set(ps)
    assert ps["tinyllama:latest"].expires_at is not None
    assert ps["tinyllama:latest"].size_vram == 0

    client.delete("tinyllama:copy")
    assert blob(srv.models, model_digest(registry, "tinyllama:latest")).exists()
    client.delete("tinyllama")
    assert not blob(srv.models, model_digest(registry, "tinyllama:latest")).exists()
    assert not manifest.exists()
    assert blob(srv.models, model_digest(registry, "all-minilm:latest")).exists()
    for name in ("tinyllama", "tinyllama:copy"):
        with pytest.raises(ollama.ResponseError) as exc:
            client.generate(model=name, prompt="hi")
        assert exc.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as exc:
        client.delete("tinyllama")
    assert exc.value.status_code == 404
    assert [m.model for m in client.list().models] == ["all-minilm:latest"]


def test_unknown_model_is_an_error_line_under_200(registry, start_server):
    srv = start_server(OLLAMA_LAB_REGISTRY=registry.url)
    status, ctype, lines = pull_lines(srv.url, "no-such-model")
    assert status == 200
    assert ctype == "application/x-ndjson"
    assert lines[0] == {"status": "pulling manifest"}
    assert lines[-1] == {"error": "pull model manifest: file does not exist"}
    r = httpx.post(srv.url + "/api/pull", json={"model": "no-such-model", "stream": False})
    assert r.status_code == 500
    assert r.json() == {"error": "pull model manifest: file does not exist"}
    assert not (srv.models / "manifests" / "registry.ollama.ai" / "library" /
                "no-such-model").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_registry_is_an_error_line(start_server):
    port = _closed_port()
    srv = start_server(OLLAMA_LAB_REGISTRY=f"http://127.0.0.1:{port}")
    status, _, lines = pull_lines(srv.url, "tinyllama")
    assert status == 200
    url = f"http://127.0.0.1:{port}/v2/library/tinyllama/manifests/latest"
    assert lines[-1] == {"error": f'pull model manifest: Get "{url}": dial tcp '
                                  f"127.0.0.1:{port}: connect: connection refused"}


def test_dropped_blob_connection_is_resumed(registry, start_server):
    srv = start_server(OLLAMA_LAB_REGISTRY=registry.url)
    digest = model_digest(registry, "tinyllama:latest")
    registry.set_fault(drop_after_bytes=700_000, times=2, digest=digest)
    status, _, lines = pull_lines(srv.url, "tinyllama")
    assert status == 200
    assert lines[-1] == {"status": "success"}, lines[-3:]
    path = blob(srv.models, digest)
    assert sha256_file(path) == digest
    assert not list((srv.models / "blobs").glob("*-partial*"))
    assert manifest_file(srv.models, "tinyllama").exists()
    if isinstance(registry, FakeRegistry):
        ranges = registry.range_requests(digest)
        assert ranges == ["bytes=0-1999999", "bytes=700000-1999999", "bytes=1400000-1999999"]


def test_corrupt_blob_leaves_no_manifest_and_no_blob(registry, start_server):
    srv = start_server(OLLAMA_LAB_REGISTRY=registry.url)
    digest = model_digest(registry, "tinyllama:latest")
    registry.set_fault(drop_after_bytes=1234, times=1, corrupt=True, digest=digest)
    status, _, lines = pull_lines(srv.url, "tinyllama")
    assert status == 200
    err = lines[-1]["error"]
    assert err.startswith(f"digest mismatch, file must be downloaded again: want {digest}, "
                          "got sha256:")
    assert {"status": "verifying sha256 digest"} in lines
    assert not manifest_file(srv.models, "tinyllama").exists()
    assert not blob(srv.models, digest).exists()
    assert not list((srv.models / "blobs").glob("*-partial*"))
    # the fault was single-use: pulling again succeeds and verifies
    status, _, lines = pull_lines(srv.url, "tinyllama")
    assert lines[-1] == {"status": "success"}
    assert sha256_file(blob(srv.models, digest)) == digest


def test_pull_gives_up_after_bounded_retries(fake_registry, start_server):
    srv = start_server(OLLAMA_LAB_REGISTRY=fake_registry.url)
    digest = model_digest(fake_registry, "tinyllama:latest")
    fake_registry.set_fault(drop_after_bytes=100_000, times=-1, digest=digest)
    t0 = time.monotonic()
    _, _, lines = pull_lines(srv.url, "tinyllama")
    assert lines[-1]["error"].startswith("max retries exceeded: ")
    assert time.monotonic() - t0 < 30
    assert len(fake_registry.range_requests(digest)) == 6
    assert not manifest_file(srv.models, "tinyllama").exists()
    assert not blob(srv.models, digest).exists()


def test_concurrent_pulls_share_blobs(registry, start_server):
    srv = start_server(OLLAMA_LAB_REGISTRY=registry.url)
    results: list = [None, None, None]

    def pull(i, model):
        results[i] = pull_lines(srv.url, model)

    threads = [threading.Thread(target=pull, args=(i, m)) for i, m in
               enumerate(["tinyllama", "tinyllama", "qwen2.5:0.5b"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r is not None and r[2][-1] == {"status": "success"} for r in results), results
    for name in ("tinyllama:latest", "qwen2.5:0.5b"):
        for layer in registry.models[name]["layers"]:
            assert sha256_file(blob(srv.models, layer["digest"])) == layer["digest"]
    assert not list((srv.models / "blobs").glob("*-partial*"))


def test_http_registry_needs_insecure(fake_registry, start_server):
    srv = start_server()
    host = fake_registry.url.removeprefix("http://")
    name = f"{host}/library/tinyllama"
    _, _, lines = pull_lines(srv.url, name)
    assert "error" in lines[-1]
    assert f"https://{host}/v2/library/tinyllama/manifests/latest" in lines[-1]["error"]
    _, _, lines = pull_lines(srv.url, name, insecure=True)
    assert lines[-1] == {"status": "success"}
    tags = httpx.get(srv.url + "/api/tags").json()["models"]
    assert [m["name"] for m in tags] == [f"{name}:latest"]
    assert (srv.models / "manifests" / host / "library" / "tinyllama" / "latest").exists()


def test_cli_commands(fake_registry, start_server):
    srv = start_server(OLLAMA_LAB_REGISTRY=fake_registry.url)
    r = srv.cli("pull", "tinyllama")
    assert r.returncode == 0, r.stderr
    assert "success" in r.stderr
    r = srv.cli("pull", "missing")
    assert r.returncode == 1
    assert r.stderr.strip().endswith("Error: pull model manifest: file does not exist")
    r = srv.cli("list")
    assert r.returncode == 0, r.stderr
    header, row = r.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    digest = hashlib.sha256(fake_registry.models["tinyllama:latest"]["stored"]).hexdigest()
    assert row.split()[:4] == ["tinyllama:latest", digest[:12], "2.0", "MB"]
    r = srv.cli("run", "tinyllama", "say", "hi")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("lab answer to: say hi")
    r = srv.cli("ps")
    assert r.returncode == 0 and "tinyllama:latest" in r.stdout and "100% CPU" in r.stdout
    r = srv.cli("rm", "tinyllama")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "deleted 'tinyllama'\n"
    assert srv.cli("list").stdout.splitlines()[1:] == []
    r = srv.cli("rm", "tinyllama")
    assert r.returncode == 1 and r.stderr == "Error: model 'tinyllama' not found\n"


def test_a_loopback_listener_refuses_a_host_name_that_is_not_local(start_server):
    """server/routes.go allowedHostsMiddleware: why the proxies send Host: localhost."""
    srv = start_server()
    for name, code in (("llm.example.com", 403), ("localhost", 200), ("127.0.0.1", 200),
                       ("gpu-1.internal", 200), ("10.1.2.3", 200)):
        answer = httpx.get(srv.url + "/api/version", headers={"Host": name}, timeout=10)
        assert answer.status_code == code, name


def test_version_and_unreachable_server(start_server):
    srv = start_server()
    r = srv.cli("--version")
    assert (r.returncode, r.stdout) == (0, f"ollama version is {VERSION}\n")
    assert httpx.get(srv.url + "/api/version").json() == {"version": VERSION}
    srv.stop()
    r = run_cli("-v", host=srv.host)
    assert r.returncode == 0
    assert r.stdout == ("Warning: could not connect to a running Ollama instance\n"
                        f"Warning: client version is {VERSION}\n")
    r = run_cli("list", host=srv.host)
    assert r.returncode == 1
    assert r.stderr == "Error: could not connect to ollama app, is it running?\n"


def test_unhealthy_build_never_becomes_healthy(start_server):
    srv = start_server(OLLAMA_LAB_UNHEALTHY="1")
    for method, path in (("GET", "/"), ("GET", "/api/version"), ("GET", "/api/tags"),
                         ("POST", "/api/pull")):
        r = httpx.request(method, srv.url + path, json={} if method == "POST" else None)
        assert r.status_code == 500
        assert r.json() == {"error": "lab: this build is deliberately unhealthy"}
    assert httpx.head(srv.url + "/").status_code == 500
    r = srv.cli("list")
    assert r.returncode == 1
    assert r.stderr.startswith("Error: ")
    r = srv.cli("--version")
    assert r.returncode == 0 and "could not connect to a running Ollama instance" in r.stdout


@pytest.mark.parametrize("noprune", [None, "1"])
def test_noprune_on_startup(tmp_path, start_server, noprune):
    models = tmp_path / "models"
    (models / "blobs").mkdir(parents=True)
    stray = models / "blobs" / ("sha256-" + "ab" * 32 + "-partial")
    stray.write_bytes(b"half a download")
    unused = models / "blobs" / ("sha256-" + hashlib.sha256(b"orphan").hexdigest())
    unused.write_bytes(b"orphan")
    env = {"OLLAMA_NOPRUNE": noprune} if noprune else {}
    srv = start_server(models, **env)
    assert httpx.get(srv.url + "/api/tags").json() == {"models": []}
    assert stray.exists() is bool(noprune)
    assert unused.exists() is bool(noprune)


def test_a_bare_partial_without_part_files_is_downloaded_again(fake_registry, tmp_path,
                                                              start_server):
    """Prepare resumes from the -partial-N part files only: a -partial alone is
    overwritten from byte 0 (server/download.go)."""
    digest = model_digest(fake_registry, "tinyllama:latest")
    models = tmp_path / "models"
    (models / "blobs").mkdir(parents=True)
    partial = models / "blobs" / ("sha256-" + digest[7:] + "-partial")
    partial.write_bytes(fake_registry.blobs[digest][:1_500_000])
    srv = start_server(models, OLLAMA_NOPRUNE="1", OLLAMA_LAB_REGISTRY=fake_registry.url)
    _, _, lines = pull_lines(srv.url, "tinyllama")
    assert lines[-1] == {"status": "success"}
    assert fake_registry.range_requests(digest) == ["bytes=0-1999999"]
    assert sha256_file(blob(models, digest)) == digest


def test_an_interrupted_pull_leaves_a_full_size_partial_and_resumes(registry, tmp_path,
                                                                   start_server):
    """run: file.Truncate(b.Total) sizes `-partial` in full before the first byte; each
    part's progress is kept in `-partial-N` (JSON), which a later pull resumes from."""
    digest = model_digest(registry, "tinyllama:latest")
    size = 2_000_000
    models = tmp_path / "models"
    srv = start_server(models, OLLAMA_NOPRUNE="1", OLLAMA_LAB_REGISTRY=registry.url)
    registry.set_fault(drop_after_bytes=300_000, times=-1, digest=digest)
    _, _, lines = pull_lines(srv.url, "tinyllama")
    assert lines[-1] == {"error": "max retries exceeded: unexpected EOF"}, lines[-3:]
    partial = blob(models, digest).with_name(blob(models, digest).name + "-partial")
    assert partial.stat().st_size == size  # sized in full: its size says nothing of progress
    part = json.loads(partial.with_name(partial.name + "-0").read_text())
    assert part == {"N": 0, "Offset": 0, "Size": size, "Completed": 6 * 300_000}
    got = [x.get("completed", 0) for x in lines if x.get("digest") == digest]
    assert max(got) <= 6 * 300_000 and got == sorted(got)  # progress: bytes received
    assert not manifest_file(models, "tinyllama").exists()
    srv.stop()

    registry.reset()
    srv = start_server(models, OLLAMA_NOPRUNE="1", OLLAMA_LAB_REGISTRY=registry.url)
    _, _, lines = pull_lines(srv.url, "tinyllama")
    assert lines[-1] == {"status": "success"}, lines[-3:]
    assert registry.range_requests(digest) == [f"bytes={6 * 300_000}-{size - 1}"]
    assert [x["completed"] for x in lines if x.get("digest") == digest][0] >= 6 * 300_000
    assert sha256_file(blob(models, digest)) == digest
    assert not list((models / "blobs").glob("*-partial*"))


def test_a_large_blob_comes_in_ranged_parts(registry, start_server):
    """Prepare: parts of a sixteenth of the blob, 100 MB to 1000 MB; scaled by
    OLLAMA_LAB_PART_SCALE (0.005: 500 kB to 5 MB), a 3 MB blob is 6 parts of 500 kB, each
    fetched with its own Range request at the blob store."""
    srv = start_server(OLLAMA_LAB_REGISTRY=registry.url, OLLAMA_LAB_PART_SCALE="0.005")
    digest = model_digest(registry, "qwen2.5:0.5b")
    _, _, lines = pull_lines(srv.url, "qwen2.5:0.5b")
    assert lines[-1] == {"status": "success"}, lines[-3:]
    want = [f"bytes={i * 500_000}-{(i + 1) * 500_000 - 1}" for i in range(6)]
    assert sorted(registry.range_requests(digest), key=lambda r: int(r[6:].split("-")[0])) \
        == want
    if isinstance(registry, LabRegistry):
        stats = registry.stats()
        assert stats["range_requests"] == 6 + 3  # the model in 6 parts, 3 small blobs in 1
        assert stats["by_blob"][digest] == 3_000_000  # each byte once
    assert sha256_file(blob(srv.models, digest)) == digest
    assert "downloading " + digest[7:19] + " in 6 500 KB part(s)" in "".join(srv.lines)
    # upstream's own sizes: anything under 1.6 GB is one part of the whole blob
    srv2 = start_server(OLLAMA_LAB_REGISTRY=registry.url)
    registry.reset()
    _, _, lines = pull_lines(srv2.url, "qwen2.5:0.5b")
    assert lines[-1] == {"status": "success"}
    assert registry.range_requests(digest) == ["bytes=0-2999999"]


@pytest.mark.parametrize("kind", ["plain 200", "redirect to the same host"])
def test_a_pull_fails_on_a_registry_that_does_not_redirect_elsewhere(kind, tmp_path,
                                                                      start_server):
    """directURL: redirects are followed while the host name stays; the answer must
    carry a Location, and a plain 200 does not (net/http ErrNoLocation)."""
    if kind == "plain 200":
        reg = FakeRegistry(redirect=False)
    else:
        reg = LabRegistry(tmp_path / "labregistry", redirect_elsewhere=False)
    try:
        srv = start_server(OLLAMA_LAB_REGISTRY=reg.url)
        _, _, lines = pull_lines(srv.url, "tinyllama")
        assert lines[-1] == {"error": "http: no Location header in response"}, lines[-3:]
        assert not manifest_file(srv.models, "tinyllama").exists()
        assert httpx.get(srv.url + "/api/tags").json() == {"models": []}
        if kind == "plain 200":
            digest = model_digest(reg, "tinyllama:latest")
            assert [r for m, p, r in reg.requests if p.endswith(digest)] == [None, None]
    finally:
        reg.close()


def test_the_stored_manifest_is_ollamas_own_encoding(registry, start_server):
    """PullModel writes json.Marshal of its Manifest, not the registry's bytes: its
    sha256 is the ID /api/tags and `ollama list` show."""
    srv = start_server(OLLAMA_LAB_REGISTRY=registry.url)
    _, _, lines = pull_lines(srv.url, "tinyllama")
    assert lines[-1] == {"status": "success"}
    model = registry.models["tinyllama:latest"]
    stored = manifest_file(srv.models, "tinyllama").read_bytes()
    assert stored == model["stored"]
    assert stored != model["manifest"]
    assert json.loads(stored) == json.loads(model["stored"])
    (tag,) = httpx.get(srv.url + "/api/tags").json()["models"]
    assert tag["digest"] == hashlib.sha256(stored).hexdigest()
    assert "sha256:" + tag["digest"] != model["digest"]
    row = srv.cli("list").stdout.splitlines()[1]
    assert row.split()[1] == tag["digest"][:12]


def test_a_0_32_pull_stores_the_registrys_own_bytes(registry, start_server, tmp_path):
    """v0.32.15 PullModel writes pullModelManifest's data as it came: the ID is the
    registry's manifest digest; the progress lines are 0.6.8's."""
    srv = start_server(OLLAMA_LAB_REGISTRY=registry.url, OLLAMA_LAB_VERSION="0.32.15",
                       HOME=str(tmp_path / "home"))
    _, _, lines = pull_lines(srv.url, "tinyllama")
    statuses = [x["status"] for x in lines]
    assert statuses[0] == "pulling manifest" and statuses[-3:] == [
        "verifying sha256 digest", "writing manifest", "success"]
    model = registry.models["tinyllama:latest"]
    stored = manifest_file(srv.models, "tinyllama").read_bytes()
    assert stored == model["manifest"]
    (tag,) = httpx.get(srv.url + "/api/tags").json()["models"]
    assert "sha256:" + tag["digest"] == model["digest"]
    assert srv.cli("list", OLLAMA_LAB_VERSION="0.32.15").stdout.splitlines()[0].split() == [
        "NAME", "ID", "SIZE", "MODIFIED"]


def test_a_model_whose_layer_blob_is_missing_is_still_listed(fake_registry, start_server):
    """ListHandler reads only the manifest and the config blob: a missing layer blob
    leaves the model listed; show, generate and chat then fail as GetModel and
    Capabilities make them. A missing config blob takes it off the list."""
    srv = start_server(OLLAMA_LAB_REGISTRY=fake_registry.url)
    for name in ("tinyllama", "qwen2.5:0.5b", "all-minilm"):
        assert pull_lines(srv.url, name)[2][-1] == {"status": "success"}
    before = {m["name"]: m for m in httpx.get(srv.url + "/api/tags").json()["models"]}

    tiny = fake_registry.models["tinyllama:latest"]
    blob(srv.models, tiny["layers"][0]["digest"]).unlink()  # the model layer
    after = {m["name"]: m for m in httpx.get(srv.url + "/api/tags").json()["models"]}
    assert after == before
    r = httpx.post(srv.url + "/api/show", json={"model": "tinyllama"})
    assert (r.status_code, r.json()) == (404, {"error": "model 'tinyllama' not found"})
    r = httpx.post(srv.url + "/api/generate", json={"model": "tinyllama", "prompt": "hi"})
    assert (r.status_code, r.json()) == (400, {"error": '"tinyllama" does not support generate'})
    r = httpx.post(srv.url + "/api/chat", json={"model": "tinyllama", "messages": [
        {"role": "user", "content": "hi"}]})
    assert (r.status_code, r.json()) == (400, {"error": '"tinyllama" does not support chat'})

    qwen = fake_registry.models["qwen2.5:0.5b"]
    blob(srv.models, qwen["layers"][1]["digest"]).unlink()  # the template layer
    assert "qwen2.5:0.5b" in {m["name"] for m in httpx.get(srv.url + "/api/tags").json()[
        "models"]}
    r = httpx.post(srv.url + "/api/generate", json={"model": "qwen2.5:0.5b", "prompt": "hi"})
    assert (r.status_code, r.json()) == (404, {"error": "model 'qwen2.5:0.5b' not found"})

    minilm = fake_registry.models["all-minilm:latest"]
    blob(srv.models, minilm["layers"][0]["digest"]).unlink()
    r = httpx.post(srv.url + "/api/embed", json={"model": "all-minilm", "input": "x"})
    assert (r.status_code, r.json()) == (
        404, {"error": 'model "all-minilm" not found, try pulling it first'})
    blob(srv.models, minilm["config"]["digest"]).unlink()  # the config blob
    assert {m["name"] for m in httpx.get(srv.url + "/api/tags").json()["models"]} == {
        "tinyllama:latest", "qwen2.5:0.5b"}
    r = srv.cli("list")
    assert r.returncode == 0 and "tinyllama:latest" in r.stdout


def test_errors_match_upstream(fake_registry, start_server):
    srv = start_server(OLLAMA_LAB_REGISTRY=fake_registry.url)
    u = srv.url
    r = httpx.get(u + "/nope")
    assert (r.status_code, r.text) == (404, "404 page not found")
    r = httpx.get(u + "/api/pull")
    assert r.status_code == 405
    r = httpx.post(u + "/api/generate", content=b"{not json")
    assert r.status_code == 400 and "invalid character" in r.json()["error"]
    r = httpx.post(u + "/api/generate", content=b"")
    assert r.json() == {"error": "missing request body"}
    r = httpx.post(u + "/api/pull", json={"model": "bad name!"})
    assert (r.status_code, r.json()) == (400, {"error": "invalid model name"})
    r = httpx.post(u + "/api/generate", json={"model": "absent", "prompt": "hi"})
    assert (r.status_code, r.json()) == (404, {"error": "model 'absent' not found"})
    r = httpx.post(u + "/api/chat", json={"model": "absent", "messages": []})
    assert r.status_code == 404
    assert r.json() == {"error": 'model "absent" not found, try pulling it first'}
    r = httpx.post(u + "/api/chat", json={"messages": []})
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})
    r = httpx.post(u + "/api/show", json={"model": "absent"})
    assert (r.status_code, r.json()) == (404, {"error": "model 'absent' not found"})
    r = httpx.request("DELETE", u + "/api/delete", json={"model": "absent"})
    assert (r.status_code, r.json()) == (404, {"error": "model 'absent' not found"})
    r = httpx.post(u + "/api/copy", json={"source": "absent", "destination": "b"})
    assert (r.status_code, r.json()) == (404, {"error": 'model "absent" not found'})
    r = httpx.post(u + "/api/generate", json={"model": 7})
    assert r.status_code == 400 and "cannot unmarshal number" in r.json()["error"]
    assert httpx.get(u + "/").text == "Ollama is running"
    assert httpx.head(u + "/").status_code == 200


def test_keep_alive_unloads(fake_registry, start_server):
    srv = start_server(OLLAMA_LAB_REGISTRY=fake_registry.url, OLLAMA_KEEP_ALIVE="-1",
                       NVIDIA_VISIBLE_DEVICES="0")
    client = srv.client()
    client.pull("tinyllama")
    client.generate(model="tinyllama", prompt="hi")
    (m,) = client.ps().models
    assert m.expires_at.year > 2200  # negative keep-alive means forever
    assert m.size_vram == m.size > 0
    # like upstream, a model is released (and unloaded) once its response has been sent
    client.generate(model="tinyllama", prompt="hi", keep_alive=0)
    wait_for(lambda: client.ps().models == [], timeout=5, what="keep_alive=0 unload")
    t0 = time.monotonic()
    client.generate(model="tinyllama", prompt="hi", keep_alive="2s")
    (m,) = client.ps().models
    assert m.expires_at.timestamp() - time.time() < 2.5
    wait_for(lambda: client.ps().models == [], timeout=10, what="2s keep-alive to expire")
    assert time.monotonic() - t0 > 1.5
    client.generate(model="tinyllama", prompt="")
    r = client.generate(model="tinyllama", prompt="", keep_alive=0)
    assert r.done_reason == "unload"
    wait_for(lambda: client.ps().models == [], timeout=5, what="explicit unload")
    with pytest.raises(ollama.ResponseError) as exc:
        client.generate(model="tinyllama", prompt="hi", keep_alive="5 minutes")
    assert exc.value.status_code == 400


def test_a_request_without_keep_alive_keeps_a_loaded_models_duration(fake_registry,
                                                                       start_server):
    # upstream server/sched.go useLoadedRunner: only a request that names keep_alive
    # changes how long a loaded model stays; a load without one takes OLLAMA_KEEP_ALIVE
    srv = start_server(OLLAMA_LAB_REGISTRY=fake_registry.url, OLLAMA_KEEP_ALIVE="5m")
    client = srv.client()
    client.pull("tinyllama")
    client.generate(model="tinyllama", prompt="")  # loaded with the default, 5m
    (m,) = client.ps().models
    assert m.expires_at.timestamp() - time.time() < 301
    client.generate(model="tinyllama", prompt="", keep_alive=-1)  # a warm-up: for good
    client.generate(model="tinyllama", prompt="hi")  # a user request, no keep_alive
    (m,) = client.ps().models
    assert m.expires_at.year > 2200
    first = client.generate(model="tinyllama", prompt="hi")
    assert first.load_duration < 0.3e9  # already loaded: no load time
    client.generate(model="tinyllama", prompt="hi", keep_alive="1m")  # one that names it
    (m,) = client.ps().models
    assert m.expires_at.timestamp() - time.time() < 61


def test_parallel_limit_and_queue(fake_registry, start_server):
    srv = start_server(OLLAMA_LAB_REGISTRY=fake_registry.url, OLLAMA_NUM_PARALLEL="1",
                       OLLAMA_MAX_QUEUE="1", OLLAMA_LAB_TOKEN_DELAY="0.1",
                       OLLAMA_LAB_TOKENS="10")
    srv.client().pull("tinyllama")
    results: dict[str, tuple[int, dict]] = {}

    def generate(key):
        r = httpx.post(srv.url + "/api/generate", timeout=30,
                       json={"model": "tinyllama", "prompt": key, "stream": False})
        results[key] = (r.status_code, r.json())

    with httpx.stream("POST", srv.url + "/api/generate", timeout=30,
                      json={"model": "tinyllama", "prompt": "first"}) as first:
        lines = first.iter_lines()
        assert json.loads(next(lines))["done"] is False  # holds the only slot now
        threads = [threading.Thread(target=generate, args=(k,)) for k in ("b", "c")]
        for t in threads:
            t.start()
        wait_for(lambda: any(s == 503 for s, _ in results.values()), timeout=5,
                 what="a 503 for the request beyond the queue")
        rest = [json.loads(line) for line in lines]
    for t in threads:
        t.join(30)
    assert rest[-1]["done"] is True
    codes = sorted(s for s, _ in results.values())
    assert codes == [200, 503]
    busy = next(body for s, body in results.values() if s == 503)
    assert busy == {"error": "server busy, please try again.  maximum pending requests exceeded"}


# ---------------------------------------------------------------------------
# OpenAI compatibility (upstream openai/openai.go), through the official client
# ---------------------------------------------------------------------------


def openai_client(srv: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{srv.port}/v1", api_key="ollama",
                         timeout=60, max_retries=0)


def test_openai_chat_with_official_client(fake_registry, start_server):
    srv = start_server(OLLAMA_LAB_REGISTRY=fake_registry.url)
    srv.client().pull("tinyllama")
    oai = openai_client(srv)
    messages = [{"role": "user", "content": "hello there"}]

    chat = oai.chat.completions.create(model="tinyllama", messages=messages)
    assert chat.object == "chat.completion"
    assert re.fullmatch(r"chatcmpl-\d{1,3}", chat.id)
    assert chat.model == "tinyllama" and chat.system_fingerprint == "fp_ollama"
    assert abs(chat.created - time.time()) < 60
    (choice,) = chat.choices
    assert choice.index == 0 and choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    # the native handler answered: same words as /api/chat gives for the same messages
    native = srv.client().chat(model="tinyllama", messages=messages, stream=False)
    assert choice.message.content == native.message.content
    assert choice.message.content.startswith("lab answer to: hello there")
    assert chat.usage.prompt_tokens == native.prompt_eval_count
    assert chat.usage.completion_tokens == native.eval_count > 0
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    # loaded by the same scheduler as native requests, with the default keep-alive
    assert [m.model for m in srv.client().ps().models] == ["tinyllama:latest"]

    short = oai.chat.completions.create(model="tinyllama", messages=messages, max_tokens=2,
                                        temperature=0.2, seed=7, stop=["never"])
    assert short.choices[0].finish_reason == "length"
    assert short.usage.completion_tokens == 2
    assert short.choices[0].message.content == "lab answer"

    formatted = oai.chat.completions.create(model="tinyllama", messages=messages,
                                            response_format={"type": "json_object"})
    assert json.loads(formatted.choices[0].message.content) == {
        "response": "lab answer to: hello there"}

    stream = oai.chat.completions.create(model="tinyllama", messages=messages, stream=True)
    chunks = list(stream)
    assert len(chunks) > 3
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert all(c.choices[0].delta.role == "assistant" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == \
        choice.message.content
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)

    stream = oai.chat.completions.create(model="tinyllama", messages=messages, stream=True,
                                         max_tokens=3, stream_options={"include_usage": True})
    chunks = list(stream)
    *content, usage = chunks
    assert content[-1].choices[0].finish_reason == "length"
    assert usage.choices == [] and usage.usage.completion_tokens == 3
    assert usage.usage.total_tokens == usage.usage.prompt_tokens + 3


def test_openai_stream_is_server_sent_events(fake_registry, start_server):
    srv = start_server(OLLAMA_LAB_REGISTRY=fake_registry.url)
    srv.client().pull("tinyllama")
    body = {"model": "tinyllama", "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: {") for e in events[:-2])
    assert chunks[-1]["choices"] == [{"index": 0, "finish_reason": "stop",
                                      "delta": {"role": "assistant", "content": ""}}]
    assert set(chunks[0]) == {"id", "object", "created", "model", "system_fingerprint",
                              "choices"}


def test_openai_completions_embeddings_and_models(fake_registry, start_server):
    srv = start_server(OLLAMA_LAB_REGISTRY=fake_registry.url)
    native = srv.client()
    native.pull("tinyllama")
    native.pull("all-minilm")
    oai = openai_client(srv)

    done = oai.completions.create(model="tinyllama", prompt="why is the sky blue?")
    assert done.object == "text_completion" and re.fullmatch(r"cmpl-\d{1,3}", done.id)
    assert done.model == "tinyllama" and done.system_fingerprint == "fp_ollama"
    expected = native.generate(model="tinyllama", prompt="why is the sky blue?")
    assert done.choices[0].text == expected.response
    assert done.choices[0].finish_reason == "stop"
    assert done.usage.completion_tokens == expected.eval_count
    short = oai.completions.create(model="tinyllama", prompt="count", max_tokens=2)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2
    chunks = list(oai.completions.create(model="tinyllama", prompt="why is the sky blue?",
                                         stream=True, stream_options={"include_usage": True}))
    *pieces, usage = chunks
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in pieces) == expected.response
    assert pieces[-1].choices[0].finish_reason == "stop"
    assert all(c.usage.total_tokens == 0 for c in pieces)  # upstream: zero usage until the end
    assert usage.choices == [] and usage.usage.completion_tokens == expected.eval_count

    one = oai.embeddings.create(model="all-minilm", input="first")
    assert one.object == "list" and one.model == "all-minilm"
    (item,) = one.data
    assert item.object == "embedding" and item.index == 0 and len(item.embedding) == 384
    assert item.embedding == native.embed(model="all-minilm", input="first").embeddings[0]
    assert one.usage.prompt_tokens == one.usage.total_tokens > 0
    two = oai.embeddings.create(model="all-minilm", input=["first", "second"])
    assert [d.index for d in two.data] == [0, 1]
    assert two.data[0].embedding == item.embedding != two.data[1].embedding
    assert all(abs(math.sqrt(sum(x * x for x in d.embedding)) - 1) < 1e-5 for d in two.data)

    listed = {m.id: m for m in oai.models.list()}
    assert set(listed) == {"tinyllama:latest", "all-minilm:latest"}
    assert all(m.object == "model" and m.owned_by == "library" for m in listed.values())
    model = oai.models.retrieve("tinyllama")
    assert (model.id, model.object, model.owned_by) == ("tinyllama", "model", "library")
    assert model.created == listed["tinyllama:latest"].created


def test_openai_errors_have_openai_shape(fake_registry, start_server):
    srv = start_server(OLLAMA_LAB_REGISTRY=fake_registry.url)
    srv.client().pull("tinyllama")
    oai = openai_client(srv)
    user = [{"role": "user", "content": "hi"}]

    def error(exc) -> dict:
        body = exc.value.response.json()
        assert set(body) == {"error"} and body["error"]["param"] is None
        assert body["error"]["code"] is None
        return body["error"]

    # a native handler's error keeps its status and text; before 0.18 upstream's
    # BaseWriter.writeError typed every one of them "api_error"
    with pytest.raises(openai.NotFoundError) as exc:
        oai.chat.completions.create(model="absent", messages=user)
    assert error(exc) == {"message": 'model "absent" not found, try pulling it first',
                          "type": "api_error", "param": None, "code": None}
    with pytest.raises(openai.NotFoundError) as exc:
        oai.completions.create(model="absent", prompt="hi")
    assert error(exc)["message"] == "model 'absent' not found"
    with pytest.raises(openai.NotFoundError) as exc:
        oai.embeddings.create(model="absent", input="hi")
    assert error(exc)["message"] == 'model "absent" not found, try pulling it first'
    with pytest.raises(openai.NotFoundError) as exc:
        oai.models.retrieve("absent")
    assert error(exc)["message"] == "model 'absent' not found"
    r = httpx.get(srv.url + "/v1/models/library%2Ftinyllama", timeout=10)
    assert (r.status_code, r.text) == (404, "404 page not found")  # gin's :model holds no "/"
    with pytest.raises(openai.BadRequestError) as exc:
        oai.chat.completions.create(model="", messages=user)
    assert error(exc)["message"] == "model is required"

    # the middleware's own refusals are invalid_request_error
    with pytest.raises(openai.BadRequestError) as exc:
        oai.chat.completions.create(model="tinyllama", messages=[])
    assert error(exc) == {"message": "[] is too short - 'messages'",
                          "type": "invalid_request_error", "param": None, "code": None}
    with pytest.raises(openai.BadRequestError) as exc:
        oai.embeddings.create(model="tinyllama", input=[])
    assert error(exc)["message"] == "invalid input"
    with pytest.raises(openai.BadRequestError) as exc:
        oai.completions.create(model="tinyllama", prompt="hi", extra_body={"stop": [1]})
    assert error(exc)["message"] == "invalid type for 'stop' field: float64"
    r = httpx.post(srv.url + "/v1/chat/completions", content=b"{not json", timeout=10)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["message"].startswith("invalid character")
    r = httpx.post(srv.url + "/v1/chat/completions", timeout=10,
                   json={"model": "tinyllama", "messages": [{"role": "user"}]})
    assert (r.status_code, r.json()["error"]["message"]) == (
        400, "invalid message content type: <nil>")


def test_openai_errors_are_typed_by_status_from_0_18(start_server):
    srv = start_server(OLLAMA_LAB_VERSION="0.18.0")
    oai = openai_client(srv)
    with pytest.raises(openai.NotFoundError) as exc:
        oai.chat.completions.create(model="absent", messages=[{"role": "user", "content": "x"}])
    assert exc.value.response.json()["error"]["type"] == "not_found_error"
    with pytest.raises(openai.BadRequestError) as exc:
        oai.chat.completions.create(model="", messages=[{"role": "user", "content": "x"}])
    assert exc.value.response.json()["error"]["type"] == "invalid_request_error"


# ---------------------------------------------------------------------------
# v0.32.15 images (lab/ollama/standin/releases.py: from 0.32.0 on)
# ---------------------------------------------------------------------------

CURRENT = "0.32.15"
CLOUD_PY = REPO / "lab" / "cloud" / "cloud.py"


class Cloud:
    """The lab's cloud stand-in (lab/cloud/cloud.py) on loopback, plain HTTP: a v0.32
    server reaches it through OLLAMA_CLOUD_BASE_URL, a loopback override being the only
    one a release build accepts."""

    def __init__(self):
        self.lines: list[str] = []
        self.port: int | None = None
        self._ready = threading.Event()
        self.proc = subprocess.Popen([sys.executable, str(CLOUD_PY), "--bind", "127.0.0.1",
                                      "--port", "0"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._ready.wait(15) or self.port is None:
            self.stop()
            raise AssertionError("cloud stand-in did not start:\n" + "".join(self.lines))
        self.url = f"http://127.0.0.1:{self.port}"

    def _drain(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m[1])
                self._ready.set()
        self._ready.set()

    def requests(self) -> list[dict]:
        return httpx.get(self.url + "/_lab/requests", timeout=10).json()["requests"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def cloud():
    c = Cloud()
    yield c
    c.stop()


def start_current(start_server, tmp_path, **env) -> Server:
    return start_server(OLLAMA_LAB_VERSION=CURRENT, HOME=str(tmp_path / "home"), **env)


CURRENT_ONLY = [("GET", "/api/status"), ("POST", "/api/me"), ("POST", "/api/signout"),
                ("POST", "/api/experimental/web_search"), ("POST", "/api/experimental/web_fetch"),
                ("GET", "/api/experimental/model-recommendations"), ("POST", "/v1/responses"),
                ("POST", "/v1/audio/transcriptions"), ("POST", "/v1/messages")]


def test_routes_of_0_32_are_404_under_0_6_8(start_server, tmp_path):
    old = start_server(HOME=str(tmp_path / "home"))
    for method, path in CURRENT_ONLY:
        r = httpx.request(method, old.url + path, content=b"{}", timeout=10)
        assert (r.status_code, r.text) == (404, "404 page not found"), (method, path)
    new = start_current(start_server, tmp_path, OLLAMA_NO_CLOUD="1")
    # /api/me and /api/signout call ollama.com whatever OLLAMA_NO_CLOUD says (upstream's
    # WhoamiHandler, SignoutHandler): not from this machine
    for method, path in [x for x in CURRENT_ONLY if x[1] not in ("/api/me", "/api/signout")]:
        r = httpx.request(method, new.url + path, content=b"{}", timeout=10)
        assert r.status_code != 404 or r.text != "404 page not found", (method, path)


def test_status_says_whether_the_cloud_is_off(start_server, tmp_path):
    on = start_current(start_server, tmp_path)
    assert httpx.get(on.url + "/api/status").json() == {
        "cloud": {"disabled": False, "source": "none"}}
    off = start_current(start_server, tmp_path, OLLAMA_NO_CLOUD="1")
    assert httpx.get(off.url + "/api/status").json() == {
        "cloud": {"disabled": True, "source": "env"}}
    assert any('msg="Ollama cloud disabled: true"' in line for line in off.lines)
    recs = httpx.get(off.url + "/api/experimental/model-recommendations").json()
    assert recs["recommendations"][0]["model"] == "kimi-k2.6:cloud"


def test_cloud_models_go_to_the_cloud_unless_it_is_off(start_server, tmp_path, cloud):
    srv = start_current(start_server, tmp_path, OLLAMA_CLOUD_BASE_URL=cloud.url)
    assert any('msg="cloud base URL override enabled"' in line for line in srv.lines)
    oai = openai_client(srv)
    chat = oai.chat.completions.create(model="gpt-oss:120b-cloud",
                                       messages=[{"role": "user", "content": "secret plan"}])
    assert chat.choices[0].message.content.startswith("cloud answer")
    native = httpx.post(srv.url + "/api/chat", json={
        "model": "qwen3:cloud", "messages": [{"role": "user", "content": "other secret"}],
        "stream": False}, timeout=30).json()
    assert native["message"]["content"].startswith("cloud answer")
    local = httpx.post(srv.url + "/api/chat", json={"model": "qwen3:local", "messages": []},
                       timeout=30)
    assert local.status_code == 404  # a local name stays here (no such model)
    got = cloud.requests()
    assert [(r["method"], r["path"]) for r in got] == [("POST", "/v1/chat/completions"),
                                                       ("POST", "/api/chat")]
    first = json.loads(got[0]["body"])
    assert first["model"] == "gpt-oss:120b" and "secret plan" in got[0]["body"]
    assert json.loads(got[1]["body"])["model"] == "qwen3"
    assert all(r["headers"].get("Authorization") and
               r["headers"].get("X-Ollama-Client-Version") == CURRENT for r in got)
    assert all("ts=" in r["query"] for r in got)

    web = httpx.post(srv.url + "/api/experimental/web_search", json={"query": "fleet"},
                     headers={"Authorization": "Bearer client-key"}, timeout=30)
    assert web.status_code == 200 and web.json()["results"]
    assert cloud.requests()[-1]["path"] == "/api/web_search"
    assert cloud.requests()[-1]["headers"]["Authorization"] != "Bearer client-key"
    empty = httpx.post(srv.url + "/api/experimental/web_fetch", content=b" ", timeout=30)
    assert (empty.status_code, empty.json()) == (400, {"error": "missing request body"})


def test_a_disabled_cloud_refuses_and_nothing_leaves(start_server, tmp_path, cloud):
    srv = start_current(start_server, tmp_path, OLLAMA_CLOUD_BASE_URL=cloud.url,
                        OLLAMA_NO_CLOUD="1")
    for path, body in [("/v1/chat/completions", {"model": "gpt-oss:120b-cloud", "messages": [
                            {"role": "user", "content": "secret"}]}),
                       ("/v1/responses", {"model": "gpt-oss:cloud", "input": "secret"}),
                       ("/v1/messages", {"model": "glm-5.1:cloud", "max_tokens": 9,
                                         "messages": [{"role": "user", "content": "secret"}]}),
                       ("/api/generate", {"model": "gpt-oss:cloud", "prompt": "secret"}),
                       ("/api/chat", {"model": "gpt-oss:cloud", "messages": []})]:
        r = httpx.post(srv.url + path, json=body, timeout=30)
        assert (r.status_code, r.json()) == (
            403, {"error": "ollama cloud is disabled: remote model is unavailable"}), path
    r = httpx.get(srv.url + "/v1/models/gpt-oss:cloud", timeout=30)
    assert (r.status_code, r.json()) == (
        403, {"error": "ollama cloud is disabled: remote model details are unavailable"})
    for path, what in [("/api/experimental/web_search", "web search"),
                       ("/api/experimental/web_fetch", "web fetch")]:
        r = httpx.post(srv.url + path, json={"query": "secret"}, timeout=30)
        assert (r.status_code, r.json()) == (
            403, {"error": f"ollama cloud is disabled: {what} is unavailable"})
    assert cloud.requests() == []


def test_a_cloud_override_off_loopback_is_ignored(start_server, tmp_path):
    srv = start_current(start_server, tmp_path, OLLAMA_CLOUD_BASE_URL="https://10.9.9.9")
    assert any('msg="ignoring cloud base URL override"' in line and
               "non-loopback cloud override is not allowed in release mode" in line
               for line in srv.lines)


def _sse(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_responses_api_with_official_client(fake_registry, start_server, tmp_path):
    srv = start_current(start_server, tmp_path, OLLAMA_LAB_REGISTRY=fake_registry.url)
    srv.client().pull("tinyllama")
    oai = openai_client(srv)
    resp = oai.responses.create(model="tinyllama", input="hello there",
                                instructions="be brief")
    assert resp.object == "response" and resp.status == "completed"
    assert re.fullmatch(r"resp_\d{1,6}", resp.id)
    assert resp.output_text.startswith("lab answer to: hello there")
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens

    events = list(oai.responses.create(model="tinyllama", input="hello there", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:5] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added",
                         "response.output_text.delta"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == resp.output_text == events[-1].response.output_text

    raw = httpx.post(srv.url + "/v1/responses", json={
        "model": "tinyllama", "input": "hi", "stream": True}, timeout=30)
    assert raw.headers["content-type"] == "text/event-stream"
    assert raw.text.startswith("event: response.created\ndata: {")
    missing = httpx.post(srv.url + "/v1/responses", json={"model": "nope", "input": "hi"})
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    bad = httpx.post(srv.url + "/v1/responses", json={"model": "tinyllama", "input": [
        {"type": "bogus"}]})
    assert (bad.status_code, bad.json()["error"]["message"]) == (
        400, 'input[0]: unknown input item type: "bogus"')


def test_messages_api_streams_anthropic_events(fake_registry, start_server, tmp_path):
    srv = start_current(start_server, tmp_path, OLLAMA_LAB_REGISTRY=fake_registry.url)
    srv.client().pull("tinyllama")
    body = {"model": "tinyllama", "max_tokens": 64, "system": "be brief",
            "messages": [{"role": "user", "content": "hello there"}]}
    one = httpx.post(srv.url + "/v1/messages", json=body, timeout=30).json()
    assert one["type"] == "message" and one["role"] == "assistant"
    assert re.fullmatch(r"msg_[0-9a-f]{24}", one["id"])
    assert one["stop_reason"] == "end_turn"
    assert one["content"][0]["text"].startswith("lab answer to: hello there")
    raw = httpx.post(srv.url + "/v1/messages", json={**body, "stream": True}, timeout=30)
    assert raw.headers["content-type"] == "text/event-stream"
    events = _sse(raw.text)
    kinds = [k for k, _ in events]
    assert kinds[:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(k == d["type"] for k, d in events)
    text = "".join(d["delta"]["text"] for k, d in events if k == "content_block_delta")
    assert text == one["content"][0]["text"]
    assert events[-2][1]["delta"] == {"stop_reason": "end_turn"}
    no_tokens = httpx.post(srv.url + "/v1/messages", json={**body, "max_tokens": 0})
    assert no_tokens.status_code == 400
    assert no_tokens.json()["error"] == {
        "type": "invalid_request_error", "message": "max_tokens is required and must be positive"}
    anthropic = pytest.importorskip("anthropic")
    client = anthropic.Anthropic(base_url=srv.url, api_key="ollama", max_retries=0)
    with client.messages.stream(model="tinyllama", max_tokens=64,
                                messages=body["messages"]) as stream:
        streamed = "".join(stream.text_stream)
    assert streamed == text


def test_audio_transcriptions_take_a_multipart_form(fake_registry, start_server, tmp_path):
    srv = start_current(start_server, tmp_path, OLLAMA_LAB_REGISTRY=fake_registry.url)
    srv.client().pull("tinyllama")
    r = httpx.post(srv.url + "/v1/audio/transcriptions", data={"model": "tinyllama"},
                   files={"file": ("a.wav", b"RIFF....WAVE", "audio/wav")}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json()["text"]
    text = httpx.post(srv.url + "/v1/audio/transcriptions",
                      data={"model": "tinyllama", "response_format": "text"},
                      files={"file": ("a.wav", b"RIFF", "audio/wav")}, timeout=30)
    assert text.headers["content-type"] == "text/plain" and text.text == r.json()["text"]
    for data, files, message in [
            ({}, {"file": ("a.wav", b"x", "audio/wav")}, "model is required"),
            ({"model": "tinyllama"}, {"other": ("a.wav", b"x", "audio/wav")},
             "file is required: http: no such file"),
            ({"model": "tinyllama"}, {"file": ("a.wav", b"", "audio/wav")},
             "audio file is empty")]:
        bad = httpx.post(srv.url + "/v1/audio/transcriptions", data=data, files=files)
        assert (bad.status_code, bad.json()["error"]["message"]) == (400, message)
    not_form = httpx.post(srv.url + "/v1/audio/transcriptions", json={"model": "tinyllama"})
    assert not_form.json()["error"]["message"].startswith("failed to parse multipart form: ")


def test_tags_drop_a_model_without_its_template_from_0_32(fake_registry, start_server,
                                                          tmp_path):
    models = tmp_path / "shared-models"
    old = start_server(models, OLLAMA_LAB_REGISTRY=fake_registry.url, OLLAMA_NOPRUNE="1")
    old.client().pull("tinyllama")
    mf = json.loads(manifest_file(models, "tinyllama").read_bytes())
    template = [x for x in mf["layers"] if x["mediaType"].endswith(".template")]
    assert template, "the fake registry's model has a template layer"
    old.stop()
    # a roll from 0.6.8 to 0.32.15 keeps the store as it is: same paths
    new = start_current(start_server, tmp_path, OLLAMA_MODELS=str(models), OLLAMA_NOPRUNE="1")
    assert [m["name"] for m in httpx.get(new.url + "/api/tags").json()["models"]] == [
        "tinyllama:latest"]
    assert "completion" in httpx.get(new.url + "/api/tags").json()["models"][0]["capabilities"]
    blob(models, template[0]["digest"]).unlink()
    assert httpx.get(new.url + "/api/tags").json() == {"models": []}
    assert any('msg="failed to refresh model list cache"' in line for line in new.lines)
    again = start_server(models, OLLAMA_NOPRUNE="1")
    assert [m["name"] for m in httpx.get(again.url + "/api/tags").json()["models"]] == [
        "tinyllama:latest"]


def test_ps_reports_the_vram_tier_context_from_0_32(fake_registry, start_server, tmp_path):
    srv = start_current(start_server, tmp_path, OLLAMA_LAB_REGISTRY=fake_registry.url)
    srv.client().pull("tinyllama")
    httpx.post(srv.url + "/api/generate", json={"model": "tinyllama", "keep_alive": -1},
               timeout=30)
    (m,) = httpx.get(srv.url + "/api/ps").json()["models"]
    assert m["context_length"] == 4096  # no GPU: under 23 GiB of VRAM
    assert any('msg="vram-based default context"' in line and "default_num_ctx=4096" in line
               for line in srv.lines)
    table = srv.cli("ps", OLLAMA_LAB_VERSION=CURRENT).stdout.splitlines()
    assert table[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    assert table[1].split()[4:7] == ["100%", "CPU", "4096"]
    old = start_server(OLLAMA_LAB_REGISTRY=fake_registry.url)
    old.client().pull("tinyllama")
    httpx.post(old.url + "/api/generate", json={"model": "tinyllama"}, timeout=30)
    assert "context_length" not in httpx.get(old.url + "/api/ps").json()["models"][0]


def test_link_local_hosts_are_refused_by_both_lines(start_server, tmp_path):
    for srv in (start_server(), start_current(start_server, tmp_path)):
        def status(host: str, url: str = srv.url) -> int:
            return httpx.get(url + "/api/version", headers={"Host": host}).status_code
        assert status("169.254.10.1") == 403  # link-local: not an address of this machine
        assert status("[fe80::1]:11434") == 403
        assert status("100.64.0.1") == 403  # CGNAT is not private to Go
        assert status("10.1.2.3:11434") == status("[fd00::1]:80") == 200
        assert status("[::1]") == 403  # brackets without a port: no address, no name
        assert status("gpu-1.internal") == 200
        opt = httpx.options(srv.url + "/api/tags", headers={"Host": "gpu-1.internal"})
        assert opt.status_code == 204
