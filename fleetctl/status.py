"""The fleet view: every host's GPUs, Docker, Ollama instances and nginx, in one table.

    ollama-fleet INVENTORY status [--json] [--limit HOST|GROUP|GLOB ...] [--timeout SECONDS]

The inventory is read and validated once (fleetctl.inventory); then every host is
queried in parallel with
pyinfra's API (its SSH connector, with the host's ssh_* data, connector arguments
such as `_sudo`, and ./config.py as pyinfra applies it), one round trip each: a
single shell script that prints one JSON document (see `status_script`). Each host
gets at most --timeout seconds (default 20) for the SSH connection and the script
together. A host that cannot be connected to in that time is reported `unreachable`;
one that connects but cannot finish the script is shown with its error; every other
host is still shown. Nothing on any host is changed.

`--limit` takes host or group names and globs (repeatable, or comma-separated).

Exit status: 0 when every host answered and every Ollama instance is healthy
(Docker health status `healthy`); 1 when any host was unreachable or could not
report, or any instance is not healthy (missing, stopped, starting, unhealthy);
2 for bad arguments or inventory (one line on stderr naming the argument).

JSON (`--json`): a list, in inventory order, of one object per host.

A host that could not be reached (SSH connect failed or timed out):

    {"host": "gpu-2", "reachable": false, "error": "Could not connect (timed out)"}

A host that answered (every key always present; null where unknown):

    {"host": "gpu-1", "reachable": true,
     "error": null,                     # or why it could not report (the rest is empty)
     "groups": ["gpu_servers"],
     "os": "Debian GNU/Linux 13 (trixie)",          # PRETTY_NAME of /etc/os-release
     "driver_version": "570.172.08",                # null without a working nvidia-smi
     "gpu_error": null,                 # nvidia-smi installed but failing: its message
     "gpus": [{"index": 0, "uuid": "GPU-...", "name": "NVIDIA H100 80GB HBM3",
               "memory_used_mib": 1, "memory_total_mib": 81559, "utilization_pct": 0}],
                                        # [] on a host without nvidia-smi: "no GPU"
     "docker_version": "26.1.5+dfsg1",  # the engine's (server) version
     "docker_error": null,
     "instances": [{"name": "ollama-0", "port": 11434,
                    "state": "running",   # Docker's state; "missing" when there is no container
                    "health": "healthy",  # Docker's health status; null without a healthcheck
                    "healthy": true,
                    "image": "ollama/ollama:0.6.8",
                    "gpus": [{"index": 0, "uuid": "GPU-..."}],  # the GPUs it was given
                    "all_gpus": false,    # given every GPU (Compose count: all)
                    "version": "0.6.8",   # GET /api/version; null when it does not answer
                    "models": ["tinyllama:latest"],   # GET /api/tags
                    "loaded": [],                     # GET /api/ps
                    "placement": [{"name": "tinyllama:latest", "size": 2097595,
                                   "size_vram": 2097595, "on": "GPU"}],
                                        # where each loaded model lives: GPU, CPU, or
                                        # "60% GPU" (split), with its bytes in GPU memory
                    "api_error": null}],
     "nginx": {"url": "http://127.0.0.1:80/health", "ok": true, "status": 200,
               "error": null}}        # "nginx" is null on hosts that run none

Instances are the ones the inventory's settings describe (`ollama-N` on
`ollama_base_port + N`), so one that should exist but does not shows as missing.
"""

from __future__ import annotations

import base64
import json
import math
import re
import runpy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyinfra.api import FactBase
from pyinfra.api.exceptions import FactProcessError

from ollama_fleet.fleetctl.inventory import UsageError
from ollama_fleet.tasks.kit.facts import parse_gpu_csv, reboot_required
from ollama_fleet.tasks.kit.fleet import Member
from ollama_fleet.tasks.kit.paths import CONFIG
from ollama_fleet.tasks.kit.scripts import script_command, script_text
from ollama_fleet.tasks.steps import health
from ollama_fleet.tasks.steps.stack import PROJECT, expected_services

DEFAULT_TIMEOUT_S = 20
GPU_QUERY = ("index", "uuid", "name", "memory.used", "memory.total", "utilization.gpu",
             "driver_version")
