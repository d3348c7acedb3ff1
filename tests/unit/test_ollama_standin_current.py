"""The stand-in Ollama's rules for v0.32 images that need no server: cloud model names
(internal/modelref), the cloud override (server/cloud_proxy.go), the Host check
(server/routes.go allowedHostsMiddleware), GPU discovery by compute capability
(discover/llama_server.go; the CMakePresets of each release) and the VRAM tier of the
default context (server/routes.go Serve), read at v0.32.15 (and v0.6.8 for the old line)."""

from __future__ import annotations

import http.client
import http.server
import json
import threading

import pytest

from lab import dns
from lab.ollama.standin import cloud, discover, releases, routes, state


@pytest.mark.parametrize("raw, want", [
    ("gpt-oss:120b-cloud", ("gpt-oss:120b", "cloud")),
    ("gpt-oss:cloud", ("gpt-oss", "cloud")),
    ("qwen3:CLOUD", ("qwen3", "cloud")),
    ("qwen3:local", ("qwen3", "local")),
    ("qwen3:8b", ("qwen3:8b", "")),
    ("ns/model-cloud", ("ns/model-cloud", "")),  # no tag: the name itself is not a source
    ("host:5000/m:v-cloud", ("host:5000/m:v", "cloud")),
])
def test_cloud_model_names_as_modelref_parses_them(raw, want):
    assert cloud.parse_ref(raw) == want


def test_a_name_with_two_sources_is_refused():
    with pytest.raises(cloud.ConflictingSource, match="use either :local or :cloud"):
        cloud.parse_ref("m:local:cloud")
    assert cloud.cloud_base("") is None and cloud.cloud_base("m:local") is None
    assert cloud.cloud_base("gpt-oss:20b-cloud") == "gpt-oss:20b"


@pytest.mark.parametrize("override, error", [
    ("https://cloud.example.com", "non-loopback cloud override is not allowed in release mode"),
    ("http://10.0.0.5:8080", "non-loopback cloud override is not allowed in release mode"),
    ("http://127.0.0.1:9/v1", "invalid URL: path is not allowed"),
    ("http://u:p@127.0.0.1", "invalid URL: userinfo is not allowed"),
    ("127.0.0.1:9", "invalid URL: scheme and host are required"),
    ("http://localhost:9?x=1", "invalid URL: query and fragment are not allowed"),
])
def test_a_release_build_takes_only_a_loopback_override(override, error):
    with pytest.raises(ValueError, match=error):
        cloud.resolve_base_url(override)
    assert cloud.resolve_base_url("http://127.0.0.1:9/") == ("http://127.0.0.1:9", "127.0.0.1",
                                                             True)
    assert cloud.resolve_base_url("") == ("https://ollama.com:443", "ollama.com", False)
    # a debug build would take an https override off loopback, never plain http
    assert cloud.resolve_base_url("https://c.test", mode="debug")[1] == "c.test"
    with pytest.raises(ValueError, match="must use https"):
        cloud.resolve_base_url("http://c.test", mode="debug")


def test_the_cloud_is_off_by_env_or_by_server_json(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("OLLAMA_NO_CLOUD", raising=False)
    monkeypatch.setattr(cloud, "_SERVER_CFG", None)
    assert (cloud.disabled(), cloud.source()) == (False, "none")
    (tmp_path / ".ollama").mkdir()
    (tmp_path / ".ollama/server.json").write_text(json.dumps({"disable_ollama_cloud": True}))
    monkeypatch.setattr(cloud, "_SERVER_CFG", None)
    assert (cloud.disabled(), cloud.source()) == (True, "config")
    monkeypatch.setenv("OLLAMA_NO_CLOUD", "1")
    assert cloud.source() == "both"
    assert cloud.disabled_error("web search is unavailable") == \
        "ollama cloud is disabled: web search is unavailable"


@pytest.mark.parametrize("host, allowed", [
    ("127.0.0.1:11434", True), ("[::1]:11434", True), ("10.0.0.9", True),
    ("172.31.0.1", True), ("192.168.1.1:80", True), ("[fd12::1]:1", True),
    ("0.0.0.0", True), ("[::ffff:10.0.0.1]:1", True),
    ("169.254.1.1", False), ("[fe80::1]:11434", False), ("100.64.0.1", False),
    ("8.8.8.8", False), ("[::1]", False), ("example.com", False),
    ("localhost", True), ("a.localhost:1", True), ("gpu.internal", True), ("x.local", True),
])
def test_the_host_check_is_gos(host, allowed, monkeypatch):
    monkeypatch.setattr(routes, "_local_addresses", lambda: {"127.0.0.1", "::1"})
    assert routes._host_allowed(host) is allowed


def test_an_address_of_this_machine_is_allowed_even_link_local(monkeypatch):
    monkeypatch.setattr(routes, "_local_addresses", lambda: {"169.254.7.7", "203.0.113.5"})
    assert routes._host_allowed("169.254.7.7:11434")
    assert routes._host_allowed("203.0.113.5")
    assert not routes._host_allowed("169.254.7.8")


def _board(tmp_path, monkeypatch, name: str, cc: str | None, driver: str = "590.48.01"):
    root = tmp_path / "root"
    (root / "etc/fleetlab").mkdir(parents=True, exist_ok=True)
    (root / "run/fleetlab").mkdir(parents=True, exist_ok=True)
    gpu = {"uuid": "GPU-1", "name": name, "memory_total_mib": 183359,
           "pci_bus_id": "00000000:18:00.0"}
    if cc:
        gpu["compute_cap"] = cc
    (root / "etc/fleetlab/gpus.json").write_text(json.dumps({"gpus": [gpu]}))
    (root / "run/fleetlab/nvidia-driver-loaded").write_text(driver)
    monkeypatch.setenv("FLEETLAB_ROOT", str(root))
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "all")
    monkeypatch.setattr(discover, "LAB_DIR", str(tmp_path / "no-lab-dir"))


