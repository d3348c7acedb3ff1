"""The seed's app stack, declared in the inventory: an app and a Redis cache beside Ollama.

Runs on the fleet test_deploy.py converged (tests in file order).
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.lab

CHAT = {"image": "fleetlab/chat-app:1.0", "ports": ["8000:8000"], "depends_on": ["redis"],
        "healthcheck": ["CMD", "python3", "/usr/local/bin/chatapp.py", "--check"],
        "environment": {"APP_GREETING": "hello"}}


@pytest.fixture(scope="module")
def fleet(deploy_lab):
    return deploy_lab


def deploy(fleet, apps: dict, cache: bool = True):
    proc = fleet.pyinfra("deploy.py", "--data", f"app_services={json.dumps(apps)}",
                         "--data", f"app_cache={'true' if cache else 'false'}")
    assert proc.returncode == 0, proc.output[-5000:]
    return proc


def ask(fleet, host: str, prompt: str) -> dict:
    body = json.dumps({"prompt": prompt})
    _, out, _ = fleet.ssh(host, f"curl -sS -m 60 -X POST http://127.0.0.1:8000/ask -d '{body}'")
    return json.loads(out)


def generate_requests(fleet, host: str) -> int:
    _, out, _ = fleet.ssh(host, "docker logs ollama-nginx 2>/dev/null | "
                                "grep -c 'POST /api/generate' || true")
    return int(out.strip() or 0)


def container_ids(fleet, host: str) -> dict[str, str]:
    _, out, _ = fleet.ssh(host, "docker ps --format '{{.Names}} {{.ID}}'")
    return dict(line.split() for line in out.splitlines())


def test_app_answers_from_its_hosts_ollama_then_from_redis(fleet):
    deploy(fleet, {"chat": CHAT})
    for host in fleet.hosts():
        name = host["name"]
        before = generate_requests(fleet, name)
        first = ask(fleet, name, f"why is the sky blue on {name}?")
        assert first["cached"] is False and first["answer"] and first["model"] == "tinyllama"
        assert generate_requests(fleet, name) == before + 1, "the app did not use its host's nginx"
        second = ask(fleet, name, f"why is the sky blue on {name}?")
        assert second["cached"] is True and second["answer"] == first["answer"]
        assert generate_requests(fleet, name) == before + 1
        _, keys, _ = fleet.ssh(name, "docker exec ollama-apps-redis redis-cli --scan "
                                     "--pattern 'chat:*'")
        assert len(keys.split()) == 1


def test_app_and_cache_are_private_to_their_host(fleet):
    target = fleet.host("gpu-1")["address"]
    for port in (8000, 6379):
        status, _, _ = fleet.ssh("gpu-2", f"curl -sS -m 3 http://{target}:{port}/", check=False)
        assert status != 0, f"port {port} of gpu-1 answers another host"
    fleet.ssh("gpu-1", "curl -sS -m 3 http://127.0.0.1:8000/health")


def test_changing_the_apps_environment_recreates_only_the_app(fleet):
    before = container_ids(fleet, "gpu-1")
    deploy(fleet, {"chat": {**CHAT, "environment": {"APP_GREETING": "bye"}}})
    after = container_ids(fleet, "gpu-1")
    assert after["ollama-apps-chat"] != before["ollama-apps-chat"]
    for name in ("ollama-0", "ollama-1", "ollama-nginx", "ollama-apps-redis"):
        assert after[name] == before[name], f"{name} was recreated"
    _, out, _ = fleet.ssh("gpu-1", "curl -sS http://127.0.0.1:8000/whoami")
    assert json.loads(out)["env"]["APP_GREETING"] == "bye"


def test_removing_the_app_removes_its_container_and_keeps_redis_data(fleet):
    deploy(fleet, {})
    names = container_ids(fleet, "gpu-1")
    assert "ollama-apps-chat" not in names and "ollama-apps-redis" in names
    _, keys, _ = fleet.ssh("gpu-1", "docker exec ollama-apps-redis redis-cli --scan "
                                    "--pattern 'chat:*'")
    assert len(keys.split()) == 1
    # a second run with the same inventory changes nothing
    proc = deploy(fleet, {})
    grand_total = next(line for line in proc.output.split("--> Results:")[-1].splitlines()
                       if "Grand total" in line).split()
    assert grand_total[3:5] == ["-", "-"]
