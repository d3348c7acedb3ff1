"""The lab's hosts behave like fresh Debian servers, and its GPU simulation like NVIDIA's.

Tests run in file order against one shared lab (one GPU host, one CPU host).
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path

import ollama
import paramiko
import pytest

from lab.fleet import Lab
from lab.inventory import render_inventory
from tests.labfleet import PYINFRA, REPO, lab_cli, poll

pytestmark = pytest.mark.lab


def test_root_ssh_with_the_lab_key(core_lab):
    for host in core_lab.hosts():
        _, out, _ = core_lab.ssh(host["name"],
                                 "id -un; hostname; systemctl is-system-running || true")
        user, hostname, system_state = out.split()
        assert (user, hostname) == ("root", host["name"])
        assert system_state in ("running", "degraded")
        # systemd is PID 1
        _, comm, _ = core_lab.ssh(host["name"], "cat /proc/1/comm")
        assert comm.strip() == "systemd"


def test_password_login_is_refused(core_lab):
    address = core_lab.host("cpu-1")["address"]
    transport = paramiko.Transport((address, 22))
    try:
        transport.start_client(timeout=10)
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_password("root", "root")
        assert "password" not in (transport.auth_none("root") or [])
    except paramiko.BadAuthenticationType as exc:
        assert "password" not in exc.allowed_types
    finally:
        transport.close()


def test_hosts_have_their_own_ssh_host_keys(core_lab):
    keys = {core_lab.ssh(h["name"], "cat /etc/ssh/ssh_host_ed25519_key.pub")[1].split()[1]
            for h in core_lab.hosts()}
    assert len(keys) == len(core_lab.hosts())


def test_fresh_host_has_no_docker_and_no_nvidia(core_lab):
    for host in core_lab.hosts():
        for command in ("docker", "dockerd", "nvidia-smi", "nvidia-ctk"):
            status, _, _ = core_lab.ssh(host["name"], f"command -v {command}", check=False)
            assert status != 0, f"{host['name']} already has {command}"
        _, pkgs, _ = core_lab.ssh(host["name"], "dpkg-query -W -f '${Package}\\n'")
        assert not [p for p in pkgs.split() if p.startswith(("docker", "nvidia", "cuda"))]


def test_simulated_gpus_are_described_as_hardware(core_lab):
    gpu = core_lab.host("gpu-1")
    assert [g["index"] for g in gpu["gpus"]] == [0, 1]
    assert all(g["name"] == "NVIDIA H100 80GB HBM3" and g["memory_total_mib"] == 81559
               for g in gpu["gpus"])
    assert len({g["uuid"] for g in gpu["gpus"]}) == 2
    _, out, _ = core_lab.ssh("gpu-1", "cat /etc/fleetlab/gpus.json")
    assert json.loads(out)["gpus"] == gpu["gpus"]
    assert core_lab.host("cpu-1")["gpus"] == []


def _getent(output: str) -> dict[str, str]:
    """`getent hosts NAME...` output as {name: address}."""
    return {line.split()[1]: line.split()[0] for line in output.splitlines()}


def test_lab_names_resolve_on_the_operators_side_and_this_machine_is_untouched(core_lab):
    before = Path("/etc/resolv.conf").read_text()
    names = [h["dns"] for h in core_lab.hosts()]
    assert names == [f"{h['name']}.{core_lab.name}.test" for h in core_lab.hosts()]
    found = _getent(core_lab.by_name("getent", "hosts", *names).stdout)
    assert found == {h["dns"]: h["address"] for h in core_lab.hosts()}
    # the services by name; no front door name in a lab without lb hosts
    zone = core_lab.endpoint("dns_zone")
    found = _getent(core_lab.by_name("getent", "hosts", f"blobs.{zone}").stdout)
    assert found == {f"blobs.{zone}": core_lab.endpoint("dns_server")}
    assert core_lab.endpoint("front_door_name") is None
    assert core_lab.by_name("getent", "hosts", f"llm.{zone}", check=False).returncode == 2
    assert Path("/etc/resolv.conf").read_text() == before


def test_hosts_resolve_each_other_and_the_services_by_name(core_lab):
    zone = core_lab.endpoint("dns_zone")
    _, resolv, _ = core_lab.ssh("gpu-1", "cat /etc/resolv.conf")
    assert f"nameserver {core_lab.endpoint('dns_server')}" in resolv.splitlines()
    assert f"search {zone}" in resolv.splitlines()
    _, out, _ = core_lab.ssh("gpu-1", f"getent hosts cpu-1.{zone} registry.{zone} blobs")
    assert _getent(out) == {f"cpu-1.{zone}": core_lab.host("cpu-1")["address"],
                            f"registry.{zone}": core_lab.endpoint("dns_server"),
                            f"blobs.{zone}": core_lab.endpoint("dns_server")}
    # names outside the zone are forwarded: the next test's apt finds the Debian mirror


def test_pyinfra_reaches_hosts_by_name(core_lab):
    lab = Lab(core_lab.name)
    # next to the real inventory, so group_data/ applies as in a real run
    path = Path(core_lab.inventory).with_name(f"lab-{core_lab.name}-by-name.py")
    path.write_text(render_inventory(lab, lab.load(), by_name=True))
    try:
        assert "'ssh_hostname': 'gpu-1." in path.read_text()
        proc = core_lab.by_name(PYINFRA, "-y", str(path), "exec", "--", "hostname")
        assert "gpu-1" in proc.output and "cpu-1" in proc.output
    finally:
        path.unlink()


def test_apt_installs_from_the_mirror(core_lab):
    core_lab.ssh("cpu-1", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
                 "apt-get install -y -qq --no-install-recommends jq >/dev/null")
    _, out, _ = core_lab.ssh("cpu-1", "echo '{\"a\": 1}' | jq .a")
    assert out.strip() == "1"


def test_reboot_through_pyinfra_comes_back(core_lab):
    before = core_lab.started_at("cpu-1")
    _, uptime_before, _ = core_lab.ssh("cpu-1", "cat /proc/uptime")
    core_lab.forget("cpu-1")
    proc = core_lab.pyinfra(str(REPO / "tests/lab/deploys/reboot.py"), limit="cpu-1",
                            timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert core_lab.started_at("cpu-1") != before, "the host did not restart"
    _, uptime_after, _ = core_lab.ssh("cpu-1", "cat /proc/uptime")
    assert float(uptime_after.split()[0]) < float(uptime_before.split()[0]) + 5
    # the jq installed before the reboot is still there: a reboot is not a reimage
    core_lab.ssh("cpu-1", "command -v jq")


GPU_COMPOSE = """\
services:
  ollama:
    image: ollama/ollama:0.6.8
    ports: ["11434:11434"]
    healthcheck:
      test: ["CMD", "ollama", "list"]
      interval: 2s
      retries: 30
    deploy:
      resources:
        reservations:
          devices:
            - driver: nvidia
              device_ids: ["1"]
              capabilities: [gpu]
