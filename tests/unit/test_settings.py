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
    settings = settings_for("h", {"gpu_count": 2, "ollama_bind_address": bind})
    assert settings.instance_url(11435) == url


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
