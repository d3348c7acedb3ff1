"""The Ollama stack: a Compose project of Ollama instances behind the host's nginx.

Guarantees: the Compose file and nginx config are rendered from templates/stack/,
checked by their own tools (`docker compose config -q`, `nginx -t`) in a staging
directory, and only then replace the live files, so a bad render never touches
the running stack; `docker compose up` runs only when a file changed or a
container is not running or out of date; while the stack serves, changed
instances are recreated one at a time behind the host's nginx; the run waits
(bounded) until every instance is healthy; each instance sees exactly the GPUs
it was given.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass, field

from pyinfra import host
from pyinfra.api import OperationError, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files

from ollama_fleet.tasks.kit import paths
from ollama_fleet.tasks.kit import store as model_store
from ollama_fleet.tasks.kit.compose import (
    checked_files,
    healthy,
    images_pulled,
    reload_nginx_command,
    templates,
    wait_healthy_command,
)
from ollama_fleet.tasks.kit.facts import (
    ComposeContainers,
    ComposeStale,
    ContainerGpus,
    NvidiaGpus,
    planning,
)
from ollama_fleet.tasks.kit.fleet import Fleet
from ollama_fleet.tasks.kit.ollama_builds import unsupported_gpus
from ollama_fleet.tasks.kit.report import fail_command
from ollama_fleet.tasks.kit.scripts import script_text
from ollama_fleet.tasks.kit.settings import Settings, is_ip, nginx_seconds
from ollama_fleet.tasks.steps import gate, models

TEMPLATES = paths.TEMPLATES / "stack"
PROJECT = "ollama"
# The GPU instances' start wait and healthcheck (templates/stack/ollama-gpu.sh): a file of
# the stack directory, mounted read-only into each of them.
GPU_SCRIPT_FILE = "ollama-gpu.sh"
GPU_SCRIPT = "/usr/local/lib/ollama-fleet/ollama-gpu.sh"
# How long a starting GPU instance waits for its GPUs before it exits to be restarted.
GPU_WAIT_S = 120
# The instances' gates in the host's nginx (unix sockets, on a tmpfs of its container).
GATE_DIR = "/run/ollama-fleet-gate"
# The health agent's verdict and the flags of what it holds out (tasks/steps/health.py),
# mounted read-only into the host's nginx.
HEALTH_DIR = "/run/ollama-fleet/health"


@dataclass(frozen=True)
class Instance:
    name: str
    port: int
    gpus: tuple[dict, ...] = field(default_factory=tuple)


def plan_instances(settings: Settings, gpus: list[dict]) -> list[Instance]:
    """The instances of the host's topology, with the GPUs (by UUID) each one gets."""
    by_index = {g["index"]: g for g in gpus}
    wanted = [by_index[i] for i in settings.gpu_indexes if i in by_index]
    if len(wanted) != len(settings.gpu_indexes):
        missing = sorted(set(settings.gpu_indexes) - set(by_index))
        raise OperationError(f"ollama_gpus: nvidia-smi does not list GPU {missing}")
    ports = settings.instance_ports()
    if settings.topology == "per_gpu":
        return [Instance(f"{PROJECT}-{n}", port, (gpu,))
                for (n, port), gpu in zip(ports, wanted, strict=True)]
    shared = tuple(wanted) if settings.topology == "shared" else ()
    return [Instance(f"{PROJECT}-0", ports[0][1], shared)]


def main_conf() -> str:
    """The host's nginx.conf where its gate checks keys: the image's, with njs loaded."""
    return (TEMPLATES / "nginx.conf").read_text()


def render(template: str, settings: Settings, instances: list[Instance], fleet: Fleet,
           gate_context: dict, drained: str | None = None) -> str:
    """TEMPLATE for this host; FLEET gives the peers its fan-out server lets copy models,
    GATE_CONTEXT (gate.context) the front doors its nginx trusts."""
    return templates(TEMPLATES).get_template(template).render(
        s=settings, g=gate_context, project=PROJECT,
        topology=settings.topology, instances=instances,
        models_source=model_store.source(settings), models_mount=model_store.MOUNT,
        models_dir=model_store.MODELS, bind_mount_models=model_store.bind_mounted(settings),
        upstream_address=settings.local_host(),
        drained=drained,
        health_dir=HEALTH_DIR, gate_dir=GATE_DIR,
        # this host's own nginx.conf, where its gate checks keys (with njs): its digest
        nginx_conf_sha256=hashlib.sha256(main_conf().encode()).hexdigest()
        if gate_context["compares_keys"] else "",
        health_readers=[*gate_context["trusted"], *(settings.nginx_allow or []),
                        *[p.address for p in models.peers(fleet) if is_ip(p.address)]],
        gpu_script=GPU_SCRIPT, gpu_script_file=GPU_SCRIPT_FILE, gpu_wait=GPU_WAIT_S,
        peers=[p.address for p in models.peers(fleet) if is_ip(p.address)]
        + settings.ollama_fanout_allow,
    )


