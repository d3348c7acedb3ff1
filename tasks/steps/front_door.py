"""The fleet's front door: nginx on lb_servers in front of every gpu_servers host.

Requests go by model: nginx's JavaScript module (njs, in the official nginx image;
templates/front_door/fleet.js) reads the model a request names and a map rendered from
the inventory picks the upstream of the hosts that serve it, balanced by outstanding
requests and weighted by each host's Ollama instances; a model no host serves gets a
404 from the front door itself. `/api/tags`, `/api/ps` and `/v1/models` answer the union
of the hosts in rotation; admin calls go to one host only when the operator names it.
Unless `ollama_allow_cloud` is on, a request that names an Ollama cloud model or asks for
its web search or fetch is refused at the front door, to every key (fleet.js, the gate).

Guarantees: the upstreams are rendered from the inventory (a host added or removed
is followed on the next run; drained hosts are marked `down`: those the inventory
names and those `ollama-fleet` holds out, which the front door keeps in a file so a
plain deploy during a roll cannot put them back); the config is
checked with `nginx -t` before it goes live and applied with a reload, never a
restart, so streams in flight finish on the old workers; after a reload the run
waits (bounded) until those old workers are gone, which is what a roll needs to
know that a drained host has no requests left.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import OperationError, operation

from ollama_fleet.tasks.kit.addresses import url_host
from ollama_fleet.tasks.kit.compose import checked_files, running, templates
from ollama_fleet.tasks.kit.facts import Lines
from ollama_fleet.tasks.kit.fleet import Fleet
from ollama_fleet.tasks.kit.modelname import canonical, parse, spellings_pattern
from ollama_fleet.tasks.kit.paths import TEMPLATES
from ollama_fleet.tasks.kit.report import fail_command
from ollama_fleet.tasks.kit.settings import Settings
from ollama_fleet.tasks.steps import gate

PROJECT = "ollama-front"
FRONT_TEMPLATES = TEMPLATES / "front_door"


@dataclass(frozen=True)
class Upstream:
    host: str
    address: str
    port: int
    drained: bool
    weight: int = 1  # its Ollama instances: least_conn weighs outstanding requests by it
    models: tuple[str, ...] = ()  # what the inventory gives it, as Ollama lists them

    @property
    def endpoint(self) -> str:
        """`address:port` for nginx's `server` line."""
        return f"{url_host(self.address)}:{self.port}"

    @property
    def nameable(self) -> bool:
        """Whether an operator can name it in X-Fleet-Host (nginx map keys: plain names)."""
        return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:@-]*", self.host) is not None


@dataclass(frozen=True)
class Route:
    """The hosts that serve some models: one nginx upstream (NAME), one map line per model
    (PATTERNS: every spelling Ollama reads as that model, ollama_fleet.tasks.kit.modelname)."""

    name: str
    models: tuple[str, ...]
    servers: tuple[Upstream, ...]

    @property
    def patterns(self) -> list[tuple[str, str]]:
        return [(model, spellings_pattern(model)) for model in self.models]


def routes(servers: list[Upstream]) -> list[Route]:
    """One route per set of hosts that serve the same models, in inventory order."""
    spelling: dict[str, str] = {}  # a model's key (any spelling) -> the first one listed
    hosts_of: dict[str, list[Upstream]] = {}  # a model's key -> the hosts that serve it
    for server in servers:
        for model in server.models:
            key = parse(model).key
            spelling.setdefault(key, model)
            hosts_of.setdefault(key, []).append(server)
    by_hosts: dict[tuple[Upstream, ...], list[str]] = {}
    for key, hosts in hosts_of.items():
        by_hosts.setdefault(tuple(dict.fromkeys(hosts)), []).append(spelling[key])
    return [Route(f"fleet_route_{n}", tuple(models), hosts)
            for n, (hosts, models) in enumerate(by_hosts.items())]


HELD_OUT = "held-out"  # in FRONT_DIR: the hosts ollama-fleet holds out, one per line


def held_out(settings: Settings) -> list[str]:
    """The hosts `ollama-fleet` (roll, drain, undrain) holds out of the front door: what
    this run says (front_door_out), else what the front door kept from the last one."""
    if settings.front_door_out is not None:
        return list(settings.front_door_out)
    return host.get_fact(Lines, path=f"{settings.front_door_dir}/{HELD_OUT}")


def upstreams(settings: Settings, fleet: Fleet, out: list[str] | None = None) -> list[Upstream]:
    """Every gpu_servers host's entry point (its nginx, never its Ollama ports), in
    inventory order; `down` when the inventory (front_door_drained) or the operator's
    commands (OUT) hold it out."""
    result = []
    for gpu in fleet.gpu_servers:
        drained = gpu.name in settings.front_door_drained or gpu.name in (out or [])
        result.append(Upstream(gpu.name, gpu.address, gpu.settings.nginx_port, drained,
                               weight=len(gpu.settings.instance_ports()),
                               models=tuple(canonical(m) for m in gpu.settings.all_models)))
    return result


def front_door_files(settings: Settings, servers: list[Upstream]) -> dict[str, str]:
    env = templates(FRONT_TEMPLATES)
    main = (FRONT_TEMPLATES / "nginx.conf").read_text()
    context = {"s": settings, "g": gate.context(settings), "project": PROJECT,
               "upstreams": servers, "routes": routes(servers),
               "alone": [(f"fleet_host_{n}", u) for n, u in enumerate(servers)],
               "nginx_conf_sha256": hashlib.sha256(main.encode()).hexdigest()}
    return {
        "compose.yaml": env.get_template("compose.yaml.j2").render(**context),
        "nginx.conf": main,
        "nginx/front.conf": env.get_template("front.conf.j2").render(**context),
        "nginx/fleet.js": (FRONT_TEMPLATES / "fleet.js").read_text(),
    }


@operation()
def front_door_config(settings: Settings, servers: list[Upstream], out: list[str]):
    """
    The front door's Compose file, nginx config, the hosts held out and gate files (keys,
    TLS), checked then live (see ollama_fleet.tasks.kit.compose.checked_files).

    + settings: the host's validated settings
    + servers: the gpu_servers entry points
    + out: the hosts ollama-fleet holds out (kept in FRONT_DIR/held-out)
    """
    try:
        extra, secret = gate.gate_files(settings)
    except OperationError as exc:
        yield fail_command(str(exc))
        return
    yield from checked_files._inner(root=settings.front_door_dir,
                                    wanted=front_door_files(settings, servers) | extra
                                    | {HELD_OUT: "".join(f"{name}\n" for name in out)},
                                    nginx_image=settings.nginx_image, secret=tuple(secret))


def deploy_front_door(settings: Settings, fleet: Fleet) -> None:
    """Front door files checked then live, nginx running, reloads drained; the upstreams
    are FLEET's gpu_servers."""
    out = held_out(settings)  # a plain deploy keeps what a roll or `drain` holds out
    servers = upstreams(settings, fleet, out)
    if not servers:
        host.noop("no gpu_servers in the inventory: no front door")
        return
    gate.prepare(settings, settings.front_door_dir)
    installed = front_door_config(name="Front door config (checked, then live)",
                                  settings=settings, servers=servers, out=out)
    running(name="Front door running (reloaded, old requests let finish)",
            root=settings.front_door_dir, project=PROJECT, services=["nginx"],
            files_op=installed, nginx_container=PROJECT,
            drain_timeout=settings.front_door_drain_timeout,
            _timeout=settings.front_door_drain_timeout + 120)
