"""inventory/prod.py as written, on a lab fleet of its shape: a per-GPU host, a host with
one instance holding both its GPUs, a CPU host and a front door with its gate (TLS and
API keys); the GPU hosts serve other models than the CPU host, and the front door routes
each request by its model. Each prod host's data is kept; only what points at the lab
changes (addresses, the lab's mirrors, the GPU count the lab host has, the network
fan-out may copy over) and the secrets prod.py names by reference: the lab's certificate
for the front door (from the lab's CA) and keys generated here, in files.

Clients are the official `ollama`, `openai` and `anthropic` Python clients, as applications
use them: over https, the certificate verified against the lab's CA, with an API key. Prod
leaves Ollama's cloud off (ollama_allow_cloud): cloud models and web search are refused at
the front door, and nothing reaches the lab's ollama.com."""

from __future__ import annotations

import http.client
import json
import re
import runpy
import secrets
import ssl
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import anthropic
import httpx
import ollama
import openai
import pytest

from lab.loadgen import LoadGenerator
from tests.conftest import running_lab
from tests.labfleet import REPO, lab_cli, poll

pytestmark = pytest.mark.lab

NAME = "fleetlab-prod"
FRONT_NAME = f"llm.{NAME}.test"  # the front door's name in the lab's DNS, on its certificate
LAB_CA = "/root/fleetlab-ca.pem"  # the lab's CA certificate, copied onto the front door


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    keys = tmp_path_factory.mktemp("prod-secrets")
    with running_lab(NAME, "--gpu-hosts", "2", "--gpus-per-host", "2", "--cpu-hosts", "1",
                     "--lb-hosts", "1", "--registry-port", "5061",
                     "--model-scale", "0.1") as lab:
        tls = json.loads(lab_cli("cert", "lb-1", name=NAME).stdout)
        # keys as operators make them (`openssl rand -hex 32`: 64 characters), longer than
        # nginx's default map hash bucket holds: the gate sets its own
        lab.ca, lab.key = tls["ca"], secrets.token_hex(32)
        (keys / "api-keys").write_text(f"# name key\napp {lab.key}\n")
        (keys / "admin-keys").write_text(f"# name key\nops {secrets.token_hex(32)}\n")
        # what prod.py names by reference (a path, a file, an environment variable), here
        given = {"nginx_tls_cert": tls["cert"], "nginx_tls_key": tls["key"],
                 "nginx_api_keys": {"file": str(keys / "api-keys")},
                 "nginx_admin_keys": {"file": str(keys / "admin-keys")}}
        prod = runpy.run_path(str(REPO / "inventory" / "prod.py"))
        labs = runpy.run_path(lab.inventory)
        network = _network(lab)
        groups = {}
        for group in ("gpu_servers", "lb_servers"):
            copied = []
            for (_, prod_data), (name, lab_data) in zip(prod[group], labs[group], strict=True):
                data = {**prod_data, **lab_data}  # the lab's connection, gpu_count, mirrors
                if group == "gpu_servers":
                    data["ollama_fanout_allow"] = [network]
                else:  # prod's front door has its gate: TLS from files, API and admin keys
                    assert prod_data["nginx_tls"] == "files", prod_data
                    assert set(given) <= set(prod_data), sorted(set(given) - set(prod_data))
                    data.update(given)
                copied.append((name, data))
            groups[group] = copied
        path = REPO / "inventory" / f"lab-{NAME}-prod.py"
        path.write_text("".join(f"{group} = {hosts!r}\n" for group, hosts in groups.items()))
        lab.prod_inventory = str(path)
        try:
            proc = lab.pyinfra("deploy.py", inventory=lab.prod_inventory)
            assert proc.returncode == 0, proc.output[-4000:]
            ca = Path(lab.ca).read_text().strip()
            lab.ssh("lb-1", f"cat > {LAB_CA} <<'EOF'\n{ca}\nEOF")
            yield lab
        finally:
            path.unlink(missing_ok=True)


def _network(lab) -> str:
    """The lab hosts' /16 (fan-out's allow list in group_data names the operator's LAN)."""
    first = lab.hosts()[0]["address"].split(".")
    return f"{first[0]}.{first[1]}.0.0/16"


def instances(fleet, host: str) -> list[dict]:
    _, out, _ = fleet.ssh(host, "docker ps --filter label=com.docker.compose.project=ollama "
                                "--format '{{.Names}}' | grep -v nginx | sort | xargs -r "
                                "docker inspect")
    return json.loads(out) if out.strip() else []