# One JSON object per container, made by Docker itself (nothing else of it leaves the host).
INSPECT_FORMAT = ('{"name":{{json .Name}},'
                  '"service":{{json (index .Config.Labels "com.docker.compose.service")}},'
                  '"state":{{json .State.Status}},'
                  '"health":{{if .State.Health}}{{json .State.Health.Status}}{{else}}null{{end}},'
                  '"health_log":{{if .State.Health}}{{json .State.Health.Log}}{{else}}null{{end}},'
                  '"image":{{json .Config.Image}},'
                  '"devices":{{json .HostConfig.DeviceRequests}}}')


# -- the plan: what to ask each host, from the inventory ----------------------


@dataclass(frozen=True)
class HostPlan:
    """One host to query: its pyinfra data, and the instances its settings describe."""

    name: str
    groups: tuple[str, ...]
    data: dict[str, Any] = field(repr=False)
    instances: tuple[tuple[str, int], ...] = ()
    api_address: str = "127.0.0.1"
    nginx_url: str | None = None
    verdict: str = ""  # the health agent's verdict file (gpu_servers)
    events: int = 0  # how many of the agent's last events to read (gpu_servers)
    rotation_url: str = ""  # a front door's /fleet/rotation, from the front door itself


def nginx_health_url(settings: Any, front_door: bool) -> str:
    """Where the host's nginx (or the front door's) answers /health, from the host itself."""
    if getattr(settings, "nginx_tls", "off") != "off":
        return f"https://127.0.0.1:{settings.nginx_tls_port}/health"
    port = settings.front_door_port if front_door else settings.nginx_port
    return f"http://127.0.0.1:{port}/health"


def plan_hosts(hosts: list[Member], events: int = 5) -> list[HostPlan]:
    """What to ask each of HOSTS, from its validated settings; EVENTS: how many of each GPU
    host's last health events."""
    plans = []
    for h in hosts:
        s = h.settings
        instances: tuple[tuple[str, int], ...] = ()
        url = None
        verdict = rotation = ""
        if h.gpu_server:
            names = [name for name in expected_services(s) if name != "nginx"]
            instances = tuple(zip(names, (port for _, port in s.instance_ports()), strict=True))
            url = nginx_health_url(s, front_door=False)
            verdict = health.VERDICT
        elif h.front_door:
            url = nginx_health_url(s, front_door=True)
            rotation = f"http://127.0.0.1:{s.front_door_health_port}/fleet/rotation"
        plans.append(HostPlan(h.name, h.groups, h.data, instances,
                              s.local_host(), url, verdict, events if verdict else 0, rotation))
    return plans


# -- the one round trip: a shell script that prints JSON ----------------------


def status_script(plan: HostPlan) -> str:
    """The command run on PLAN's host (templates/status/status.sh). It always exits 0 and
    prints one JSON object: `{"format": 1, KEY: {"rc": EXIT, "out": BASE64(stdout+stderr)},
    ...}` with KEY os, nvidia_smi (absent without nvidia-smi), docker, containers (absent
    without Docker), version:PORT, tags:PORT, ps:PORT (absent when curl is missing), nginx,
    reboot (templates/facts/reboot-required.sh's lines).
    Output is base64 so that nothing a command prints can break the document. Needs sh and
    coreutils (timeout, base64, tr, cat); every command is bounded by `timeout`, and an
    instance whose /api/version does not answer is not asked the rest."""
    return script_command("status/status.sh", PROJECT, ",".join(GPU_QUERY), INSPECT_FORMAT,
                          plan.api_address, plan.nginx_url or "",
                          script_text("facts/reboot-required.sh"), plan.verdict,
                          health.EVENTS if plan.events else "", plan.events, plan.rotation_url,
                          *(port for _, port in plan.instances))


class FleetStatus(FactBase):
    """What the fleet view reports about one host, raw (decoded, unparsed): see status_script.

    Also usable by hand: `pyinfra INV fact fleetctl.status.FleetStatus ports=[11434]`."""

    def command(self, ports: list[int] | None = None, nginx_url: str = "http://127.0.0.1/health"
                ) -> str:
        instances = tuple((f"{PROJECT}-{n}", p) for n, p in enumerate(ports or []))
        return status_script(HostPlan("", (), {}, instances, nginx_url=nginx_url))

    def process(self, output: list[str]) -> dict[str, Any]:
        try:
            return decode_report("\n".join(output))
        except ValueError as exc:
            raise FactProcessError(str(exc)) from None


