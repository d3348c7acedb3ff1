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
import posixpath
import shlex
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from pyinfra import host
from pyinfra.api import OperationError, operation
from pyinfra.api.command import FileUploadCommand
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import File, Sha1File
from pyinfra.operations import files

from tasks import gate, models, paths
from tasks.addresses import local_address, url_host
from tasks.facts import ComposeContainers, ComposeStale, ContainerGpus, NvidiaGpus, planning
from tasks.report import fail_command
from tasks.scripts import script_command, script_text
from tasks.settings import Settings, is_ip

TEMPLATES = paths.TEMPLATES / "stack"
PROJECT = "ollama"


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


def templates(directory: Path) -> Environment:
    """Templates of DIRECTORY, with the shared nginx pieces (templates/nginx) importable."""
    return Environment(loader=FileSystemLoader([directory, TEMPLATES.parent / "nginx"]),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                       keep_trailing_newline=True)


def render(template: str, settings: Settings, instances: list[Instance],
           drained: str | None = None) -> str:
    return templates(TEMPLATES).get_template(template).render(
        s=settings, g=gate.context(settings, gate.front_door_addresses()), project=PROJECT,
        topology=settings.topology, instances=instances,
        models_source=settings.ollama_models_path or "ollama-models",
        bind_mount_models=bool(settings.ollama_models_path),
        upstream_address=url_host(local_address(settings.ollama_bind_address)),
        drained=drained,
        peers=[p.address for p in models.peers() if is_ip(p.address)]
        + settings.ollama_fanout_allow,
    )


def stack_files(settings: Settings, instances: list[Instance]) -> dict[str, str]:
    """Relative path in the stack directory -> content.

    With several instances, `drain/<instance>.conf` is the nginx config with that one
    instance marked down, used while it is recreated (outside nginx's config dir)."""
    files = {
        "compose.yaml": render("compose.yaml.j2", settings, instances),
        "nginx/ollama.conf": render("ollama.conf.j2", settings, instances),
    }
    if settings.ollama_fanout:
        files[models.FETCH_SCRIPT] = script_text("stack/fetch-model.sh")
    if len(instances) > 1:
        for i in instances:
            files[f"drain/{i.name}.conf"] = render("ollama.conf.j2", settings, instances, i.name)
    return files | gate.gate_files(settings)[0]


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
def checked_files(root: str, wanted: dict[str, str], nginx_image: str | None,
                  secret: tuple[str, ...] = ()):
    """
    Install WANTED files under ROOT only after they pass `docker compose config -q` and
    `nginx -t` in ROOT/.staged; the live files are untouched by a bad render.

    + root: the Compose project directory (holds compose.yaml and nginx/)
    + wanted: relative path -> content
    + nginx_image: the image whose nginx checks the config (None: no nginx config)
    + secret: the paths in WANTED that only root may read (keys)
    """
    stale = [rel for rel, text in wanted.items()
             if host.get_fact(Sha1File, path=f"{root}/{rel}")
             != hashlib.sha1(text.encode()).hexdigest()]
    if not stale:
        host.noop(f"{', '.join(wanted)} current")
        return
    staged = f"{root}/.staged"
    yield from files.directory._inner(path=staged, mode="700")  # only root sees what is staged
    for rel, text in wanted.items():
        yield from files.directory._inner(path=str(Path(f"{staged}/{rel}").parent), mode="755")
        if rel in secret:
            yield from secret_file._inner(dest=f"{staged}/{rel}", content=text)
        else:
            yield from files.put._inner(src=StringIO(text), dest=f"{staged}/{rel}", mode="644")
    q = shlex.quote
    yield (f"docker compose --project-directory {q(staged)} -f {q(staged)}/compose.yaml "
           "config -q")
    if nginx_image:
        yield (f"docker run --rm --network host -v {q(staged)}/nginx:/etc/nginx/conf.d:ro "
               f"{q(nginx_image)} nginx -t -q")
    for rel in wanted:
        yield f"mkdir -p {q(str(Path(f'{root}/{rel}').parent))}"
        yield (f"cp -p {q(staged)}/{rel} {q(root)}/{rel}.new "
               f"&& mv {q(root)}/{rel}.new {q(root)}/{rel}")


@operation()
def secret_file(dest: str, content: str):
    """
    A file only root may read, written without ever showing its content (not even with
    `--diff`) and never readable by others while it is written: uploaded into a mode-700
    directory beside it, made mode 600, then renamed into place.

    + dest: the file's path (its directory must exist)
    + content: the file's text
    """
    info = host.get_fact(File, path=dest)
    if info and info.get("mode") == 600 and \
            host.get_fact(Sha1File, path=dest) == hashlib.sha1(content.encode()).hexdigest():
        host.noop(f"{dest} current (content not shown)")
        return
    stage = f"{posixpath.dirname(dest)}/.secret-staging"
    staged = f"{stage}/{posixpath.basename(dest)}"
    q = shlex.quote
    yield f"install -d -m 700 {q(stage)}"
    yield FileUploadCommand(StringIO(content), staged, remote_temp_filename=f"{staged}.upload")
    yield f"chmod 600 {q(staged)} && mv {q(staged)} {q(dest)} && rmdir {q(stage)}"