@pytest.mark.parametrize("version, name, cc, driver, lib", [
    ("0.6.8", "NVIDIA B200", "10.0", "590.48.01", None),  # no 100 in 0.6.8's builds
    ("0.7.0", "NVIDIA H100 80GB HBM3", "9.0", "570.172.08", "cuda_v12"),
    ("0.32.15", "NVIDIA B200", "10.0", "570.172.08", "cuda_v12"),
    ("0.32.15", "NVIDIA B300 SXM6 AC", "10.3", "590.48.01", "cuda_v13"),
    ("0.32.15", "NVIDIA B300 SXM6 AC", "10.3", "570.172.08", None),  # v13 needs CUDA 13
    ("0.32.15", "NVIDIA A100-SXM4-80GB", None, "590.48.01", "cuda_v13"),
    ("0.32.15", "NVIDIA L40S", None, "570.172.08", "cuda_v12"),
])
def test_a_gpu_no_build_supports_is_left_out(tmp_path, monkeypatch, version, name, cc, driver,
                                              lib):
    _board(tmp_path, monkeypatch, name, cc, driver)
    found = discover.Discovery(version)
    assert [g["libdir"] for g in found.gpus] == ([lib] if lib else [])
    assert found.on_gpu is bool(lib)


def test_discovery_logs_as_each_release(tmp_path, monkeypatch, capsys):
    _board(tmp_path, monkeypatch, "NVIDIA B300 SXM6 AC", "10.3", "570.172.08")
    discover.Discovery("0.32.15").log()
    err = capsys.readouterr().err
    assert 'msg="skipping CUDA device \u2014 compute capability not in compiled architectures"' \
        ' device="NVIDIA B300 SXM6 AC" cc=1030' in err
    assert 'msg="inference compute" id=cpu library=cpu' in err
    _board(tmp_path, monkeypatch, "NVIDIA B200", "10.0")
    discover.Discovery("0.6.8").log()
    err = capsys.readouterr().err
    assert 'msg="no compatible GPUs were discovered"' in err
    assert 'msg="inference compute" id=0 library=cpu variant=""' in err


def test_the_compute_table_knows_the_simulated_cards():
    assert {n: discover._COMPUTE[n] for n in ("NVIDIA B200", "NVIDIA B100",
                                              "NVIDIA B300 SXM6 AC", "NVIDIA H200",
                                              "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB",
                                              "NVIDIA L40S")} == {
        "NVIDIA B200": "10.0", "NVIDIA B100": "10.0", "NVIDIA B300 SXM6 AC": "10.3",
        "NVIDIA H200": "9.0", "NVIDIA H100 80GB HBM3": "9.0", "NVIDIA A100-SXM4-80GB": "8.0",
        "NVIDIA L40S": "8.9"}


@pytest.mark.parametrize("gib, want", [(0, 4096), (22.9, 4096), (23, 32768), (46.9, 32768),
                                       (47, 262144), (160, 262144)])
