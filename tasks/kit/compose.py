"""Compose projects on a host: the one toolkit every project of the deploy uses (the
Ollama stack, the app services, the metrics exporter, the front door).

Guarantees: a project's files go live only after `docker compose config -q` (and
`nginx -t` for an nginx config) passed on a staged copy; secrets (what a step names, and
any file that holds a private key, whatever its name) are written without being shown
and never readable by others; `up` runs only when the files changed or a
container is not running; nginx is reloaded (old requests let finish), not restarted,
for a new config; waiting for health is bounded.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import shlex
from io import StringIO
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from pyinfra import host
from pyinfra.api import operation
from pyinfra.api.command import FileUploadCommand
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import File, Sha1File
from pyinfra.operations import files

from ollama_fleet.tasks.kit import paths
from ollama_fleet.tasks.kit.facts import ComposeContainers, DockerImages
from ollama_fleet.tasks.kit.scripts import script_command

# A PEM private key of any kind (PKCS#8, encrypted, RSA, EC, OpenSSH...).
PRIVATE_KEY_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")


def holds_private_key(text: str) -> bool:
    """Whether TEXT holds a PEM private key (a certificate file with its key in it too)."""
    return PRIVATE_KEY_PEM.search(text) is not None


def templates(directory: Path) -> Environment:
    """Templates of DIRECTORY, with the shared nginx pieces (templates/nginx) importable."""
    return Environment(loader=FileSystemLoader([directory, paths.TEMPLATES / "nginx"]),  # noqa: S701 (config files, not HTML)
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                       keep_trailing_newline=True)


@operation()
def checked_files(root: str, wanted: dict[str, str], nginx_image: str | None,
                  secret: tuple[str, ...] = (), tmpfs: tuple[str, ...] = ()):
    """
    Install WANTED files under ROOT only after they pass `docker compose config -q` and
    `nginx -t` in ROOT/.staged; the live files are untouched by a bad render.

    + root: the Compose project directory (holds compose.yaml, nginx/ (conf.d) and,
      where the project has its own, nginx.conf)
    + wanted: relative path -> content
    + nginx_image: the image whose nginx checks the config (None: no nginx config)
    + secret: the paths in WANTED that only root may read (keys); a file that holds a
      private key is one whatever its path
    + tmpfs: directories the nginx container has as tmpfs (where its unix sockets live)
    """
    secret = tuple(secret) + tuple(rel for rel, text in wanted.items()
                                   if rel not in secret and holds_private_key(text))
    stale = [rel for rel, text in wanted.items()
             if host.get_fact(Sha1File, path=f"{root}/{rel}")
             != hashlib.sha1(text.encode()).hexdigest()  # noqa: S324 (pyinfra's Sha1File: change detection)
             # a secret left readable by others (written before it was known as one)
             or (rel in secret and (host.get_fact(File, path=f"{root}/{rel}") or {}).get("mode")
                 != 600)]
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
        main = (f"-v {q(staged)}/nginx.conf:/etc/nginx/nginx.conf:ro "
                if "nginx.conf" in wanted else "")
        scratch = "".join(f"--tmpfs {q(path)} " for path in tmpfs)
        yield (f"docker run --rm --network host {main}{scratch}"
               f"-v {q(staged)}/nginx:/etc/nginx/conf.d:ro {q(nginx_image)} nginx -t -q")
    for rel in wanted:
        yield f"mkdir -p {q(str(Path(f'{root}/{rel}').parent))}"
        yield (f"cp -p {q(staged)}/{rel} {q(root)}/{rel}.new "
               f"&& mv {q(root)}/{rel}.new {q(root)}/{rel}")


@operation()
def secret_file(dest: str, content: str):
    """
    A file only root may read, written without ever showing its content (not even with
    `--diff`) and never readable by others while it is written: uploaded into a fresh
    mode-700 directory beside it (owned by the SSH user, who uploads even under _sudo),
    made root's and mode 600, then renamed into place (templates/compose/secret-file.sh).

    + dest: the file's path (its directory must exist)
    + content: the file's text
    """
    info = host.get_fact(File, path=dest)
    if info and info.get("mode") == 600 and \
            host.get_fact(Sha1File, path=dest) == hashlib.sha1(content.encode()).hexdigest():  # noqa: S324 (pyinfra's Sha1File)
        host.noop(f"{dest} current (content not shown)")
        return
    stage = f"{posixpath.dirname(dest)}/.secret-staging"
    staged = f"{stage}/{posixpath.basename(dest)}"
    yield script_command("compose/secret-file.sh", "stage", stage)
    yield FileUploadCommand(StringIO(content), staged, remote_temp_filename=f"{staged}.upload")
    yield script_command("compose/secret-file.sh", "place", stage, staged, dest)


@operation()
def running(root: str, project: str, services: list[str], files_op: OperationMeta,
            nginx_container: str | None, drain_timeout: int,
            env_files: list[OperationMeta] | None = None):
    """
    `docker compose up -d --remove-orphans` when the files changed or a container is
    not running; reload nginx when only its config changed.

    + root: the Compose project directory
    + project: the Compose project name
    + services: the services that must be running
    + files_op: the operation that installs the Compose and nginx files
    + nginx_container: the nginx container to reload when its config changed (or None)
    + drain_timeout: how long a reload waits for requests on the old config to finish
    + env_files: the operations that write the services' env files (secrets): Compose
      reads them into the containers' environment, so a changed one recreates them too
    """
    containers = host.get_fact(ComposeContainers, project=project)
    not_running = [s for s in services if containers.get(s, {}).get("state") != "running"]
    orphans = sorted(set(containers) - set(services))

    def did(op: OperationMeta) -> bool:
        # Before execution (--dry, change detection) the op has not run yet.
        return op.did_change() if op.is_complete() else op.will_change

    changed = did(files_op)
    if not changed and any(did(op) for op in env_files or []):
        changed, nginx_container = True, None  # the environment, not nginx's config
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


PULL_TIMEOUT_S = 1800  # one image's download: a real Ollama image is several GB


@operation()
def images_pulled(images: tuple[str, ...]):
    """
    Download the images a project will run before anything is stopped or drained, so that
    `up` finds them present; fail naming the image and Docker's reason
    (templates/compose/pull-images.sh).

    + images: the image references, as the Compose file names them
    """
    wanted = list(dict.fromkeys(images))  # a list: as a remembered fact reads back (probe)
    present = set(host.get_fact(DockerImages, images=wanted))
    missing = [image for image in wanted if image not in present]
    if not missing:
        host.noop(f"{', '.join(wanted)} present")
        return
    yield script_command("compose/pull-images.sh", PULL_TIMEOUT_S, *missing)


def wait_healthy_command(names: list[str], timeout_s: int) -> str:
    """Poll (bounded) until every container in NAMES reports healthy; fail naming the rest
    (templates/compose/wait-healthy.sh)."""
    return script_command("compose/wait-healthy.sh", timeout_s, *names)


def reload_nginx_command(container: str, drain_timeout: int) -> str:
    """Reload nginx in CONTAINER, then wait (bounded) until every worker that ran before the
    reload has exited: nginx lets old workers finish their requests first, so afterwards
    nothing is still in flight on the old config (templates/compose/reload-nginx.sh)."""
    return script_command("compose/reload-nginx.sh", container, drain_timeout)


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
