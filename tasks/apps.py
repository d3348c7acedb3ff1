"""Application services beside Ollama: the inventory's app_services and the Redis preset.

Guarantees: they start after Ollama is healthy and its models are present (this
step runs after both); they share a private network, reach Ollama through the
host's nginx (OLLAMA_BASE_URL) and publish ports on loopback unless an address is
given; secrets are read on the operator's machine and land in a mode-600 env file;
a changed service is the only one recreated (Compose's config hash), a service
removed from the inventory loses its container and keeps its named volumes.
"""

from __future__ import annotations

import ipaddress
import shlex
from io import StringIO

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from pyinfra import host
from pyinfra.api import OperationError, operation
from pyinfra.operations import files

from tasks.facts import DockerNetwork
from tasks.gate import read_secret
from tasks.report import fail_command
from tasks.settings import AppService, Settings
from tasks.stack import TEMPLATES, checked_files, healthy, removed, running

PROJECT = "ollama-apps"


def apps_dir(settings: Settings) -> str:
    return f"{settings.ollama_stack_dir}/apps"


def read_secrets(app_name: str, app: AppService) -> str:
    """KEY=value lines for the service's env file, read on the operator's machine."""
    lines = []
    for key, ref in sorted(app.secrets.items()):
        value = read_secret(f"app_services.{app_name}.secrets.{key}", ref)
        if ref.file is not None:
            value = value.strip()
        if "\n" in value:
            raise OperationError(f"app_services.{app_name}.secrets.{key}: one line expected")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def named_volumes(settings: Settings) -> list[str]:
    volumes = {"redis-data"} if settings.app_cache else set()
    for app in settings.app_services.values():
        for volume in app.volumes:
            source = volume.split(":", 1)[0]
            if not source.startswith(("/", ".", "~")):
                volumes.add(source)
    return sorted(volumes)


def render_apps(settings: Settings) -> str:
    env = Environment(loader=FileSystemLoader(TEMPLATES.parent / "apps"),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                      keep_trailing_newline=True)

    def model_for(app: AppService) -> str:
        return app.ollama_model or (settings.ollama_models[0] if settings.ollama_models else "")

    def ollama_port(app: AppService) -> int:
        """The host's nginx, or the pinned instance's own port when one is asked for."""
        if app.ollama_instance is None:
            return settings.nginx_port
        return settings.instance_ports()[app.ollama_instance][1]

    def healthchecked(name: str) -> bool:
        return name == "redis" or bool(settings.app_services[name].healthcheck)

    return env.get_template("compose.yaml.j2").render(
        s=settings, project=PROJECT, apps=sorted(settings.app_services.items()),
        model_for=model_for, healthchecked=healthchecked, ollama_port=ollama_port,
        named_volumes=named_volumes(settings))


def services(settings: Settings) -> list[str]:
    return (["redis"] if settings.app_cache else []) + sorted(settings.app_services)


@operation()
def network_ready(root: str, subnet: str):
    """
    The app network can be (or is) SUBNET: refuse a subnet the host already routes
    (its LAN, another Docker network); take the project down (volumes kept) when its
    network has another subnet, so that Compose creates it anew.

    + root: the app services' Compose project directory
    + subnet: the app_network knob
    """
    found = host.get_fact(DockerNetwork, network=PROJECT)
    if found["subnets"] == [subnet]:
        host.noop(f"app network {PROJECT} is {subnet}")
        return
    wanted = ipaddress.ip_network(subnet)
    clashes = [f"{cidr} ({dev})" for cidr, dev in found["routes"]
               if cidr not in found["subnets"] and ipaddress.ip_network(cidr).overlaps(wanted)]
    if clashes:
        yield fail_command(f"app_network: {subnet} overlaps {', '.join(clashes)} on this "
                           "host; set app_network to a free private network")
        return
    if not found["exists"]:
        host.noop(f"{subnet} is free for app network {PROJECT}")
        return
    was = ", ".join(found["subnets"]) or "unknown"
    host.log(f"app network {PROJECT} is {was}, not {subnet}: recreating it")
    yield (f"cd {shlex.quote(root)} && docker compose -p {PROJECT} down --remove-orphans 2>&1 "
           f"&& (docker network rm {PROJECT} >/dev/null 2>&1 || true)")


def deploy_apps(settings: Settings) -> None:
    """App services checked then live, started after Ollama and its models, healthy."""
    root = apps_dir(settings)
    names = services(settings)
    if not names:
        removed(name="No app services", root=root, project=PROJECT)
        return
    wanted = {"compose.yaml": render_apps(settings)}
    network_ready(name="App network free (app_network)", root=root, subnet=settings.app_network)
    files.directory(name="App services directory", path=root, mode="755")
    for name, app in settings.app_services.items():
        if app.secrets:
            files.put(name=f"Secrets of app service {name} (mode 600)",
                      src=StringIO(read_secrets(name, app)), dest=f"{root}/{name}.env",
                      mode="600")
    installed = checked_files(name="App services Compose file (checked, then live)",
                              root=root, wanted=wanted, nginx_image=None)
    running(name="App services running (changed ones recreated)", root=root, project=PROJECT,
            services=names, files_op=installed, nginx_container=None, drain_timeout=0)
    checked = ["redis"] if settings.app_cache else []
    checked += [n for n, a in settings.app_services.items() if a.healthcheck]
    if checked:
        healthy(name="App services healthy", project=PROJECT,
                containers={n: f"{PROJECT}-{n}" for n in checked},
                timeout_s=settings.ollama_health_timeout,
                _timeout=settings.ollama_health_timeout + 60)