@operation()
def rendered_files(settings: Settings):
    """
    Render the stack's Compose file and nginx config from the GPUs nvidia-smi lists now,
    and install them checked (see checked_files).

    + settings: the host's validated settings
    """
    try:
        instances = plan_instances(settings, host_gpus(settings))
    except OperationError as exc:
        yield fail_command(str(exc))
        return
    try:
        wanted = stack_files(settings, instances)
    except OperationError as exc:
        yield fail_command(str(exc))
        return
    yield from checked_files._inner(root=settings.ollama_stack_dir, wanted=wanted,
                                    nginx_image=settings.nginx_image,
                                    secret=tuple(gate.gate_files(settings)[1]))


def expected_services(settings: Settings) -> list[str]:
    return [f"{PROJECT}-{n}" for n, _ in settings.instance_ports()] + ["nginx"]


@operation()
def running(root: str, project: str, services: list[str], files_op: OperationMeta,
            nginx_container: str | None, drain_timeout: int):
    """
    `docker compose up -d --remove-orphans` when the files changed or a container is
    not running; reload nginx when only its config changed.

    + root: the Compose project directory
    + project: the Compose project name
    + services: the services that must be running
    + files_op: the operation that installs the Compose and nginx files
    + nginx_container: the nginx container to reload when its config changed (or None)
    + drain_timeout: how long a reload waits for requests on the old config to finish
    """
    containers = host.get_fact(ComposeContainers, project=project)
    not_running = [s for s in services if containers.get(s, {}).get("state") != "running"]
    orphans = sorted(set(containers) - set(services))
    # Before execution (--dry, change detection) the files op has not run yet.
    changed = files_op.did_change() if files_op.is_complete() else files_op.will_change
    if not (changed or not_running or orphans):
        host.noop(f"{len(services)} containers running, files unchanged")
        return
    yield f"cd {shlex.quote(root)} && docker compose up -d --remove-orphans --quiet-pull"
    if changed and not not_running and nginx_container:
        # nginx's config is a mounted directory: a changed file needs a reload, not a restart.
        yield reload_nginx_command(nginx_container, drain_timeout)


@operation()
def removed(root: str, project: str):
    """
    Take a Compose project's containers down when it is no longer configured (volumes and
    files kept).

    + root: the project's directory
    + project: the Compose project name
    """
    if not host.get_fact(ComposeContainers, project=project):
        host.noop(f"{project}: nothing configured, nothing running")
        return
    yield f"cd {shlex.quote(root)} && docker compose down --remove-orphans"


def wait_healthy_command(names: list[str], timeout_s: int) -> str:
    """Poll (bounded) until every container in NAMES reports healthy; fail naming the rest
    (templates/stack/wait-healthy.sh)."""
    return script_command("stack/wait-healthy.sh", timeout_s, *names)


def reload_nginx_command(container: str, drain_timeout: int) -> str:
    """Reload nginx in CONTAINER, then wait (bounded) until every worker that ran before the
    reload has exited: nginx lets old workers finish their requests first, so afterwards
    nothing is still in flight on the old config (templates/stack/reload-nginx.sh)."""
    return script_command("stack/reload-nginx.sh", container, drain_timeout)


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
    reload = reload_nginx_command(f"{PROJECT}-nginx", settings.ollama_health_timeout)
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
def healthy(project: str, containers: dict[str, str], timeout_s: int):
    """
    Wait (bounded) until every listed service of a Compose project reports healthy.

    + project: the Compose project name
    + containers: service name -> container name, for the services with a healthcheck
    + timeout_s: how long to wait before failing the host
    """
    state = host.get_fact(ComposeContainers, project=project)
    if all(state.get(service, {}).get("health") == "healthy" for service in containers):
        host.noop(f"{len(containers)} {project} services healthy")
        return
    yield wait_healthy_command(list(containers.values()), timeout_s)


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
    gate.prepare(settings, settings.ollama_stack_dir)
    installed = rendered_files(name="Compose file and nginx config (checked, then live)",
                               settings=settings)
    stack_running(name="Stack running (changed instances recreated one at a time)",
                  settings=settings, files_op=installed,
                  _timeout=settings.ollama_health_timeout * (settings.gpu_count + 2) + 120)
    instances = {n: n for n in expected_services(settings) if n != "nginx"}
    healthy(name="Every Ollama instance healthy", project=PROJECT, containers=instances,
            timeout_s=settings.ollama_health_timeout, _timeout=settings.ollama_health_timeout + 60)
    gpus_assigned(name="Each instance sees exactly its GPUs", settings=settings)
