"""The gate's inputs and renders: keys parsed strictly, secrets read where the operator
keeps them, both nginx configs carrying the same gate, bad gate knobs one line each."""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pyinfra.api import OperationError

from ollama_fleet.tasks.kit.compose import holds_private_key
from ollama_fleet.tasks.kit.fleet import Fleet, build
from ollama_fleet.tasks.kit.paths import TEMPLATES
from ollama_fleet.tasks.kit.settings import SecretRef, SettingsError, settings_for, validate_fleet
from ollama_fleet.tasks.steps import gate
from ollama_fleet.tasks.steps.front_door import Upstream, front_door_files
from ollama_fleet.tasks.steps.stack import plan_instances, stack_files

NODE_BIN = shutil.which("node")
KEY_A, KEY_B = "0123456789abcdef" * 2, "B-b.b_b~b+b/0123456789XYZxyzQRS=="

BAD_GATE_DATA = [
    ({"nginx_tls": "files"}, "lb-1: nginx_tls: 'files' needs nginx_tls_cert and nginx_tls_key"),
    ({"nginx_tls_cert": "/x.pem"}, "lb-1: nginx_tls_cert: set, but nginx_tls is not 'files'"),
    ({"nginx_tls": "self_signed", "nginx_tls_port": 80},
     "lb-1: nginx_tls_port: 80 is also nginx_port"),
    ({"nginx_rate_limit": "ten"}, "lb-1: nginx_rate_limit: 'ten' is not a rate like 10r/s or "
                                  "600r/m"),
    ({"nginx_max_body": "huge"}, "lb-1: nginx_max_body: 'huge' is not a size like 100m"),
    ({"nginx_api_keys": {"file": "k", "env": "K"}},
     "lb-1: nginx_api_keys: give exactly one of `file` or `env`"),
    ({"ollama_fanout_rate": "fast"},
     "lb-1: ollama_fanout_rate: 'fast' is not a rate like 100m (bytes per second)"),
    ({"ollama_fanout_allow": ["10.0.0.0/33"]},
     "lb-1: ollama_fanout_allow: '10.0.0.0/33' is not a network like 10.0.0.0/24"),
    ({"ollama_fanout_port": 11434}, "lb-1: ollama_fanout_port: 11434 is also nginx's or an "
                                    "Ollama instance's port"),
]


@pytest.mark.parametrize("data, line", BAD_GATE_DATA,
                         ids=[d[1].split(": ")[1] for d in BAD_GATE_DATA])
def test_bad_gate_data_is_one_line(data, line):
    with pytest.raises(SettingsError) as exc:
        settings_for("lb-1", data)
    assert exc.value.problems == [line]


def test_tls_on_gpu_servers_behind_a_front_door_is_refused():
    with pytest.raises(SettingsError) as exc:
        validate_fleet({"gpu-1": {"gpu_count": 1, "nginx_tls": "self_signed"},
                        "lb-1": {"ssh_hostname": "10.0.0.9"}}, ["gpu-1"], ["lb-1"])
    assert exc.value.problems == ["gpu-1: nginx_tls: the front door (lb_servers) talks plain "
                                  "HTTP to gpu_servers' nginx; put TLS on the front door"]


def test_keys_on_gpu_servers_behind_a_front_door_reached_by_name_are_refused(tmp_path):
    """The front door drops the key and names the client in a header the host takes from
    the front doors' addresses only: a front door known by name would get 401 for all."""
    (tmp_path / "keys").write_text(f"alice {KEY_A}\n")
    gpu = {"gpu_count": 1, "ssh_hostname": "10.0.0.1", "nginx_allow": ["10.0.0.0/24"],
           "nginx_api_keys": {"file": str(tmp_path / "keys")}}
    with pytest.raises(SettingsError) as exc:
        validate_fleet({"gpu-1": gpu, "lb-1": {}}, ["gpu-1"], ["lb-1"])
    assert exc.value.problems == [
        "gpu-1: nginx_api_keys: the front doors ['lb-1'] are reached by name; this host takes "
        "the client's name (no key) only from a front door's address: give their addresses "
        "(ssh_hostname)"]
    validate_fleet({"gpu-1": gpu, "lb-1": {"ssh_hostname": "10.0.0.9"}}, ["gpu-1"], ["lb-1"])