def test_the_default_context_by_vram_tier(gib, want, monkeypatch):
    monkeypatch.delenv("OLLAMA_CONTEXT_LENGTH", raising=False)
    assert state.default_num_ctx(int(gib * (1 << 30))) == want
    monkeypatch.setenv("OLLAMA_CONTEXT_LENGTH", "8192")
    assert state.default_num_ctx(int(gib * (1 << 30))) == 8192


def test_releases_by_version():
    assert not releases.is_current("0.6.8") and not releases.is_current("0.7.1")
    assert releases.is_current("0.32.15") and releases.is_current("0.32.15-rc1")
    assert "100" not in releases.cuda_archs("0.6.8")["cuda_v12"].split(";")
    assert set(releases.cuda_archs("0.32.15")) == {"cuda_v12", "cuda_v13"}


def test_the_lab_names_its_cloud_ollama_com():
    rows = dns.records("fleetlab", "172.29.9.2", [], cloud_ip="172.29.9.3")
    assert ("172.29.9.3", ["cloud.fleetlab.test", "ollama.com"]) in rows


def test_0_32_0_and_0_32_1_build_no_sm_100_for_cuda_v12():
    """llama/server/CMakePresets.json llama_cuda_v12_linux: `100` from v0.32.2 on
    (ollama/ollama#17025); cuda_v13 the same list throughout."""
    for v in ("0.32.0", "0.32.1", "0.32.1-rc0"):
        archs = releases.cuda_archs(v)
        assert archs["cuda_v12"] == "50-virtual;52-virtual;60;61;70;75;80;86;89;90;90a;120"
        assert archs["cuda_v13"] == releases.cuda_archs("0.32.15")["cuda_v13"]
    for v in ("0.32.2", "0.32.15"):
        assert "100" in releases.cuda_archs(v)["cuda_v12"].split(";")


# -- a stand-in served in this process, with a cloud it can be pointed at ------------

class _Cloud(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Cloud.seen.append((self.path, json.loads(body) if body else None))
        doc = {"model": "m", "created_at": "2026-01-01T00:00:00Z",
               "message": {"role": "assistant", "content": "from the cloud"},
               "done_reason": "stop", "done": True, "prompt_eval_count": 3, "eval_count": 2}
        data = json.dumps(doc).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def standin(tmp_path, monkeypatch):
    """serve() in short: a 0.32.15 ServerState and the Handler on a loopback port."""
    from lab.ollama.standin import server
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("OLLAMA_LAB_VERSION", "0.32.15")
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("FLEETLAB_ROOT", str(tmp_path / "root"))
    monkeypatch.setattr(discover, "LAB_DIR", str(tmp_path / "no-lab-dir"))
    monkeypatch.setattr(cloud, "_SERVER_CFG", None)
    monkeypatch.delenv("OLLAMA_NO_CLOUD", raising=False)
    cloud_srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Cloud)
    threading.Thread(target=cloud_srv.serve_forever, args=(0.05,), daemon=True).start()
    monkeypatch.setattr(cloud, "BASE_URL", f"http://127.0.0.1:{cloud_srv.server_port}")
    monkeypatch.setattr(cloud, "SIGNING_HOST", "ollama.com")
    _Cloud.seen = []
    monkeypatch.setattr(state, "STATE", state.ServerState())
    srv = server._bind("127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()

    def post(path, doc):
        conn = http.client.HTTPConnection("127.0.0.1", srv.server_port, timeout=10)
        conn.request("POST", path, json.dumps(doc), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, resp.getheader("Content-Type"), data

    yield post
    srv.shutdown()
    cloud_srv.shutdown()


_DISABLED = "ollama cloud is disabled: remote model is unavailable"


def _oai_error(status: int, message: str) -> dict:
    return {"error": {"message": message, "type": {400: "invalid_request_error",
                                                   404: "not_found_error"}.get(status,
                                                                               "api_error"),
                      "param": None, "code": None}}


_CHAT = {"model": "x:cloud", "messages": [{"role": "user", "content": "hi"}]}
_RESP_WS = {"model": "x:cloud", "input": "hi", "tools": [{"type": "web_search"}]}
_MSG_WS = {"model": "x:cloud", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}],
           "tools": [{"type": "web_search_20250305", "name": "web_search"}]}


