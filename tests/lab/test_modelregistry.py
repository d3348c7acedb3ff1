"""Tests for lab/registry/modelregistry.py (the lab's stand-in for registry.ollama.ai).

Each server runs as a subprocess on 127.0.0.1 with a free port and a tmp data dir.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "lab" / "registry" / "modelregistry.py"
CATALOG = ROOT / "lab" / "registry" / "models.json"
# Interpreter for the server subprocess (e.g. to check it under python3.13).
PYTHON = os.environ.get("MODELREGISTRY_PYTHON", sys.executable)
SCALE = 1 / 32  # llama3.2:1b -> ~9.4 MiB, tinyllama -> 256 KiB
MT_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def _load_module():
    spec = importlib.util.spec_from_file_location("fleetlab_modelregistry", REGISTRY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    def __init__(self, data: Path, log: Path, scale: float = SCALE, timeout: float = 30.0,
                 blob_host: str | None = "localhost"):
        """BLOB_HOST: the host name of the blob store (FLEETLAB_BLOB_URL), another name
        for this server than the 127.0.0.1 clients use; None: leave it unset."""
        self.port = _free_port()
        self.log = log
        self._logf = open(log, "wb")
        env = {k: v for k, v in os.environ.items() if k != "FLEETLAB_BLOB_URL"}
        if blob_host:
            env["FLEETLAB_BLOB_URL"] = f"http://{blob_host}:{self.port}"
        self.proc = subprocess.Popen(
            [
                PYTHON, str(REGISTRY),
                "--listen", f"127.0.0.1:{self.port}",
                "--data", str(data),
                "--catalog", str(CATALOG),
                "--size-scale", str(scale),
            ],
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"registry exited early:\n{log.read_text()}")
            try:
                status, _, body, _ = self.request("GET", "/v2/", timeout=1)
                if status == 200 and json.loads(body) == {}:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"registry not ready in {timeout}s:\n{log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._logf.close()

    def request(self, method, path, headers=None, body=None, timeout=30.0):
        """Return (status, headers, body_bytes, complete). complete=False when the
        server closed the connection before Content-Length bytes arrived."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            hdrs = dict(headers or {})
            if payload is not None:
                hdrs["Content-Type"] = "application/json"
            conn.request(method, path, body=payload, headers=hdrs)
            resp = conn.getresponse()
            chunks, complete = [], True
            while True:
                try:
                    chunk = resp.read(65536)
                except http.client.IncompleteRead as e:
                    chunks.append(e.partial)
                    complete = False
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            data = b"".join(chunks)
            if method != "HEAD" and len(data) != int(resp.headers.get("Content-Length", -1)):
                complete = False
            return resp.status, resp.headers, data, complete
        finally:
            conn.close()

    def get_json(self, path):
        status, _, body, _ = self.request("GET", path)
        assert status == 200, body
        return json.loads(body)

    def post(self, path, body=None):
        status, _, data, _ = self.request("POST", path, body=body if body is not None else {})
        assert status == 200, data
        return json.loads(data)

    def manifest(self, name="library/tinyllama", tag="latest"):
        status, headers, body, _ = self.request("GET", f"/v2/{name}/manifests/{tag}")
        assert status == 200, body
        return json.loads(body)


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("registry")
    r = Registry(tmp / "data", tmp / "registry.log")
    yield r
    r.stop()


@pytest.fixture(autouse=True)
def _clean(request):
    if "reg" in request.fixturenames:
        r = request.getfixturevalue("reg")
        r.post("/_lab/reset")
        r.post("/_lab/rate", {"bytes_per_sec": 0})


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _model_layer(manifest: dict) -> dict:
    (layer,) = [x for x in manifest["layers"] if x["mediaType"].endswith(".model")]
    return layer


def _blob_path(name: str, digest: str) -> str:
    """The registry's blob path: answered with a redirect to the blob store."""
    return f"/v2/{name}/blobs/{digest}"


def _store_path(digest: str) -> str:
    """Where the registry redirects DIGEST's requests: the blob store's key."""
    hexd = digest.split(":", 1)[1]
    return f"/ollama/docker/registry/v2/blobs/sha256/{hexd[:2]}/{hexd}/data"