def test_peers_reached_by_name_need_networks_to_copy_models():
    hosts = {"gpu-a": {"gpu_count": 1, "ssh_hostname": "10.0.0.5"}, "gpu-b": {"gpu_count": 1}}
    with pytest.raises(SettingsError) as exc:
        validate_fleet(hosts, ["gpu-a", "gpu-b"])
    problem = "gpu-a: ollama_fanout_allow: peers ['gpu-b'] are reached by name"
    assert problem in exc.value.problems[0]
    validate_fleet({n: {**d, "ollama_fanout_allow": ["10.0.0.0/24"]} for n, d in hosts.items()},
                   ["gpu-a", "gpu-b"])
    validate_fleet({n: {**d, "ollama_fanout": False} for n, d in hosts.items()},
                   ["gpu-a", "gpu-b"])


def test_keys_from_a_file_are_named_and_from_an_environment_variable_numbered():
    assert gate.parse_keys("k", f"# ops\nalice {KEY_A}\n\n{KEY_B}  # ci\n") == {
        KEY_A: "alice", KEY_B: "key-2"}
    assert gate.parse_keys("k", f"{KEY_A}, {KEY_B}", from_file=False) == {
        KEY_A: "key-1", KEY_B: "key-2"}
    # keys that differ in case only are two keys: the gate tells them apart
    assert len(gate.parse_keys("k", f"a {KEY_B}\nb {KEY_B.swapcase()}\n")) == 2


ALPHABET = "32 to 256 characters of A-Z a-z 0-9 - . _ ~ + / (then = padding)"


@pytest.mark.parametrize("text, problem", [
    ("", "no keys (an empty key list would lock everyone out)"),
    ("short-key-0123456789", f"line 1: a key is {ALPHABET}"),
    ("# keys\n\nalice " + KEY_A[:31], f"line 3: a key is {ALPHABET}"),
    ("alice " + "0123456789abcdef" * 16 + "0", f"line 1: a key is {ALPHABET}"),
    ('alice bad"key-0123456789abcdef0123456789', f"line 1: a key is {ALPHABET}"),
    ("alice 0123456789abcdef=0123456789abcdef", f"line 1: a key is {ALPHABET}"),
    ("alice " + "a" * 32, "line 1: the key has fewer than 6 different characters"),
    ("alice " + "ab12" * 10, "line 1: the key has fewer than 6 different characters"),
    (f"a b {KEY_A}", "line 1: expected `[name] key` (one or two columns)"),
    (f"al!ce {KEY_A}", "line 1: a name is 1 to 31 of A-Z a-z 0-9 . _ -"),
    (f"{KEY_A} alice", "line 1: the first column is as long as a key: a line is `name key`"),
    (f"{KEY_A} {KEY_B}", "line 1: the first column is as long as a key"),
    (f"{KEY_A}\n\n{KEY_A}", "line 3: the same key as line 1"),
    (f"alice {KEY_A}\nAlice {KEY_B}", "line 2: the same name as line 1"),
    (f"key-2 {KEY_A}\n{KEY_B}", "line 2: the same name as line 1"),
])
def test_bad_keys_fail_naming_the_knob_and_line_and_never_the_entry(text, problem):
    with pytest.raises(OperationError) as exc:
        gate.parse_keys("nginx_api_keys", text)
    message = str(exc.value)
    assert message.startswith(f"nginx_api_keys: {problem}"), message
    # an error is shown on terminals and in CI logs: nothing of what the entries hold
    for word in text.replace("#", " ").split():
        if word not in ("keys", "a", "b"):
            assert word not in message, word


