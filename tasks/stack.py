"""The Ollama stack: a Compose project of Ollama instances behind the host's nginx.

Guarantees: the Compose file and nginx config are rendered from templates/stack/,
checked by their own tools (`docker compose config -q`, `nginx -t`) in a staging
directory, and only then replace the live files, so a bad render never touches
the running stack; `docker compose up` runs only when a file changed or a
container is not running; the run waits (bounded) until every instance is
healthy; each instance sees exactly the GPUs it was given.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from pyinfra import host
from pyinfra.api import OperationError, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import Sha1File
from pyinfra.operations import files

from tasks.facts import ComposeContainers, ContainerGpus, NvidiaGpus, planning
from tasks.report import fail_command
from tasks.settings import Settings

TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "stack"
PROJECT = "ollama"
HEALTH_WAIT_S = 300


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


def render(template: str, settings: Settings, instances: list[Instance]) -> str:
    env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    bind = settings.ollama_bind_address
    return env.get_template(template).render(
        s=settings, project=PROJECT, topology=settings.topology, instances=instances,
        models_source=settings.ollama_models_path or "ollama-models",
        bind_mount_models=bool(settings.ollama_models_path),
        upstream_address="127.0.0.1" if bind in ("0.0.0.0", "::") else bind,
    )


def stack_files(settings: Settings, instances: list[Instance]) -> dict[str, str]:
    """Relative path in the stack directory -> content."""
    return {
        "compose.yaml": render("compose.yaml.j2", settings, instances),
        "nginx/ollama.conf": render("ollama.conf.j2", settings, instances),
    }


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
def rendered_files(settings: Settings):
    """
    Render, check and install the Compose file and nginx config; the live files change
    only when the new ones pass `docker compose config -q` and `nginx -t`.

    + settings: the host's validated settings
    """
    try:
        instances = plan_instances(settings, host_gpus(settings))
    except OperationError as exc:
        yield fail_command(str(exc))
        return
    wanted = stack_files(settings, instances)
    root = settings.ollama_stack_dir
    stale = [rel for rel, text in wanted.items()
             if host.get_fact(Sha1File, path=f"{root}/{rel}")
             != hashlib.sha1(text.encode()).hexdigest()]
    if not stale:
        host.noop("Compose file and nginx config are current")
        return
    staged = f"{root}/.staged"
    for rel, text in wanted.items():
        yield from files.directory._inner(path=str(Path(f"{staged}/{rel}").parent), mode="755")
        yield from files.put._inner(src=StringIO(text), dest=f"{staged}/{rel}", mode="644")
    q = shlex.quote
    yield (f"docker compose --project-directory {q(staged)} -f {q(staged)}/compose.yaml "
           "config -q")
    yield (f"docker run --rm --network host -v {q(staged)}/nginx:/etc/nginx/conf.d:ro "
           f"{q(settings.nginx_image)} nginx -t -q")
    for rel in wanted:
        yield f"mkdir -p {q(str(Path(f'{root}/{rel}').parent))}"
        yield f"cp {q(staged)}/{rel} {q(root)}/{rel}.new && mv {q(root)}/{rel}.new {q(root)}/{rel}"


def expected_services(settings: Settings) -> list[str]:
    return [f"{PROJECT}-{n}" for n, _ in settings.instance_ports()] + ["nginx"]


@operation()
def running(settings: Settings, files_op: OperationMeta):
    """
    `docker compose up -d --remove-orphans` when the files changed or a container is
    not running; reload nginx when only its config changed.

    + settings: the host's validated settings
    + files_op: the operation that installs the Compose and nginx files
    """
    containers = host.get_fact(ComposeContainers, project=PROJECT)
    expected = expected_services(settings)
    not_running = [s for s in expected if containers.get(s, {}).get("state") != "running"]
    orphans = sorted(set(containers) - set(expected))
    # Before execution (--dry, change detection) the files op has not run yet.
    changed = files_op.did_change() if files_op.is_complete() else files_op.will_change
    if not (changed or not_running or orphans):
        host.noop(f"{len(expected)} containers running, files unchanged")
        return
    root = shlex.quote(settings.ollama_stack_dir)
    yield f"cd {root} && docker compose up -d --remove-orphans --quiet-pull"
    if changed and not not_running:
        # nginx's config is a mounted directory: a changed file needs a reload, not a restart.
        yield f"docker exec {PROJECT}-nginx nginx -s reload"


@operation()
def healthy(settings: Settings, timeout_s: int = HEALTH_WAIT_S):
    """
    Wait (bounded) until every Ollama instance reports healthy.

    + settings: the host's validated settings
    + timeout_s: how long to wait before failing the host
    """
    containers = host.get_fact(ComposeContainers, project=PROJECT)
    names = [s for s in expected_services(settings) if s != "nginx"]
    if all(containers.get(n, {}).get("health") == "healthy" for n in names):
        host.noop(f"{len(names)} instances healthy")
        return
    checks = " ".join(names)
    rounds = timeout_s // 2
    yield (f"for i in $(seq {rounds}); do bad=''; for c in {checks}; do "
           "[ \"$(docker inspect -f '{{.State.Health.Status}}' $c 2>/dev/null)\" = healthy ] "
           "|| bad=\"$bad $c\"; done; [ -z \"$bad\" ] && exit 0; sleep 2; done; "
           f"echo \"not healthy after {timeout_s}s:$bad\" >&2; exit 1")


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
        instances = plan_instances(settings, host_gpus(settings))
    except OperationError as exc:
        yield fail_command(str(exc))
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


def deploy_stack(settings: Settings) -> None:
    """Lay down the files, start what is not running, wait for health, check GPUs."""
    files.directory(name="Stack directory", path=settings.ollama_stack_dir, mode="755")
    installed = rendered_files(name="Compose file and nginx config (checked, then live)",
                               settings=settings)
    running(name="Stack running", settings=settings, files_op=installed)
    healthy(name="Every Ollama instance healthy", settings=settings, _timeout=HEALTH_WAIT_S + 60)
    gpus_assigned(name="Each instance sees exactly its GPUs", settings=settings)
