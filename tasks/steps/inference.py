"""Proof of GPU inference: every GPU instance has a model loaded in GPU memory.

nvidia-smi inside a container proves that the GPU is there, not that CUDA works: on an
NVSwitch board whose Fabric Manager is not running, CUDA's initialisation fails (error
802), Ollama starts anyway and runs on the CPU, and only a loaded model tells (`/api/ps`:
`size_vram` 0). So after the stack is up and the models are in:

1. each GPU instance is looked at with a model loaded: an idle one loads its proof model
   first (a warm model for good, else the first configured one for a few minutes), read
   as a fact (facts/gpu-proof.sh): loading changes no file, package or container, so a
   re-run that finds the instance idle again still changes nothing;
2. CUDA initialises when Ollama starts: an instance with a model on the CPU (nothing in
   GPU memory) is restarted once (the cause may be gone since it started: a Fabric
   Manager that could not start then), and its warm models are loaded again;
3. an instance still on the CPU fails the host with one line naming the instance, its
   GPUs and the likely cause.

A host whose instances have no model configured says so: there is nothing to prove with.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import OperationError, operation
from pyinfra.facts.systemd import SystemdStatus

from ollama_fleet.tasks.kit import modelname
from ollama_fleet.tasks.kit.compose import wait_healthy_command
from ollama_fleet.tasks.kit.facts import NvidiaHost, OllamaModels, ProvenPlacement, planning
from ollama_fleet.tasks.kit.report import fail_command
from ollama_fleet.tasks.kit.scripts import script_command
from ollama_fleet.tasks.kit.settings import Settings
from ollama_fleet.tasks.steps.models import WARM_TIMEOUT_S, warm_as_stored, warm_keys
from ollama_fleet.tasks.steps.nvidia_driver import FABRICMANAGER_UNIT, needs_fabricmanager
from ollama_fleet.tasks.steps.stack import Instance, host_gpus, plan_instances


def prove_gpu_inference(settings: Settings) -> None:
    """Steps 1-3 above, on hosts whose instances have GPUs."""
    if not settings.gpu_indexes:
        return
    cpu_instances_restarted(
        name="Instances on the CPU restarted once (CUDA initialises at start)",
        settings=settings,
        _timeout=(settings.ollama_health_timeout + WARM_TIMEOUT_S)
        * len(settings.instance_ports()) + 60)
    on_gpu(name="Every GPU instance infers on its GPU", settings=settings)


def proof_model(settings: Settings) -> str | None:
    """The model each instance proves itself with, named as the instance lists it: the
    first warm model, else the first configured one; None when none is there."""
    listed = host.get_fact(OllamaModels, address=settings.local_host(),
                           port=settings.instance_ports()[0][1]) or {}
    keys = {modelname.parse(n).key: n for n in listed}
    for name in settings.models_by_preference:
        found = keys.get(modelname.parse(name).key)
        if found:
            return found
    return None


def _proving_with(settings: Settings) -> str | None:
    """The proof model once the stack runs; None (and the host told why) before that, or
    when there is no model to prove with."""
    if planning():
        host.noop("GPU inference is proven once the stack runs")
        return None
    model = proof_model(settings)
    if model is None:
        host.noop("no model configured: GPU inference is not proven on this host")
    return model


def _instances(settings: Settings) -> list[Instance]:
    try:
        return plan_instances(settings, host_gpus(settings))
    except OperationError:
        return []  # the stack step has failed this host already


def _url(settings: Settings, instance: Instance) -> str:
    return settings.instance_url(instance.port)


def _placement(settings: Settings, instance: Instance, model: str) -> list[dict] | None:
    """INSTANCE's loaded models once it has one (the proof MODEL when it was idle)."""
    return host.get_fact(ProvenPlacement, url=_url(settings, instance), timeout=WARM_TIMEOUT_S,
                         keep_alive=keep_alive(settings, model), model=model)


def on_cpu(models: list[dict] | None) -> list[dict]:
    """The loaded models with nothing in GPU memory (`ollama ps`: 100% CPU). A model split
    between GPU and CPU memory (bigger than the GPU) proves CUDA works: not counted."""
    return [m for m in models or [] if m["size_vram"] == 0]


PROOF_KEEP_ALIVE = "5m"  # a proof model that is not a warm one: long enough to be read


def keep_alive(settings: Settings, model: str) -> str:
    """How long the proof load keeps MODEL: a warm model for good, as the warm step loads
    it (a request naming keep_alive changes it); another one for PROOF_KEEP_ALIVE, not the
    instance's own keep-alive, which may be 0."""
    return "-1" if modelname.parse(model).key in warm_keys(settings) else PROOF_KEEP_ALIVE


def gpu_label(instance: Instance) -> str:
    """`GPU 0 GPU-5f2b...`: the GPUs an instance was given, by index and UUID."""
    return ", ".join(f"GPU {g['index']} {g['uuid']}" for g in instance.gpus) or "every GPU"


def likely_cause(settings: Settings, instance: Instance) -> str:
    """Why CUDA would not initialise in INSTANCE, as far as the host tells."""
    devices = host.get_fact(NvidiaHost)["devices"]
    if needs_fabricmanager(devices) and settings.nvidia_fabricmanager != "never":
        unit = f"{FABRICMANAGER_UNIT}.service"
        running = (host.get_fact(SystemdStatus, services=unit) or {}).get(unit)
        if not running:
            return (f"Fabric Manager is not running on this NVSwitch board ({unit}: see "
                    f"`systemctl status {FABRICMANAGER_UNIT}`), so CUDA cannot initialise")
    return f"CUDA did not initialise in the container (see `docker logs {instance.name}`)"


@operation()
def cpu_instances_restarted(settings: Settings):
    """
    Restart, once, every GPU instance with a model loaded on the CPU, wait until it is
    healthy, and load its warm models again (for good).

    + settings: the host's validated settings
    """
    model = _proving_with(settings)
    if model is None:
        return
    listed = host.get_fact(OllamaModels, address=settings.local_host(),
                           port=settings.instance_ports()[0][1]) or {}
    warm = [m for m in warm_as_stored(settings, listed) if m in listed]
    cpu = [i for i in _instances(settings) if on_cpu(_placement(settings, i, model))]
    for instance in cpu:
        yield f"docker restart {instance.name}"
        yield wait_healthy_command([instance.name], settings.ollama_health_timeout)
        if warm:
            yield script_command("models/warm.sh", _url(settings, instance), WARM_TIMEOUT_S,
                                 "-1", *warm)
    if not cpu:
        host.noop("no GPU instance runs on the CPU")


@operation()
def on_gpu(settings: Settings):
    """
    Fail the host if a GPU instance has a model loaded on the CPU (nothing in GPU memory).

    + settings: the host's validated settings
    """
    model = _proving_with(settings)
    if model is None:
        return
    instances = _instances(settings)
    for instance in instances:
        cpu = on_cpu(_placement(settings, instance, model))
        if cpu:
            m = cpu[0]
            yield fail_command(
                f"{instance.name} ({gpu_label(instance)}): {m['name']} runs on the CPU "
                f"(size_vram 0 of {m['size']} bytes, after a restart); "
                f"{likely_cause(settings, instance)}")
            return
    host.noop(f"{len(instances)} instances infer on their GPUs")