def test_an_environment_variables_keys_are_named_by_entry():
    with pytest.raises(OperationError) as exc:
        gate.parse_keys("nginx_admin_keys", f"{KEY_A}, not-a-key", from_file=False)
    assert str(exc.value) == f"nginx_admin_keys: entry 2: a key is {ALPHABET}"


def test_the_maps_hold_digests_and_names_never_a_key():
    text = gate.key_map({KEY_A: "alice", KEY_B: "bob"})
    assert text == "".join(sorted(f'"{hashlib.sha256(k.encode()).hexdigest()}" "{n}";\n'
                                  for k, n in ((KEY_A, "alice"), (KEY_B, "bob"))))
    assert KEY_A not in text and KEY_B not in text


def test_secrets_come_from_the_operators_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEET_KEYS", KEY_A)
    assert gate.read_secret("k", SecretRef(env="FLEET_KEYS")) == KEY_A
    with pytest.raises(OperationError, match="k: environment variable NOPE is not set"):
        gate.read_secret("k", SecretRef(env="NOPE"))
    with pytest.raises(OperationError, match=r"k: .*missing: No such file"):
        gate.read_secret("k", SecretRef(file=str(tmp_path / "missing")))


def test_gate_files_are_maps_and_pem_with_the_keys_secret(tmp_path):
    (tmp_path / "keys").write_text(f"alice {KEY_A}\n")
    (tmp_path / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\nx\n")
    (tmp_path / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\nx\n")
    settings = settings_for("lb-1", {
        "nginx_api_keys": {"file": str(tmp_path / "keys")}, "nginx_tls": "files",
        "nginx_tls_cert": str(tmp_path / "cert.pem"), "nginx_tls_key": str(tmp_path / "key.pem")})
    files, secret = gate.gate_files(settings)
    assert files["nginx/api-keys.map"] == gate.key_map({KEY_A: "alice"})
    assert files["nginx/gate.js"] == (TEMPLATES / "nginx" / "gate.js").read_text()
    assert secret == {"nginx/api-keys.map", "nginx/tls/key.pem"}
    (tmp_path / "key.pem").write_text("not pem")
    with pytest.raises(OperationError, match="nginx_tls_key: .*: not a PEM file"):
        gate.gate_files(settings)


@pytest.mark.parametrize("kind", ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY",
                                  "ENCRYPTED PRIVATE KEY"])
def test_a_certificate_file_holding_its_private_key_is_a_secret_whatever_the_knob(tmp_path,
                                                                                   kind):
    """Secrets by content, not by name: a PEM with the certificate and its key together,
    given as nginx_tls_cert, is written mode 600 and never shown (compose.checked_files
    treats any file with a private key so too: tests/unit/cases/checked_files_*)."""
    both = (f"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
            f"-----BEGIN {kind}-----\nMIIE\n-----END {kind}-----\n")
    (tmp_path / "both.pem").write_text(both)
    settings = settings_for("lb-1", {"nginx_tls": "files",
                                     "nginx_tls_cert": str(tmp_path / "both.pem"),
                                     "nginx_tls_key": str(tmp_path / "both.pem")})
    files, secret = gate.gate_files(settings)
    assert secret == {"nginx/tls/cert.pem", "nginx/tls/key.pem"}
    assert holds_private_key(both) and not holds_private_key(both.split("-----BEGIN " + kind)[0])


def test_front_door_and_host_nginx_carry_the_same_gate(tmp_path):
    (tmp_path / "keys").write_text(f"alice {KEY_A}\n")
    data = {"nginx_api_keys": {"file": str(tmp_path / "keys")}, "nginx_rate_limit": "5r/s",
            "nginx_max_body": "1m"}
    front = front_door_files(settings_for("lb-1", data), [Upstream("gpu-1", "10.0.0.1", 80,
                                                                   False)])["nginx/front.conf"]
    gpu = settings_for("gpu-1", {"gpu_count": 1, **data})
    host = stack_files(gpu, plan_instances(gpu, [{"index": 0, "uuid": "GPU-0"}]), Fleet())
    for conf in (front, host["nginx/ollama.conf"]):
        assert "include /etc/nginx/conf.d/api-keys.map;" in conf
        # keys are looked up by their digest (gate.js), letter case and all
        assert "js_import gate from /etc/nginx/conf.d/gate.js;\n" \
            "js_set $api_key_digest gate.keyDigest;\nmap $api_key_digest $api_client {" in conf
        assert "map $api_key_digest $api_admin {" in conf
        assert "access_log /var/log/nginx/access.log ollama_fleet;" in conf
        assert "limit_req_zone $api_limit_key zone=api:10m rate=5r/s;" in conf
        assert "client_max_body_size 1m;" in conf
        assert "location ~ ^/(api/(generate|chat|embed|embeddings|tags|show|ps|version|status)|" \
            "v1/(chat/completions|completions|embeddings|models(/.*)?|responses|messages|" \
            "audio/transcriptions))$ {" in conf
        assert "server_tokens off;" in conf
        # the verdicts come from the access phase, after the limits: inference and `/`
        # ask /__gate, the admin catch-all /__gate_admin; wrong keys count per address
        assert conf.count("auth_request /__gate;") == 2
        assert conf.count("auth_request /__gate_admin;") == 1
        assert conf.count("limit_req zone=guess burst=10 nodelay;") == 3
        assert conf.count("if ($api_unauthorized)") == 2  # in /__gate and /__gate_admin
        assert "client_header_timeout 10s;" in conf and "client_body_timeout 30s;" in conf
        health = conf.split("location = /health {")[1].split("}")[0]
        assert "return 200" in health and "api_" not in health
    assert "nginx/api-keys.map" not in host  # the stack renders only the stack's files
    assert "nginx/api-keys.map" in gate.gate_files(gpu)[0]  # installed beside it, by the gate
    # the host's nginx loads its JavaScript module where its gate checks keys, and only there
    assert host["nginx.conf"].startswith("# Copied by the deploy") and \
        "load_module /usr/lib/nginx/modules/ngx_http_js_module.so;" in host["nginx.conf"]
    assert "- ./nginx.conf:/etc/nginx/nginx.conf:ro" in host["compose.yaml"]
    bare = settings_for("gpu-1", {"gpu_count": 1})
    plain = stack_files(bare, plan_instances(bare, [{"index": 0, "uuid": "GPU-0"}]), Fleet())
    assert "nginx.conf" not in plain and "nginx.conf:" not in plain["compose.yaml"]
    assert "js_" not in plain["nginx/ollama.conf"]


def test_without_keys_there_is_no_key_check_but_admin_endpoints_stay_closed():
    conf = front_door_files(settings_for("lb-1", {}), [Upstream("gpu-1", "10.0.0.1", 80,
                                                                False)])["nginx/front.conf"]
    assert "$api_unauthorized" not in conf
    assert conf.count("limit_req zone=guess") == 1  # the admin endpoints only
    assert "auth_request /__gate;" not in conf and "limit_conn" not in conf.replace(
        "limit_conn_status", "")
    assert "auth_request /__gate_admin;" in conf and "if ($api_admin_refused)" in conf
    assert "listen 80;" in conf


def test_requests_at_once_per_key_are_limited_when_asked():
    conf = front_door_files(settings_for("lb-1", {"nginx_conn_limit": 8}),
                            [Upstream("gpu-1", "10.0.0.1", 80, False)])["nginx/front.conf"]
    assert "limit_conn_zone $api_limit_key zone=conn:10m;  # requests at once" in conf
    assert conf.count("limit_conn conn 8;") == 3  # inference, `/`, admin


def test_tls_listens_on_its_port_and_plain_http_redirects_or_is_closed():
    servers = [Upstream("gpu-1", "10.0.0.1", 80, False)]
    conf = front_door_files(settings_for("lb-1", {"nginx_tls": "self_signed"}),
                            servers)["nginx/front.conf"]
    assert "listen 443 ssl;" in conf and "return 308 https://$host$request_uri;" in conf
    refuse = front_door_files(settings_for("lb-1", {"nginx_tls": "self_signed",
                                                     "nginx_http": "refuse"}),
                              servers)["nginx/front.conf"]
    assert "listen 443 ssl;" in refuse and "listen 80" not in refuse


def test_containers_are_hardened_and_read_only_can_be_turned_off():
    gpu = settings_for("gpu-1", {"gpu_count": 1})
    compose = stack_files(gpu, plan_instances(gpu, [{"index": 0, "uuid": "GPU-0"}]), Fleet())[
        "compose.yaml"]
    assert compose.count("cap_drop: [ALL]") == 2 and compose.count("read_only: true") == 2
    assert "cap_add: [CHOWN, SETUID, SETGID, NET_BIND_SERVICE, DAC_OVERRIDE]" in compose
    writable = settings_for("gpu-1", {"gpu_count": 1, "ollama_read_only": False})
    compose = stack_files(writable, plan_instances(writable, [{"index": 0, "uuid": "GPU-0"}]),
                          Fleet())["compose.yaml"]
    assert "read_only" not in compose and compose.count("cap_drop: [ALL]") == 2


def test_an_allow_list_closes_the_api_but_not_health():
    gpu = settings_for("gpu-1", {"gpu_count": 1, "nginx_allow": ["10.9.0.0/16"]})
    conf = stack_files(gpu, plan_instances(gpu, [{"index": 0, "uuid": "GPU-0"}]), Fleet())[
        "nginx/ollama.conf"]
    api = conf.split("location / {")[1]
    assert "allow 127.0.0.1;" in api and "allow 10.9.0.0/16;" in api and "deny all;" in api
    assert "deny" not in conf.split("location = /health {")[1].split("}")[0]
    with pytest.raises(SettingsError, match="nginx_allow: 'everyone' is not a network"):
        settings_for("gpu-1", {"nginx_allow": ["everyone"]})


def test_behind_a_front_door_only_it_may_call_unless_the_operator_widens_it():
    fleet = build([("gpu-1", ["gpu_servers"], {"gpu_count": 1, "ssh_hostname": "10.0.0.1"}),
                   ("lb-1", ["lb_servers"], {"ssh_hostname": "10.0.0.9"})])

    def api(data: dict, fleet: Fleet = fleet) -> str:
        gpu = settings_for("gpu-1", {"gpu_count": 1, **data})
        conf = stack_files(gpu, plan_instances(gpu, [{"index": 0, "uuid": "GPU-0"}]), fleet)[
            "nginx/ollama.conf"]
        return conf.split("location / {")[1].split("}")[0]

    closed = api({})
    assert "allow 127.0.0.1;" in closed and "allow 10.0.0.9;" in closed \
        and "deny all;" in closed
    assert "deny all;" not in api({"nginx_allow": []})  # everyone, said on purpose
    wider = api({"nginx_allow": ["10.9.0.0/16"]})
    assert "allow 10.0.0.9;" in wider and "allow 10.9.0.0/16;" in wider
    assert "deny all;" not in api({}, Fleet())  # no front door: everyone, as before


def test_the_hosts_app_services_need_no_key_but_no_admin_either(tmp_path):
    (tmp_path / "keys").write_text(f"alice {KEY_A}\n")
    data = {"gpu_count": 1, "nginx_allow": ["10.9.0.0/16"],
            "nginx_api_keys": {"file": str(tmp_path / "keys")}}
    bare = settings_for("gpu-1", data)
    conf = stack_files(bare, plan_instances(bare, [{"index": 0, "uuid": "GPU-0"}]), Fleet())[
        "nginx/ollama.conf"]
    assert "172.31.254.0/24" not in conf  # no app services: nothing more is trusted
    gpu = settings_for("gpu-1", {**data, "app_network": "10.77.0.0/24",
                                 "app_services": {"app": {"image": "acme/app:1"}}})
    conf = stack_files(gpu, plan_instances(gpu, [{"index": 0, "uuid": "GPU-0"}]), Fleet())[
        "nginx/ollama.conf"]
    geo = conf.split("geo $api_local {")[1].split("}")[0]
    assert "10.77.0.0/24 2;" in geo
    assert '"~^[12]:" 0;' in conf.split("$api_unauthorized {")[1].split("}")[0]
    assert '"~^[02]:$" 1;' in conf.split("$api_admin_refused {")[1].split("}")[0]
    api = conf.split("location / {")[1]
    assert "allow 10.77.0.0/24;" in api.split("deny all;")[0]
    for bad in ("10.77.0.1/24", "8.8.8.0/24", "10.77.0.0/30", "fd00::/64"):
        with pytest.raises(SettingsError, match="gpu-1: app_network: "):
            settings_for("gpu-1", {"gpu_count": 1, "app_network": bad})


def test_a_key_is_read_from_authorization_or_anthropics_x_api_key():
    conf = front_door_files(settings_for("lb-1", {}), [Upstream("gpu-1", "10.0.0.1", 80,
                                                                False)])["nginx/front.conf"]
    assert 'map $http_x_api_key $api_x_api_key {\n    default "Bearer $http_x_api_key";\n' \
        '    "" "";\n}' in conf
    assert "map $http_authorization $api_credential {\n    default $http_authorization;\n" \
        '    "" $api_x_api_key;\n}' in conf
    # without keys there is nothing to look up (and no gate.js)
    assert "map $api_credential $api_client {\n    default \"\";\n}" in conf and \
        "map $api_credential $api_admin {" in conf and "gate.js" not in conf
    assert "map $http_authorization $api_client" not in conf


def test_gate_js_digests_the_bearer_key_as_the_maps_do(tmp_path):
    """templates/nginx/gate.js run by Node with njs's crypto module's stand-in (Node's own):
    the digest of a key is the one key_map writes, whatever the scheme's case; anything
    but one bearer key of at most 256 characters has none."""
    if NODE_BIN is None:
        pytest.skip("node is not installed")
    (tmp_path / "gate.mjs").write_text((TEMPLATES / "nginx" / "gate.js").read_text())
    credentials = [f"Bearer {KEY_A}", f"bearer {KEY_A}", f"BEARER  {KEY_B}", "",
                   f"Basic {KEY_A}", f"Bearer {KEY_A} {KEY_B}", "Bearer " + "a" * 257,
                   f"Bearer {KEY_A.upper()}"]
    (tmp_path / "run.mjs").write_text(
        "import gate from './gate.mjs';\n"
        f"const credentials = {json.dumps(credentials)};\n"
        "console.log(JSON.stringify(credentials.map((c) => gate.keyDigest("
        "{variables: {api_credential: c}}))));\n")
    proc = subprocess.run([NODE_BIN, str(tmp_path / "run.mjs")], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    digest = gate.key_digest
    assert json.loads(proc.stdout) == [digest(KEY_A), digest(KEY_A), digest(KEY_B), "", "",
                                       "", "", digest(KEY_A.upper())]
    assert digest(KEY_A.upper()) != digest(KEY_A)


def test_the_hosts_nginx_refuses_web_search_to_everyone_unless_the_cloud_is_allowed():
    """Defence in depth behind the front door: the GPU host's own nginx answers Ollama's web
    endpoints itself (it reads no body: cloud model names are its Ollama's to refuse, with
    OLLAMA_NO_CLOUD)."""
    def web(data: dict) -> str:
        gpu = settings_for("gpu-1", {"gpu_count": 1, **data})
        conf = stack_files(gpu, plan_instances(gpu, [{"index": 0, "uuid": "GPU-0"}]),
                           Fleet())["nginx/ollama.conf"]
        return conf.split("location ~ ^/api/experimental/web_(search|fetch)$ {")[1].split(
            "\n    }")[0]

    off = web({})
    assert "return 403 '{\"error\":\"ollama_allow_cloud is off for this fleet: web search " \
        "and fetch send their queries to ollama.com\"}';" in off
    assert "proxy_pass" not in off and "auth_request" not in off
    on = web({"ollama_allow_cloud": True})
    assert "proxy_pass http://ollama;" in on and "return 403" not in on


# -- the host's gate in a real nginx (with njs), where this machine has one ---------------

NGINX = shutil.which("nginx")
NJS = Path("/usr/lib/nginx/modules/ngx_http_js_module.so")
ALICE = "AbCdEf0123456789" * 2  # 32 characters: the shortest key there is
OPS = "Zq7-RsTu.vW_xY9+/" * 2 + "=="


class _Ollama(BaseHTTPRequestHandler):
    """Ollama as far as the gate can tell: answers /api/version, keeps each request's headers."""

    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        _Ollama.seen.append({k.lower(): v for k, v in self.headers.items()})
        body = b'{"version":"0.0.0"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:  # noqa: A002 (http.server's signature)
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def host_nginx(tmp_path_factory):
    """A GPU host's nginx as the deploy renders it (keys, admin keys, a front door), run by
    this machine's nginx: paths moved into a scratch directory, the front door played by
    127.0.0.1 (loopback's own line taken out), anyone else by 127.0.0.5 (on nginx_allow) or
    127.0.0.6, Ollama by a stand-in that keeps the headers it gets."""
    if NGINX is None or not NJS.exists():
        pytest.skip("no nginx with its JavaScript module on this machine")
    root = tmp_path_factory.mktemp("host-nginx")
    (root / "keys").write_text(f"# name key\nalice {ALICE}\n")
    (root / "admin").write_text(f"ops {OPS}\n")
    fleet = build([("gpu-1", ["gpu_servers"], {"gpu_count": 1, "ssh_hostname": "10.0.0.1"}),
                   ("lb-1", ["lb_servers"], {"ssh_hostname": "10.0.0.9"})])
    gpu = settings_for("gpu-1", {"gpu_count": 1, "nginx_allow": ["127.0.0.5"],
                                 "ollama_fanout": False,
                                 "nginx_api_keys": {"file": str(root / "keys")},
                                 "nginx_admin_keys": {"file": str(root / "admin")}})
    ollama = ThreadingHTTPServer(("127.0.0.1", 0), _Ollama)
    threading.Thread(target=ollama.serve_forever, daemon=True).start()
    port = _free_port()
    rendered = stack_files(gpu, plan_instances(gpu, [{"index": 0, "uuid": "GPU-0"}]), fleet) \
        | gate.gate_files(gpu)[0]
    assert "nginx.conf" in rendered  # njs loaded where the gate checks keys
    conf = root / "conf.d"
    conf.mkdir()
    for rel, text in rendered.items():
        if rel.startswith("nginx/"):
            text = (text.replace(gate.CONF_D, str(conf))
                    .replace("/run/ollama-fleet-gate", str(root))
                    .replace("/run/ollama-fleet/health", str(root / "health"))
                    .replace("/var/log/nginx/access.log", str(root / "access.log"))
                    .replace("    127.0.0.1 1;\n", "").replace("10.0.0.9", "127.0.0.1")
                    .replace("listen 80;", f"listen 127.0.0.1:{port};")
                    .replace("127.0.0.1:11434", f"127.0.0.1:{ollama.server_port}"))
            (conf / rel.removeprefix("nginx/")).write_text(text)
    (root / "nginx.conf").write_text(
        f"load_module {NJS};\nuser root;\npid {root}/nginx.pid;\n"
        f"error_log {root}/error.log notice;\n"
        "events {}\nhttp {\n    include /etc/nginx/mime.types;\n"
        f"    include {conf}/*.conf;\n}}\n")
    proc = subprocess.Popen([NGINX, "-p", str(root), "-c", str(root / "nginx.conf"),
                             "-g", "daemon off;"], stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.05)
        yield port, root / "access.log"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        ollama.shutdown()


def _get(port: int, headers: dict[str, str], source: str = "127.0.0.5",
         path: str = "/api/version") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                      source_address=(source, 0))
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_key_matches_exactly_whatever_header_carries_it(host_nginx):
    port, _ = host_nginx
    assert _get(port, {"Authorization": f"Bearer {ALICE}"}) == 200
    assert _get(port, {"Authorization": f"bearer {ALICE}"}) == 200  # the scheme has no case
    assert _get(port, {"x-api-key": ALICE}) == 200
    for wrong in (ALICE.lower(), ALICE.upper(), ALICE.swapcase(), ALICE[:-1],
                  ALICE + "0", f"{ALICE} {ALICE}"):
        assert _get(port, {"Authorization": f"Bearer {wrong}"}) == 401, wrong
        time.sleep(0.1)  # wrong keys count against this address (1 a second, burst 10)
    assert _get(port, {"x-api-key": ALICE.swapcase()}) == 401
    time.sleep(1)
    assert _get(port, {"Authorization": f"Bearer {OPS}"}, path="/api/pull") == 200  # admin
    assert _get(port, {"Authorization": f"Bearer {ALICE}"}, path="/api/pull") == 403


