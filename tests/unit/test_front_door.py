"""tasks.steps.front_door: the front door's upstreams and routes, rendered from the fleet."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from ollama_fleet.tasks.kit.fleet import build
from ollama_fleet.tasks.kit.settings import settings_for
from ollama_fleet.tasks.steps.front_door import (
    FRONT_TEMPLATES,
    Upstream,
    front_door_files,
    routes,
    upstreams,
)

NODE = shutil.which("node")

FLEET = build([
    ("gpu-1", ["gpu_servers"], {"gpu_count": 4, "ssh_hostname": "10.0.0.1",
                                "ollama_models": ["llama3.2:1b", "all-minilm"]}),
    ("gpu-2", ["gpu_servers"], {"gpu_count": 2, "ollama_topology": "shared",
                                "ssh_hostname": "10.0.0.2",
                                "ollama_models": ["registry.ollama.ai/library/LLAMA3.2:1b",
                                                  "all-minilm:latest"]}),
    ("cpu-1", ["gpu_servers"], {"ssh_hostname": "10.0.0.3",
                                "ollama_models": ["tinyllama", "all-minilm"]}),
    ("lb-1", ["lb_servers"], {"ssh_hostname": "10.0.0.9"}),
])
LB = FLEET.member("lb-1").settings


def conf(out: list[str] | None = None) -> str:
    return front_door_files(LB, upstreams(LB, FLEET, out))["nginx/front.conf"]


def test_each_host_weighs_as_its_instances_and_lists_its_models_as_ollama_does():
    assert [(u.host, u.weight, u.models) for u in upstreams(LB, FLEET)] == [
        ("gpu-1", 4, ("llama3.2:1b", "all-minilm:latest")),
        ("gpu-2", 1, ("LLAMA3.2:1b", "all-minilm:latest")),
        ("cpu-1", 1, ("tinyllama:latest", "all-minilm:latest")),
    ]


def test_models_served_by_the_same_hosts_share_one_route_whatever_their_spelling():
    got = [(r.models, [s.host for s in r.servers]) for r in routes(upstreams(LB, FLEET))]
    assert got == [(("llama3.2:1b",), ["gpu-1", "gpu-2"]),
                   (("all-minilm:latest",), ["gpu-1", "gpu-2", "cpu-1"]),
                   (("tinyllama:latest",), ["cpu-1"])]


def _route(text: str, model: str) -> str:
    """The upstream the rendered map gives MODEL (nginx: first matching regex wins)."""
    body = text.split("map $fleet_model $fleet_route {")[1].split("}")[0]
    for pattern, upstream in re.findall(r'"~\*(.+?)" (\S+);', body):
        if re.search(pattern, model, re.IGNORECASE):
            return upstream
    return ""


def test_the_rendered_map_sends_every_spelling_to_the_hosts_that_serve_it():
    text = conf()
    servers = {name: re.findall(r"# (\S+)$", block, re.M)
               for name, block in re.findall(r"upstream (fleet_route_\d+) \{(.*?)\}", text, re.S)}
    assert {m: servers.get(_route(text, m)) for m in (
        "llama3.2:1b", "Llama3.2:1B", "library/llama3.2:1b", "tinyllama", "TinyLlama:latest",
        "http://registry.ollama.ai/library/tinyllama", "all-minilm", "llama3.2", "tiny",
        "user/tinyllama")} == {
        "llama3.2:1b": ["gpu-1", "gpu-2"], "Llama3.2:1B": ["gpu-1", "gpu-2"],
        "library/llama3.2:1b": ["gpu-1", "gpu-2"], "tinyllama": ["cpu-1"],
        "TinyLlama:latest": ["cpu-1"], "http://registry.ollama.ai/library/tinyllama": ["cpu-1"],
        "all-minilm": ["gpu-1", "gpu-2", "cpu-1"], "llama3.2": None, "tiny": None,
        "user/tinyllama": None}
    assert "server 10.0.0.1:80 weight=4 " in text


def test_a_held_out_host_is_down_in_every_route_and_out_of_the_merged_lists():
    text = conf(out=["gpu-2"])
    assert len(re.findall(r"server 10\.0\.0\.2:80 [^;]* down;", text)) == 3  # fleet + 2 routes
    assert 'set $fleet_members "fleet_host_0 fleet_host_2";' in text
    # an admin may still name it: the host-alone upstreams are never down
    alone = text.split("upstream fleet_host_1 {  # gpu-2")[1].split("}")[0]
    assert "server 10.0.0.2:80 max_fails=0;" in alone and "down" not in alone
    assert '"gpu-2" fleet_host_1;' in text


def test_the_front_door_loads_njs_and_mounts_its_own_nginx_conf():
    files = front_door_files(LB, [Upstream("gpu-1", "10.0.0.1", 80, False)])
    assert files["nginx.conf"].startswith("# Copied") and \
        "load_module /usr/lib/nginx/modules/ngx_http_js_module.so;" in files["nginx.conf"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in files["compose.yaml"]
    assert "export default {inference, admin};" in files["nginx/fleet.js"]


# fleet.js's decisions, run by Node with a stand-in for nginx's request object (njs runs
# the same file in nginx; the lab's front door runs it there, tests/lab/test_prod_shape.py).
RUNNER = r"""
import fleet from %(module)s;
const cases = JSON.parse(process.argv[2]);
const served = ['tinyllama', 'tinyllama:latest'];
console.log(JSON.stringify(cases.map((c) => {
    const out = {};
    const named = (c.headers || {})['X-Fleet-Host'] === 'gpu-1';
    const variables = {fleet_allow_cloud: c.allow ? '1' : '0', fleet_model: '',
                       fleet_named: named ? 'fleet_host_0' : '',
                       get fleet_route() {
                           return served.includes(this.fleet_model) ? 'fleet_route_0' : '';
                       }};
    const r = {uri: c.uri, method: c.method || 'POST', args: c.args || {},
               headersIn: c.headers || {}, headersOut: {}, variables: variables,
               requestText: c.body === undefined ? '' : c.body,
               return(status, text) { out.status = status; out.body = JSON.parse(text); },
               internalRedirect(to) { out.to = to; }};
    fleet[c.handler || 'inference'](r);
    if (out.to === '@fleet_route') { out.model = variables.fleet_model; }
    return out;
})));
"""
FLEET_JS = FRONT_TEMPLATES / "fleet.js"


def run_fleet_js(tmp_path, cases: list[dict]) -> list[dict]:
    """What fleet.js does with each request of CASES: {to, model} or {status, body}."""
    module = tmp_path / "fleet.mjs"
    module.write_text(FLEET_JS.read_text())
    runner = tmp_path / "run.mjs"
    runner.write_text(RUNNER % {"module": json.dumps(module.as_uri())})
    proc = subprocess.run([NODE, str(runner), json.dumps(cases)], capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def multipart(fields: dict[str, str], boundary: str = "b0undary") -> tuple[dict, str]:
    parts = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                    for k, v in fields.items())
    parts += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
              f'filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\nRIFF....\r\n--{boundary}--\r\n')
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}, parts


# `make test` installs node (lab/setup-machine.sh); CI never skips these
needs_node = pytest.mark.skipif(NODE is None and not os.environ.get("CI"),
                                reason="no node to run fleet.js with (make machine installs it)")


@needs_node
def test_new_endpoints_go_by_their_model_and_status_to_any_host(tmp_path):
    headers, form = multipart({"model": "tinyllama", "language": "en"})
    got = run_fleet_js(tmp_path, [
        {"uri": "/v1/responses", "body": '{"model": "tinyllama", "input": "hi"}'},
        {"uri": "/v1/messages", "body": '{"model": "tinyllama", "max_tokens": 8}'},
        {"uri": "/v1/audio/transcriptions", "headers": headers, "body": form},
        {"uri": "/api/status", "method": "GET"},
        {"uri": "/v1/messages", "body": '{"model": "nothere", "max_tokens": 8}'},
        {"uri": "/api/chat", "body": '{"MODEL": "tinyllama"}'},  # Go reads keys in any case
    ])
    assert got[:4] == [{"to": "@fleet_route", "model": "tinyllama"}] * 3 + [{"to": "@fleet_any"}]
    assert got[4] == {"status": 404, "body": {"type": "error", "error": {
        "type": "not_found_error",
        "message": 'model "nothere" not found: no host of this fleet serves it'}}}
    assert got[5] == {"to": "@fleet_route", "model": "tinyllama"}


CLOUD_NAMES = ["gpt-oss:cloud", "gpt-oss:20b:cloud", "gpt-oss:20b-cloud", "GPT-OSS:20B-Cloud",
               " gpt-oss:cloud ", "registry:5000/ns/model:cloud", "deepseek-v3.1:671b-cloud"]
LOCAL_NAMES = ["tinyllama", "gpt-oss-cloud", "cloud", "registry:5000/ns/model-cloud",
               "llama3.2:1b", "gpt-oss:20b:local"]


@needs_node
def test_cloud_models_are_named_as_ollama_reads_them(tmp_path):
    """internal/modelref: the part after the last `:` is `cloud`, or ends in `-cloud`
    without a `/`; any case, spaces trimmed."""
    names = CLOUD_NAMES + LOCAL_NAMES
    got = run_fleet_js(tmp_path, [{"uri": "/api/chat", "body": json.dumps({"model": name})}
                                  for name in names])
    assert {n: g.get("status") == 403 for n, g in zip(names, got, strict=True)} == \
        {n: n in CLOUD_NAMES for n in names}


CLOUD_OFF = "ollama_allow_cloud is off for this fleet: "


@needs_node
def test_with_the_cloud_off_every_way_of_naming_a_cloud_model_is_refused_in_its_routes_shape(
        tmp_path):
    headers, form = multipart({"model": "whisper:cloud"})
    deep = "[" * 40 + "]" * 40  # deeper than njs's JSON.parse goes: scanned instead
    cases = [
        {"uri": "/api/chat", "body": '{"model": "gpt-oss:20b-cloud"}'},
        {"uri": "/api/generate", "body": '{"model": "tinyllama", "Model": "gpt-oss:20b-cloud"}'},
        {"uri": "/api/show", "body": '{"name": "gpt-oss:20b-cloud"}'},
        {"uri": "/v1/chat/completions", "body": '{"model": "gpt-oss:20b-cloud"}'},
        {"uri": "/v1/models/gpt-oss:20b-cloud", "method": "GET"},
        {"uri": "/v1/messages", "body": '{"model": "gpt-oss:20b-cloud", "max_tokens": 8}'},
        {"uri": "/api/chat", "body": '{"mod\\u0065l": "gpt-oss:20b-cloud", "x": ' + deep + "}"},
        {"uri": "/v1/audio/transcriptions", "headers": headers, "body": form},
        {"uri": "/v1/audio/transcriptions", "headers": multipart({"model": "tinyllama"})[0],
         "args": {"model": "gpt-oss:20b-cloud"}, "body": multipart({"model": "tinyllama"})[1]},
        {"uri": "/api/pull", "handler": "admin", "body": '{"model": "gpt-oss:20b-cloud"}'},
        {"uri": "/api/create", "handler": "admin", "headers": {"X-Fleet-Host": "gpu-1"},
         "body": '{"model": "mine", "from": "gpt-oss:20b-cloud"}'},
        {"uri": "/v1/responses",
         "body": '{"model": "tinyllama", "tools": [{"type": "web_search"}]}'},
        {"uri": "/v1/messages", "body": '{"model": "tinyllama", "max_tokens": 8, "tools": '
                                        '[{"type": "web_search_20250305", "name": "web_search"}]}'},
        {"uri": "/v1/responses",  # Go folds `ſ` to `s`: this is `tools` to Ollama
         "body": '{"model": "tinyllama", "TOOL\u017f": [{"Type": "web_search"}]}'},
        {"uri": "/v1/messages", "body": '{"model": "tinyllama", "x": ' + deep + ', "tools": '
                                        '[{"type": "web_search_20250305"}]}'},
        {"uri": "/api/chat", "headers": {"Content-Encoding": "zstd", "Content-Length": "4"},
         "body": "\x28\xb5\x2f\xfd"},
    ]
    got = run_fleet_js(tmp_path, cases)
    assert [g.get("status") for g in got] == [403] * 15 + [415]
    native, openai_, anthropic = got[0]["body"], got[3]["body"], got[5]["body"]
    assert native["error"].startswith(CLOUD_OFF) and "gpt-oss:20b-cloud" in native["error"]
    assert openai_ == {"error": {"message": native["error"], "type": "api_error", "param": None,
                                 "code": None}}
    assert anthropic == {"type": "error", "error": {"type": "permission_error",
                                                    "message": native["error"]}}
    assert "whisper:cloud" in got[7]["body"]["error"]["message"]
    assert "web_search tool" in got[11]["body"]["error"]["message"]
    assert 'model "gpt-oss:20b-cloud" is an Ollama cloud model' in got[9]["body"]["error"]


@needs_node
def test_with_the_cloud_allowed_cloud_models_and_web_search_go_to_any_host(tmp_path):
    got = run_fleet_js(tmp_path, [
        {"allow": True, "uri": "/api/chat", "body": '{"model": "gpt-oss:20b-cloud"}'},
        {"allow": True, "uri": "/v1/models/gpt-oss:cloud", "method": "GET"},
        {"allow": True, "uri": "/v1/messages",
         "body": '{"model": "tinyllama", "max_tokens": 8, '
                 '"tools": [{"type": "web_search_20250305"}]}'},
        {"allow": True, "uri": "/api/experimental/web_search", "body": '{"query": "x"}'},
    ])
    assert got == [{"to": "@fleet_any"}, {"to": "@fleet_any"},
                   {"to": "@fleet_route", "model": "tinyllama"}, {"to": "@fleet_any"}]


def test_the_gate_lists_the_new_endpoints_and_refuses_web_search_unless_allowed():
    text = conf()
    inference = re.search(r"location ~ \^/\(api/\((.*?)\)\|v1/\((.*?)\)\)\$", text)
    assert inference and "status" in inference[1].split("|")
    assert {"responses", "messages", "audio/transcriptions"} <= set(inference[2].split("|"))
    web = text.split("location ~ ^/api/experimental/web_(search|fetch)$ {")[1].split("}")[0]
    assert "return 403" in web and CLOUD_OFF in web and "js_content" not in web
    assert "set $fleet_allow_cloud 0;" in text
    allowed = front_door_files(settings_for("lb-1", {"ollama_allow_cloud": True}),
                               upstreams(LB, FLEET))["nginx/front.conf"]
    web = allowed.split("location ~ ^/api/experimental/web_(search|fetch)$ {")[1].split("}")[0]
    assert "js_content fleet.inference;" in web and "return 403" not in web
    assert "set $fleet_allow_cloud 1;" in allowed


@needs_node
def test_with_the_cloud_off_a_request_whose_model_the_front_door_cannot_read_goes_nowhere(
        tmp_path):
    """Ways a body can name a model Ollama reads while a lenient reader sees none, or
    another one (found by a review): Go's decoder ignores data after the object, takes the
    last of keys differing in case, and trims U+0085; Go's multipart reader takes LF-only
    forms and RFC 2231 names. Each is refused, never sent to any host."""
    lf_form = ('--b0undary\nContent-Disposition: form-data; name="model"\n\n'
               'whisper:cloud\n--b0undary--\n')
    rfc2231 = ("--b0undary\r\nContent-Disposition: form-data; name*=UTF-8''model\r\n\r\n"
               "whisper:cloud\r\n--b0undary--\r\n")
    form_type = {"Content-Type": "multipart/form-data; boundary=b0undary"}
    cases = [
        # an escaped backslash must not hide the key after it from the scanner
        {"uri": "/api/chat", "body": '{"name":"a\\u005c","model":"gpt-oss:cloud"} x'},
        {"uri": "/api/chat",
         "body": '{"model":"x","Model":"tinyllama","model":"gpt-oss:cloud\\u0085"}'},
        {"uri": "/v1/audio/transcriptions", "headers": form_type, "body": lf_form},
        {"uri": "/v1/audio/transcriptions", "headers": form_type, "body": rfc2231},
        {"uri": "/api/generate", "body": '{"prompt": "no model at all"}'},
        {"uri": "/api/create", "handler": "admin", "headers": {"X-Fleet-Host": "gpu-1"},
         "body": '{"model": "mine", "from": "gpt-oss:120b", "remote_host": "https://x"}'},
    ]
    got = run_fleet_js(tmp_path, cases)
    assert [g.get("status") for g in got] == [403, 403, 400, 400, 400, 403], got
    assert all("to" not in g for g in got)
    assert got[2]["body"]["error"]["message"].startswith(CLOUD_OFF + "the front door found "
                                                         "no model in this request")
    assert "remote_host" in got[5]["body"]["error"]
    # the cloud allowed: nothing to keep in, Ollama itself answers what it cannot read
    assert run_fleet_js(tmp_path, [{"allow": True, "uri": "/api/generate",
                                    "body": '{"prompt": "x"}'}]) == [{"to": "@fleet_any"}]


def test_no_key_in_anthropics_header_travels_past_the_gate():
    """The gate reads a fleet key from x-api-key too; nothing behind it needs the key, and
    Ollama would pass that header on to ollama.com with a cloud request."""
    text = conf()
    proxies = text.count("proxy_pass ")
    assert proxies and text.count('proxy_set_header X-Api-Key "";') == proxies