# -- parsing: pure functions, recorded outputs in tests/unit/fixtures/status ---


def decode_report(text: str) -> dict[str, Any]:
    """The script's JSON with every `out` decoded to text. Raises ValueError if broken."""
    start = text.find('{"format"')
    if start < 0:
        raise ValueError(f"no report in the output: {text.strip()[-200:]!r}")
    report = json.loads(text[start:].strip().splitlines()[0])
    for value in report.values():
        if isinstance(value, dict) and "out" in value:
            value["out"] = base64.b64decode(value["out"]).decode("utf-8", "replace")
    return report


def parse_os_release(text: str) -> str | None:
    """PRETTY_NAME of an /etc/os-release."""
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "PRETTY_NAME":
            return value.strip().strip("\"'") or None
    return None


def parse_gpus(text: str, rc: int | None) -> tuple[list[dict[str, Any]], str | None, str | None]:
    """`nvidia-smi --query-gpu=GPU_QUERY --format=csv,noheader,nounits` output and exit
    status (None: no nvidia-smi) -> (gpus, driver version, error)."""
    if rc is None:
        return [], None, None
    rows, other = parse_gpu_csv(text.splitlines(), GPU_QUERY)
    driver = rows[-1]["driver_version"] if rows else None
    gpus = [{k: v for k, v in row.items() if k != "driver_version"} for row in rows]
    if rc != 0 or not gpus:
        detail = " ".join(other) or "no output"
        return gpus, driver, f"nvidia-smi exited {rc}: {detail}" if rc else f"nvidia-smi: {detail}"
    return gpus, driver, None


def parse_containers(text: str) -> dict[str, dict[str, Any]]:
    """`docker inspect --format INSPECT_FORMAT` lines -> container name -> its fields."""
    result = {}
    for line in text.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and item.get("name"):
            item["name"] = item["name"].lstrip("/")
            result[item["name"]] = item
    return result


def given_gpus(devices: list[dict] | None, gpus: list[dict[str, Any]]) -> tuple[list[dict], bool]:
    """The GPUs a container's DeviceRequests give it, as {index, uuid}; and whether it has
    all of them (Compose `count: all`). Index is null for a UUID nvidia-smi does not list."""
    index_of = {g["uuid"]: g["index"] for g in gpus}
    given, everything = [], False
    for request in devices or []:
        if request.get("Driver") not in ("nvidia", "", None) and \
                ["gpu"] not in (request.get("Capabilities") or []):
            continue
        if request.get("Count") == -1:
            everything = True
        for device in request.get("DeviceIDs") or []:
            index = index_of.get(device)
            if index is None and device.isdigit():
                index = int(device)
                device = next((g["uuid"] for g in gpus if g["index"] == index), device)
            given.append({"index": index, "uuid": device})
    return given, everything


def _curl_error(line: str) -> str:
    """curl's error line without its `curl: (7) ` prefix."""
    return re.sub(r"^curl: \(\d+\) ", "", line)


def _api(report: dict[str, Any], what: str, port: int) -> tuple[Any, str | None]:
    """GET /api/WHAT on PORT as the script recorded it -> (parsed JSON or None, error)."""
    entry = report.get(f"{what}:{port}")
    if entry is None:
        return None, None
    if entry["rc"] != 0:
        detail = entry["out"].strip().splitlines()
        return None, f"/api/{what}: {_curl_error(detail[-1]) if detail else entry['rc']}"
    try:
        return json.loads(entry["out"]), None
    except ValueError:
        return None, f"/api/{what}: not JSON: {entry['out'].strip()[:80]!r}"