def _follow(reg, name: str, digest: str, method: str = "GET") -> str:
    """Ask the registry for the blob; it must redirect (307) to the blob store on another
    host name; return the path there."""
    status, headers, body, _ = reg.request(method, _blob_path(name, digest))
    assert status == 307 and body == b"", (status, body)
    loc = urllib.parse.urlsplit(headers["Location"])
    assert (loc.scheme, loc.hostname, loc.port) == ("http", "localhost", reg.port)
    assert loc.path == _store_path(digest)
    return loc.path


# --------------------------------------------------------------------------


def test_v2_root(reg):
    status, headers, body, _ = reg.request("GET", "/v2/")
    assert status == 200
    assert json.loads(body) == {}


def test_manifest_digest_matches_served_bytes(reg):
    for m in reg.get_json("/_lab/stats")["models"]:
        path = f"/v2/{m['name']}/manifests/{m['tag']}"
        status, headers, body, complete = reg.request("GET", path)
        assert status == 200 and complete
        assert headers["Content-Type"] == MT_MANIFEST
        assert headers["Docker-Content-Digest"] == _sha(body) == m["digest"]
        assert int(headers["Content-Length"]) == len(body)
        manifest = json.loads(body)
        assert manifest["schemaVersion"] == 2
        assert manifest["mediaType"] == MT_MANIFEST
        assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
        assert [x["mediaType"] for x in manifest["layers"]] == [
            "application/vnd.ollama.image.model",
            "application/vnd.ollama.image.template",
            "application/vnd.ollama.image.params",
        ]
        assert m["size"] == manifest["config"]["size"] + sum(x["size"] for x in manifest["layers"])
        # same bytes every time; HEAD gives the same headers and no body
        assert reg.request("GET", path)[2] == body
        hstatus, hheaders, hbody, _ = reg.request("HEAD", path)
        assert hstatus == 200 and hbody == b""
        assert hheaders["Docker-Content-Digest"] == m["digest"]
        assert int(hheaders["Content-Length"]) == len(body)


def test_blobs_hash_to_their_digest(reg):
    name = "library/qwen2.5"
    manifest = reg.manifest(name, "0.5b")
    for desc in [manifest["config"], *manifest["layers"]]:
        store = _follow(reg, name, desc["digest"])
        status, headers, body, complete = reg.request("GET", store)
        assert status == 200 and complete and "Location" not in headers
        assert headers["Content-Type"] == "application/octet-stream"
        assert len(body) == desc["size"] == int(headers["Content-Length"])
        assert _sha(body) == desc["digest"]
        # HEAD is redirected too; the blob store's HEAD gives the size (Ollama's Prepare)
        assert _follow(reg, name, desc["digest"], "HEAD") == store
        hstatus, hheaders, hbody, _ = reg.request("HEAD", store)
        assert hstatus == 200 and hbody == b""
        assert int(hheaders["Content-Length"]) == desc["size"]
    model = _store_path(_model_layer(manifest)["digest"])
    assert reg.request("GET", model)[2][:4] == b"GGUF"
    config = json.loads(reg.request("GET", _store_path(manifest["config"]["digest"]))[2])
    assert config["model_format"] == "gguf"
    assert config["model_family"] == "qwen2" and config["model_families"] == ["qwen2"]
    assert config["rootfs"]["type"] == "layers"
    assert _model_layer(manifest)["digest"] in config["rootfs"]["diff_ids"]


