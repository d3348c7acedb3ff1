"""`pyinfra -y INVENTORY deploy.py` on a fresh lab fleet: converge, then change nothing.

One lab (2 GPU hosts with 2 GPUs, 1 CPU host), tests in file order: what must see
fresh hosts (--dry, bad inventories) runs before the deploy.
"""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
import urllib.request
from pathlib import Path

import httpx
import pytest

from tests.labfleet import REPO, lab_cli
from tests.unit.test_settings import BAD_DATA

pytestmark = pytest.mark.lab

FOREIGN_DAEMON_JSON = {"data-root": "/var/lib/docker",
                       "default-address-pools": [{"base": "10.201.0.0/16", "size": 24}]}


@pytest.fixture(scope="module")
def fleet(deploy_lab):
    return deploy_lab


def fingerprint(fleet, host: str) -> str:
    """What a deploy would change on a fresh host, as one comparable text."""
    _, out, _ = fleet.ssh(host, "ls /etc/apt/sources.list.d /etc/modprobe.d 2>/dev/null; "
                                "ls /opt /etc/docker 2>&1; command -v docker nvidia-smi; "
                                "dpkg-query -W -f '${Package}\\n' | md5sum", check=False)
    return out


def test_dry_run_changes_nothing(fleet):
    before = {h["name"]: fingerprint(fleet, h["name"]) for h in fleet.hosts()}
    proc = fleet.pyinfra("deploy.py", "--dry", yes=False)
    assert proc.returncode == 0, proc.output
    assert "NVIDIA driver 590 (open)" in proc.output
    assert {h["name"]: fingerprint(fleet, h["name"]) for h in fleet.hosts()} == before


def _bad_inventory(fleet, tmp_path: Path, data: dict) -> Path:
    """The lab inventory with DATA merged into gpu-1's host data."""
    groups = runpy.run_path(fleet.inventory)
    gpu = [(n, {**d, **data}) if n == "gpu-1" else (n, d) for n, d in groups["gpu_servers"]]
    # next to the real one, so group_data/ applies exactly as in a real run
    path = Path(fleet.inventory).with_name(f"lab-bad-{tmp_path.name}.py")
    path.write_text(f"gpu_servers = {gpu!r}\nlb_servers = {groups['lb_servers']!r}\n")
    return path


@pytest.mark.parametrize("data, line", BAD_DATA, ids=[line.split(": ")[1] for _, line in BAD_DATA])
def test_bad_inventory_stops_before_any_host_is_touched(fleet, tmp_path, data, line):
    before = fingerprint(fleet, "gpu-1")
    inventory = _bad_inventory(fleet, tmp_path, data)
    try:
        proc = fleet.pyinfra("deploy.py", inventory=str(inventory))
    finally:
        inventory.unlink()
    assert proc.returncode != 0
    output = proc.output
    assert f"    {line}\n" in output, output
    assert "invalid inventory data, no host was changed" in output
    assert "Starting operation" not in output
    assert fingerprint(fleet, "gpu-1") == before


def test_missing_kernel_headers_fail_the_driver_step_named_before_any_reboot(fleet):
    """DKMS builds the module against the running kernel's headers; without them the real
    driver installs, the module is not built, and nvidia-smi fails after the reboot. The
    deploy stops at the driver step first, naming the package, with nothing installed."""
    kernel = fleet.ssh("gpu-2", "uname -r")[1].strip()
    fleet.ssh("gpu-2", "printf 'Package: linux-headers-*\\nPin: version *\\nPin-Priority: -1\\n'"
                       " > /etc/apt/preferences.d/no-headers")
    booted = fleet.started_at("gpu-2")
    try:
        proc = fleet.pyinfra("deploy.py", limit="gpu-2")
    finally:
        fleet.ssh("gpu-2", "rm -f /etc/apt/preferences.d/no-headers")
    assert proc.returncode == 1, proc.output[-3000:]
    assert '--> gpu-2: failed at step "NVIDIA driver 590 (open)"' in proc.output, \
        proc.output[-3000:]
    assert (f"linux-headers-{kernel}: not in this host's apt sources; the driver's module "
            f"cannot be built for the running kernel {kernel}") in proc.output
    assert fleet.ssh("gpu-2", "dpkg -s nvidia-driver-cuda", check=False)[0] != 0
    assert fleet.started_at("gpu-2") == booted  # not rebooted


