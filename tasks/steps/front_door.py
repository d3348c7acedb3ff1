"""The fleet's front door: nginx on lb_servers in front of every gpu_servers host.

Requests go by model: nginx's JavaScript module (njs, in the official nginx image;
templates/front_door/fleet.js) reads the model a request names and a map rendered from
the inventory picks the upstream of the hosts that serve it, balanced by outstanding
requests and weighted by each host's Ollama instances; a model no host serves gets a
404 from the front door itself. `/api/tags`, `/api/ps` and `/v1/models` answer the union
of the hosts in rotation; admin calls go to one host only when the operator names it.
Unless `ollama_allow_cloud` is on, a request that names an Ollama cloud model or asks for
its web search or fetch is refused at the front door, to every key (fleet.js, the gate).

Active health: every second the front door asks each host's nginx for its health agent's
verdict (`GET /fleet/health`, fleet.js `poll`, results in a shared dictionary that a reload
keeps). A host whose verdict is out, or has no instance ok, is evicted at once; one that
does not answer twice in a row is unreachable; either comes back after 3 good polls. Each
route's upstream is made of per-host gates (a server of this nginx on a unix socket) that
answer 503 at once for a host out of rotation, so the route's `proxy_next_upstream` sends the
request to the next host: no reload, nginx alone in the request path, least_conn and the
passive health (`max_fails`) kept. `GET /fleet/rotation` on `front_door_health_port` shows
each host in, drained, held, evicted or unreachable, with why and since when.

Guarantees: the upstreams are rendered from the inventory (a host added or removed
is followed on the next run; drained hosts are marked `down`: those the inventory
names and those `ollama-fleet` holds out, which the front door keeps in a file with
why (an operator's drain, a roll) so a plain deploy during a roll cannot put them back);
what the health poll evicted stays out through a deploy (the reload keeps the dictionary);
the config is
checked with `nginx -t` before it goes live and applied with a reload, never a
restart, so streams in flight finish on the old workers; after a reload the run
waits (bounded) until those old workers are gone, which is what a roll needs to
know that a drained host has no requests left.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pyinfra import host
from pyinfra.api import OperationError, operation

from ollama_fleet.tasks.kit.addresses import url_host
from ollama_fleet.tasks.kit.compose import checked_files, running, templates
from ollama_fleet.tasks.kit.facts import Lines
from ollama_fleet.tasks.kit.fleet import Fleet
from ollama_fleet.tasks.kit.modelname import canonical, parse, spellings_pattern
from ollama_fleet.tasks.kit.paths import TEMPLATES
from ollama_fleet.tasks.kit.report import fail_command
from ollama_fleet.tasks.kit.settings import Settings, is_ip
from ollama_fleet.tasks.steps import gate

PROJECT = "ollama-front"
FRONT_TEMPLATES = TEMPLATES / "front_door"
# Where each host's gate listens (a unix socket) in the front door's container: a tmpfs,
# fresh at every start (a socket left by a killed nginx would keep the next one from
# binding), and a folder the image has (`nginx -t` binds it too, in a bare container).
GATE_DIR = "/run"
INVENTORY_JS = "nginx/fleet_inventory.js"  # the fleet as fleet.js sees it (front_door_files)


@dataclass(frozen=True)
class Upstream:
    host: str
    address: str
    port: int
    drained: bool
    weight: int = 1  # its Ollama instances: least_conn weighs outstanding requests by it
    models: tuple[str, ...] = ()  # what the inventory gives it, as Ollama lists them
    # why it is drained (inventory: front_door_drained; drain; roll) and since when (unix
    # seconds): shown by the rotation view, no part of what the host is to a route
    cause: str = field(default="", compare=False)
    since: float | None = field(default=None, compare=False)

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


HELD_OUT = "held-out"  # in FRONT_DIR: the hosts ollama-fleet holds out, one a line
CAUSES = ("drain", "roll")  # an operator's `ollama-fleet drain`; a roll's batch


@dataclass(frozen=True)
class Held:
    """A host `ollama-fleet` holds out of the front door, why (CAUSES) and since when."""

    host: str
    cause: str = "drain"
    since: float | None = None

    @property
    def line(self) -> str:
        """Its line in HELD_OUT: `NAME<tab>CAUSE<tab>SINCE`."""
        return "\t".join([self.host, self.cause, *([f"{self.since:.0f}"] if self.since else [])])

    @classmethod
    def parse(cls, line: str) -> Held:
        """A HELD_OUT line; a bare name (the file before causes were kept) is a drain."""
        name, *rest = line.strip().split("\t")
        cause = rest[0] if rest and rest[0] in CAUSES else "drain"
        try:
            since = float(rest[1]) if len(rest) > 1 else None
        except ValueError:
            since = None
        return cls(name, cause, since)


def held_out(settings: Settings, now: float | None = None) -> list[Held]:
    """The hosts `ollama-fleet` (roll, drain, undrain) holds out of the front door: what
    this run says (front_door_out; front_door_out_roll: those a roll holds, else the causes
    the front door kept, else a drain), else what the front door kept from the last one."""
    kept = [Held.parse(line) for line in
            host.get_fact(Lines, path=f"{settings.front_door_dir}/{HELD_OUT}")]
    if settings.front_door_out is None:
        return kept
    before = {h.host: h for h in kept}
    rolled = settings.front_door_out_roll
    result = []
    for name in dict.fromkeys(settings.front_door_out):
        was = before.get(name)
        cause = ("roll" if name in rolled else "drain") if rolled is not None else \
            (was.cause if was else "drain")
        since = was.since if was and was.since else round(now or time.time())
        result.append(Held(name, cause, since))
    return result


def upstreams(settings: Settings, fleet: Fleet,
              out: Sequence[Held | str] | None = None) -> list[Upstream]:
    """Every gpu_servers host's entry point (its nginx, never its Ollama ports), in
    inventory order; `down` when the inventory (front_door_drained) or the operator's
    commands (OUT) hold it out."""
    held = {h.host: h for h in (Held(h) if isinstance(h, str) else h for h in out or [])}
    result = []
    for gpu in fleet.gpu_servers:
        why = held.get(gpu.name)
        cause = "inventory" if gpu.name in settings.front_door_drained else \
            why.cause if why else ""
        result.append(Upstream(gpu.name, gpu.address, gpu.settings.nginx_port, bool(cause),
                               weight=len(gpu.settings.instance_ports()),
                               models=tuple(canonical(m) for m in gpu.settings.all_models),
                               cause=cause, since=why.since if why and cause != "inventory"
                               else None))
    return result


def inventory_module(front_door: str, settings: Settings, servers: list[Upstream]) -> str:
    """fleet_inventory.js: the hosts fleet.js polls and shows, why each is held out, and
    which hosts each route has; a module, so nginx loads it with the config it matches."""
    index = {u.host: n for n, u in enumerate(servers)}
    doc = {"front_door": front_door, "lists_port": settings.front_door_lists_port,
           "hosts": [{"name": u.host, "upstream": f"fleet_host_{n}", "out": u.cause,
                      "since": u.since} for n, u in enumerate(servers)],
           "routes": {r.name: [index[s.host] for s in r.servers] for r in routes(servers)}}
    return ("// Rendered by the deploy (tasks/steps/front_door.py); edits here are "
            "overwritten.\n// The fleet as this front door's fleet.js sees it.\n"
            f"export default {json.dumps(doc, indent=1)};\n")


def rotation_readers(fleet: Fleet) -> list[str]:
    """Who may read a front door's rotation view besides loopback: the GPU hosts (by
    address: nginx's `allow` takes no names)."""
    return [a for a in dict.fromkeys(g.address for g in fleet.gpu_servers) if is_ip(a)]