def test_range_resume_gives_identical_bytes(reg):
    name = "library/tinyllama"
    layer = _model_layer(reg.manifest(name))
    path, total = _store_path(layer["digest"]), layer["size"]
    full = reg.request("GET", path)[2]

    s = 100_003
    status, headers, tail, complete = reg.request("GET", path, {"Range": f"bytes={s}-"})
    assert status == 206 and complete
    assert headers["Content-Range"] == f"bytes {s}-{total - 1}/{total}"
    assert int(headers["Content-Length"]) == total - s
    assert full[:s] + tail == full

    e = s + 4095
    status, headers, mid, _ = reg.request("GET", path, {"Range": f"bytes={s}-{e}"})
    assert status == 206
    assert headers["Content-Range"] == f"bytes {s}-{e}/{total}"
    assert mid == full[s : e + 1]

    # ollama-style parallel parts reassemble to the blob
    parts, step = [], 70_000
    for off in range(0, total, step):
        end = min(off + step, total) - 1
        status, _, part, _ = reg.request("GET", path, {"Range": f"bytes={off}-{end}"})
        assert status == 206
        parts.append(part)
    assert _sha(b"".join(parts)) == layer["digest"]

    # end past EOF is clamped
    rng = {"Range": f"bytes={total - 10}-{total + 50}"}
    status, headers, body, _ = reg.request("GET", path, rng)
    assert status == 206 and body == full[-10:]
    assert headers["Content-Range"] == f"bytes {total - 10}-{total - 1}/{total}"

    for bad in (f"bytes={total}-", f"bytes={total + 5}-{total + 9}"):
        status, headers, _, _ = reg.request("GET", path, {"Range": bad})
        assert status == 416
        assert headers["Content-Range"] == f"bytes */{total}"


def _stats_after(reg, bytes_sent: int, timeout: float = 10) -> dict:
    """The registry counts a write once it returned, which can be just after the client
    has read it: poll (bounded) until the counter has caught up, then return the stats."""
    deadline = time.monotonic() + timeout
    stats = reg.get_json("/_lab/stats")
    while stats["bytes_sent"] < bytes_sent and time.monotonic() < deadline:
        time.sleep(0.05)
        stats = reg.get_json("/_lab/stats")
    return stats


def test_byte_counter_equals_bytes_read_full_and_resumed_pull(reg):
    name = "library/tinyllama"
    read = 0
    status, _, mbody, _ = reg.request("GET", f"/v2/{name}/manifests/latest")
    assert status == 200
    read += len(mbody)
    manifest = json.loads(mbody)
    descs = [manifest["config"], *manifest["layers"]]
    for desc in descs:
        body = reg.request("GET", _follow(reg, name, desc["digest"]))[2]
        assert _sha(body) == desc["digest"]
        read += len(body)
    stats = _stats_after(reg, read)
    assert stats["bytes_sent"] == read  # the redirects carry no body
    assert stats["blob_bytes_sent"] == read - len(mbody)
    assert stats["manifest_requests"] == 1
    assert stats["blob_requests"] == stats["redirects"] == len(descs)
    assert stats["blob_store_requests"] == len(descs)
    assert stats["range_requests"] == 0
    assert stats["by_client"] == {"127.0.0.1": read}

    # resumed pull: the first attempt is cut after N bytes, then Range-resumed
    layer = _model_layer(manifest)
    path, n = _store_path(layer["digest"]), 123_457
    reg.post("/_lab/fault", {"drop_after_bytes": n, "times": 1, "digest": layer["digest"]})
    status, _, head, complete = reg.request("GET", path)
    assert status == 200 and not complete and len(head) == n
    status, _, tail, complete = reg.request("GET", path, {"Range": f"bytes={len(head)}-"})
    assert status == 206 and complete
    assert _sha(head + tail) == layer["digest"]
    read += len(head) + len(tail)

    stats = _stats_after(reg, read)
    assert stats["bytes_sent"] == read
    assert stats["by_blob"][layer["digest"]] == 2 * layer["size"]
    assert stats["by_client"]["127.0.0.1"] == read
    assert stats["blob_store_requests"] == len(descs) + 2
    assert stats["range_requests"] == 1
    assert stats["ranges"] == {layer["digest"]: [f"bytes={n}-"]}

    reg.post("/_lab/reset")
    stats = reg.get_json("/_lab/stats")
    assert stats["bytes_sent"] == 0 and stats["by_blob"] == {} and stats["by_client"] == {}
    assert stats["manifest_requests"] == 0 and stats["blob_requests"] == 0
    assert stats["blob_store_requests"] == stats["range_requests"] == 0
    assert stats["ranges"] == {}