def stack_files(settings: Settings, instances: list[Instance], fleet: Fleet) -> dict[str, str]:
    """The stack's own files: relative path in the stack directory -> content (the gate's
    files, which its nginx config includes, are the gate's: gate.gate_files).

    With several instances, `drain/<instance>.conf` is the nginx config with that one
    instance marked down, used while it is recreated (outside nginx's config dir)."""
    context = gate.context(settings, gate.front_door_addresses(fleet))
    files = {
        "compose.yaml": render("compose.yaml.j2", settings, instances, fleet, context),
        "nginx/ollama.conf": render("ollama.conf.j2", settings, instances, fleet, context),
    }
    if context["compares_keys"]:  # the gate checks keys with nginx's JavaScript module
        files["nginx.conf"] = main_conf()
    if any(i.gpus for i in instances):
        files[GPU_SCRIPT_FILE] = script_text(f"stack/{GPU_SCRIPT_FILE}")
    if settings.ollama_fanout:
        files[models.FETCH_SCRIPT] = script_text("stack/fetch-model.sh")
    if len(instances) > 1:
        for i in instances:
            files[f"drain/{i.name}.conf"] = render("ollama.conf.j2", settings, instances,
                                                   fleet, context, i.name)
    return files


def host_gpus(settings: Settings) -> list[dict]:
    if not settings.gpu_indexes:
        return []
    gpus = host.get_fact(NvidiaGpus)
    if not gpus["working"]:
        if planning():
            # --dry on a fresh host: the driver comes earlier in this same run.
            return [{"index": i, "uuid": f"GPU-<uuid of GPU {i}>"} for i in settings.gpu_indexes]
        raise OperationError(f"nvidia-smi does not answer ({gpus['error']}); "
                             "the stack needs the GPUs' UUIDs")
    return gpus["gpus"]


@operation()
def rendered_files(settings: Settings, fleet: Fleet):
    """
    Render the stack's Compose file and nginx config from the GPUs nvidia-smi lists now,
    and install them checked (see checked_files).

    + settings: the host's validated settings
    + fleet: the fleet (front doors and fan-out peers)
    """
    try:
        gpus = host_gpus(settings)
        instances = plan_instances(settings, gpus)
    except OperationError as exc:
        yield fail_command(str(exc))
        return
    used = [g for i in instances for g in i.gpus]
    why = unsupported_gpus(settings.ollama_image, used)
    if why:  # before any file or container changes: the running stack keeps serving
        yield fail_command(f"ollama_image: {why}")
        return
    try:
        gate_files, secret = gate.gate_files(settings)  # checked with the config that uses them
    except OperationError as exc:
        yield fail_command(str(exc))
        return
    yield from checked_files._inner(root=settings.ollama_stack_dir,
                                    wanted=stack_files(settings, instances, fleet) | gate_files,
                                    nginx_image=settings.nginx_image, secret=tuple(secret),
                                    tmpfs=(GATE_DIR,))


@operation(is_idempotent=False)
def image_fits_gpus(settings: Settings):
    """
    Fail the host when the Ollama image has no CUDA build for its GPUs (it would serve from
    the CPU); the roll asks this before it drains a host, the deploy before it renders.

    + settings: the host's validated settings
    """
    if not settings.gpu_indexes:
        return
    gpus = host.get_fact(NvidiaGpus)
    if not gpus["working"]:
        host.noop("no GPU answers yet: the stack step checks the image")
        return
    wanted = set(settings.gpu_indexes)
    why = unsupported_gpus(settings.ollama_image, [g for g in gpus["gpus"] if g["index"] in wanted])
    if why:
        yield fail_command(f"ollama_image: {why}")
        return
    host.noop(f"{settings.ollama_image} has a CUDA build for every GPU")


def stack_images(settings: Settings) -> tuple[str, ...]:
    """The images the stack's Compose file runs."""
    return (settings.ollama_image, settings.nginx_image)


def pull_images(settings: Settings) -> None:
    """Every image the stack needs downloaded while the running stack still serves."""
    images_pulled(name="Stack images present (pulled before anything is recreated)",
                  images=stack_images(settings))


