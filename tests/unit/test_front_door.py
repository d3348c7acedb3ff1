"""tasks.steps.front_door: the front door's upstreams and routes, rendered from the fleet."""

from __future__ import annotations

import re

from ollama_fleet.tasks.kit.fleet import build
from ollama_fleet.tasks.steps.front_door import Upstream, front_door_files, routes, upstreams

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