def instance_view(name: str, port: int, container: dict[str, Any] | None,
                  report: dict[str, Any], gpus: list[dict[str, Any]]) -> dict[str, Any]:
    """One Ollama instance: its container (None: missing) and its API's answers."""
    container = container or {}
    given, everything = given_gpus(container.get("devices"), gpus)
    version, error = _api(report, "version", port)
    tags, tags_error = _api(report, "tags", port)
    ps, ps_error = _api(report, "ps", port)
    if f"version:{port}" not in report:
        error = "curl is not installed on the host"
    health = container.get("health")
    log = container.get("health_log") or []
    last = log[-1] if isinstance(log, list) and log and isinstance(log[-1], dict) else {}
    return {
        "name": name, "port": port,
        "state": container.get("state", "missing"),
        "health": health,
        "healthy": health == "healthy",
        # why Docker's healthcheck fails (the last probe's first line), e.g. `gpu: ...`
        "health_reason": (str(last.get("Output") or "").strip().splitlines() or [None])[0]
        if health not in ("healthy", None) and last.get("ExitCode") else None,
        "image": container.get("image"),
        "gpus": given, "all_gpus": everything,
        "version": version.get("version") if isinstance(version, dict) else None,
        "models": [m.get("name") for m in (tags or {}).get("models") or []],
        "loaded": [m.get("name") for m in (ps or {}).get("models") or []],
        "placement": [placement(m) for m in (ps or {}).get("models") or []],
        "api_error": error or tags_error or ps_error,
    }


def placement(model: dict[str, Any]) -> dict[str, Any]:
    """Where a loaded model (an /api/ps entry) lives, as `ollama ps` says it: all in GPU
    memory, on the CPU, or split."""
    size, vram = int(model.get("size") or 0), int(model.get("size_vram") or 0)
    if vram == 0:
        on = "CPU"
    elif vram >= size:
        on = "GPU"
    else:
        on = f"{round(100 * vram / size)}% GPU"
    return {"name": model.get("name"), "size": size, "size_vram": vram, "on": on}


def nginx_view(url: str | None, entry: dict[str, Any] | None) -> dict[str, Any] | None:
    if url is None:
        return None
    if entry is None:
        return {"url": url, "ok": False, "status": None,
                "error": "curl is not installed on the host"}
    found = re.search(r"http_code=(\d{3})", entry["out"])
    code = int(found.group(1)) if found and found.group(1) != "000" else None
    errors = re.findall(r"curl: \(\d+\)[^\n]*?(?=http_code=|$)", entry["out"], re.M)
    errors = [_curl_error(e.strip()) for e in errors]
    ok = entry["rc"] == 0 and code == 200
    return {"url": url, "ok": ok, "status": code,
            "error": None if ok else (errors[-1] if errors else f"HTTP {code}")}


def host_view(plan: HostPlan, report: dict[str, Any]) -> dict[str, Any]:
    """A host that answered: its decoded report (see status_script) as the JSON schema."""
    os_entry = report.get("os") or {"rc": 1, "out": ""}
    smi = report.get("nvidia_smi")
    gpus, driver, gpu_error = parse_gpus(smi["out"], smi["rc"]) if smi else ([], None, None)
    docker = report.get("docker")
    docker_version = docker_error = None
    if docker is None:
        docker_error = "docker is not installed"
    elif docker["rc"] == 0 and docker["out"].strip():
        docker_version = docker["out"].strip()
    else:
        docker_error = docker["out"].strip().splitlines()[-1] if docker["out"].strip() \
            else f"docker version exited {docker['rc']}"
    containers = parse_containers((report.get("containers") or {}).get("out", ""))
    reboot = report.get("reboot")
    verdict = json_entry(report.get("health"))
    agent = {i.get("name"): i for i in (verdict or {}).get("instances") or []
             if isinstance(i, dict)}
    instances = [instance_view(name, port, containers.get(name), report, gpus)
                 for name, port in plan.instances]
    for view in instances:  # the agent's word (null where none was asked)
        view["agent"] = agent_view(agent.get(view["name"])) if plan.verdict else None
        view["healthy"] = view["healthy"] and (view["agent"] or {}).get("state") != "out"
    return {
        "host": plan.name, "reachable": True, "error": None, "groups": list(plan.groups),
        "os": parse_os_release(os_entry["out"]),
        # why the host must reboot to run what is installed (a kernel, a driver): [] none
        "reboot_required": reboot_required(reboot["out"].splitlines()) if reboot else [],
        "driver_version": driver, "gpu_error": gpu_error, "gpus": gpus,
        "docker_version": docker_version, "docker_error": docker_error,
        "instances": instances,
        "nginx": nginx_view(plan.nginx_url, report.get("nginx")),
        # the health agent's verdict on the host (null: no agent answers there)
        "health": agent_view(verdict, host=True, now=host_clock(report)) if plan.verdict
        else None,
        "events": parse_events((report.get("events") or {}).get("out", "")),
        # a front door's view of every host (its /fleet/rotation); null elsewhere
        "rotation_view": json_entry(report.get("rotation")) if plan.rotation_url else None,
        # this host at every front door: {front door: {state, cause, reason, since}}
        "rotation": {},
    }


