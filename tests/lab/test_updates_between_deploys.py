"""Updates that arrive through apt between deploys, with no deploy run after them: a new
kernel, then a new driver of the branch, each followed by a reboot (issue 26).

One converged HGX H100 host with one GPU (one instance). The lab's updates repositories
(lab/nvidia/repo.py, `updates_sources`) stand for what the Debian archive and NVIDIA's
debian13 repository publish after the deploy: the next kernel of the running one's flavour
and driver 590.48.01. The host gets them as a server does, by adding their sources, then
`apt-get update` and `apt-get upgrade`. The Debian archive's own updates are held back for
the test (an apt preference: the mirror moves on its own schedule); the lab's repositories
move whatever apt upgrades where the deploy holds nothing (the Container Toolkit stays: an
apt preferences file keeps it at the deploy's version).

Before each reboot the host says it needs one (the deploy's RebootRequired fact, run as
the deploy runs it); after it, the module is there for the kernel that runs, Fabric
Manager is the driver's version and runs, and the instance serves from its GPU."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from lab.nvidia import packages
from lab.nvidia.repo import updates_sources
from ollama_fleet.tasks.kit.facts import reboot_required
from ollama_fleet.tasks.kit.scripts import script_command
from tests.conftest import running_lab
from tests.labfleet import REPO, poll

pytestmark = pytest.mark.lab

NAME = "fleetlab-updates"
MODEL = "tinyllama"
INSTANCES = {"ollama-0": 11434}
DEPLOY = ("deploy.py", "--data", f'ollama_models=["{MODEL}"]')
DRIVER = packages.PINNED_VERSION
UPDATE = packages.UPDATE_VERSION
DRIVER_PACKAGES = ("nvidia-driver-cuda", "nvidia-kernel-open-dkms", "nvidia-persistenced",
                   "nvidia-fabricmanager")
APT = "DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Options::=--force-confold"
# the Debian archive's own updates wait: the mirror moves on its own schedule, the test
# is about the event (installed versions keep priority 100, these get 99)
HOLD_DEBIAN = "Package: *\nPin: release o=Debian\nPin-Priority: 99\n"


@pytest.fixture(scope="module")
def fleet():
    with running_lab(NAME, "--gpu-hosts", "1", "--gpus-per-host", "1",
                     "--registry-port", "5066", "--model-scale", "0.1") as lab:
        proc = lab.pyinfra(*DEPLOY)
        assert proc.returncode == 0, proc.output[-4000:]
        lab.ssh("gpu-1", f"printf %s {shlex.quote(HOLD_DEBIAN)} "
                         "> /etc/apt/preferences.d/fleetlab-test-hold-debian")
        yield lab


def arrives(fleet, repository: str) -> None:
    """REPOSITORY's updates ("kernel", "debian13") published and seen by gpu-1's apt."""
    base = fleet.endpoint("apt_repository", "base")
    fleet.ssh("gpu-1", f"printf %s {shlex.quote(updates_sources(base, repository))} "
                       f"> /etc/apt/sources.list.d/fleetlab-updates-{repository}.list")
    fleet.ssh("gpu-1", f"{APT} update")


def reasons(fleet) -> list[str]:
    """Why gpu-1 must reboot ([]: it need not), as the operator sees it:
    `ollama-fleet INVENTORY status --json`, and the table says the same."""
    for form in ("--json", None):
        proc = subprocess.run([sys.executable, "-m", "ollama_fleet", fleet.inventory, "status",
                               *([form] if form else []), "--limit", "gpu-1"],
                              cwd=REPO, capture_output=True, text=True, timeout=180,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode in (0, 1), proc.stderr
        if form:
            (view,) = json.loads(proc.stdout)
            found = view["reboot_required"]
        else:
            assert [line.split("reboot required: ", 1)[1] for line in proc.stdout.splitlines()
                    if "reboot required: " in line] == found, proc.stdout
    # the deploy's own fact agrees
    _, out, _ = fleet.ssh("gpu-1", script_command("facts/reboot-required.sh"))
    assert reboot_required(out.splitlines()) == found
    return found


def versions(fleet, *names: str) -> dict[str, str]:
    _, out, _ = fleet.ssh("gpu-1", "dpkg-query -W -f '${Package} ${Version}\\n' "
                                   + " ".join(names))
    return dict(line.split() for line in out.splitlines())


def module(fleet, kernel: str) -> str:
    """What DKMS built for KERNEL (the lab's module file: '<version> <flavour>'), or ''."""
    return fleet.ssh("gpu-1", f"cat /lib/modules/{kernel}/updates/dkms/nvidia.ko",
                     check=False)[1].strip()


def smi(fleet) -> tuple[int, str]:
    status, out, _ = fleet.ssh("gpu-1", "nvidia-smi --query-gpu=driver_version "
                                        "--format=csv,noheader", check=False)
    return status, out


def health(fleet, instance: str) -> str:
    _, out, _ = fleet.ssh("gpu-1", "docker inspect --format "
                                   f"'{{{{.State.Health.Status}}}}' {instance}", check=False)
    return out.strip()


def assert_serving_on_gpus(fleet) -> None:
    """Each instance healthy, its Ollama found CUDA GPUs at its last start, and MODEL,
    loaded now, wholly in GPU memory."""
    for instance, port in INSTANCES.items():
        poll(lambda i=instance: health(fleet, i) == "healthy", 240, interval=2,
             what=f"{instance} healthy")
        _, started, _ = fleet.ssh("gpu-1", "docker inspect --format "
                                           f"'{{{{.State.StartedAt}}}}' {instance}")
        _, found, _ = fleet.ssh("gpu-1", f"docker logs --since {started.strip()} {instance} "
                                         "2>&1 | grep -E 'inference compute|no compatible "
                                         "GPUs' || true")
        # 0.6.8 logs `library=cuda`, 0.32 `library=CUDA`; the CPU alone is `library=cpu`
        assert "library=cuda" in found.lower() and "library=cpu" not in found.lower() \
            and "no compatible GPUs" not in found, (instance, found)
        fleet.ssh("gpu-1", f"curl -sS --max-time 60 -d '{{\"model\":\"{MODEL}\",\"prompt\":"
                           f"\"hi\",\"stream\":false}}' http://127.0.0.1:{port}/api/generate "
                           ">/dev/null", check=False)
        _, ps, _ = fleet.ssh("gpu-1", f"curl -sS --max-time 10 http://127.0.0.1:{port}/api/ps")
        models = json.loads(ps)["models"]
        assert models and models[0]["size_vram"] == models[0]["size"] > 0, (instance, ps)


def test_a_kernel_update_then_a_reboot_keeps_the_module_and_the_gpus(fleet):
    running = fleet.ssh("gpu-1", "uname -r")[1].strip()
    assert reasons(fleet) == []
    upcoming = packages.next_kernel(running)
    arrives(fleet, "kernel")
    # what `apt upgrade` does: new packages allowed (the flavour's headers meta-package,
    # installed by the deploy, now depends on the next kernel's headers, and they on its image)
    fleet.ssh("gpu-1", f"{APT} --with-new-pkgs upgrade", timeout=600)
    installed = versions(fleet, f"linux-image-{upcoming}", f"linux-headers-{upcoming}")
    assert set(installed) == {f"linux-image-{upcoming}", f"linux-headers-{upcoming}"}
    # dkms's kernel hooks built the module for the new kernel; the running one's is kept
    assert module(fleet, upcoming) == f"{DRIVER} open"
    assert module(fleet, running) == f"{DRIVER} open"
    assert fleet.ssh("gpu-1", "uname -r")[1].strip() == running
    assert reasons(fleet) == [f"kernel {upcoming} installed, {running} running"]

    fleet.reboot("gpu-1")
    assert fleet.ssh("gpu-1", "uname -r")[1].strip() == upcoming
    assert smi(fleet) == (0, f"{DRIVER}\n")
    _, active, _ = fleet.ssh("gpu-1", "systemctl is-active nvidia-fabricmanager "
                                      "nvidia-persistenced", check=False)
    assert active.split() == ["active", "active"]
    assert_serving_on_gpus(fleet)
    assert reasons(fleet) == []


def test_an_in_branch_driver_update_then_a_reboot_moves_fabric_manager_with_it(fleet):
    running = fleet.ssh("gpu-1", "uname -r")[1].strip()
    assert versions(fleet, *DRIVER_PACKAGES) == {p: f"{DRIVER}-1" for p in DRIVER_PACKAGES}
    arrives(fleet, "debian13")
    _, upgrade, _ = fleet.ssh("gpu-1", f"{APT} upgrade", timeout=600)
    # the pin package is held (it keeps the branch); its preferences let 590.* through,
    # Fabric Manager with the driver
    assert versions(fleet, *DRIVER_PACKAGES) == {p: f"{UPDATE}-1" for p in DRIVER_PACKAGES}, \
        upgrade
    assert versions(fleet, "nvidia-driver-pinning-590") == {
        "nvidia-driver-pinning-590": f"{DRIVER}-1"}
    # DKMS built the new module for the running kernel; the old one stays loaded until the
    # reboot: nvidia-smi's userspace is the new one
    assert module(fleet, running) == f"{UPDATE} open"
    status, out = smi(fleet)
    assert status == 18 and out.startswith(
        "Failed to initialize NVML: Driver/library version mismatch\n"), out
    assert reasons(fleet) == ["nvidia-smi: Driver/library version mismatch (the loaded NVIDIA "
                              "module is not the installed driver's)"]

    fleet.reboot("gpu-1")
    assert smi(fleet) == (0, f"{UPDATE}\n")
    installed = versions(fleet, "nvidia-driver-cuda", "nvidia-fabricmanager")
    assert installed["nvidia-fabricmanager"] == installed["nvidia-driver-cuda"] == f"{UPDATE}-1"
    _, active, _ = fleet.ssh("gpu-1", "systemctl is-active nvidia-fabricmanager "
                                      "nvidia-persistenced", check=False)
    assert active.split() == ["active", "active"]
    assert_serving_on_gpus(fleet)
    assert reasons(fleet) == []
