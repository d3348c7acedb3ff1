"""Fan-out planning and the registry's names: pure functions, no host."""

from __future__ import annotations

import pytest
import yaml

from tasks import models
from tasks.metrics import render_metrics
from tasks.models import Peer, layers, manifest_path, manifest_url, sources, wave_of
from tasks.settings import settings_for


def test_waves_double_the_receivers():
    assert [wave_of(i) for i in range(8)] == [0, 1, 2, 2, 3, 3, 3, 3]


def test_each_wave_is_served_by_a_host_of_an_earlier_wave_then_every_other_peer():
    fleet = [Peer(f"gpu-{i}", f"10.0.0.{i}", 11380) for i in range(1, 7)]
    assigned = {p.name: sources(i, fleet)[0].name for i, p in enumerate(fleet) if i}
    assert assigned == {"gpu-2": "gpu-1", "gpu-3": "gpu-1", "gpu-4": "gpu-2", "gpu-5": "gpu-1",
                        "gpu-6": "gpu-2"}
    for i, peer in enumerate(fleet):
        tried = sources(i, fleet)
        assert peer not in tried and sorted(p.name for p in tried) == sorted(
            p.name for p in fleet if p != peer)
        if i:
            assert wave_of(fleet.index(tried[0])) < wave_of(i)


@pytest.mark.parametrize("name, path, url", [
    ("tinyllama", "manifests/registry.ollama.ai/library/tinyllama/latest",
     "https://registry.ollama.ai/v2/library/tinyllama/manifests/latest"),
    ("llama3.2:1b", "manifests/registry.ollama.ai/library/llama3.2/1b",
     "https://registry.ollama.ai/v2/library/llama3.2/manifests/1b"),
    ("acme/coder:7b", "manifests/registry.ollama.ai/acme/coder/7b",
     "https://registry.ollama.ai/v2/acme/coder/manifests/7b"),
    ("hf.co/org/model:q4", "manifests/hf.co/org/model/q4",
     "https://hf.co/v2/org/model/manifests/q4"),
])
def test_names_map_to_ollamas_store_and_the_registry(name, path, url):
    assert manifest_path(name) == path
    assert manifest_url(settings_for("gpu-1", {}), name) == url


def test_a_mirror_of_the_registry_is_used_for_its_models():
    settings = settings_for("gpu-1", {"ollama_registry": "http://10.0.0.9:8081/",
                                      "fleet_insecure_http": True})
    assert manifest_url(settings, "tinyllama") == (
        "http://10.0.0.9:8081/v2/library/tinyllama/manifests/latest")


def test_layers_are_the_config_and_every_layer():
    manifest = {"config": {"digest": "sha256:" + "c" * 64, "size": 10},
                "layers": [{"digest": "sha256:" + "a" * 64, "size": 300},
                           {"digest": "sha256:" + "b" * 64, "size": 5}]}
    assert layers(manifest) == [("c" * 64, 10), ("a" * 64, 300), ("b" * 64, 5)]


def test_fanout_server_is_rendered_for_peers_only_and_rate_capped():
    from tasks.stack import plan_instances, stack_files

    gpu = settings_for("gpu-1", {"gpu_count": 1, "ollama_fanout_rate": "20m",
                                 "ollama_fanout_allow": ["10.1.0.0/16"]})
    files = stack_files(gpu, plan_instances(gpu, [{"index": 0, "uuid": "GPU-0"}]))
    conf = files["nginx/ollama.conf"]
    fanout = conf.split("listen 11380;")[1]
    assert "allow 10.1.0.0/16;" in fanout and "deny all;" in fanout
    assert "limit_rate 20m;" in fanout and "alias /srv/ollama/models/blobs/;" in fanout
    assert "ollama-models:/srv/ollama:ro" in files["compose.yaml"]
    assert files[models.FETCH_SCRIPT].startswith("#!/bin/sh")
    off = settings_for("gpu-1", {"gpu_count": 1, "ollama_fanout": False})
    files = stack_files(off, plan_instances(off, [{"index": 0, "uuid": "GPU-0"}]))
    assert "11380" not in files["nginx/ollama.conf"] and models.FETCH_SCRIPT not in files


def test_the_gpu_exporter_renders_with_every_gpu_and_only_sys_admin():
    settings = settings_for("gpu-1", {"gpu_count": 2, "nvidia_exporter": True})
    service = yaml.safe_load(render_metrics(settings))["services"]["dcgm-exporter"]
    assert service["image"].startswith("nvcr.io/nvidia/k8s/dcgm-exporter:")
    assert service["cap_drop"] == ["ALL"] and service["cap_add"] == ["SYS_ADMIN"]
    assert service["environment"]["DCGM_EXPORTER_LISTEN"] == "127.0.0.1:9400"
    device = service["deploy"]["resources"]["reservations"]["devices"][0]
    assert device == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    assert service["logging"]["options"]["max-size"] == "50m"