def json_entry(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON object a report entry printed; None when absent, failed or not an object."""
    if not entry or entry.get("rc"):
        return None
    try:
        doc = json.loads(entry["out"])
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


# A verdict not renewed for this long (or three of its agent's intervals, when longer): its
# agent is silent (it renews it every health_interval, 1 s by default).
SILENT_AFTER_S = 10


def host_clock(report: dict[str, Any]) -> float | None:
    entry = report.get("now") or {}
    try:
        return float(entry.get("out", "").strip())
    except ValueError:
        return None


def agent_view(entry: dict[str, Any] | None, host: bool = False,
               now: float | None = None) -> dict[str, Any]:
    """The health agent's word on a host or an instance: state ok/out/unknown/silent (a
    verdict older than SILENT_AFTER_S by the host's own clock), and why."""
    if not entry:
        return {"state": "unknown", "kind": "", "reason": "no verdict from the health agent",
                "since": None, "action": ""}
    view = {key: entry.get(key) for key in ("state", "kind", "reason", "since", "action")}
    if host:
        checked = entry.get("checked_at")
        view["checked_at"] = checked
        interval = entry.get("interval_s")
        interval = interval if isinstance(interval, (int, float)) and interval > 0 else 1
        if now is not None and isinstance(checked, (int, float)) \
                and now - checked > max(SILENT_AFTER_S, 3 * interval):
            view["state"] = "silent"
            view["reason"] = f"the health agent's verdict is {now - checked:.0f} s old"
    return view


def parse_events(text: str) -> list[dict[str, Any]]:
    """The agent's events (one JSON object a line), oldest first; broken lines skipped."""
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


# The front doors' word for each state (their /fleet/rotation: templates/front_door/fleet.js).
ROTATION_WORDS = {"in": "in rotation", "drained": "drained by an operator",
                  "held": "held out by a roll", "evicted": "evicted by the health agent",
                  "unreachable": "evicted: its verdict does not answer"}


def attach_rotation(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give every GPU host's view its state at every front door that reported one."""
    by_name = {v["host"]: v for v in views}
    for door in views:
        doc = door.get("rotation_view")
        if not doc:
            continue
        for name, state in (doc.get("hosts") or {}).items():
            view = by_name.get(name)
            if view is not None and view.get("reachable") and isinstance(state, dict):
                view.setdefault("rotation", {})[door["host"]] = state
    return views


def failed_view(plan: HostPlan, error: str, reachable: bool = False) -> dict[str, Any]:
    """A host that could not report. Unreachable hosts have only host, reachable, error."""
    if not reachable:
        return {"host": plan.name, "reachable": False, "error": error}
    return {"host": plan.name, "reachable": True, "error": error, "groups": list(plan.groups),
            "os": None, "reboot_required": [], "driver_version": None, "gpu_error": None,
            "gpus": [], "docker_version": None, "docker_error": None, "instances": [],
            "nginx": None, "health": None, "events": [], "rotation_view": None,
            "rotation": {}}


def exit_status(views: list[dict[str, Any]]) -> int:
    """0: every host reported and every instance is healthy; 1 otherwise."""
    for view in views:
        if view["error"] or not all(i["healthy"] for i in view.get("instances", [])):
            return 1
    return 0


# -- the table -------------------------------------------------------------------


def _gpu_label(instance: dict[str, Any]) -> str:
    if instance["all_gpus"]:
        return "gpu:all"
    if not instance["gpus"]:
        return "cpu"
    return "gpu:" + ",".join(str(g["index"]) if g["index"] is not None else g["uuid"]
                             for g in instance["gpus"])


def _condition(instance: dict[str, Any]) -> str:
    """healthy/unhealthy/starting while it runs; else Docker's state (a stopped container
    keeps its last health status, which would mislead)."""
    if instance["state"] != "running":
        return instance["state"]
    return instance["health"] or "running"


def _names(names: list[str]) -> str:
    return ", ".join(names) if names else "-"


def _placed(models: list[dict[str, Any]]) -> str:
    return ", ".join(f"{m['name']} ({m['on']})" for m in models) if models else "-"


def _since(when: Any) -> str:
    if not isinstance(when, (int, float)):
        return ""
    return " since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def _fault(view: dict[str, Any]) -> str:
    """`kind: reason (since ...; action)` of an agent's verdict."""
    action = f"; {view['action']}" if view.get("action") else ""
    return f"{view.get('kind')}: {view.get('reason')} ({_since(view.get('since')).strip()}{action})"


def _rotation(state: dict[str, Any]) -> str:
    word = ROTATION_WORDS.get(state.get("state"), str(state.get("state")))
    cause = state.get("cause")
    text = word + (f" ({cause})" if cause and state.get("state") in ("drained", "held") else "")
    if state.get("reason"):
        text += f": {state['reason']}"
    text += _since(state.get("since"))
    out = [f"{name} {s.get('state')}" for name, s in (state.get("instances") or {}).items()
           if s.get("state") != "in"]
    return text + (f"; instances out: {', '.join(out)}" if out else "")


def render_events(views: list[dict[str, Any]]) -> str:
    """The health agents' last actions, a line each, per host in inventory order."""
    lines = []
    for v in views:
        if not v.get("reachable") or v.get("error"):
            where = "unreachable: " if not v.get("reachable") else ""
            lines.append(f"{v['host']}: {where}{v.get('error')}")
            continue
        if v.get("health") is None:
            continue  # not a GPU host
        if not v["events"]:
            lines.append(f"{v['host']}: no health events")
        for e in v["events"]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.get("at") or 0))
            target = e.get("instance") or "host"
            lines.append(f"{when}  {v['host']:<10} {target:<10} {e.get('kind', ''):<10} "
                         f"{e.get('action', '')}: {e.get('result', '')}"
                         + (f" ({e['reason']})" if e.get("reason") else ""))
    return "\n".join(lines) + "\n"