def test_each_host_runs_the_topology_prod_gives_it(fleet):
    per_gpu, shared, cpu = (instances(fleet, h) for h in ("gpu-1", "gpu-2", "cpu-1"))
    assert len(per_gpu) == 2 and len(shared) == 1 and len(cpu) == 1
    _, records, _ = fleet.ssh("gpu-2", "cat /var/lib/fleetlab/gpu-assignments.jsonl")
    mine = [json.loads(r) for r in records.splitlines()
            if json.loads(r)["container_id"] == shared[0]["Id"]]
    assert mine and sorted(mine[-1]["uuids"]) == sorted(g["uuid"] for g in
                                                        fleet.host("gpu-2")["gpus"])


def front(fleet) -> str:
    """The front door over TLS (its certificate names its address too)."""
    return f"https://{fleet.host('lb-1')['address']}"


def native_client(fleet, timeout: float) -> ollama.Client:
    return ollama.Client(host=front(fleet), timeout=timeout,
                         verify=ssl.create_default_context(cafile=fleet.ca),
                         headers={"Authorization": f"Bearer {fleet.key}"})


def openai_client(fleet, timeout: float) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{front(fleet)}/v1", api_key=fleet.key, timeout=timeout,
                         max_retries=0, http_client=httpx.Client(
                             verify=ssl.create_default_context(cafile=fleet.ca),
                             timeout=timeout))


def on_front_door(path: str) -> str:
    """A URL of the front door's gate asked from the front door itself (loopback, where
    the gate lets admin calls in without a key): by its name, over TLS, verified."""
    return (f"--cacert {LAB_CA} --resolve {FRONT_NAME}:443:127.0.0.1 "
            f"https://{FRONT_NAME}{path}")


class KeyedLoad(LoadGenerator):
    """lab.loadgen's load (the same requests, counted the same way) over TLS verified
    against CA, with an API key."""

    def __init__(self, url: str, model: str, *, ca: str, key: str, **kwargs) -> None:
        super().__init__(url, model, **kwargs)
        self.port = urlsplit(url).port or 443
        self.context = ssl.create_default_context(cafile=ca)
        self.key = key

    def _connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context,
                                           timeout=self.request_timeout)

    def _headers(self) -> dict[str, str]:
        return {**super()._headers(), "Authorization": f"Bearer {self.key}"}


def host_models(fleet, host: str) -> list[str]:
    """What HOST's own nginx lists, asked from the front door (its one trusted caller)."""
    address = fleet.host(host)["address"]
    _, out, _ = fleet.ssh("lb-1", f"curl -sS -m 10 http://{address}/api/tags")
    return sorted(m["name"] for m in json.loads(out)["models"])


GPU_MODELS = ["all-minilm:latest", "llama3.2:1b"]
CPU_MODELS = ["all-minilm:latest", "tinyllama:latest"]


def test_each_host_serves_the_models_prod_gives_it(fleet):
    assert [host_models(fleet, h) for h in ("gpu-1", "gpu-2", "cpu-1")] == \
        [GPU_MODELS, GPU_MODELS, CPU_MODELS]


def test_the_front_door_lists_the_fleets_models_and_what_is_loaded(fleet):
    client = native_client(fleet, timeout=30)
    assert sorted(m.model for m in client.list().models) == \
        ["all-minilm:latest", "llama3.2:1b", "tinyllama:latest"]
    ids = [m.id for m in openai_client(fleet, timeout=30).models.list()]
    assert sorted(ids) == ["all-minilm:latest", "llama3.2:1b", "tinyllama:latest"]
    # prod keeps llama3.2:1b warm on the GPU hosts: loaded on every instance, kept
    assert "llama3.2:1b" in [m.model for m in client.ps().models]
    for host in ("gpu-1", "gpu-2"):
        for n in range(len(instances(fleet, host))):  # ollama_base_port + n
            port = 11434 + n
            out = fleet.ssh(host, f"curl -sS -m 5 http://127.0.0.1:{port}/api/ps")[1]
            kept = {m["name"]: m["expires_at"] for m in json.loads(out)["models"]}
            assert kept.get("llama3.2:1b", "")[:4] >= "2200", (host, port, kept)


