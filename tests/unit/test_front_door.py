"""tasks.steps.front_door: the front door's upstreams and routes, rendered from the fleet."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from ollama_fleet.tasks.kit.fleet import build
from ollama_fleet.tasks.kit.settings import SettingsError, settings_for
from ollama_fleet.tasks.steps import front_door, gate
from ollama_fleet.tasks.steps.front_door import (
    FRONT_TEMPLATES,
    INVENTORY_JS,
    Held,
    Upstream,
    front_door_files,
    held_out,
    rotation_readers,
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


def files(out: list[Held | str] | None = None, settings=LB) -> dict[str, str]:
    return front_door_files(settings, upstreams(settings, FLEET, out), "lb-1",
                            rotation_readers(FLEET))


def conf(out: list[Held | str] | None = None) -> str:
    return files(out)["nginx/front.conf"]


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
    # each route's members are the hosts' gates, weighed by their instances
    assert "server unix:/run/fleet_host_0.sock weight=4 max_fails=2 fail_timeout=10s;" in text
    # and again as backups never counted out: passive health never leaves a route with no
    # live upstream while a host of it is in rotation
    route = text.split("upstream fleet_route_0 {")[1].split("}")[0]
    assert route.index("fleet_host_1.sock weight=1 max_fails=2") < route.index(
        "server unix:/run/fleet_host_0.sock weight=4 max_fails=0 backup;")
    assert "server unix:/run/fleet_host_1.sock weight=1 max_fails=0 backup;" in route
    no_passive = LB.model_copy(update={"front_door_max_fails": 0})
    assert " backup;" not in files(settings=no_passive)["nginx/front.conf"]
    alone = text.split("upstream fleet_host_0 {  # gpu-1")[1].split("}")[0]
    assert "server 10.0.0.1:80 max_fails=0;" in alone


def test_a_held_out_host_is_down_in_every_route_and_out_of_the_merged_lists():
    text = conf(out=["gpu-2"])
    # the fleet's upstream and 2 routes
    assert len(re.findall(r"server unix:/run/fleet_host_1\.sock [^;]* down;", text)) == 3
    assert "fleet_host_1.sock weight=1 max_fails=0 backup" not in text  # nor a backup
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
    assert "export default {inference, admin, gateOut, poll, rotation, observe};" in \
        files["nginx/fleet.js"]
    assert "import FLEET from './fleet_inventory.js';" in files["nginx/fleet.js"]


# fleet.js's decisions, run by Node with a stand-in for nginx's request object (njs runs
# the same file in nginx; the lab's front door runs it there, tests/lab/test_prod_shape.py).
RUNNER = r"""
import fleet from './fleet.js';
globalThis.ngx = {shared: {fleet_rotation: new Map()}, log() {}, ERR: 4, WARN: 5};
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


def node_files(tmp_path, runner: str, out: list[Held | str] | None = None):
    """fleet.js as nginx loads it (with the fleet_inventory.js rendered for FLEET), and
    RUNNER, in TMP_PATH as ES modules for Node."""
    rendered = files(out)
    (tmp_path / "package.json").write_text('{"type": "module"}')
    (tmp_path / "fleet.js").write_text(rendered["nginx/fleet.js"])
    (tmp_path / "fleet_inventory.js").write_text(rendered[INVENTORY_JS])
    (tmp_path / "run.js").write_text(runner)
    return tmp_path / "run.js"