def render_table(views: list[dict[str, Any]]) -> str:
    """Fixed columns: a line per host, under it a line per GPU and per Ollama instance."""
    width = max([4, *(len(v["host"]) for v in views)])
    out = [f"{'HOST':<{width}}  {'OS':<32}  {'DRIVER':<12}  {'DOCKER':<14}  NGINX /health"]
    instances = healthy = unreachable = 0
    for v in views:
        if not v["reachable"]:
            unreachable += 1
            out.append(f"{v['host']:<{width}}  unreachable: {v['error']}")
            continue
        if v["error"]:
            out.append(f"{v['host']:<{width}}  error: {v['error']}")
            continue
        nginx = v["nginx"]
        nginx_text = "-" if nginx is None else "ok" if nginx["ok"] else \
            f"DOWN ({nginx['error']})"
        docker = v["docker_version"] or f"({v['docker_error']})"
        out.append(f"{v['host']:<{width}}  {(v['os'] or '?')[:32]:<32}  "
                   f"{v['driver_version'] or '-':<12}  {docker:<14}  {nginx_text}")
        pad = " " * (width + 2)
        for reason in v.get("reboot_required") or []:
            out.append(f"{pad}reboot required: {reason}")
        if v["gpu_error"]:
            out.append(f"{pad}GPU  {v['gpu_error']}")
        elif not v["gpus"]:
            out.append(f"{pad}no GPU")
        for g in v["gpus"]:
            memory = f"{g['memory_used_mib']} / {g['memory_total_mib']} MiB"
            util = "?" if g["utilization_pct"] is None else f"{g['utilization_pct']}%"
            out.append(f"{pad}GPU {g['index']:<3}  {g['name'][:26]:<26}  {memory:>20}  "
                       f"{util:>4}  {g['uuid']}")
        for i in v["instances"]:
            instances += 1
            healthy += i["healthy"]
            agent = i.get("agent") or {}
            out.append(f"{pad}{i['name']:<9} :{i['port']:<5}  {_gpu_label(i):<9}  "
                       f"{_condition(i):<9}  {i['version'] or '-':<8}  "
                       f"models {_names(i['models'])}  loaded {_placed(i['placement'])}"
                       + (f"  ({i['api_error']})" if i["api_error"] else "")
                       + (f"  [{i['health_reason']}]" if i["health_reason"] else "")
                       + (f"  OUT {_fault(agent)}" if agent.get("state") == "out" else ""))
        if v.get("health") is not None:
            h = v["health"]
            out.append(f"{pad}health agent: " + (f"OUT {_fault(h)}" if h["state"] == "out"
                                                  else h["reason"] if h["state"] in
                                                  ("unknown", "silent") else h["state"]))
        for door, state in sorted((v.get("rotation") or {}).items()):
            out.append(f"{pad}front door {door}: {_rotation(state)}")
    answered = len(views) - unreachable
    out.append(f"{len(views)} hosts: {answered} answered, {unreachable} unreachable; "
               f"{instances} Ollama instances: {healthy} healthy")
    return "\n".join(out) + "\n"


