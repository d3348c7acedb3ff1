"""GPU servers between deploys: Docker starts only when the GPU stack is ready (an instance
that loses its GPUs later is the health agent's: tasks/steps/health.py).

Guarantees:
- at every boot, Docker (and so every Ollama instance) starts after
  ollama-fleet-gpu-ready.service, which is ordered after nvidia-persistenced, Fabric
  Manager (NVSwitch boards) and waits, bounded by `nvidia_gpu_ready_timeout`, until
  nvidia-smi answers with `gpu_count` GPUs and no GPU's fabric is still being brought up
  (templates/gpu_ready/gpu-ready.sh); past the bound Docker starts anyway and each GPU
  instance waits for its own GPUs (templates/stack/ollama-gpu.sh);
- systemd is reloaded only when one of these unit files changed; the deploy's GPU
  inference proof runs after it in the same run (deploy.py).
"""

from __future__ import annotations

from io import StringIO

from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from ollama_fleet.tasks.kit import distributions, paths
from ollama_fleet.tasks.kit.compose import templates
from ollama_fleet.tasks.kit.scripts import script_text
from ollama_fleet.tasks.kit.settings import Settings
from ollama_fleet.tasks.steps import nvidia_driver

TEMPLATES = paths.TEMPLATES / "gpu_ready"
LIBEXEC = "/usr/local/libexec/ollama-fleet"
UNITS = "/etc/systemd/system"
READY_UNIT = "ollama-fleet-gpu-ready.service"
DOCKER_DROP_IN = f"{UNITS}/docker.service.d/ollama-fleet-gpu-ready.conf"


def ready_after(settings: Settings, plan: nvidia_driver.DriverPlan) -> list[str]:
    """The units the GPU stack of this board needs up before Docker starts."""
    units = []
    if settings.nvidia_persistence_mode:
        units.append(f"{nvidia_driver.PERSISTENCED_UNIT}.service")
    if plan.fabricmanager:
        units.append(f"{nvidia_driver.FABRICMANAGER_UNIT}.service")
    return units


def unit_files(settings: Settings, plan: nvidia_driver.DriverPlan) -> dict[str, str]:
    """Path on the host -> content, for every file this step owns."""
    env = templates(TEMPLATES)
    fabric_unit = f"{nvidia_driver.FABRICMANAGER_UNIT}.service" if plan.fabricmanager else ""
    return {
        f"{LIBEXEC}/gpu-ready": script_text("gpu_ready/gpu-ready.sh"),
        f"{UNITS}/{READY_UNIT}": env.get_template(f"{READY_UNIT}.j2").render(
            gpus=settings.gpu_count, timeout=settings.nvidia_gpu_ready_timeout,
            fabric_unit=fabric_unit, units=ready_after(settings, plan) or ["sysinit.target"],
            script=f"{LIBEXEC}/gpu-ready"),
        DOCKER_DROP_IN: (TEMPLATES / "ollama-fleet-gpu-ready.conf").read_text(),
    }


def order_boot(settings: Settings, dist: distributions.Distribution) -> None:
    """Lay down the wait and the drop-in (GPU servers only); reload systemd only when a unit
    changed."""
    if settings.gpu_count == 0:
        return
    plan = nvidia_driver.host_plan(settings, dist)
    changes: list[OperationMeta] = []
    for path, text in unit_files(settings, plan).items():
        executable = path.startswith(LIBEXEC)
        changes.append(files.put(name=f"GPU boot order: {path}", src=StringIO(text), dest=path,
                                 mode="755" if executable else "644",
                                 create_remote_dir=True))
    systemd.daemon_reload(name="systemd reloaded for the GPU boot order",
                          _if=any_changed(*changes))
    systemd.service(name="Docker waits for the GPUs at boot", service=READY_UNIT,
                    enabled=True, running=True)