"""


@pytest.fixture(scope="module")
def gpu_host_with_toolkit(core_lab):
    """gpu-1 with Docker, the lab's NVIDIA packages, and a reboot to load the 'driver'."""
    apt = core_lab.endpoint("apt_repository")
    mirror = core_lab.endpoint("image_registry", "mirror")
    cuda = apt["cuda"].replace("{distro}", "debian13")
    script = f"""
set -e
export DEBIAN_FRONTEND=noninteractive
curl -fsSL {apt['nvidia_container_toolkit_gpgkey']} \
  | gpg --dearmor -o /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
echo 'deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] \
{apt['nvidia_container_toolkit']}/stable/deb/amd64 /' \
  > /etc/apt/sources.list.d/nvidia-container-toolkit.list
curl -fsSL {cuda}/8793F200.pub | gpg --dearmor -o /usr/share/keyrings/cuda-archive-keyring.gpg
echo 'deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] {cuda}/ /' \
  > /etc/apt/sources.list.d/cuda.list
apt-get update -qq
apt-get install -y -qq --no-install-recommends docker.io docker-compose \
  docker-cli nvidia-container-toolkit "linux-headers-$(uname -r)" nvidia-driver-pinning-590 \
  >/dev/null
apt-get install -y -qq --no-install-recommends nvidia-driver-cuda nvidia-kernel-open-dkms \
  >/dev/null
mkdir -p /etc/docker
echo '{{"registry-mirrors": ["{mirror}"]}}' > /etc/docker/daemon.json
nvidia-ctk runtime configure --runtime=docker
"""
    core_lab.ssh("gpu-1", script, timeout=600)
    status, out, _ = core_lab.ssh("gpu-1", "nvidia-smi", check=False)
    assert status == 9 and "couldn't communicate with the NVIDIA driver" in out
    core_lab.reboot("gpu-1")
    return core_lab


def test_compose_device_ids_gives_exactly_that_gpu(gpu_host_with_toolkit):
    lab = gpu_host_with_toolkit
    _, listing, _ = lab.ssh("gpu-1", "nvidia-smi -L")
    assert listing.count("GPU ") == 2
    lab.ssh("gpu-1", f"mkdir -p /srv/t && cat > /srv/t/compose.yaml <<'EOF'\n{GPU_COMPOSE}EOF\n"
                     "cd /srv/t && docker compose up -d --wait", timeout=300)
    _, cid, _ = lab.ssh("gpu-1", "cd /srv/t && docker compose ps -q ollama")
    _, records, _ = lab.ssh("gpu-1", "cat /var/lib/fleetlab/gpu-assignments.jsonl")
    mine = [json.loads(line) for line in records.splitlines()
            if json.loads(line)["container_id"] == cid.strip()]
    uuid_1 = lab.host("gpu-1")["gpus"][1]["uuid"]
    assert mine and mine[-1]["indexes"] == [1] and mine[-1]["uuids"] == [uuid_1]
    _, inside, _ = lab.ssh("gpu-1", "cd /srv/t && docker compose exec -T ollama nvidia-smi -L")
    assert inside.strip().splitlines() == [f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: {uuid_1})"] or \
        (uuid_1 in inside and inside.count("GPU ") == 1)