# -- I/O: the inventory, and the hosts over SSH ------------------------------------


def pyinfra_config(timeout: float, path: str | None = None) -> Any:
    """pyinfra's Config as its CLI would make it here: the package's config.py (and the
    operator's ./config.py after it) run with `pyinfra.config` pointing at it (global
    SUDO, SU_USER... apply), and the connect timeout capped at 3/4 of TIMEOUT so that a
    host that does not connect is reported with pyinfra's reason."""
    from pyinfra.api import Config
    from pyinfra.context import ctx_config

    path = path or str(CONFIG)
    config = Config()
    if Path(path).is_file():
        try:
            with ctx_config.use(config):
                runpy.run_path(path)
        except Exception as exc:  # noqa: BLE001 - whatever the user's file raises
            raise UsageError(f"{path}: {type(exc).__name__}: {exc}") from None
    config.CONNECT_TIMEOUT = min(config.CONNECT_TIMEOUT, max(1, int(timeout * 3 / 4)))
    return config


def collect(plans: list[HostPlan], timeout: float, config: Any) -> list[dict[str, Any]]:
    """Query every host in parallel (pyinfra's SSH connector, gevent); each one bounded by
    TIMEOUT seconds for connecting and running status_script together. CONFIG: see
    pyinfra_config."""
    import logging

    import gevent
    from gevent import monkey
    from paramiko import SSHException
    from pyinfra.api import Inventory, State, StringCommand
    from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS, pop_global_arguments
    from pyinfra.api.exceptions import ConnectError

    if not monkey.is_module_patched("socket"):
        raise RuntimeError("run as `ollama-fleet` (python -m fleetctl): gevent must patch the "
                           "standard library before pyinfra connects")
    logging.getLogger("pyinfra").addHandler(logging.NullHandler())  # errors are reported here
    inventory = Inventory(([(p.name, p.data) for p in plans], {}))
    state = State(inventory, config)

    def query(plan: HostPlan) -> dict[str, Any]:
        host = inventory.get_host(plan.name)
        step = "connecting"
        try:
            with gevent.Timeout(timeout):
                host.connect(show_errors=False, raise_exceptions=True)
                step = "running the status script"
                # pyinfra's _timeout is whole seconds (a float fails its type check)
                arguments, _ = pop_global_arguments(state, host,
                                                    {"_timeout": math.ceil(timeout)})
                connector_args = {k: v for k, v in arguments.items()
                                  if k in CONNECTOR_ARGUMENT_KEYS}
                ok, output = host.run_shell_command(StringCommand(status_script(plan)),
                                                    print_output=False, print_input=False,
                                                    **connector_args)
        except (gevent.Timeout, TimeoutError):
            return failed_view(plan, f"no answer within {timeout:g}s ({step})",
                               reachable=step != "connecting")
        except ConnectError as exc:
            return failed_view(plan, str(exc))
        except (OSError, SSHException, EOFError) as exc:
            return failed_view(plan, f"SSH failed while {step}: "
                               f"{str(exc) or type(exc).__name__}", reachable=step != "connecting")
        finally:
            close = getattr(getattr(host.connector, "client", None), "close", None)
            if close:
                close()
        try:
            return host_view(plan, decode_report(output.stdout))
        except (ValueError, KeyError, TypeError) as exc:
            text = (output.stderr or output.stdout).strip().splitlines()
            detail = text[-1] if text else str(exc)
            return failed_view(plan, f"the status script failed{'' if ok else ' (exit != 0)'}: "
                               f"{detail}", reachable=True)

    greenlets = [state.pool.spawn(query, plan) for plan in plans]
    gevent.joinall(greenlets)
    return [g.get() for g in greenlets]