def test_no_key_and_no_fleet_header_reach_ollama_and_the_log_names_without_telling(host_nginx):
    port, log = host_nginx
    _Ollama.seen.clear()
    assert _get(port, {"Authorization": f"Bearer {ALICE}", "x-api-key": ALICE,
                       gate.FLEET_CLIENT_HEADER: "mallory"}) == 200
    assert _Ollama.seen, "the request did not reach Ollama"
    for header in ("authorization", "x-api-key", gate.FLEET_CLIENT_HEADER.lower()):
        assert header not in _Ollama.seen[-1], header
    time.sleep(0.2)  # the access log is written as the request ends
    line = log.read_text().splitlines()[-1]
    assert line.startswith("127.0.0.5 - alice [") and line.endswith(" credential=sent"), line
    assert ALICE not in log.read_text() and "mallory" not in log.read_text()


def test_only_a_front_door_names_the_client_and_others_are_refused_or_need_a_key(host_nginx):
    port, log = host_nginx
    # the front door: no key (it kept it), the client by name
    assert _get(port, {gate.FLEET_CLIENT_HEADER: "alice"}, source="127.0.0.1") == 200
    time.sleep(0.2)
    line = log.read_text().splitlines()[-1]
    assert line.startswith("127.0.0.1 - alice [") and line.endswith(" credential=-"), line
    # on nginx_allow, but no front door: the header vouches for nothing
    assert _get(port, {gate.FLEET_CLIENT_HEADER: "alice"}) == 401
    # anywhere else: refused before any key is asked
    assert _get(port, {"Authorization": f"Bearer {ALICE}"}, source="127.0.0.6") == 403


def test_a_hosts_limits_count_a_front_doors_clients_by_name():
    """Behind a front door a host sees no key: its own limits (when set) count the client
    the front door named; loopback and the front door's unnamed requests are not counted."""
    fleet = build([("gpu-1", ["gpu_servers"], {"gpu_count": 1, "ssh_hostname": "10.0.0.1"}),
                   ("lb-1", ["lb_servers"], {"ssh_hostname": "10.0.0.9"})])
    gpu = settings_for("gpu-1", {"gpu_count": 1, "nginx_rate_limit": "5r/s",
                                 "nginx_conn_limit": 4})
    conf = stack_files(gpu, plan_instances(gpu, [{"index": 0, "uuid": "GPU-0"}]), fleet)[
        "nginx/ollama.conf"]
    assert 'map "$api_local$api_front_door:$api_name" $api_limit_key {\n' \
        '    "~^11:(?<who>.+)$" $who;\n    "~^1" "";\n' in conf
    assert "geo $api_front_door {\n    default 0;\n    10.0.0.9 1;\n}" in conf
    assert "limit_conn_zone $api_limit_key zone=conn:10m;" in conf
