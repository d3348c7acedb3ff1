"""The gate's inputs and renders: keys parsed strictly, secrets read where the operator
keeps them, both nginx configs carrying the same gate, bad gate knobs one line each."""

from __future__ import annotations

import pytest
from pyinfra.api import OperationError

from ollama_fleet.tasks.kit.fleet import Fleet, build
from ollama_fleet.tasks.kit.settings import SecretRef, SettingsError, settings_for, validate_fleet
from ollama_fleet.tasks.steps import gate
from ollama_fleet.tasks.steps.front_door import Upstream, front_door_files
from ollama_fleet.tasks.steps.stack import plan_instances, stack_files

KEY_A, KEY_B = "a" * 20, "B-b.b_b~b+b/b=b0123"

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


@pytest.mark.parametrize("text, problem", [
    ("", "no keys (an empty key list would lock everyone out)"),
    ("short", "entry 1 (key-1): a key is 16 to 256 of"),
    (f"a b {KEY_A}", "entry 1: expected `[name] key`"),
    (f"al!ce {KEY_A}", "entry 1: name 'al!ce' is not"),
    (f"{KEY_A}\n{KEY_A}", "entry 2 (key-2): the same key is listed twice"),
    ('bad"key-0123456789abcdef', "entry 1 (key-1): a key is 16 to 256 of"),
])
def test_bad_keys_fail_naming_the_knob_and_entry(text, problem):
    with pytest.raises(OperationError) as exc:
        gate.parse_keys("nginx_api_keys", text)
    assert str(exc.value).startswith(f"nginx_api_keys: {problem}")


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
    assert files["nginx/api-keys.map"] == f'"Bearer {KEY_A}" "alice";\n'
    assert secret == {"nginx/api-keys.map", "nginx/tls/key.pem"}
    (tmp_path / "key.pem").write_text("not pem")
    with pytest.raises(OperationError, match="nginx_tls_key: .*: not a PEM file"):
        gate.gate_files(settings)


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
        assert "limit_req_zone $api_rate_key zone=api:10m rate=5r/s;" in conf
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
    assert "limit_conn_zone $api_conn_key zone=conn:10m;" in conf
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
    assert "map $api_credential $api_client {" in conf and \
        "map $api_credential $api_admin {" in conf
    assert "map $http_authorization $api_client" not in conf


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