def test_drop_fault_cuts_then_next_request_is_clean(reg):
    name = "library/all-minilm"
    layer = _model_layer(reg.manifest(name))
    path = _store_path(layer["digest"])
    n = 50_000
    reg.post("/_lab/fault", {"drop_after_bytes": n, "times": 1, "corrupt": False})
    status, headers, body, complete = reg.request("GET", path)
    assert status == 200 and int(headers["Content-Length"]) == layer["size"]
    assert not complete and len(body) == n
    assert reg.get_json("/_lab/stats")["blob_bytes_sent"] == n

    status, _, body, complete = reg.request("GET", path)
    assert status == 200 and complete
    assert _sha(body) == layer["digest"]


def test_drop_fault_times_minus_one_until_reset(reg):
    name = "library/all-minilm"
    layer = _model_layer(reg.manifest(name))
    path = _store_path(layer["digest"])
    reg.post("/_lab/fault", {"drop_after_bytes": 0, "times": -1})
    for _ in range(3):
        status, _, body, complete = reg.request("GET", path)
        assert status == 200 and not complete and body == b""
    reg.post("/_lab/reset")
    status, _, body, complete = reg.request("GET", path)
    assert complete and _sha(body) == layer["digest"]


def test_corrupt_fault_changes_hash(reg):
    name = "library/all-minilm"
    layer = _model_layer(reg.manifest(name))
    path = _store_path(layer["digest"])
    reg.post("/_lab/fault", {"drop_after_bytes": 1000, "times": 1, "corrupt": True})
    status, _, bad, complete = reg.request("GET", path)
    assert status == 200 and complete and len(bad) == layer["size"]
    assert _sha(bad) != layer["digest"]
    status, _, good, complete = reg.request("GET", path)
    assert complete and _sha(good) == layer["digest"]
    assert bad[:1000] == good[:1000]


def test_oversize_fault_sends_more_than_the_blob_then_stops(reg):
    """A compromised mirror: the blob's own bytes, then more, framed by Content-Length; a
    resumed (ranged) request gets the rest of the blob and the same surplus."""
    name = "library/all-minilm"
    layer = _model_layer(reg.manifest(name))
    path = _store_path(layer["digest"])
    extra = 3 << 20
    reg.post("/_lab/fault", {"oversize_bytes": extra, "times": 2, "digest": layer["digest"]})
    status, headers, body, complete = reg.request("GET", path)
    assert status == 200 and complete
    assert int(headers["Content-Length"]) == len(body) == layer["size"] + extra
    assert _sha(body[:layer["size"]]) == layer["digest"]  # the blob, then zeros
    assert body[layer["size"]:] == b"\0" * extra
    status, headers, part, complete = reg.request("GET", path, {"Range": "bytes=1000-"})
    assert status == 206 and complete and len(part) == layer["size"] - 1000 + extra
    assert headers["Content-Range"] == f"bytes 1000-{layer['size'] - 1}/{layer['size']}"
    stats = reg.get_json("/_lab/stats")
    assert stats["faults_injected"] == 2
    assert stats["by_blob"][layer["digest"]] == 2 * (layer["size"] + extra) - 1000
    status, _, good, complete = reg.request("GET", path)  # the fault used up: honest again
    assert complete and len(good) == layer["size"] and _sha(good) == layer["digest"]
    status, _, _, _ = reg.request("POST", "/_lab/fault", body={"oversize_bytes": -1})
    assert status == 400


def test_rate_cap_slows_transfer(reg):
    name = "library/llama3.2"
    layer = _model_layer(reg.manifest(name, "1b"))
    size, rate = 2 * 1024 * 1024, 1024 * 1024
    assert layer["size"] >= size
    assert reg.post("/_lab/rate", {"bytes_per_sec": rate}) == {"bytes_per_sec": rate}
    assert reg.get_json("/_lab/stats")["bytes_per_sec"] == rate
    t0 = time.monotonic()
    status, _, body, complete = reg.request(
        "GET", _store_path(layer["digest"]), {"Range": f"bytes=0-{size - 1}"}, timeout=60
    )
    elapsed = time.monotonic() - t0
    assert status == 206 and complete and len(body) == size
    assert elapsed >= 0.5 * size / rate, elapsed


