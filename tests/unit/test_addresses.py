"""Where hosts and services are reached: one answer for the deploy, the front door and the
operator's commands, IPv6 addresses bracketed wherever a port follows."""

from __future__ import annotations

from ollama_fleet.tasks.kit.addresses import host_address, local_address, url_host
from ollama_fleet.tasks.kit.fleet import Fleet
from ollama_fleet.tasks.kit.settings import settings_for
from ollama_fleet.tasks.steps.front_door import Upstream, front_door_files
from ollama_fleet.tasks.steps.stack import plan_instances, stack_files


def test_a_host_is_reached_at_its_ssh_hostname_else_its_name():
    assert host_address("gpu-1", {"ssh_hostname": "10.0.0.1"}) == "10.0.0.1"
    assert host_address("gpu-1", {"ssh_hostname": ""}) == "gpu-1"
    assert host_address("gpu-1", {}) == "gpu-1"


def test_a_service_on_every_address_is_reached_at_loopback():
    assert [local_address(b) for b in ("0.0.0.0", "::", "10.0.0.1", "::1")] == [
        "127.0.0.1", "127.0.0.1", "10.0.0.1", "::1"]


def test_ipv6_addresses_are_bracketed_where_a_port_follows():
    assert [url_host(a) for a in ("fd00::1", "[fd00::1]", "10.0.0.1", "gpu-1.lan")] == [
        "[fd00::1]", "[fd00::1]", "10.0.0.1", "gpu-1.lan"]


def test_nginx_server_lines_bracket_ipv6_upstreams():
    conf = front_door_files(settings_for("lb-1", {}), [
        Upstream("gpu-1", "fd00::1", 80, False), Upstream("gpu-2", "10.0.0.2", 80, True),
    ])["nginx/front.conf"]
    assert "server [fd00::1]:80 max_fails=" in conf
    assert "server 10.0.0.2:80 max_fails=" in conf and " down;  # gpu-2 (drained)" in conf
    gpu = settings_for("gpu-1", {"gpu_count": 1, "ollama_bind_address": "::1"})
    host = stack_files(gpu, plan_instances(gpu, [{"index": 0, "uuid": "GPU-0"}]), Fleet())
    assert "server [::1]:11434;" in host["nginx/ollama.conf"]
