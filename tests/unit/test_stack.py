"""The Ollama stack's Compose file as the deploy renders it (checked by `docker compose
config -q` and run on hosts by the lab tests): what Ollama reads from its environment."""

from __future__ import annotations

import pytest
import yaml

from ollama_fleet.tasks.kit.fleet import Fleet
from ollama_fleet.tasks.kit.settings import SettingsError, settings_for
from ollama_fleet.tasks.steps.stack import plan_instances, stack_files

GPUS = [{"index": 0, "uuid": "GPU-0"}, {"index": 1, "uuid": "GPU-1"}]


def environment(data: dict, instance: str = "ollama-0") -> dict:
    settings = settings_for("gpu-1", {"gpu_count": 2, **data})
    compose = yaml.safe_load(stack_files(settings, plan_instances(settings, GPUS), Fleet())
                             ["compose.yaml"])
    return compose["services"][instance]["environment"]


def test_ollamas_own_defaults_unless_the_operator_sets_a_value():
    env = environment({})
    assert env["OLLAMA_HOST"] == "127.0.0.1:11434"
    for unset in ("OLLAMA_NUM_PARALLEL", "OLLAMA_KEEP_ALIVE", "OLLAMA_MAX_QUEUE"):
        assert unset not in env, unset
    env = environment({"ollama_num_parallel": 4, "ollama_keep_alive": "-1",
                       "ollama_max_queue": 64})
    assert (env["OLLAMA_NUM_PARALLEL"], env["OLLAMA_KEEP_ALIVE"], env["OLLAMA_MAX_QUEUE"]) == (
        "4", "-1", "64")


def test_an_ipv6_bind_address_gets_brackets_ollama_can_parse():
    assert environment({"ollama_bind_address": "::", "ollama_bind_unsafe": True},
                       "ollama-1")["OLLAMA_HOST"] == "[::]:11435"
    assert environment({"ollama_bind_address": "::1"})["OLLAMA_HOST"] == "[::1]:11434"


def test_extra_environment_reaches_ollama_as_written():
    env = environment({"ollama_environment": {"HTTPS_PROXY": "http://p:3128",
                                              "ODD": "a \"quoted\" $VALUE: # not a comment"}})
    assert env["HTTPS_PROXY"] == "http://p:3128"
    assert env["ODD"] == "a \"quoted\" $$VALUE: # not a comment"  # Compose reads $$ as $


def test_no_instance_may_send_a_prompt_to_the_cloud_unless_the_operator_allows_it():
    assert environment({})["OLLAMA_NO_CLOUD"] == "1"
    assert environment({}, "ollama-1")["OLLAMA_NO_CLOUD"] == "1"
    assert "OLLAMA_NO_CLOUD" not in environment({"ollama_allow_cloud": True})


def test_the_cloud_is_one_knob_not_an_environment_variable():
    for key in ("OLLAMA_NO_CLOUD", "OLLAMA_CLOUD_BASE_URL", "OLLAMA_REMOTES"):
        with pytest.raises(SettingsError, match=f"gpu-1: ollama_environment: {key} is set by "
                                                "the deploy: cloud models are allowed by"):
            settings_for("gpu-1", {"ollama_environment": {key: "0"}})


def test_cloud_models_and_images_that_ignore_no_cloud_are_refused_while_the_cloud_is_off():
    with pytest.raises(SettingsError, match="gpu-1: ollama_models: 'gpt-oss:120b-cloud' is a "
                                            "cloud model"):
        settings_for("gpu-1", {"ollama_models": ["gpt-oss:120b-cloud"]})
    with pytest.raises(SettingsError, match="gpu-1: ollama_image: ollama/ollama:0.14.0 runs "
                                            "cloud models but ignores OLLAMA_NO_CLOUD"):
        settings_for("gpu-1", {"ollama_image": "ollama/ollama:0.14.0"})
    allowed = {"ollama_allow_cloud": True, "ollama_image": "ollama/ollama:0.14.0",
               "ollama_models": ["gpt-oss:120b-cloud"]}
    assert settings_for("gpu-1", allowed).ollama_models == ["gpt-oss:120b-cloud"]
    # 0.6.8 knows no cloud at all; a name that merely ends in -cloud with no tag is local
    assert settings_for("gpu-1", {"ollama_image": "ollama/ollama:0.6.8",
                                  "ollama_models": ["my-cloud"]})


def test_the_hosts_nginx_gives_ollama_no_key_in_anthropics_header():
    settings = settings_for("gpu-1", {"gpu_count": 2})
    conf = stack_files(settings, plan_instances(settings, GPUS), Fleet())["nginx/ollama.conf"]
    assert conf.count("proxy_pass ") == conf.count('proxy_set_header X-Api-Key "";') > 0


def test_an_instance_out_of_rotation_is_refused_by_its_gate_and_inference_goes_on():
    settings = settings_for("gpu-1", {"gpu_count": 2})
    conf = stack_files(settings, plan_instances(settings, GPUS), Fleet())["nginx/ollama.conf"]
    # each instance behind its gate, which refuses it while the health agent's flag is there
    assert "server unix:/run/ollama-fleet-gate/ollama-1.sock max_fails=3" in conf
    gate = conf.split("listen unix:/run/ollama-fleet-gate/ollama-1.sock;")[1].split(
        "location /")[0]
    assert "if (-f /run/ollama-fleet/health/out/ollama-1) {\n        return 502 " in gate
    assert "client_max_body_size 0;" in gate
    assert "if (-f /run/ollama-fleet/health/out/host) {" in gate
    # inference (buffered, safe to resend) goes on to the next instance; admin calls do not
    inference = conf.split("location ~ ^/(api/(generate")[1].split("}")[0]
    admin = conf.split("    location / {")[1].split("}")[0]
    assert "http_502 non_idempotent;" in inference and "proxy_request_buffering on;" in inference
    assert "http_503" not in inference  # Ollama's full queue is not a reason to retry
    assert "non_idempotent" not in admin
    # the verdict, to loopback and the front doors only
    verdict = conf.split("location = /fleet/health {")[1].split("}")[0]
    assert "alias /run/ollama-fleet/health/verdict.json;" in verdict and "deny all;" in verdict