def _mixed_calls(fleet):
    """One of each kind of request applications send, for both model sets."""
    native = native_client(fleet, timeout=60)
    oai = openai_client(fleet, timeout=60)

    def native_stream(model):
        parts = list(native.chat(model=model, messages=[{"role": "user", "content": "hi"}],
                                 stream=True, options={"num_predict": 6}))
        assert parts and parts[-1].done, parts

    def oai_stream(model):
        chunks = list(oai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=6,
            stream=True))
        assert chunks and chunks[-1].choices[0].finish_reason, chunks[-1:]

    return [
        lambda: native.generate(model="llama3.2:1b", prompt="hi", options={"num_predict": 4}),
        lambda: native.generate(model="tinyllama", prompt="hi", options={"num_predict": 4}),
        lambda: native_stream("llama3.2:1b"),
        lambda: native_stream("tinyllama:latest"),
        lambda: native.embed(model="all-minilm", input=["a", "b"]),
        lambda: oai.chat.completions.create(model="llama3.2:1b", max_tokens=4,
                                            messages=[{"role": "user", "content": "hi"}]),
        lambda: oai_stream("tinyllama"),
        lambda: oai.completions.create(model="tinyllama", prompt="hi", max_tokens=4),
        lambda: oai.embeddings.create(model="all-minilm", input="hi"),
    ]


def test_a_mixed_load_through_the_front_door_gets_no_404_and_no_failure(fleet):
    calls = _mixed_calls(fleet) * 6
    failures = []

    def call(fn):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
            failures.append(repr(exc))

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(call, calls, timeout=300))
    assert failures == [], failures[:5]


def test_a_model_nobody_serves_gets_one_clear_404_from_the_front_door(fleet):
    with pytest.raises(ollama.ResponseError) as native:
        native_client(fleet, timeout=30).generate(model="nothere:7b", prompt="hi")
    assert native.value.status_code == 404
    assert native.value.error == 'model "nothere:7b" not found: no host of this fleet serves it'
    with pytest.raises(openai.NotFoundError) as oai:
        openai_client(fleet, timeout=30).chat.completions.create(
            model="nothere:7b", messages=[{"role": "user", "content": "hi"}])
    assert "no host of this fleet serves it" in str(oai.value)


def test_admin_calls_through_the_front_door_go_only_to_a_named_host(fleet):
    # from the front door's own loopback, where the gate lets admin calls in without a key
    _, out, _ = fleet.ssh("lb-1", "curl -sS -m 10 -o /dev/stderr -w '%{http_code}' -X DELETE "
                          f"{on_front_door('/api/delete')} -d '{{\"model\":\"tinyllama\"}}'")
    assert out == "403"
    _, out, err = fleet.ssh("lb-1", "curl -sS -m 10 -w '%{http_code}' -X POST "
                            f"{on_front_door('/api/copy')} -H 'X-Fleet-Host: cpu-1' "
                            "-d '{\"source\":\"tinyllama\",\"destination\":\"spare\"}'")
    assert out.endswith("200"), (out, err)
    try:
        assert "spare:latest" in host_models(fleet, "cpu-1")
        assert "spare:latest" not in host_models(fleet, "gpu-1")
    finally:
        fleet.ssh("lb-1", f"curl -sS -m 10 -X DELETE {on_front_door('/api/delete')} "
                          "-H 'X-Fleet-Host: cpu-1' -d '{\"model\":\"spare\"}'")
    assert host_models(fleet, "cpu-1") == CPU_MODELS


def test_every_request_through_the_front_door_is_answered(fleet):
    with KeyedLoad(front(fleet), "llama3.2:1b", ca=fleet.ca, key=fleet.key, threads=3,
                   num_predict=8, max_requests=60, max_seconds=120) as load:
        poll(lambda: load.stats.sent >= 60, timeout=130, what="60 requests sent")
    assert load.stats.sent >= 60, load.stats.summary()
    assert (load.stats.failed, load.stats.streams_cut) == (0, 0), load.stats.errors


def test_official_clients_call_the_front_door_by_its_dns_name(fleet):
    """`https://llm.fleetlab-prod.test`, as an application names the fleet (tests/lab/
    clients.py, run under the lab's resolver), its certificate verified against the lab's
    CA, with an API key: the front door and the GPU hosts' nginx behind it send Ollama a
    Host it accepts. All three clients stream: `ollama`, `openai` (chat completions and the
    Responses API) and `anthropic` (the Messages API, its key in `x-api-key`)."""
    proc = fleet.by_name(sys.executable, "-m", "tests.lab.clients", f"https://{FRONT_NAME}",
                         "--model", "llama3.2:1b", "--ca", fleet.ca, "--key", fleet.key,
                         "--also", "responses", "messages", check=False)
    answer = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    assert proc.returncode == 0, proc.output[-3000:]
    assert answer.pop("address") == fleet.host("lb-1")["address"]
    assert set(answer.values()) == {"ok"} and len(answer) == 8, answer