def front_door_files(settings: Settings, servers: list[Upstream], front_door: str = "",
                     readers: Sequence[str] = ()) -> dict[str, str]:
    """The front door's files; FRONT_DOOR is its inventory name, READERS the addresses
    besides loopback that may read its rotation view."""
    env = templates(FRONT_TEMPLATES)
    main = (FRONT_TEMPLATES / "nginx.conf").read_text()
    alone = [(f"fleet_host_{n}", u) for n, u in enumerate(servers)]
    context = {"s": settings, "g": gate.context(settings), "project": PROJECT,
               "upstreams": servers, "routes": routes(servers), "alone": alone,
               "gate_of": {u.host: name for name, u in alone}, "gate_dir": GATE_DIR,
               # ollama_read_only makes /run a tmpfs already
               "extra_tmpfs": [] if settings.ollama_read_only else [GATE_DIR],
               "readers": list(readers),
               "nginx_conf_sha256": hashlib.sha256(main.encode()).hexdigest()}
    return {
        "compose.yaml": env.get_template("compose.yaml.j2").render(**context),
        "nginx.conf": main,
        "nginx/front.conf": env.get_template("front.conf.j2").render(**context),
        "nginx/fleet.js": (FRONT_TEMPLATES / "fleet.js").read_text(),
        INVENTORY_JS: inventory_module(front_door, settings, servers),
    }


@operation()
def front_door_config(settings: Settings, servers: list[Upstream], out: list[Held],
                      readers: list[str]):
    """
    The front door's Compose file, nginx config, the hosts held out and gate files (keys,
    TLS), checked then live (see ollama_fleet.tasks.kit.compose.checked_files).

    + settings: the host's validated settings
    + servers: the gpu_servers entry points
    + out: the hosts ollama-fleet holds out and why (kept in FRONT_DIR/held-out)
    + readers: the addresses besides loopback that may read the rotation view
    """
    try:
        extra, secret = gate.gate_files(settings)
    except OperationError as exc:
        yield fail_command(str(exc))
        return
    wanted = front_door_files(settings, servers, host.name, readers) | extra \
        | {HELD_OUT: "".join(f"{h.line}\n" for h in out)}
    yield from checked_files._inner(root=settings.front_door_dir, wanted=wanted,
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
                                  settings=settings, servers=servers, out=out,
                                  readers=rotation_readers(fleet))
    running(name="Front door running (reloaded, old requests let finish)",
            root=settings.front_door_dir, project=PROJECT, services=["nginx"],
            files_op=installed, nginx_container=PROJECT,
            drain_timeout=settings.front_door_drain_timeout,
            _timeout=settings.front_door_drain_timeout + 120)
