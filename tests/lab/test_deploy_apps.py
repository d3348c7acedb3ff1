"""The seed's app stack, declared in the inventory: an app and a Redis cache beside Ollama.

Runs on the fleet test_deploy.py converged (tests in file order).
"""

from __future__ import annotations

import json
import shlex

import pytest

pytestmark = pytest.mark.lab

CHAT = {"image": "fleetlab/chat-app:1.0", "ports": ["8000:8000"], "depends_on": ["redis"],
        "healthcheck": ["CMD", "python3", "/usr/local/bin/chatapp.py", "--check"],
        "environment": {"APP_GREETING": "hello"}}


@pytest.fixture(scope="module")
def fleet(deploy_lab):
    return deploy_lab


def deploy(fleet, apps: dict, cache: bool = True, **knobs):
    extra = [a for k, v in knobs.items() for a in ("--data", f"{k}={json.dumps(v)}")]
    proc = fleet.pyinfra("deploy.py", "--data", f"app_services={json.dumps(apps)}",
                         "--data", f"app_cache={'true' if cache else 'false'}", *extra)
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
        assert len(cached_answers(fleet, name)) == 1


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


def test_a_rotated_app_secret_reaches_the_app_and_never_the_output(fleet):
    """--diff, as the README recommends, on a rotated secret: the app gets the new value,
    no output shows the old or the new one, the env file is root's alone."""
    app = {**CHAT, "secrets": {"APP_TOKEN": {"env": "FLEETLAB_APP_TOKEN"}}}
    old, new = "s3cret-old-1f0a9c", "s3cret-new-7d2b4e"
    runs = []
    for value in (old, new):
        runs.append(fleet.pyinfra("deploy.py", "--diff", "--data",
                                  f"app_services={json.dumps({'chat': app})}",
                                  "--data", "app_cache=true",
                                  limit="gpu-1", env={"FLEETLAB_APP_TOKEN": value}))
        assert runs[-1].returncode == 0, runs[-1].output[-4000:]
    for proc in runs:
        assert old not in proc.output and new not in proc.output, "--diff showed a secret"
    _, out, _ = fleet.ssh("gpu-1", "docker exec ollama-apps-chat printenv APP_TOKEN")
    assert out.strip() == new
    _, out, _ = fleet.ssh("gpu-1", "stat -c '%a %U' /opt/ollama/apps/chat.env")
    assert out.split() == ["600", "root"]
    deploy(fleet, {"chat": CHAT})  # as the tests after this one expect it


def app_network(fleet, host: str) -> str:
    _, out, _ = fleet.ssh(host, "docker network inspect ollama-apps "
                                "--format '{{range .IPAM.Config}}{{.Subnet}}{{end}}'")
    return out.strip()