CLOUD_OFF = "ollama_allow_cloud is off for this fleet: "
GPU_HOSTS = ("gpu-1", "gpu-2", "cpu-1")


def anthropic_client(fleet, timeout: float) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=front(fleet), api_key=fleet.key, max_retries=0,
                               http_client=anthropic.DefaultHttpxClient(
                                   verify=ssl.create_default_context(cafile=fleet.ca),
                                   timeout=timeout))


def cloud_requests(fleet) -> list[dict]:
    """What the lab's ollama.com (lab/cloud/cloud.py, named so by the lab's DNS) has been
    asked, oldest first."""
    return json.loads(lab_cli("cloud-requests", name=fleet.name).stdout)


def host_clocks(fleet) -> dict[str, str]:
    return {host: fleet.ssh(host, "date +%s.%N")[1].strip() for host in GPU_HOSTS}


def nginx_requests_since(fleet, clocks: dict[str, str]) -> dict[str, list[str]]:
    """Each GPU host's nginx access log since CLOCKS (its own clock): what reached the hosts
    behind the front door (their nginx logs every API request; /health it does not)."""
    return {host: fleet.ssh(host, f"docker logs --since {since} ollama-nginx 2>/dev/null"
                            )[1].splitlines() for host, since in clocks.items()}


def test_cloud_models_and_web_search_stop_at_the_front_door(fleet):
    """Prod leaves ollama_allow_cloud off: whatever client and endpoint names a cloud model
    (`:cloud`, `-cloud`), or asks for Ollama's web search or fetch, the front door answers
    403 itself, in the shape that client reads, naming the knob; not one of these requests
    reaches a GPU host, nor the lab's ollama.com."""
    clocks, cloud_before = host_clocks(fleet), cloud_requests(fleet)
    with pytest.raises(ollama.ResponseError) as native:
        native_client(fleet, timeout=30).chat(model="gpt-oss:20b-cloud",
                                              messages=[{"role": "user", "content": "hi"}])
    assert native.value.status_code == 403 and native.value.error.startswith(CLOUD_OFF)
    oai = openai_client(fleet, timeout=30)
    with pytest.raises(openai.PermissionDeniedError) as chat:
        oai.chat.completions.create(model="gpt-oss:120b:cloud",
                                    messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.PermissionDeniedError) as responses:
        oai.responses.create(model="qwen3-coder:480b-cloud", input="hi", stream=True)
    with pytest.raises(openai.PermissionDeniedError) as web_tool:
        oai.responses.create(model="llama3.2:1b", input="news?", tools=[{"type": "web_search"}])
    for refused in (chat, responses, web_tool):  # OpenAI's shape, as Ollama's /v1/ answers
        error = refused.value.response.json()["error"]
        assert error["type"] == "api_error" and error["message"].startswith(CLOUD_OFF), error
    with pytest.raises(anthropic.PermissionDeniedError) as messages:
        with anthropic_client(fleet, timeout=30).messages.stream(
                model="gpt-oss:cloud", max_tokens=8,
                messages=[{"role": "user", "content": "hi"}]) as stream:
            list(stream.text_stream)
    answer = messages.value.response.json()  # Anthropic's shape, as Ollama's /v1/messages
    assert answer == {"type": "error", "error": {"type": "permission_error",
                                                 "message": answer["error"]["message"]}}
    assert answer["error"]["message"].startswith(CLOUD_OFF)
    with httpx.Client(base_url=front(fleet), timeout=30,
                      verify=ssl.create_default_context(cafile=fleet.ca)) as web:
        for path, body in (("/api/experimental/web_search", {"query": "fleet news"}),
                           ("/api/experimental/web_fetch", {"url": "https://ollama.com"})):
            for headers in ({"Authorization": f"Bearer {fleet.key}"}, {}):  # keys or none
                answer = web.post(path, json=body, headers=headers)
                assert answer.status_code == 403, (path, answer.text)
                assert answer.json()["error"].startswith(CLOUD_OFF), answer.text
        listed = web.get("/v1/models/gpt-oss:20b-cloud",
                         headers={"Authorization": f"Bearer {fleet.key}"})
        assert listed.status_code == 403 and \
            listed.json()["error"]["message"].startswith(CLOUD_OFF), listed.text
        # the ways Ollama reads a model that a plain `"model"` lookup would miss
        key = {"Authorization": f"Bearer {fleet.key}"}
        deep = "[" * 40 + "]" * 40  # deeper than njs's JSON.parse goes
        form = {"file": ("a.wav", b"RIFF0000WAVE", "audio/wav")}
        tricks = [
            web.post("/api/chat", headers=key, content=b'{"MODEL": "gpt-oss:cloud"}'),
            web.post("/api/generate", headers=key,
                     content=b'{"mod\\u0065l": "gpt-oss:cloud", "x": ' + deep.encode() + b"}"),
            web.post("/v1/responses", headers=key, content='{"model": "llama3.2:1b", '
                     '"tool\u017f": [{"type": "web_search"}]}'.encode()),
            web.post("/v1/audio/transcriptions", headers=key, data={"model": "whisper:cloud"},
                     files=form),
            web.post("/v1/audio/transcriptions", headers=key, params={"model": "whisper:cloud"},
                     data={"model": "llama3.2:1b"}, files=form),
            web.post("/api/chat", headers={**key, "Content-Encoding": "zstd"},
                     content=b"\x28\xb5\x2f\xfd not readable here"),
        ]
        assert [t.status_code for t in tricks] == [403] * 5 + [415], [t.text for t in tricks]
    assert nginx_requests_since(fleet, clocks) == {h: [] for h in GPU_HOSTS}
    assert cloud_requests(fleet)[len(cloud_before):] == []