def test_containers_on_a_lab_host_resolve_lab_names(gpu_host_with_toolkit):
    lab = gpu_host_with_toolkit
    blobs = f"blobs.{lab.endpoint('dns_zone')}"
    want = {blobs: lab.endpoint("dns_server")}
    # on a Compose network (Docker's embedded resolver forwards to the host's nameserver)
    _, out, _ = lab.ssh("gpu-1", f"cd /srv/t && docker compose exec -T ollama getent hosts {blobs}")
    assert _getent(out) == want
    # on the default bridge (the engine copies the host's resolv.conf)
    _, out, _ = lab.ssh("gpu-1", "docker run --rm --entrypoint getent ollama/ollama:0.6.8 "
                                 f"hosts {blobs}")
    assert _getent(out) == want


def _registry_stats(lab) -> dict:
    with urllib.request.urlopen(f"{lab.endpoint('model_registry')}/_lab/stats", timeout=10) as r:
        return json.load(r)


def test_pull_through_the_stand_in_image_counts_every_byte(gpu_host_with_toolkit):
    lab = gpu_host_with_toolkit
    client = ollama.Client(host=f"http://{lab.host('gpu-1')['address']}:11434", timeout=120)
    before = _registry_stats(lab)
    model = next(m for m in before["models"] if m["name"].endswith("tinyllama"))
    lines = list(client.pull("tinyllama", stream=True))
    assert lines[-1].status == "success"
    assert any(line.completed and line.total for line in lines)
    # the registry counts a write once it returned: give it a bounded moment to catch up
    moved = poll(lambda: _registry_stats(lab)["blob_bytes_sent"] - before["blob_bytes_sent"]
                 >= model["size"] and _registry_stats(lab)["blob_bytes_sent"]
                 - before["blob_bytes_sent"], timeout=10, interval=0.1, what="byte counter")
    assert moved == model["size"]
    tags = client.list()
    assert [m.model for m in tags.models] == ["tinyllama:latest"]
    # Ollama lists a model by the sha256 of the manifest it keeps (its own re-encoding of
    # the registry's), as real Ollama does
    _, kept, _ = lab.ssh("gpu-1", "cd /srv/t && docker compose exec -T ollama sha256sum "
                         "/root/.ollama/models/manifests/registry.ollama.ai/library/tinyllama/"
                         "latest")
    assert tags.models[0].digest == kept.split()[0]
    chunks = list(client.generate(model="tinyllama", prompt="hello", stream=True))
    assert len(chunks) > 2 and chunks[-1].done
    # the model lives on the host in Ollama's own store layout, inside the container
    lab.ssh("gpu-1", "cd /srv/t && docker compose exec -T ollama test -f "
                     "/root/.ollama/models/manifests/registry.ollama.ai/library/tinyllama/latest")


def test_ask_answers_by_name(gpu_host_with_toolkit):
    lab = gpu_host_with_toolkit
    proc = lab_cli("ask", "hello", "--host", "gpu-1", "--port", "11434", name=lab.name,
                   timeout=120)
    first = proc.stdout.splitlines()[0]
    assert first == (f"asked gpu-1.{lab.endpoint('dns_zone')}:11434 "
                     f"({lab.host('gpu-1')['address']} by the lab DNS): HTTP 200")
    assert "chunks streamed" in proc.stdout
    lab.ssh("gpu-1", "cd /srv/t && docker compose down", timeout=120)


def test_cut_and_restore_a_host(core_lab):
    address = core_lab.host("cpu-1")["address"]
    lab_cli("cut", "cpu-1", name=core_lab.name)
    try:
        core_lab.forget("cpu-1")
        with pytest.raises(OSError):
            socket.create_connection((address, 22), timeout=3).close()
        assert core_lab.refresh() and core_lab.host("cpu-1")["state"] == "cut"
    finally:
        lab_cli("restore", "cpu-1", name=core_lab.name)
    core_lab.refresh()
    assert core_lab.host("cpu-1")["state"] == "running"
    assert core_lab.ssh("cpu-1", "true")[0] == 0


def test_kill_keeps_a_host_off_until_restored(core_lab):
    lab_cli("kill", "cpu-1", name=core_lab.name)
    core_lab.forget("cpu-1")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # a bounded look: it must stay off, not come back
        assert core_lab.refresh() and core_lab.host("cpu-1")["state"] == "stopped"
        time.sleep(1)
    lab_cli("restore", "cpu-1", name=core_lab.name)
    assert core_lab.ssh("cpu-1", "true")[0] == 0
