"""Knob declarations: validation names host, key and problem; the README table matches."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ollama_fleet.tasks.kit.settings import (
    KNOBS,
    SettingsError,
    knob_table,
    nginx_seconds,
    settings_for,
    validate_fleet,
)

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))

# (data for host gpu-1, the one line expected). Shared with the lab test of bad inventories.
BAD_DATA = [
    ({"gpu_count": 2, "ollama_modles": ["tinyllama"]},
     "gpu-1: ollama_modles: unknown setting (did you mean ollama_models?)"),
    ({"gpu_count": "two"},
     "gpu-1: gpu_count: Input should be a valid integer, unable to parse string as an "
     "integer (got 'two')"),
    ({"gpu_count": 2, "ollama_topology": "mesh"},
     "gpu-1: ollama_topology: Input should be 'per_gpu', 'shared' or 'cpu' (got 'mesh')"),
    ({"gpu_count": 2, "ollama_gpus": [0, 2]},
     "gpu-1: ollama_gpus: GPU 2 does not exist (the host has 2: 0..1)"),
    ({"gpu_count": 2, "nginx_port": 11435},
     "gpu-1: nginx_port: 11435 is also an Ollama instance's port"),
    ({"gpu_count": 0, "ollama_topology": "per_gpu"},
     "gpu-1: ollama_topology: 'per_gpu' needs GPUs but gpu_count is 0"),
    ({"gpu_count": 2, "ollama_image": "ollama/ollama"},
     "gpu-1: ollama_image: 'ollama/ollama' is not an image pinned by tag (name:tag)"),
    ({"gpu_count": 2, "nvidia_driver_branch": 535},
     "gpu-1: nvidia_driver_branch: Input should be greater than or equal to 550 (got 535)"),
    ({"gpu_count": 2, "docker_registry_mirrors": "http://mirror:5000"},
     "gpu-1: docker_registry_mirrors: Input should be a valid list (got 'http://mirror:5000')"),
    ({"gpu_count": 2, "ollama_environment": {"OLLAMA_PORT": "11500"}},
     "gpu-1: ollama_environment: OLLAMA_PORT does not exist in Ollama; the port is part of "
     "OLLAMA_HOST, set from ollama_base_port"),
    ({"gpu_count": 2, "docker_log_max_size": "lots"},
     "gpu-1: docker_log_max_size: 'lots' is not a size like 512m or 64g"),
    ({"gpu_count": 2, "app_services": {"web": {"image": "acme/web:1", "ports": ["11435:80"]}}},
     "gpu-1: app_services: web: port 11435 clashes with Ollama instance port 11435"),
    ({"gpu_count": 2, "app_services": {"web": {"image": "acme/web:1", "depends_on": ["db"]}}},
     "gpu-1: app_services: web: depends on 'db', which is not an app service here"),
    ({"gpu_count": 2, "ollama_bind_address": "0.0.0.0"},
     "gpu-1: ollama_bind_address: '0.0.0.0' listens on every address of the host, and every "
     "instance's whole API (pull, delete and create included) would answer there, past "
     "nginx; use 127.0.0.1, or 172.17.0.1 (the Docker bridge's gateway) for app services "
     "pinned to an instance, or set ollama_bind_unsafe: true"),
]


@pytest.mark.parametrize("data, line", BAD_DATA, ids=[line.split(": ")[1] for _, line in BAD_DATA])
def test_bad_data_is_one_line_naming_host_and_key(data, line):
    with pytest.raises(SettingsError) as exc:
        settings_for("gpu-1", data)
    assert exc.value.problems == [line]


def test_every_host_is_checked_and_all_problems_reported():
    with pytest.raises(SettingsError) as exc:
        validate_fleet({"gpu-1": {"gpu_count": 1, "ollama_gpus": [1]},
                        "gpu-2": {"gpu_count": 2},
                        "cpu-1": {"gpu_cont": 0}})
    assert exc.value.problems == [
        "gpu-1: ollama_gpus: GPU 1 does not exist (the host has 1: 0..0)",
        "cpu-1: gpu_cont: unknown setting (did you mean gpu_count?)",
    ]


def test_hosts_behind_a_front_door_may_serve_different_models():
    """The front door routes by model (tasks/steps/front_door.py), so a mixed fleet is valid."""
    hosts = {"gpu-1": {"gpu_count": 1, "ollama_models": ["tinyllama", "qwen2.5:0.5b"],
                       "ssh_hostname": "10.0.0.1"},
             "cpu-1": {"ollama_models": ["qwen2.5:0.5b"], "ssh_hostname": "10.0.0.2"},
             "lb-1": {"ssh_hostname": "10.0.0.9"}}
    validate_fleet(hosts, ["gpu-1", "cpu-1"], ["lb-1"])


def test_gpu_servers_behind_a_front_door_reached_by_name_need_nginx_allow():
    """Unset nginx_allow behind a front door lets only the front doors in; nginx allows
    addresses, so a front door known by name needs its address said."""
    hosts = {"gpu-1": {"gpu_count": 1, "ssh_hostname": "10.0.0.1"}, "lb-1": {}}
    with pytest.raises(SettingsError) as exc:
        validate_fleet(hosts, ["gpu-1"], ["lb-1"])
    assert exc.value.problems == [
        "gpu-1: nginx_allow: the front doors ['lb-1'] are reached by name and nginx allows "
        "addresses; give their addresses or networks (CIDR) that may call this host's API"]
    for allow in (["10.0.0.9"], []):  # its address, or everyone: the operator's choice
        validate_fleet({**hosts, "gpu-1": {**hosts["gpu-1"], "nginx_allow": allow}},
                       ["gpu-1"], ["lb-1"])


def test_the_example_inventory_is_a_fleet_that_works_as_written():
    proc = subprocess.run([PYINFRA, "inventory/prod.py", "debug-inventory", "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    hosts = json.loads(proc.stdout)
    settings = validate_fleet({h["name"]: h["data"] for h in hosts},
                              [h["name"] for h in hosts if "gpu_servers" in h["groups"]],
                              [h["name"] for h in hosts if "lb_servers" in h["groups"]])
    gpu = [h["name"] for h in hosts if "gpu_servers" in h["groups"]]
    assert [settings[name].topology for name in gpu] == ["per_gpu", "shared", "cpu"]


def test_pyinfra_connection_data_is_not_a_knob():
    settings = settings_for("gpu-1", {"ssh_user": "root", "ssh_hostname": "10.0.0.1",
                                      "_sudo": True, "gpu_count": 1})
    assert settings.gpu_count == 1


@pytest.mark.parametrize("data, topology, ports", [
    ({"gpu_count": 4}, "per_gpu", [11434, 11435, 11436, 11437]),
    ({"gpu_count": 4, "ollama_gpus": [1, 3]}, "per_gpu", [11434, 11435]),
    ({"gpu_count": 4, "ollama_topology": "shared"}, "shared", [11434]),
    ({"gpu_count": 0}, "cpu", [11434]),
    ({"gpu_count": 2, "ollama_topology": "cpu", "ollama_base_port": 12000}, "cpu", [12000]),
])
def test_topology_and_ports(data, topology, ports):
    settings = settings_for("h", data)
    assert settings.topology == topology
    assert [p for _, p in settings.instance_ports()] == ports


@pytest.mark.parametrize("bind, url", [
    ("0.0.0.0", "http://127.0.0.1:11435"),
    ("::", "http://127.0.0.1:11435"),
    ("10.0.0.5", "http://10.0.0.5:11435"),
    ("fd00::5", "http://[fd00::5]:11435"),
])
def test_a_host_reaches_its_instances_on_its_bind_address(bind, url):
    settings = settings_for("h", {"gpu_count": 2, "ollama_bind_address": bind,
                                  "ollama_bind_unsafe": True})
    assert settings.instance_url(11435) == url


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "8.8.8.8", "2001:db8::1", "100.64.0.1",
                                  "169.254.0.1", "fe80::1", "198.51.100.7"])
def test_a_bind_open_beyond_the_lan_needs_the_unsafe_knob(bind):
    """A wildcard or a public address opens every instance's whole API (pull, delete,
    create) to whoever reaches it; the operator says so with the knob, or is told the
    safe values."""
    with pytest.raises(SettingsError) as caught:
        settings_for("h", {"ollama_bind_address": bind})
    (line,) = caught.value.problems
    assert line.startswith(f"h: ollama_bind_address: {bind!r} ")
    assert "use 127.0.0.1, or 172.17.0.1 (the Docker bridge's gateway)" in line
    assert line.endswith("or set ollama_bind_unsafe: true")
    settings_for("h", {"ollama_bind_address": bind, "ollama_bind_unsafe": True})


@pytest.mark.parametrize("bind", ["127.0.0.1", "127.8.9.10", "::1", "10.9.8.7", "172.17.0.1",
                                  "172.31.255.254", "192.168.1.5", "fd00::5", "fcff::1"])
def test_loopback_and_private_binds_need_no_knob(bind):
    assert settings_for("h", {"ollama_bind_address": bind}).ollama_bind_address == bind


def test_an_ipv4_address_written_as_ipv6_is_refused_even_when_unsafe_is_set():
    """Go binds `::ffff:0.0.0.0` as 0.0.0.0: the spelling must not hide what it opens."""
    with pytest.raises(SettingsError) as caught:
        settings_for("h", {"ollama_bind_address": "::ffff:0.0.0.0", "ollama_bind_unsafe": True})
    assert caught.value.problems == [
        "h: ollama_bind_address: '::ffff:0.0.0.0' is an IPv4 address written as IPv6; write "
        "0.0.0.0"]


@pytest.mark.parametrize("bind", ["127.0.0.1", "::1"])
def test_a_pinned_app_is_told_the_bridge_gateway_to_bind(bind):
    app = {"batch": {"image": "acme/batch:2", "ollama_instance": 0}}
    with pytest.raises(SettingsError) as caught:
        settings_for("gpu-1", {"gpu_count": 1, "ollama_bind_address": bind,
                               "app_services": app})
    assert caught.value.problems == [
        "gpu-1: app_services: batch: a pinned ollama_instance is called at "
        "host.docker.internal, and containers cannot reach the host's loopback; set "
        "ollama_bind_address to the Docker bridge's gateway, 172.17.0.1 (docker0's address, "
        "unless daemon.json sets another)"]
    settings_for("gpu-1", {"gpu_count": 1, "ollama_bind_address": "172.17.0.1",
                           "app_services": app})


@pytest.mark.parametrize("key, value, network", [
    ("nginx_allow", ["10.0.0.5/8"], "10.0.0.0/8"),
    ("nginx_allow", ["192.168.7.9/16"], "192.168.0.0/16"),
    ("ollama_fanout_allow", ["fd00::1/8"], "fd00::/8"),
])
def test_a_network_with_host_bits_is_refused_naming_the_network_it_means(key, value, network):
    with pytest.raises(SettingsError) as caught:
        settings_for("gpu-1", {key: value})
    address = value[0].split("/")[0]
    assert caught.value.problems == [
        f"gpu-1: {key}: {value[0]!r} has host bits set: it means all of {network}; write "
        f"{network}, or {address} alone for one address"]
    settings_for("gpu-1", {key: [network, address]})


@pytest.mark.parametrize("key, zero", [
    ("nginx_timeout", "0"), ("nginx_timeout", "0s"), ("front_door_fail_timeout", "0ms"),
    ("nginx_max_body", "0"), ("nginx_max_body", "0k"), ("ollama_memory_limit", "0"),
    ("docker_log_max_size", "0m"), ("ollama_fanout_rate", "0"), ("nginx_rate_limit", "0r/s"),
    ("app_cache_memory", "0mb"), ("front_door_drain_timeout", 0), ("front_door_max_fails", 0),
])
def test_a_time_or_size_of_zero_is_refused(key, zero):
    """nginx reads a timeout of 0 as none at all (every request 504) and a body size of 0
    as no cap; a max_fails of 0 turns passive health off."""
    with pytest.raises(SettingsError) as caught:
        settings_for("lb-1", {key: zero})
    assert [p.split(": ")[1] for p in caught.value.problems] == [key]


def test_a_count_that_may_be_0_says_what_0_does():
    """Every int knob whose least value is 0 or less says what that value means."""
    for name, field in KNOBS.items():
        if field.annotation not in (int, int | None):
            continue
        least = min((getattr(m, "ge", None) for m in field.metadata if hasattr(m, "ge")),
                    default=None)
        if least is None or least <= 0:
            assert "0" in field.description, name


@pytest.mark.parametrize("key, value", [
    ("nginx_timeout", "1s"), ("nginx_timeout", "1h"), ("front_door_fail_timeout", "1000ms"),
    ("front_door_fail_timeout", "60m"), ("nginx_max_body", "1"), ("ollama_memory_limit", "6m"),
    ("ollama_keep_alive", "2562047h"), ("front_door_drain_timeout", 3600),
])
def test_the_bounds_themselves_pass(key, value):
    data = {key: value} | ({"front_door_drain_timeout": 3600} if key == "nginx_timeout" else {})
    assert getattr(settings_for("lb-1", data), key) == value


@pytest.mark.parametrize("key, value, use", [
    ("ollama_models_path", "/etc", "every Ollama instance would mount it read-write"),
    ("ollama_models_path", "/var/lib/docker/volumes", "every Ollama instance would mount it "
     "read-write"),
    ("ollama_stack_dir", "/tmp", "the deploy would own it: mode 755, its files in it"),
    ("ollama_stack_dir", "/var/run/", "the deploy would own it: mode 755, its files in it"),
    ("front_door_dir", "/root/front", "the deploy would own it: mode 755, its files in it"),
])
def test_a_system_directory_is_no_store_or_stack_directory(key, value, use):
    with pytest.raises(SettingsError) as caught:
        settings_for("gpu-1", {key: value})
    assert caught.value.problems == [
        f"gpu-1: {key}: {value!r} is a system directory ({use}); give one of its own, like "
        "/srv/ollama"]


@pytest.mark.parametrize("volume, problem", [
    ("/var/run/docker.sock:/var/run/docker.sock",
     "/var/run/docker.sock is a system directory or the runtime's (the Docker socket is root "
     "on the host); mount a directory of the app's own"),
    ("/run/docker.sock:/s:ro", "/run/docker.sock is a system directory or the runtime's (the "
     "Docker socket is root on the host); mount a directory of the app's own"),
    ("/etc/systemd/system:/units", "/etc/systemd/system holds the host's programs or "
     "configuration; mount it read-only (:ro)"),
])
def test_an_app_volume_is_not_the_docker_socket_nor_a_writable_system_tree(volume, problem):
    with pytest.raises(SettingsError) as caught:
        settings_for("gpu-1", {"app_services": {"web": {"image": "acme/web:1",
                                                        "volumes": [volume]}}})
    assert caught.value.problems == [f"gpu-1: app_services.web.volumes: {volume!r}: {problem}"]


def test_a_host_name_or_ssh_hostname_outside_the_grammar_is_refused_on_one_line():
    """A name lands in the front door's upstream and map lines: a newline or a `;` there
    adds servers that `nginx -t` passes."""
    hosts = {"gpu-1\nserver 10.6.6.6:80": {"gpu_count": 1},
             "gpu-2": {"gpu_count": 1, "ssh_hostname": "10.0.0.2 max_fails=0; server x:80"}}
    with pytest.raises(SettingsError) as caught:
        validate_fleet(hosts)
    assert caught.value.problems == [
        "'gpu-1\\nserver 10.6.6.6:80': name: not a host name (letters, digits, - _ .) or an IP "
        "address",
        "gpu-2: ssh_hostname: '10.0.0.2 max_fails=0; server x:80' is not a host name (letters, "
        "digits, - _ .) or an IP address (no zone)"]


@pytest.mark.parametrize("network, ok", [
    ("172.31.254.0/24", True), ("10.77.0.0/28", True), ("10.77.0.0/23", False),
    ("10.0.0.0/8", False), ("172.31.254.0/29", False),
])
def test_the_app_network_is_from_24_to_28(network, ok):
    if ok:
        settings_for("gpu-1", {"app_network": network})
        return
    with pytest.raises(SettingsError, match=f"gpu-1: app_network: '{network}': a private "
                                            "network from /24 to /28 is expected"):
        settings_for("gpu-1", {"app_network": network})


def test_every_knob_has_a_meaning_and_a_task_prefix():
    prefixes = ("gpu_count", "fleet_", "docker_", "nvidia_", "ollama_", "nginx_", "front_door_",
                "app_", "health_")
    for name, field in KNOBS.items():
        assert field.description, name
        assert name.startswith(prefixes), name


def test_readme_knob_table_matches_the_declarations():
    text = README.read_text()
    block = re.search(r"<!-- knobs:start -->\n(.*?)\n<!-- knobs:end -->", text, re.S)
    assert block, "README.md lacks the knob table markers"
    assert block.group(1).strip() == knob_table().strip(), (
        "README knob table drifted: run `python -m ollama_fleet.tasks.kit.settings --write-readme`")


@pytest.mark.parametrize("value, seconds", [
    ("600s", 600), ("10m", 600), ("1h", 3600), ("600", 600), ("500ms", 1), ("1001ms", 2),
    ("0", 0),
])
def test_nginx_times_in_seconds(value, seconds):
    assert nginx_seconds(value) == seconds


def test_the_front_door_waits_for_the_longest_request_before_it_goes_on():
    assert settings_for("lb-1", {}).front_door_drain_timeout == 600
    settings_for("lb-1", {"nginx_timeout": "2m", "front_door_drain_timeout": 120})
    with pytest.raises(SettingsError) as caught:
        settings_for("lb-1", {"front_door_drain_timeout": 120})
    assert caught.value.problems == [
        "lb-1: front_door_drain_timeout: 120 s is shorter than nginx_timeout (600s): a request "
        "still in flight on a drained host would be cut"]


def test_the_front_door_never_sends_past_the_hosts_gate():
    with pytest.raises(SettingsError) as caught:
        settings_for("lb-1", {"front_door_upstream": "instances"})
    assert caught.value.problems == [
        "lb-1: front_door_upstream: 'instances' would open every GPU host's Ollama ports, "
        "admin endpoints included, to the network with nothing in front (the deploy has no "
        "firewall to keep them to the front doors); use 'nginx', whose gate the front door "
        "passes"]