@pytest.mark.parametrize("path, doc", [
    ("/v1/chat/completions", _CHAT),
    ("/v1/completions", {"model": "x:cloud", "prompt": "hi"}),
    ("/v1/embeddings", {"model": "x:cloud", "input": "hi"}),
    ("/v1/responses", {"model": "x:cloud", "input": "hi"}),
    ("/v1/messages", dict(_MSG_WS, tools=[])),
    ("/api/embeddings", {"model": "x:cloud", "prompt": "hi"}),
    ("/api/chat", _CHAT),
])
def test_a_disabled_cloud_refuses_a_cloud_model_as_gin_json(standin, monkeypatch, path, doc):
    """cloudPassthroughMiddleware (before any compatibility writer) and the native
    handlers (EmbeddingsHandler, ChatHandler): 403 `{"error": ...}`, nothing sent."""
    monkeypatch.setenv("OLLAMA_NO_CLOUD", "1")
    status, ctype, data = standin(path, doc)
    assert (status, ctype, json.loads(data)) == (403, "application/json; charset=utf-8",
                                                 {"error": _DISABLED})
    assert _Cloud.seen == []


def test_the_legacy_embeddings_route_sends_a_cloud_model_to_the_cloud(standin):
    """EmbeddingsHandler: the request re-encoded with the base name, to /api/embeddings."""
    status, _ctype, _data = standin("/api/embeddings", {"model": "x:cloud", "prompt": "hi"})
    assert status == 200
    assert _Cloud.seen == [("/api/embeddings", {"model": "x", "prompt": "hi"})]
    status, _ctype, data = standin("/api/embeddings", {"model": "", "prompt": "hi"})
    assert (status, json.loads(data)) == (400, {"error": "model is required"})


def test_a_responses_web_search_with_the_cloud_off_fails_as_the_web_search_writer(
        standin, monkeypatch):
    """ChatHandler's 403 through WebSearchResponsesWriter.writeWebSearchError: an OpenAI
    error, or, streamed, a 200 stream that ends in response.failed."""
    monkeypatch.setenv("OLLAMA_NO_CLOUD", "1")
    status, ctype, data = standin("/v1/responses", _RESP_WS)
    assert (status, ctype, json.loads(data)) == (403, "application/json",
                                                 _oai_error(403, _DISABLED))
    status, ctype, data = standin("/v1/responses", dict(_RESP_WS, stream=True))
    assert (status, ctype) == (200, "text/event-stream")
    events = [ln[len("event: "):] for ln in data.decode().splitlines()
              if ln.startswith("event: ")]
    assert events == ["response.created", "response.in_progress", "response.failed"]
    failed = json.loads(data.decode().rstrip().splitlines()[-1][len("data: "):])
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {"code": "api_error", "message": _DISABLED}
    assert _Cloud.seen == []


def test_a_messages_web_search_with_the_cloud_off_is_refused_anthropic_typed(
        standin, monkeypatch):
    """AnthropicMessagesMiddleware's web_search guard: 403 permission_error."""
    monkeypatch.setenv("OLLAMA_NO_CLOUD", "1")
    for stream, want_ctype in ((False, "application/json; charset=utf-8"),
                               (True, "text/event-stream")):
        status, ctype, data = standin("/v1/messages", dict(_MSG_WS, stream=stream))
        doc = json.loads(data)
        assert (status, ctype, doc["type"], doc["error"]) == (403, want_ctype, "error", {
            "type": "permission_error",
            "message": "ollama cloud is disabled: web search is unavailable"})
    assert _Cloud.seen == []


@pytest.mark.parametrize("path, doc", [("/v1/responses", _RESP_WS),
                                       ("/v1/messages", _MSG_WS)])
def test_a_web_search_request_for_a_cloud_model_goes_to_the_clouds_api_chat(standin, path,
                                                                            doc):
    """cloudPassthroughMiddleware leaves it to ChatHandler, which sends the native chat to
    the cloud's /api/chat; the answer comes back in the route's own shape."""
    status, _ctype, data = standin(path, doc)
    assert status == 200
    assert [(p, d["model"]) for p, d in _Cloud.seen] == [("/api/chat", "x")]
    out = json.loads(data)
    text = out["output"][0]["content"][0]["text"] if path == "/v1/responses" else \
        out["content"][0]["text"]
    assert text == "from the cloud"


def test_a_conflicting_source_on_an_openai_route_is_the_handlers_400(standin):
    """The passthrough lets a name that does not parse through; ChatHandler's
    writeModelRefParseError answers through the ChatWriter."""
    status, _ctype, data = standin("/v1/chat/completions", dict(_CHAT, model="m:local:cloud"))
    assert (status, json.loads(data)) == (400, _oai_error(
        400, 'use either :local or :cloud, not both: "m:local:cloud"'))
