"""The app stack's Compose file as rendered from inventory data (checked on hosts by the lab
tests; here: what each knob turns into)."""

from __future__ import annotations

import pytest
import yaml

from ollama_fleet.tasks.kit.settings import SettingsError, settings_for
from ollama_fleet.tasks.steps.apps import render_apps

APP = {"image": "acme/app:1.4", "ports": ["8080:8080", "0.0.0.0:9090:9090"],
       "depends_on": ["redis"], "environment": {"LOG_LEVEL": "info"},
       "secrets": {"TOKEN": {"env": "APP_TOKEN"}}, "memory_limit": "2g"}


def compose(data: dict) -> dict:
    return yaml.safe_load(render_apps(settings_for("gpu-1", data)))


def test_the_guides_app_stack():
    doc = compose({"gpu_count": 2, "ollama_models": ["llama3.2"], "app_cache": True,
                   "app_services": {"app": APP}})
    app, redis = doc["services"]["app"], doc["services"]["redis"]
    assert app["environment"] == {"OLLAMA_BASE_URL": "http://host.docker.internal:80",
                                  "OLLAMA_MODEL": "llama3.2", "REDIS_URL": "redis://redis:6379/0",
                                  "LOG_LEVEL": "info"}
    assert app["ports"] == ["127.0.0.1:8080:8080", "0.0.0.0:9090:9090"]
    assert app["env_file"] == ["/opt/ollama/apps/app.env"]  # checked from a staging dir too
    assert app["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert app["deploy"]["resources"]["limits"]["memory"] == "2g"
    assert "ports" not in redis and redis["volumes"] == ["redis-data:/data"]
    assert redis["command"][-4:] == ["--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru"]
    assert doc["volumes"] == {"redis-data": {"name": "ollama-apps-redis-data"}}
    # pinned, so that the host's nginx can tell app services from the LAN
    assert doc["networks"]["apps"]["ipam"] == {"config": [{"subnet": "172.31.254.0/24"}]}


def test_a_pinned_instance_and_its_model():
    data = {"gpu_count": 2, "ollama_bind_address": "172.17.0.1", "ollama_models": ["tinyllama"],
            "app_services": {"batch": {"image": "acme/batch:2", "ollama_instance": 1,
                                       "ollama_model": "qwen2.5:0.5b"}}}
    env = compose(data)["services"]["batch"]["environment"]
    assert env == {"OLLAMA_BASE_URL": "http://host.docker.internal:11435",
                   "OLLAMA_MODEL": "qwen2.5:0.5b"}
    assert settings_for("gpu-1", data).all_models == ["tinyllama", "qwen2.5:0.5b"]


@pytest.mark.parametrize("service, line", [
    ({"image": "acme/batch:2", "ollama_instance": 5},
     "gpu-1: app_services: batch: ollama_instance 5 does not exist (the host runs 2)"),
    ({"image": "acme/batch:2", "ollama_instance": 0},
     "gpu-1: app_services: batch: a pinned ollama_instance is called at "
     "host.docker.internal, and containers cannot reach the host's loopback; set "
     "ollama_bind_address to the Docker bridge's gateway, 172.17.0.1 (docker0's address, "
     "unless daemon.json sets another)"),
    ({"image": "acme/batch"},
     "gpu-1: app_services.batch.image: 'acme/batch' is not an image pinned by tag (name:tag)"),
])
def test_bad_app_services(service, line):
    with pytest.raises(SettingsError) as exc:
        settings_for("gpu-1", {"gpu_count": 2, "app_services": {"batch": service}})
    assert exc.value.problems == [line]


def test_inventory_values_reach_the_container_as_written():
    """`$` starts an interpolation in Compose; values are data, never YAML text."""
    doc = compose({"gpu_count": 1, "app_services": {"web": {
        "image": "acme/web:1", "environment": {"PRICE": "$5", "QUOTE": "it's \"x\": y #z"},
        "command": ["sh", "-c", "echo $HOME"], "healthcheck": ["CMD-SHELL", "test $$ -gt 0"]}}})
    web = doc["services"]["web"]
    assert web["environment"]["PRICE"] == "$$5"  # Compose turns $$ back into $
    assert web["environment"]["QUOTE"] == "it's \"x\": y #z"
    assert web["command"] == ["sh", "-c", "echo $$HOME"]
    assert web["healthcheck"]["test"] == ["CMD-SHELL", "test $$$$ -gt 0"]