def test_first_run_converges(fleet):
    fleet.ssh("gpu-1", f"mkdir -p /etc/docker && echo '{json.dumps(FOREIGN_DAEMON_JSON)}' "
                       "> /etc/docker/daemon.json")
    proc = fleet.pyinfra("deploy.py")
    assert proc.returncode == 0, proc.output[-5000:]


def test_streamed_generate_through_each_hosts_nginx(fleet):
    for host in fleet.hosts():
        url = f"http://{host['address']}/api/generate"
        with httpx.stream("POST", url, json={"model": "tinyllama", "prompt": "hello"},
                          timeout=60) as response:
            assert response.status_code == 200
            lines = [json.loads(line) for line in response.iter_lines() if line]
        assert len(lines) > 3 and not any(line["done"] for line in lines[:-1])
        assert lines[-1]["done"] and "".join(line["response"] for line in lines).strip()


def test_official_clients_call_each_host_by_its_dns_name(fleet):
    """An application on the operator's side names each host by DNS (the lab's zone,
    `gpu-1.fleetlab-deploy.test`): Ollama on loopback refuses a Host that is not local,
    so the host's nginx must send one it accepts (tests/lab/clients.py: list, streamed
    generate, chat, embed through `ollama`; streamed chat completion, models through
    `openai`)."""
    for host in fleet.hosts():
        proc = fleet.by_name(sys.executable, "-m", "tests.lab.clients",
                             f"http://{host['dns']}", "--model", "tinyllama", check=False)
        answer = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
        assert proc.returncode == 0, (host["name"], proc.output[-3000:])
        assert answer.pop("address") == host["address"]
        assert set(answer.values()) == {"ok"} and len(answer) == 6, answer


def test_each_instance_received_exactly_its_gpu(fleet):
    for host in fleet.hosts("gpu"):
        _, records, _ = fleet.ssh(host["name"], "cat /var/lib/fleetlab/gpu-assignments.jsonl")
        for index, gpu in enumerate(host["gpus"]):
            _, cid, _ = fleet.ssh(host["name"], f"docker inspect -f '{{{{.Id}}}}' ollama-{index}")
            mine = [json.loads(r) for r in records.splitlines()
                    if json.loads(r)["container_id"] == cid.strip()]
            assert mine and mine[-1]["uuids"] == [gpu["uuid"]], (host["name"], index, mine)
    # the CPU host's instance asked for no GPU at all
    status, _, _ = fleet.ssh("cpu-1", "test -e /var/lib/fleetlab/gpu-assignments.jsonl",
                             check=False)
    assert status != 0


def test_models_listed_by_every_instance(fleet):
    for host in fleet.hosts():
        ports = [11434 + i for i in range(max(1, len(host["gpus"])))]
        for port in ports:
            _, out, _ = fleet.ssh(host["name"], f"curl -sS http://127.0.0.1:{port}/api/tags")
            assert [m["name"] for m in json.loads(out)["models"]] == ["tinyllama:latest"]


DRIVER_PACKAGES = ("nvidia-driver-pinning-590", "nvidia-driver-cuda", "nvidia-kernel-open-dkms",
                   "nvidia-persistenced", "nvidia-fabricmanager")