def expected_services(settings: Settings) -> list[str]:
    return [f"{PROJECT}-{n}" for n, _ in settings.instance_ports()] + ["nginx"]


@operation()
def stack_running(settings: Settings, files_op: OperationMeta):
    """
    Start what is not running; recreate what the Compose file changed, one instance at a
    time when the others are serving (each taken out of the host's nginx, its requests
    let finish, recreated, healthy again, put back); reload nginx for a new config.

    + settings: the host's validated settings
    + files_op: the operation that installs the Compose and nginx files
    """
    root = settings.ollama_stack_dir
    q = shlex.quote
    containers = host.get_fact(ComposeContainers, project=PROJECT)
    services = expected_services(settings)
    instances = [s for s in services if s != "nginx"]
    stale = host.get_fact(ComposeStale, root=root, project=PROJECT)
    orphans = sorted(set(containers) - set(services))
    not_running = [s for s in services if containers.get(s, {}).get("state") != "running"]
    changed = files_op.did_change() if files_op.is_complete() else files_op.will_change
    if not (changed or stale or orphans or not_running):
        host.noop(f"{len(services)} containers running and current")
        return
    serving = all(containers.get(n, {}).get("health") == "healthy" for n in instances) and \
        containers.get("nginx", {}).get("state") == "running"
    # an instance taken out waits for its longest request (nginx_timeout), at least as
    # long as it would wait for health
    reload = reload_nginx_command(f"{PROJECT}-nginx", max(
        settings.ollama_health_timeout, nginx_seconds(settings.nginx_timeout)))
    rolling = serving and len(instances) > 1 and bool(set(stale) & set(instances))
    if rolling:
        for name in [n for n in instances if n in stale]:
            yield f"cp {q(root)}/drain/{name}.conf {q(root)}/nginx/ollama.conf"
            yield reload
            yield f"cd {q(root)} && docker compose up -d --no-deps --quiet-pull {name}"
            yield wait_healthy_command([name], settings.ollama_health_timeout)
        yield f"cp {q(root)}/.staged/nginx/ollama.conf {q(root)}/nginx/ollama.conf"
        yield reload
    yield f"cd {q(root)} && docker compose up -d --remove-orphans --quiet-pull"
    if serving and not rolling and "nginx" not in stale:
        yield reload  # a new nginx config in its mounted directory needs a reload


@operation()
def gpus_assigned(settings: Settings):
    """
    Fail unless each instance sees exactly the GPUs it was given (nvidia-smi inside it).

    + settings: the host's validated settings
    """
    if planning():
        host.noop("GPU assignment is checked once the stack runs")
        return

    try:
        gpus = host_gpus(settings)
        instances = plan_instances(settings, gpus)
    except OperationError as exc:
        yield fail_command(str(exc))
        return
    used = [g for i in instances for g in i.gpus]
    why = unsupported_gpus(settings.ollama_image, used)
    if why:  # before any file or container changes: the running stack keeps serving
        yield fail_command(f"ollama_image: {why}")
        return
    for instance in instances:
        if not instance.gpus:
            continue
        seen = host.get_fact(ContainerGpus, container=instance.name)
        wanted = sorted(g["uuid"] for g in instance.gpus)
        if sorted(seen["uuids"]) != wanted:
            yield fail_command(f"{instance.name}: sees GPUs {seen['uuids'] or seen['output']}, "
                               f"should see {wanted}; check the NVIDIA Container Toolkit")
            return
    host.noop(f"{len(instances)} instances see their GPUs")


def deploy_stack(settings: Settings, fleet: Fleet) -> None:
    """Download the images, lay down the files, start what is not running, wait for health,
    check GPUs."""
    files.directory(name="Stack directory", path=settings.ollama_stack_dir, mode="755")
    gate.prepare(settings, settings.ollama_stack_dir)
    pull_images(settings)
    installed = rendered_files(name="Compose file and nginx config (checked, then live)",
                               settings=settings, fleet=fleet)
    stack_running(name="Stack running (changed instances recreated one at a time)",
                  settings=settings, files_op=installed,
                  _timeout=(settings.ollama_health_timeout + nginx_seconds(settings.nginx_timeout))
                  * (settings.gpu_count + 2) + 120)
    instances = {n: n for n in expected_services(settings) if n != "nginx"}
    healthy(name="Every Ollama instance healthy", project=PROJECT, containers=instances,
            timeout_s=settings.ollama_health_timeout, _timeout=settings.ollama_health_timeout + 60)
    gpus_assigned(name="Each instance sees exactly its GPUs", settings=settings)