def test_the_gate_lets_the_hosts_apps_in_and_no_one_else(fleet, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("ops 0123456789abcdef0123456789abcdef\n")  # 32 or more
    gpu_1 = fleet.host("gpu-1")["address"]
    assert app_network(fleet, "gpu-1") == "172.31.254.0/24"
    try:
        # keys and an allow list on the GPU servers, and the app network moved: Compose
        # gets a new network, nginx trusts the new one
        deploy(fleet, {"chat": CHAT}, nginx_api_keys={"file": str(keys)},
               nginx_allow=["192.0.2.0/24"], app_network="172.31.253.0/24")
        assert app_network(fleet, "gpu-1") == "172.31.253.0/24"
        answer = ask(fleet, "gpu-1", "who may call?")  # the app passes the gate keyless
        assert answer["cached"] is False and answer["answer"]
        _, out, _ = fleet.ssh("gpu-2", f"curl -sS -m 5 -o /dev/null -w '%{{http_code}}' "
                                       f"http://{gpu_1}/api/tags")
        assert out == "403"  # the LAN does not: not on nginx_allow, refused before the key
        delete = ("import urllib.request as u, urllib.error as e\n"
                  "r = u.Request('http://host.docker.internal/api/delete', method='DELETE', "
                  "data=b'{\"model\": \"tinyllama\"}')\n"
                  "try: u.urlopen(r, timeout=10)\n"
                  "except e.HTTPError as x: print(x.code)\n")
        _, out, _ = fleet.ssh("gpu-1", "docker exec ollama-apps-chat python3 -c "
                                       f"{shlex.quote(delete)}")
        assert out.strip() == "403"  # and the app may not manage models
        _, out, _ = fleet.ssh("gpu-1", "curl -sS -m 5 http://127.0.0.1:11434/api/tags")
        assert "tinyllama" in out
    finally:
        deploy(fleet, {"chat": CHAT})
    assert app_network(fleet, "gpu-1") == "172.31.254.0/24"
    _, out, _ = fleet.ssh("gpu-2", f"curl -sS -m 5 -o /dev/null -w '%{{http_code}}' "
                                   f"http://{gpu_1}/api/tags")
    assert out == "200"


def cached_answers(fleet, host: str) -> set[str]:
    _, keys, _ = fleet.ssh(host, "docker exec ollama-apps-redis redis-cli --scan "
                                 "--pattern 'chat:*'")
    return set(keys.split())


def bridge_gateway(fleet, host: str) -> str:
    """docker0's address on HOST: what host.docker.internal names in its containers."""
    _, out, _ = fleet.ssh(host, "docker network inspect bridge "
                                "--format '{{(index .IPAM.Config 0).Gateway}}'")
    return out.strip()


def test_a_pinned_app_reaches_its_instance_on_the_bridge_gateway_and_the_lan_does_not(fleet):
    """The value the settings name for an app pinned to one instance (ollama_bind_address:
    the Docker bridge's gateway) works: the app calls its instance directly, past nginx,
    and another host cannot. A wildcard is refused (tests/unit/test_settings.py BAD_DATA,
    run against this fleet by test_deploy.py); with ollama_bind_unsafe it is the operator's
    word, and the LAN does reach the instance."""
    gateway = bridge_gateway(fleet, "gpu-1")
    gpu_1 = fleet.host("gpu-1")["address"]
    # instance 0: --data reaches every host's settings (cpu-1 runs one instance), not only
    # the host the run is limited to
    pinned = {"chat": {**CHAT, "ollama_instance": 0}}

    def deploy_gpu_1(*data: str) -> None:
        proc = fleet.pyinfra("deploy.py", *[a for d in data for a in ("--data", d)],
                             "--data", "app_cache=true", limit="gpu-1")
        assert proc.returncode == 0, proc.output[-5000:]

    def lan_answer(port: int) -> int:
        return fleet.ssh("gpu-2", f"curl -sS -m 5 -o /dev/null http://{gpu_1}:{port}/api/version",
                         check=False)[0]

    try:
        deploy_gpu_1(f"ollama_bind_address={gateway}",
                     f"app_services={json.dumps(pinned)}")
        _, out, _ = fleet.ssh("gpu-1", "curl -sS http://127.0.0.1:8000/whoami")
        assert json.loads(out)["env"]["OLLAMA_BASE_URL"] == "http://host.docker.internal:11434"
        before = generate_requests(fleet, "gpu-1")
        answer = ask(fleet, "gpu-1", "which instance answers a pinned app?")
        assert answer["cached"] is False and answer["answer"]
        assert generate_requests(fleet, "gpu-1") == before, "the pinned app went through nginx"
        assert lan_answer(11434) != 0, "the LAN reaches an instance on the bridge gateway"

        deploy_gpu_1("ollama_bind_address=0.0.0.0", "ollama_bind_unsafe=true")
        assert lan_answer(11434) == 0, "ollama_bind_unsafe with 0.0.0.0 did not open the port"
    finally:
        deploy(fleet, {"chat": CHAT})  # as the tests after this one expect it
    assert lan_answer(11434) != 0


def test_removing_the_app_removes_its_container_and_keeps_redis_data(fleet):
    cached = cached_answers(fleet, "gpu-1")
    assert cached
    deploy(fleet, {})
    names = container_ids(fleet, "gpu-1")
    assert "ollama-apps-chat" not in names and "ollama-apps-redis" in names
    assert cached_answers(fleet, "gpu-1") == cached
    # a second run with the same inventory changes nothing
    proc = deploy(fleet, {})
    grand_total = next(line for line in proc.output.split("--> Results:")[-1].splitlines()
                       if "Grand total" in line).split()
    assert grand_total[3:5] == ["-", "-"]
