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

import yaml
from pyinfra import host
from pyinfra.api import OperationError, operation
from pyinfra.operations import files

from ollama_fleet.tasks.kit.compose import checked_files, healthy, removed, running, secret_file
from ollama_fleet.tasks.kit.facts import DockerNetwork
from ollama_fleet.tasks.kit.report import fail_command
from ollama_fleet.tasks.kit.settings import AppService, Settings
from ollama_fleet.tasks.steps.gate import read_secret

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


HEADER = ("# Written by the deploy from the inventory's app_services (tasks/steps/apps.py);\n"
          "# edits here are overwritten. Application services beside Ollama, on a private\n"
          "# network; Ollama is reached through the host's nginx, the same entry point as every\n"
          "# other client.\n")


def literal(value: str) -> str:
    """VALUE as Compose must see it to keep it: `$` starts an interpolation there."""
    return value.replace("$", "$$")


def compose_apps(settings: Settings) -> dict:
    """The app stack's Compose file, as data: every inventory value a plain string
    (Compose interpolation escaped), never text pasted into YAML."""
    logging = {"driver": "json-file", "options": {"max-size": settings.docker_log_max_size,
                                                  "max-file": str(settings.docker_log_max_file)}}
    hardening = {"logging": logging, "security_opt": ["no-new-privileges:true"]}
    services: dict[str, dict] = {}
    if settings.app_cache:
        services["redis"] = {
            "image": settings.app_cache_image, "container_name": f"{PROJECT}-redis",
            "command": ["redis-server", "--appendonly", "yes", "--maxmemory",
                        settings.app_cache_memory, "--maxmemory-policy",
                        settings.app_cache_policy],
            "restart": "unless-stopped", "networks": ["apps"], "volumes": ["redis-data:/data"],
            "healthcheck": {"test": ["CMD", "redis-cli", "ping"], "interval": "10s",
                            "timeout": "3s", "retries": 3, "start_period": "10s",
                            "start_interval": "1s"},
            **hardening}
    for name, app in sorted(settings.app_services.items()):
        services[name] = _service(settings, name, app, hardening)
    doc: dict = {
        "name": PROJECT,
        "networks": {"apps": {"name": PROJECT,
                              "ipam": {"config": [{"subnet": settings.app_network}]}}},
        "services": services,
    }
    volumes = named_volumes(settings)
    if volumes:
        doc["volumes"] = {v: {"name": f"{PROJECT}-{v}"} for v in volumes}
    return doc


def _service(settings: Settings, name: str, app: AppService, hardening: dict) -> dict:
    service: dict = {"image": app.image, "container_name": f"{PROJECT}-{name}",
                     "restart": "unless-stopped", "networks": ["apps"]}
    if app.command:
        service["command"] = [literal(word) for word in app.command]
    environment: dict[str, str] = {}
    if app.uses_ollama:
        port = settings.nginx_port if app.ollama_instance is None else \
            settings.instance_ports()[app.ollama_instance][1]
        environment["OLLAMA_BASE_URL"] = f"http://host.docker.internal:{port}"
        model = app.ollama_model or settings.first_model or ""
        if model:
            environment["OLLAMA_MODEL"] = model
    if settings.app_cache and "REDIS_URL" not in app.environment:
        environment["REDIS_URL"] = "redis://redis:6379/0"
    environment.update({key: literal(value) for key, value in sorted(app.environment.items())})
    service["environment"] = environment
    if app.secrets:  # by its full path: the file is checked in a staging directory first
        service["env_file"] = [f"{apps_dir(settings)}/{name}.env"]
    if app.uses_ollama:
        service["extra_hosts"] = ["host.docker.internal:host-gateway"]
    if app.ports:
        service["ports"] = [f"{address}:{host_port}:{container_port}"
                            for address, host_port, container_port in app.published()]
    if app.volumes:
        service["volumes"] = list(app.volumes)
    if app.healthcheck:
        service["healthcheck"] = {"test": [literal(word) for word in app.healthcheck],
                                  "interval": "10s", "timeout": "5s", "retries": 3,
                                  "start_period": "30s", "start_interval": "1s"}
    if app.depends_on:
        service["depends_on"] = {
            dep: {"condition": "service_healthy" if dep == "redis" or
                  settings.app_services[dep].healthcheck else "service_started"}
            for dep in app.depends_on}
    if app.memory_limit or app.cpus:
        limits: dict[str, str] = {}
        if app.memory_limit:
            limits["memory"] = app.memory_limit
        if app.cpus:
            limits["cpus"] = str(app.cpus)
        service["deploy"] = {"resources": {"limits": limits}}
    return {**service, **hardening}


def render_apps(settings: Settings) -> str:
    """The Compose file's text: the data, dumped (key order kept), under a header."""
    return HEADER + yaml.safe_dump(compose_apps(settings), sort_keys=False,
                                   default_flow_style=False, width=1000)


def services(settings: Settings) -> list[str]:
    return (["redis"] if settings.app_cache else []) + sorted(settings.app_services)


def _clashes(found: dict, subnet: str) -> list[str]:
    """The host's routes (its LAN, other Docker networks) that SUBNET overlaps, its own
    network's subnets aside."""
    wanted = ipaddress.ip_network(subnet)
    return [f"{cidr} ({dev})" for cidr, dev in found["routes"]
            if cidr not in found["subnets"] and ipaddress.ip_network(cidr).overlaps(wanted)]


@operation()
def network_free(subnet: str):
    """
    SUBNET clashes with no route of the host, checked before the stack step: the host's
    nginx trusts the app network, so one that overlaps the LAN would trust the LAN.

    + subnet: the app_network knob
    """
    clashes = _clashes(host.get_fact(DockerNetwork, network=PROJECT), subnet)
    if clashes:
        yield fail_command(f"app_network: {subnet} overlaps {', '.join(clashes)} on this "
                           "host; set app_network to a free private network")
        return
    host.noop(f"app_network {subnet} overlaps no route of this host")


def check_network(settings: Settings) -> None:
    """Before the stack step: app_network free on this host (when app services run)."""
    if services(settings):
        network_free(name="App network clashes with no route (app_network)",
                     subnet=settings.app_network)


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
    clashes = _clashes(found, subnet)
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
    env_files = [secret_file(name=f"Secrets of app service {name} (mode 600, not shown)",
                             dest=f"{root}/{name}.env", content=read_secrets(name, app))
                 for name, app in settings.app_services.items() if app.secrets]
    installed = checked_files(name="App services Compose file (checked, then live)",
                              root=root, wanted=wanted, nginx_image=None)
    running(name="App services running (changed ones recreated)", root=root, project=PROJECT,
            services=names, files_op=installed, nginx_container=None, drain_timeout=0,
            env_files=env_files)
    checked = ["redis"] if settings.app_cache else []
    checked += [n for n, a in settings.app_services.items() if a.healthcheck]
    if checked:
        healthy(name="App services healthy", project=PROJECT,
                containers={n: f"{PROJECT}-{n}" for n in checked},
                timeout_s=settings.ollama_health_timeout,
                _timeout=settings.ollama_health_timeout + 60)