def run_node(script, *args: str):
    proc = subprocess.run([NODE, str(script), *args], capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def run_fleet_js(tmp_path, cases: list[dict]) -> list[dict]:
    """What fleet.js does with each request of CASES: {to, model} or {status, body}."""
    return run_node(node_files(tmp_path, RUNNER), json.dumps(cases))


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


def test_no_key_travels_past_the_front_door_only_the_clients_name():
    """Keys stay at the front door: the LAN to the hosts is plain HTTP and a host trusts the
    front door by its address, so every proxy drops Authorization and x-api-key (Ollama
    would pass the latter on to ollama.com with a cloud request). What a host needs, the
    client's name, goes in the fleet's own header: set from the key the gate matched
    (replacing whatever a client sent), passed on unchanged by a host's gate."""
    text = conf()
    proxies = text.count("proxy_pass ")
    assert proxies and text.count('proxy_set_header X-Api-Key "";') == proxies
    assert text.count('proxy_set_header Authorization "";') == proxies
    client = f"proxy_set_header {gate.FLEET_CLIENT_HEADER} "
    assert text.count(client) == proxies
    assert text.count(client + "$api_name;") == proxies - len(FLEET.gpu_servers)
    gates = re.findall(r"listen unix:/run/fleet_host_\d+\.sock;(.*?)\n\}\n", text, re.S)
    assert gates and all(client + "$http_x_ollama_fleet_client;" in g for g in gates)
    # $api_name is the name of the key the gate matched, never a client's own header
    name = text.split('map "$api_client:$api_admin:$api_fleet_client" $api_name {')[1]
    assert "$http_x_ollama_fleet_client" not in name.split("}")[0]
    fleet_client = text.split("$api_fleet_client {")[1].split("\n}")[0]
    assert '"~^1:(?<who>[A-Za-z0-9._-]{1,31})$" $who;' in fleet_client
    assert "geo $api_front_door {\n    default 0;\n}" in text  # a front door trusts no one


# -- active health: the rotation ---------------------------------------------------------------

def test_each_host_has_a_gate_that_refuses_it_at_once_when_out_and_passes_the_client_on():
    """A route's members are the hosts' gates: 404 at once for a host out of rotation (the
    route passes the request to the next host; a 404 never counts against a host's max_fails,
    so one back in rotation is not shunned for fail_timeout), else straight to the host's
    nginx with the headers the host saw before (the client's address; no key, no
    X-Fleet-Host), unbuffered both ways."""
    text = conf()
    gates = re.findall(r"server \{\n    listen unix:/run/(fleet_host_\d+)\.sock;(.*?)\n\}\n",
                       text, re.S)
    assert [name for name, _ in gates] == ["fleet_host_0", "fleet_host_1", "fleet_host_2"]
    name, body = gates[1]
    assert "set $fleet_gate fleet_host_1;" in body
    assert "if ($fleet_gate_out) {\n        return 404 $fleet_gate_out;\n    }" in body
    assert "proxy_pass http://fleet_host_1;" in body
    for line in ("proxy_set_header X-Real-IP $http_x_real_ip;",
                 "proxy_set_header X-Forwarded-For $http_x_forwarded_for;",
                 "proxy_set_header X-Forwarded-Host $http_x_forwarded_host;",
                 "proxy_set_header Host localhost;", 'proxy_set_header X-Api-Key "";',
                 'proxy_set_header Authorization "";',
                 "proxy_set_header X-Ollama-Fleet-Client $http_x_ollama_fleet_client;",
                 'proxy_set_header X-Fleet-Host "";', "proxy_buffering off;",
                 "proxy_request_buffering on;", "client_max_body_size 0;",
                 # a kept-alive connection the host closed is tried once more, nothing else
                 "proxy_next_upstream error non_idempotent;",
                 "proxy_next_upstream_tries 1;"):
        assert line in body, line
    # the routes set the client's headers, and pass a gate's 404 (or 502/503/504) on
    route = text.split("location @fleet_route {")[1].split("}")[0]
    assert "proxy_set_header X-Real-IP $remote_addr;" in route
    assert ("proxy_next_upstream error timeout http_502 http_503 http_504 http_404 "
            "non_idempotent;") in route
    assert "js_set $fleet_gate_out fleet.gateOut;" in text
    assert "js_shared_dict_zone zone=fleet_rotation:1m;" in text


def test_the_rotation_view_listens_on_its_own_port_for_loopback_and_the_gpu_hosts_only():
    text = conf()
    view = text.split("listen 11391;")[1]
    allowed = re.findall(r"^    allow (\S+);", view.split("deny all;")[0], re.M)
    assert allowed == ["127.0.0.1", "::1", "10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert "location = /fleet/rotation {\n        js_content fleet.rotation;" in view
    assert "js_periodic fleet.poll interval=1s;" in view
    # the poll asks each host through the loopback server, bounded well within its second
    health = text.split("(?<fleet_member>fleet_host_[0-9]+)/fleet/health$ {")[1].split("}")[0]
    assert "proxy_pass http://$fleet_member/fleet/health;" in health
    assert "proxy_connect_timeout 400ms;" in health and "proxy_read_timeout 400ms;" in health
    with pytest.raises(SettingsError, match="front_door_health_port: 11390 is also"):
        settings_for("lb-1", {"front_door_health_port": 11390})


def test_the_gates_sockets_live_in_a_tmpfs_fresh_at_every_start():
    assert "tmpfs: [/var/cache/nginx, /var/lib/nginx, /run, /tmp]" in files()["compose.yaml"]
    writable = settings_for("lb-1", {"ssh_hostname": "10.0.0.9", "ollama_read_only": False})
    assert "tmpfs: [/run]" in files(settings=writable)["compose.yaml"]


def test_held_hosts_keep_why_a_roll_or_an_operator_holds_them(monkeypatch):
    """FRONT_DIR/held-out keeps each host's cause and since; a bare name (before causes were
    kept) is an operator's drain; a plain deploy keeps the file's, ollama-fleet's run says
    (front_door_out, front_door_out_roll)."""
    assert Held.parse("gpu-1") == Held("gpu-1", "drain", None)
    assert Held.parse("gpu-2\troll\t1765000000") == Held("gpu-2", "roll", 1765000000.0)
    assert Held("gpu-2", "roll", 1765000000.0).line == "gpu-2\troll\t1765000000"

    class Host:
        @staticmethod
        def get_fact(fact, path):
            assert path == "/opt/ollama-front/held-out"
            return ["gpu-1", "gpu-2\troll\t1765000000"]

    monkeypatch.setattr(front_door, "host", Host)
    assert held_out(settings_for("lb-1", {})) == [Held("gpu-1", "drain", None),
                                                  Held("gpu-2", "roll", 1765000000.0)]
    # a roll holds gpu-3 too, keeps gpu-2's since; an operator's drain keeps gpu-1
    run = settings_for("lb-1", {"front_door_out": ["gpu-1", "gpu-2", "gpu-3"],
                                "front_door_out_roll": ["gpu-2", "gpu-3"]})
    assert held_out(run, now=1765000100) == [Held("gpu-1", "drain", 1765000100),
                                             Held("gpu-2", "roll", 1765000000.0),
                                             Held("gpu-3", "roll", 1765000100)]
    # an older ollama-fleet (no front_door_out_roll): the kept causes, a new host a drain
    old = settings_for("lb-1", {"front_door_out": ["gpu-2", "gpu-3"]})
    assert [h.cause for h in held_out(old, now=1)] == ["roll", "drain"]
    with pytest.raises(SettingsError, match="front_door_out_roll: names hosts that "):
        settings_for("lb-1", {"front_door_out": [], "front_door_out_roll": ["gpu-1"]})


def test_fleet_js_is_told_why_each_host_is_held_and_which_hosts_each_route_has():
    module = files([Held("gpu-2", "roll", 1765000000.0), "cpu-1"])[INVENTORY_JS]
    doc = json.loads(module.split("export default ", 1)[1].rstrip().rstrip(";"))
    assert doc == {"front_door": "lb-1", "lists_port": 11390, "hosts": [
        {"name": "gpu-1", "upstream": "fleet_host_0", "out": "", "since": None},
        {"name": "gpu-2", "upstream": "fleet_host_1", "out": "roll", "since": 1765000000.0},
        {"name": "cpu-1", "upstream": "fleet_host_2", "out": "drain", "since": None}],
        "routes": {"fleet_route_0": [0, 1], "fleet_route_1": [0, 1, 2], "fleet_route_2": [2]}}
    inventory = settings_for("lb-1", {"front_door_drained": ["gpu-1"]})
    assert [u.cause for u in upstreams(inventory, FLEET, [Held("gpu-1", "roll")])] == \
        ["inventory", "", ""]


def nginx_image() -> str | None:
    """An nginx image with njs that is here already (never pulled by a unit test): the
    official one the deploy uses, else the lab's stand-in for it (njs 0.8.9)."""
    if shutil.which("docker") is None:
        return None
    for image in ("nginx:1.30", "fleetlab/nginx:1.30"):
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True,
                          timeout=30, check=False).returncode == 0:
            return image
    return None


def test_the_rendered_front_door_passes_nginx_t(tmp_path, monkeypatch):
    """As the deploy checks it (tasks.kit.compose.checked_files): nginx -t in a bare
    container of the image, the front door's nginx.conf and conf.d mounted, with its gate's
    files (keys: gate.js, which imports njs's crypto module)."""
    image = nginx_image()
    if image is None:
        pytest.skip("no nginx image with njs here (make machine builds the lab's)")
    (tmp_path / "keys").write_text("alice " + "0123456789abcdef" * 4 + "\n")
    keyed = settings_for("lb-1", {"nginx_api_keys": {"file": str(tmp_path / "keys")},
                                  "nginx_admin_keys": {"env": "FLEET_TEST_ADMIN_KEYS"}})
    monkeypatch.setenv("FLEET_TEST_ADMIN_KEYS", "Zq7-RsTu.vW_xY9+/Zq7-RsTu.vW_xY9+/==")
    rendered = files([Held("gpu-2", "roll", 1765000000.0)], keyed) | gate.gate_files(keyed)[0]
    assert "js_import gate from /etc/nginx/conf.d/gate.js;" in rendered["nginx/front.conf"]
    for rel, text in rendered.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    proc = subprocess.run(["docker", "run", "--rm", "-v",
                           f"{tmp_path}/nginx.conf:/etc/nginx/nginx.conf:ro", "-v",
                           f"{tmp_path}/nginx:/etc/nginx/conf.d:ro", image, "nginx", "-t", "-q"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


# fleet.js's rotation, run by Node with stand-ins for nginx's shared dictionary and ngx.fetch.
ROTATION_RUNNER = r"""
import fleet from './fleet.js';
const store = new Map();
const answers = {};  // upstream -> [status, body] of the next poll
globalThis.ngx = {
    ERR: 4, WARN: 5, logged: [], log(level, text) { ngx.logged.push(text); },
    shared: {fleet_rotation: {get: (k) => store.get(k), set: (k, v) => store.set(k, v),
                              delete: (k) => store.delete(k), keys: () => [...store.keys()]}},
    fetch(url) {
        const got = answers[url.split('/')[3]] || [599, 'no answer within 400 ms'];
        return Promise.resolve({status: got[0], text: () => Promise.resolve(got[1])});
    },
};
let now = 1765000000;
Date.now = () => now * 1000;
function request(uri, body, routeName) {
    const out = {};
    const r = {uri: uri, method: 'POST', args: {}, headersIn: {}, headersOut: {},
               requestText: body,
               variables: {fleet_allow_cloud: '0', fleet_model: '', fleet_route: routeName,
                           fleet_members: 'fleet_host_0 fleet_host_1 fleet_host_2',
                           fleet_lists_port: '11390'},
               return(status, text) { out.status = status; out.body = JSON.parse(text); },
               internalRedirect(to) { out.to = to; }};
    fleet.inference(r);
    return out;
}
const steps = JSON.parse(process.argv[2]);
const seen = [];
(async () => {
    for (const step of steps) {
        now = step.at;
        Object.assign(answers, step.answers || {});
        if (step.poll) { await fleet.poll(); }
        const gates = {};
        ['fleet_host_0', 'fleet_host_1', 'fleet_host_2'].forEach((g) => {
            gates[g] = fleet.gateOut({variables: {fleet_gate: g}}); });
        const view = {};
        fleet.rotation({headersOut: {},
                        return(status, text) { Object.assign(view, JSON.parse(text)); }});
        seen.push({gates: gates, view: view,
                   route: step.route ? request('/api/chat', '{"model": "llama3.2:1b"}',
                                               step.route) : null});
    }
    console.log(JSON.stringify({seen: seen, logged: ngx.logged}));
})();
"""


def verdict(at: float, state: str = "ok", instances: tuple[str, ...] = ("ok",), **more) -> str:
    return json.dumps({"version": 1, "host": "h", "checked_at": at, "state": state,
                       "kind": more.get("kind", ""), "reason": more.get("reason", ""),
                       "since": None, "action": "",
                       "instances": [{"name": f"ollama-{n}", "port": 11434 + n, "gpus": [str(n)],
                                      "state": s, "kind": "" if s == "ok" else "hang",
                                      "reason": "" if s == "ok" else "no answer in 1 s",
                                      "since": None if s == "ok" else at, "action": ""}
                                     for n, s in enumerate(instances)]})


def rotation(tmp_path, steps: list[dict], out=None) -> dict:
    return run_node(node_files(tmp_path, ROTATION_RUNNER, out), json.dumps(steps))


def states(run: dict, host: str = "gpu-1") -> list[str]:
    return [s["view"]["hosts"][host]["state"] for s in run["seen"]]


T = 1765000000


@needs_node
def test_a_bad_verdict_evicts_at_once_and_three_good_polls_bring_the_host_back(tmp_path):
    bad = verdict(T, "out", kind="xid79", reason="NVRM: Xid (PCI:0000:3b:00): 79, GPU has "
                                                 "fallen off the bus.")
    run = rotation(tmp_path, [
        {"at": T, "poll": True, "answers": {h: [200, verdict(T)] for h in
                                            ("fleet_host_0", "fleet_host_1", "fleet_host_2")}},
        {"at": T + 1, "poll": True, "answers": {"fleet_host_0": [200, bad]}},
        *({"at": T + 2 + n, "poll": True, "answers": {"fleet_host_0": [200, verdict(T + 2 + n)]}}
          for n in range(3))])
    assert states(run) == ["in", "evicted", "evicted", "evicted", "in"]
    evicted = run["seen"][1]["view"]["hosts"]["gpu-1"]
    assert evicted == {"state": "evicted", "cause": "", "since": T + 1, "verdict_at": T,
                       "reason": "xid79: NVRM: Xid (PCI:0000:3b:00): 79, GPU has fallen off "
                                 "the bus.",
                       "instances": {"ollama-0": {"state": "in", "reason": "", "since": None}}}
    # its gate refuses it (the route's next host gets the request); the others pass
    gates = run["seen"][1]["gates"]
    assert json.loads(gates["fleet_host_0"]) == {"error": "gpu-1 is out of rotation at this "
                                                 "front door: evicted (" + evicted["reason"] + ")"}
    assert gates["fleet_host_1"] == gates["fleet_host_2"] == ""
    assert run["seen"][4]["gates"]["fleet_host_0"] == ""
    assert run["logged"] == ["fleet rotation: gpu-1 evicted: " + evicted["reason"],
                             "fleet rotation: gpu-1 in"]


@needs_node
def test_a_host_with_no_instance_ok_is_evicted_and_its_instances_are_shown(tmp_path):
    run = rotation(tmp_path, [{"at": T, "poll": True, "answers": {
        "fleet_host_0": [200, verdict(T, instances=("out", "ok"))],
        "fleet_host_1": [200, verdict(T, instances=("out",))]}}])
    hosts = run["seen"][0]["view"]["hosts"]
    assert hosts["gpu-1"]["state"] == "in"  # one instance out: the host's nginx skips it
    assert hosts["gpu-1"]["instances"]["ollama-0"] == {"state": "evicted",
                                                       "reason": "hang: no answer in 1 s",
                                                       "since": T}
    assert hosts["gpu-2"]["state"] == "evicted"
    assert hosts["gpu-2"]["reason"] == "no instance is ok (ollama-0: hang: no answer in 1 s)"


@needs_node
def test_a_host_that_does_not_answer_twice_in_a_row_is_unreachable(tmp_path):
    good = {"fleet_host_0": [200, verdict(T)]}
    run = rotation(tmp_path, [
        {"at": T, "poll": True, "answers": good},
        {"at": T + 1, "poll": True, "answers": {"fleet_host_0": [599, "refused, reset or closed"]}},
        {"at": T + 2, "poll": True},
        {"at": T + 3, "poll": True, "answers": {"fleet_host_0": [200, verdict(T + 3)]}},
        {"at": T + 4, "poll": True, "answers": {"fleet_host_0": [599, "no answer"]}},
        {"at": T + 5, "poll": True, "answers": {"fleet_host_0": [200, verdict(T + 5)]}},
        {"at": T + 6, "poll": True, "answers": {"fleet_host_0": [200, verdict(T + 6)]}},
        {"at": T + 7, "poll": True, "answers": {"fleet_host_0": [200, verdict(T + 7)]}}])
    # one failed poll is not enough; a failure among the good ones starts the count again
    assert states(run) == ["in", "in", "unreachable", "unreachable", "unreachable",
                           "unreachable", "unreachable", "in"]
    gone = run["seen"][2]["view"]["hosts"]["gpu-1"]
    assert (gone["since"], gone["reason"]) == (T + 2, "no answer to 2 polls in a row: "
                                                      "refused, reset or closed")


@needs_node
def test_a_silent_agent_keeps_its_host_in_flagged(tmp_path):
    stale = verdict(T, "out", kind="xid79", reason="old news")
    odd = json.dumps({**json.loads(verdict(T + 11)), "state": "degraded"})
    run = rotation(tmp_path, [
        {"at": T + 11, "poll": True, "answers": {"fleet_host_0": [200, stale],
                                                 "fleet_host_1": [404, "not found"],
                                                 "fleet_host_2": [200, verdict(T)]}},
        {"at": T + 12, "poll": True, "answers": {"fleet_host_2": [200, verdict(T + 12)],
                                                 "fleet_host_1": [200, odd]}},
        *({"at": T + 13 + n, "poll": True} for n in range(11))])
    first = run["seen"][0]["view"]["hosts"]
    assert (first["gpu-1"]["state"], first["gpu-1"]["reason"]) == (
        "in", "agent silent: its verdict was last renewed 11 s ago")
    assert (first["gpu-2"]["state"], first["gpu-2"]["reason"]) == (
        "in", "agent silent: no verdict (HTTP 404 from its nginx)")
    assert first["gpu-2"]["verdict_at"] is None
    # a verdict it cannot read takes no host out either
    assert run["seen"][1]["view"]["hosts"]["gpu-2"]["reason"] == (
        "agent silent: its verdict has no state ok or out and list of instances")
    # cpu-1's verdict, renewed at T+12 and then no more, counts as silent 10 s after that
    # (the host's own clock is not compared with this one's)
    last = [s["view"]["hosts"]["cpu-1"]["reason"] for s in run["seen"]]
    assert last[1:12] == [""] * 11 and last[12] == "agent silent: its verdict was last " \
                                                  "renewed 11 s ago"
    assert all(s["gates"] == {g: "" for g in s["gates"]} for s in run["seen"])


@needs_node
def test_drained_and_held_hosts_show_why_and_a_route_with_no_host_in_answers_503(tmp_path):
    bad = verdict(T, "out", kind="fm-down", reason="nvidia-fabricmanager is inactive")
    run = rotation(tmp_path, [
        {"at": T, "poll": True, "route": "fleet_route_0",
         "answers": {"fleet_host_0": [200, verdict(T)], "fleet_host_1": [200, bad],
                     "fleet_host_2": [200, verdict(T)]}},
        {"at": T + 1, "poll": True, "route": "fleet_route_0",
         "answers": {"fleet_host_0": [200, bad]}}],
        out=[Held("gpu-2", "roll", T - 60), Held("cpu-1", "drain", T - 30)])
    hosts = run["seen"][0]["view"]["hosts"]
    assert {h: (v["state"], v["cause"], v["since"]) for h, v in hosts.items()} == {
        "gpu-1": ("in", "", None), "gpu-2": ("held", "roll", T - 60),
        "cpu-1": ("drained", "drain", T - 30)}
    assert hosts["gpu-2"]["reason"] == "fm-down: nvidia-fabricmanager is inactive"
    assert run["seen"][0]["view"]["front_door"] == "lb-1"
    assert run["seen"][0]["route"] == {"to": "@fleet_route"}
    assert run["seen"][1]["route"] == {"status": 503, "body": {"error": (
        'no host that serves model "llama3.2:1b" is in rotation at this front door (gpu-1: '
        "evicted (fm-down: nvidia-fabricmanager is inactive); gpu-2: held out by a roll)")}}


@needs_node
def test_the_merged_lists_leave_out_hosts_out_of_rotation(tmp_path):
    last = "console.log(JSON.stringify({seen: seen, logged: ngx.logged}));"
    runner = ROTATION_RUNNER.replace(last, """
        const asked = [];
        ngx.fetch = (url) => { asked.push(url.split('/')[3]);
            return Promise.resolve({status: 200, json: () => Promise.resolve({models: []})}); };
        const r = {uri: '/api/tags', method: 'GET', headersOut: {},
                   variables: {fleet_members: 'fleet_host_0 fleet_host_1',
                               fleet_lists_port: '11390'},
                   return() {}};
        fleet.inference(r);
        console.log(JSON.stringify(asked));""")
    steps = [{"at": T, "poll": True, "answers": {"fleet_host_0": [200, verdict(T, "out")],
                                                 "fleet_host_1": [200, verdict(T)]}}]
    assert run_node(node_files(tmp_path, runner), json.dumps(steps)) == ["fleet_host_1"]