def test_unknown_model_and_blob_404(reg):
    status, headers, body, _ = reg.request("GET", "/v2/library/nope/manifests/latest")
    assert status == 404
    err = json.loads(body)["errors"][0]
    assert err["code"] == "MANIFEST_UNKNOWN"
    assert err["detail"] == {"name": "library/nope", "tag": "latest"}
    status, _, body, _ = reg.request("GET", "/v2/library/tinyllama/manifests/no-such-tag")
    assert status == 404 and json.loads(body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    status, _, body, _ = reg.request("GET", "/v2/library/tinyllama/blobs/sha256:" + "0" * 64)
    assert status == 404 and json.loads(body)["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert reg.get_json("/_lab/stats")["manifest_requests"] == 2


def test_keepalive_serves_several_requests_on_one_connection(reg):
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", "/v2/library/tinyllama/manifests/latest")
            resp = conn.getresponse()
            assert resp.status == 200
            assert _sha(resp.read()) == resp.headers["Docker-Content-Digest"]
    finally:
        conn.close()


def test_bad_lab_requests(reg):
    status, _, _, _ = reg.request("POST", "/_lab/rate", body={"bytes_per_sec": -1})
    assert status == 400
    status, _, _, _ = reg.request("POST", "/_lab/fault", body={"times": "x"})
    assert status == 400


def test_digests_stable_across_fresh_starts(tmp_path):
    r1 = Registry(tmp_path / "d1", tmp_path / "r1.log")
    try:
        models1 = r1.get_json("/_lab/stats")["models"]
    finally:
        r1.stop()
    r2 = Registry(tmp_path / "d2", tmp_path / "r2.log")
    try:
        models2 = r2.get_json("/_lab/stats")["models"]
        body = r2.request("GET", "/v2/library/tinyllama/manifests/latest")[2]
    finally:
        r2.stop()
    key = [(m["name"], m["tag"], m["digest"], m["size"], m["layers"]) for m in models1]
    assert key == [(m["name"], m["tag"], m["digest"], m["size"], m["layers"]) for m in models2]
    assert {(m["name"], m["tag"]) for m in models1} == {
        ("library/tinyllama", "latest"),
        ("library/qwen2.5", "0.5b"),
        ("library/all-minilm", "latest"),
        ("library/llama3.2", "1b"),
    }
    assert len({m["digest"] for m in models1}) == 4

    # build_catalog agrees without a server, with or without writing blobs
    mod = _load_module()
    catalog = json.loads(CATALOG.read_text())
    built = mod.build_catalog(catalog, None, SCALE)
    assert [(m["name"], m["tag"], m["digest"]) for m in built] == [
        (m["name"], m["tag"], m["digest"]) for m in models1
    ]
    assert built[0]["manifest"].encode() == body
    on_disk = mod.build_catalog(catalog, tmp_path / "d1", SCALE)  # reuses generated blobs
    assert [m["digest"] for m in on_disk] == [m["digest"] for m in built]
    for m in on_disk:
        for digest, path in m["blobs"].items():
            assert Path(path).name == digest.replace(":", "-")


def test_catalog_sizes_and_scale():
    mod = _load_module()
    catalog = json.loads(CATALOG.read_text())
    full = {(m["name"], m["tag"]): m for m in mod.build_catalog(catalog, None, 1 / 1024)}
    sizes = {k: _model_layer(json.loads(m["manifest"]))["size"] for k, m in full.items()}
    assert sizes == {
        ("library/tinyllama", "latest"): 8 * 1024,
        ("library/qwen2.5", "0.5b"): 16 * 1024,
        ("library/all-minilm", "latest"): 4 * 1024,
        ("library/llama3.2", "1b"): 300 * 1024,
    }
    assert full[("library/all-minilm", "latest")]["family"] == "bert"
    assert full[("library/qwen2.5", "0.5b")]["family"] == "qwen2"


def test_blobs_are_redirected_to_the_blob_store_on_another_host(reg):
    """registry.ollama.ai answers a blob request with 307 to its blob store (another host
    name); Ollama's download takes that Location and fetches ranged parts there."""
    name = "library/tinyllama"
    manifest = reg.manifest(name)
    for desc in [manifest["config"], *manifest["layers"]]:
        for method in ("GET", "HEAD"):
            status, headers, body, _ = reg.request(method, _blob_path(name, desc["digest"]))
            assert status == 307 and body == b"" and int(headers["Content-Length"]) == 0
            assert headers["Location"] == f"http://localhost:{reg.port}" + _store_path(
                desc["digest"])
    # the blob store answers plainly, Range aware, with no Location
    layer = _model_layer(manifest)
    status, headers, body, complete = reg.request("GET", _store_path(layer["digest"]),
                                                  {"Range": "bytes=10-19"})
    assert (status, len(body), complete) == (206, 10, True)
    assert headers["Content-Range"] == f"bytes 10-19/{layer['size']}"
    assert "Location" not in headers
    # manifests stay a plain 200; unknown blobs are a 404, with no redirect
    status, headers, _, _ = reg.request("GET", f"/v2/{name}/manifests/latest")
    assert status == 200 and "Location" not in headers
    status, headers, body, _ = reg.request("GET", _blob_path(name, "sha256:" + "0" * 64))
    assert status == 404 and "Location" not in headers
    status, _, _, _ = reg.request("GET", _store_path("sha256:" + "0" * 64))
    assert status == 404
    stats = reg.get_json("/_lab/stats")
    assert stats["redirects"] == 2 * len(manifest["layers"]) + 2
    assert stats["blob_url"] == f"http://localhost:{reg.port}"


def test_without_a_blob_url_the_redirect_stays_on_the_host_asked_for(tmp_path):
    """FLEETLAB_BLOB_URL unset: the redirect names the registry's own host, so a client
    that follows same-host redirects (Ollama) ends at a 200 with no Location."""
    r = Registry(tmp_path / "data", tmp_path / "registry.log", blob_host=None)
    try:
        name = "library/tinyllama"
        layer = _model_layer(r.manifest(name))
        status, headers, _, _ = r.request("GET", _blob_path(name, layer["digest"]))
        assert status == 307
        assert headers["Location"] == f"http://127.0.0.1:{r.port}" + _store_path(
            layer["digest"])
        status, headers, body, _ = r.request("GET", _store_path(layer["digest"]))
        assert status == 200 and "Location" not in headers and _sha(body) == layer["digest"]
        assert r.get_json("/_lab/stats")["blob_url"] is None
    finally:
        r.stop()


def test_manifests_are_served_as_a_distribution_registry_writes_them(reg):
    """3-space indent, descriptors ordered mediaType, size, digest: not the compact
    mediaType, digest, size that Ollama re-encodes and stores, so the bytes differ."""
    status, headers, body, _ = reg.request("GET", "/v2/library/tinyllama/manifests/latest")
    assert status == 200
    manifest = json.loads(body)
    assert body.decode() == json.dumps(manifest, indent=3)
    assert list(manifest["config"]) == ["mediaType", "size", "digest"]
    assert all(list(x) == ["mediaType", "size", "digest"] for x in manifest["layers"])
    ollama_form = json.dumps({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": {k: manifest["config"][k] for k in ("mediaType", "digest", "size")},
        "layers": [{k: x[k] for k in ("mediaType", "digest", "size")}
                   for x in manifest["layers"]]}, separators=(",", ":")).encode()
    assert _sha(ollama_form) != headers["Docker-Content-Digest"] == _sha(body)


def test_a_registry_cut_off_under_one_name_still_answers_under_another(reg):
    """`/_lab/unreachable`: the public registry cut off, its mirror (another name for the
    same server) still answering: a request naming a cut-off host gets no answer at all."""
    cut = f"127.0.0.1:{reg.port}"
    assert reg.post("/_lab/unreachable", {"hosts": [cut.upper()]}) == {"hosts": [cut]}
    try:
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            reg.request("GET", "/v2/library/tinyllama/manifests/latest")  # Host: 127.0.0.1:P
        status, _, _, _ = reg.request("GET", "/v2/library/tinyllama/manifests/latest",
                                      headers={"Host": f"localhost:{reg.port}"})
        assert status == 200
        assert reg.get_json("/_lab/stats")  # the lab's own controls stay reachable
    finally:
        assert reg.post("/_lab/unreachable", {"hosts": []}) == {"hosts": []}
    status, _, _, _ = reg.request("GET", "/v2/library/tinyllama/manifests/latest")
    assert status == 200
