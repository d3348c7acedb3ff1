"""GPU servers between deploys: Docker starts only when the GPU stack is ready, and an
instance that loses its GPUs is restarted.

Guarantees:
- at every boot, Docker (and so every Ollama instance) starts after
  ollama-fleet-gpu-ready.service, which is ordered after nvidia-persistenced, Fabric
  Manager (NVSwitch boards) and waits, bounded by `nvidia_gpu_ready_timeout`, until
  nvidia-smi answers with `gpu_count` GPUs and no GPU's fabric is still being brought up
  (templates/gpu_ready/gpu-ready.sh); past the bound Docker starts anyway and each GPU
  instance waits for its own GPUs (templates/stack/ollama-gpu.sh);
- ollama-fleet-gpu-guard.timer restarts, every 15 s, an instance whose own healthcheck
  says it lost its GPUs (NVML gone after a `systemctl daemon-reload`, GPUs missing), and
  starts one Docker could not start (at boot, before the driver answered): one instance
  a run, each at most once per `GUARD_HOLD_S`, only while the host's nvidia-smi answers
  and no deploy or roll holds the host's run lock;
- systemd is reloaded only when one of these unit files changed; the deploy's GPU
  inference proof runs after it in the same run (deploy.py).
"""

from __future__ import annotations

from io import StringIO

from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from ollama_fleet.tasks.kit import distributions, lock, paths
from ollama_fleet.tasks.kit.compose import templates
from ollama_fleet.tasks.kit.scripts import script_text
from ollama_fleet.tasks.kit.settings import Settings
from ollama_fleet.tasks.steps import nvidia_driver
from ollama_fleet.tasks.steps.stack import PROJECT

TEMPLATES = paths.TEMPLATES / "gpu_ready"
LIBEXEC = "/usr/local/libexec/ollama-fleet"
UNITS = "/etc/systemd/system"
READY_UNIT = "ollama-fleet-gpu-ready.service"
GUARD_UNIT = "ollama-fleet-gpu-guard"
DOCKER_DROP_IN = f"{UNITS}/docker.service.d/ollama-fleet-gpu-ready.conf"
# an instance the guard restarted gets this long (its start wait, its start period) before
# the guard may restart it again
GUARD_HOLD_S = 180


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
        f"{LIBEXEC}/gpu-guard": script_text("gpu_ready/gpu-guard.sh"),
        f"{UNITS}/{READY_UNIT}": env.get_template(f"{READY_UNIT}.j2").render(
            gpus=settings.gpu_count, timeout=settings.nvidia_gpu_ready_timeout,
            fabric_unit=fabric_unit, units=ready_after(settings, plan) or ["sysinit.target"],
            script=f"{LIBEXEC}/gpu-ready"),
        DOCKER_DROP_IN: (TEMPLATES / "ollama-fleet-gpu-ready.conf").read_text(),
        f"{UNITS}/{GUARD_UNIT}.service": env.get_template(f"{GUARD_UNIT}.service.j2").render(
            script=f"{LIBEXEC}/gpu-guard", project=PROJECT, hold=GUARD_HOLD_S,
            lock=lock.LOCK_PATH),
        f"{UNITS}/{GUARD_UNIT}.timer": (TEMPLATES / f"{GUARD_UNIT}.timer").read_text(),
    }


def order_boot(settings: Settings, dist: distributions.Distribution) -> None:
    """Lay down the wait, the drop-in and the guard (GPU servers only); reload systemd only
    when a unit changed."""
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
    systemd.service(name="Instances that lose their GPUs are restarted",
                    service=f"{GUARD_UNIT}.timer", enabled=True, running=True)