def test_the_gpu_hosts_nginx_refuses_web_search_itself(fleet):
    """Behind the front door, a GPU host's own nginx (asked from the front door, its one
    trusted caller) refuses the web endpoints too, and its Ollama (OLLAMA_NO_CLOUD) a cloud
    model: neither reaches the lab's ollama.com."""
    cloud_before = cloud_requests(fleet)
    address = fleet.host("gpu-1")["address"]
    _, out, _ = fleet.ssh("lb-1", "curl -sS -m 10 -w ' %{http_code}' "
                          f"http://{address}/api/experimental/web_search "
                          "-d '{\"query\":\"fleet news\"}'")
    body, status = out.rsplit(" ", 1)
    assert status == "403" and json.loads(body)["error"].startswith(CLOUD_OFF), out
    _, out, _ = fleet.ssh("lb-1", "curl -sS -m 30 -w ' %{http_code}' "
                          f"http://{address}/api/chat "
                          "-d '{\"model\":\"gpt-oss:20b-cloud\",\"messages\":[]}'")
    body, status = out.rsplit(" ", 1)
    assert status == "403" and "ollama cloud is disabled" in json.loads(body)["error"], out
    assert cloud_requests(fleet)[len(cloud_before):] == []


def test_a_roll_of_gpu_hosts_named_by_dns_passes_its_smoke_test(fleet):
    """prod.py names its GPU hosts by DNS: the same inventory with the lab's names (the
    front door stays at its address, as prod.py has it), rolled under the lab's resolver.
    Last: the front door then reaches the GPU hosts by name."""
    groups = runpy.run_path(fleet.prod_inventory)
    gpu = [(name, {**data, "ssh_hostname": fleet.host(name)["dns"]})
           for name, data in groups["gpu_servers"]]
    path = REPO / "inventory" / f"lab-{NAME}-by-name.py"
    path.write_text(f"gpu_servers = {gpu!r}\nlb_servers = {groups['lb_servers']!r}\n")
    try:
        proc = fleet.by_name(sys.executable, "-m", "ollama_fleet", str(path), "roll", "-y",
                             "--limit", "gpu-1", timeout=1200, check=False)
    finally:
        path.unlink(missing_ok=True)
    assert proc.returncode == 0, proc.output[-4000:]
    assert re.search(r"--> roll: gpu-1: healthy, answers, version [\d.]+", proc.output), \
        proc.output[-4000:]
    _, conf, _ = fleet.ssh("lb-1", "cat /opt/ollama-front/nginx/front.conf")
    assert f"gpu-1.{NAME}.test" in conf  # the front door now reaches the hosts by name
    test_official_clients_call_the_front_door_by_its_dns_name(fleet)