@pytest.mark.parametrize("host", ["gpu-1", "gpu-2"])
def test_gpu_hosts_run_debian13s_driver_held_with_its_services(fleet, host):
    """NVIDIA's debian13 repository under its own key, the 590 scheme, the headers first,
    held packages; an HGX board's Fabric Manager and nvidia-persistenced running."""
    kernel = fleet.ssh(host, "uname -r")[1].strip()
    _, versions, _ = fleet.ssh(host, "dpkg-query -W -f '${Package} ${Version}\\n' "
                                     + " ".join(DRIVER_PACKAGES) + f" linux-headers-{kernel}")
    installed = dict(line.split() for line in versions.splitlines())
    assert {p: installed.get(p) for p in DRIVER_PACKAGES} == {
        p: "590.44.01-1" for p in DRIVER_PACKAGES}
    assert f"linux-headers-{kernel}" in installed
    # the flavour's headers: the next kernel's module is built too
    flavour = "-".join(w for w in kernel.split("-")[1:] if not w.isdigit())
    assert fleet.ssh(host, f"dpkg -s linux-headers-{flavour}", check=False)[0] == 0
    # the pin holds the branch; Fabric Manager is left to follow the driver inside it
    assert set(fleet.ssh(host, "apt-mark showhold")[1].split()) == {"nvidia-driver-pinning-590"}
    _, sources, _ = fleet.ssh(host, "cat /etc/apt/sources.list.d/cuda.list")
    assert "/compute/cuda/repos/debian13/x86_64/ /" in sources
    _, colons, _ = fleet.ssh(host, "gpg --show-keys --with-colons "
                                   "/usr/share/keyrings/cuda-archive-keyring.gpg")
    fingerprints = [line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr")]
    assert fingerprints[:1] == [fleet.info["nvidia_keys"]["debian13"]]
    assert " contrib" in fleet.ssh(host, "cat /etc/apt/sources.list")[1]
    _, active, _ = fleet.ssh(host, "systemctl is-active nvidia-persistenced "
                                   "nvidia-fabricmanager", check=False)
    assert active.split() == ["active", "active"]
    _, smi, _ = fleet.ssh(host, "nvidia-smi --query-gpu=driver_version,persistence_mode "
                                "--format=csv,noheader")
    assert smi.splitlines() == ["590.44.01, Enabled"] * 2


def test_every_gpu_instance_infers_on_its_gpu(fleet):
    """A loaded model all in GPU memory on every instance, and the fleet view says so."""
    for host in ("gpu-1", "gpu-2"):
        for port in (11434, 11435):
            _, ps, _ = fleet.ssh(host, f"curl -sS http://127.0.0.1:{port}/api/ps")
            models = json.loads(ps)["models"]
            assert models, (host, port, ps)
            assert all(m["size_vram"] == m["size"] > 0 for m in models), (host, port, ps)
    proc = subprocess.run([sys.executable, "-m", "ollama_fleet", fleet.inventory, "status",
                           "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    views = {v["host"]: v for v in json.loads(proc.stdout)}
    for host in ("gpu-1", "gpu-2"):
        placed = [p for i in views[host]["instances"] for p in i["placement"]]
        assert placed and {p["on"] for p in placed} == {"GPU"}, views[host]


def test_ollama_ports_are_private(fleet):
    host = fleet.host("gpu-1")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{host['address']}:11434/", timeout=3)
    assert httpx.get(f"http://{host['address']}/health", timeout=5).status_code == 200


def test_foreign_daemon_json_keys_survive(fleet):
    _, out, _ = fleet.ssh("gpu-1", "cat /etc/docker/daemon.json")
    daemon = json.loads(out)
    for key, value in FOREIGN_DAEMON_JSON.items():
        assert daemon[key] == value
    assert daemon["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    assert daemon["log-opts"] == {"max-size": "50m", "max-file": "3"}
    _, info, _ = fleet.ssh("gpu-1", "docker info --format '{{json .Runtimes}}'")
    assert "nvidia" in json.loads(info)
    # the engine runs with live-restore: a dockerd restart leaves the stack serving
    _, live, _ = fleet.ssh("gpu-1", "docker info --format '{{.LiveRestoreEnabled}}'")
    assert live.strip() == "true"


def _docker_pids(fleet) -> dict:
    return {h["name"]: fleet.ssh(h["name"], "systemctl show -p MainPID --value docker")[1]
            for h in fleet.hosts()}


def test_second_run_changes_nothing_and_docker_keeps_running(fleet):
    pids = _docker_pids(fleet)
    proc = fleet.pyinfra("deploy.py")
    assert proc.returncode == 0, proc.output[-3000:]
    results = proc.output.split("--> Results:")[-1]
    grand_total = next(line for line in results.splitlines() if "Grand total" in line).split()
    # Grand total <ops> <success> <error> <no change>: no op succeeded with a change
    assert grand_total[3:5] == ["-", "-"], results
    assert _docker_pids(fleet) == pids


def test_registry_served_each_model_once_per_fleet(fleet):
    # fan-out: one host pulled tinyllama from the registry, the others copied it
    with urllib.request.urlopen(f"{fleet.endpoint('model_registry')}/_lab/stats") as response:
        stats = json.load(response)
    model = next(m for m in stats["models"] if m["name"].endswith("tinyllama"))
    assert stats["blob_bytes_sent"] == model["size"]
    digests = set()
    for host in fleet.hosts():
        _, out, _ = fleet.ssh(host["name"], "curl -sS http://127.0.0.1:11434/api/tags")
        digests |= {m["digest"] for m in json.loads(out)["models"]}
    assert len(digests) == 1


def test_image_change_rolls_instances_one_at_a_time_without_failed_requests(fleet):
    """No front door here: the host's own nginx keeps serving while instances are recreated."""
    from lab.loadgen import LoadGenerator

    host = fleet.host("gpu-1")
    _, before, _ = fleet.ssh("gpu-1", "docker inspect -f '{{.Id}}' ollama-0 ollama-1")
    with LoadGenerator(f"http://{host['address']}", "tinyllama", threads=3,
                       num_predict=40) as load:
        proc = fleet.pyinfra("deploy.py", "--data", "ollama_image=ollama/ollama:0.7.0",
                             limit="gpu-1")
    assert proc.returncode == 0, proc.output[-4000:]
    stats = load.stats
    assert stats.sent >= 10 and (stats.failed, stats.streams_cut) == (0, 0), stats.errors
    _, after, _ = fleet.ssh("gpu-1", "docker inspect -f '{{.Id}}' ollama-0 ollama-1")
    assert set(before.split()).isdisjoint(after.split()), "instances were not recreated"
    for port in (11434, 11435):
        _, out, _ = fleet.ssh("gpu-1", f"curl -sS http://127.0.0.1:{port}/api/version")
        assert json.loads(out)["version"] == "0.7.0"
    _, conf, _ = fleet.ssh("gpu-1", "cat /opt/ollama/nginx/ollama.conf")
    assert " down;" not in conf


def test_an_unknown_model_fails_fast_naming_model_and_host(fleet):
    def blob_bytes() -> int:
        with urllib.request.urlopen(f"{fleet.endpoint('model_registry')}/_lab/stats") as answer:
            return json.load(answer)["blob_bytes_sent"]

    before = blob_bytes()
    proc = fleet.pyinfra("deploy.py", "--data",
                         'ollama_models=["tinyllama", "qwen2.5:0.5b", "no-such-model"]',
                         limit="cpu-1")
    assert proc.returncode != 0
    assert "ollama_models: no-such-model:latest: not in the registry (HTTP 404" in proc.output
    assert '--> cpu-1: failed at step "Every missing model known to the registry"' in proc.output
    assert blob_bytes() == before  # nothing was downloaded, not even the known model
    _, out, _ = fleet.ssh("cpu-1", "curl -sS http://127.0.0.1:11434/api/tags")
    assert [m["name"] for m in json.loads(out)["models"]] == ["tinyllama:latest"]


def test_official_clients_call_a_host_by_name_over_tls(fleet):
    """A GPU host with no front door, its own TLS (the lab CA's certificate for its DNS
    name): the clients call `https://gpu-1.<lab>.test`, verified; then TLS off again."""
    tls = json.loads(lab_cli("cert", "gpu-1", name=fleet.name).stdout)
    try:
        proc = fleet.pyinfra("deploy.py", "--data", "nginx_tls=files",
                             "--data", f"nginx_tls_cert={tls['cert']}",
                             "--data", f"nginx_tls_key={tls['key']}", limit="gpu-1")
        assert proc.returncode == 0, proc.output[-4000:]
        host = fleet.host("gpu-1")
        proc = fleet.by_name(sys.executable, "-m", "tests.lab.clients", f"https://{host['dns']}",
                             "--model", "tinyllama", "--ca", tls["ca"], check=False)
        answer = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
        assert proc.returncode == 0, proc.output[-3000:]
        assert answer.pop("address") == host["address"]
        assert set(answer.values()) == {"ok"} and len(answer) == 6, answer
    finally:
        proc = fleet.pyinfra("deploy.py", limit="gpu-1")
        assert proc.returncode == 0, proc.output[-4000:]
