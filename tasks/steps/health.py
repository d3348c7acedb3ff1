"""GPU servers between deploys: the health agent watches the host and its instances,
takes what is sick out of rotation within seconds, and heals it by policy.

Guarantees:
- `ollama-fleet-health.service` (templates/health/health-agent.py, the host's Python 3
  standard library) checks every `health_interval` seconds: the kernel log's Xid reports,
  nvidia-smi (answers, `gpu_count` GPUs, ECC), Fabric Manager on boards that need it, each
  instance on loopback (refused, hung, its proof model on the CPU) and nvidia-smi inside
  each GPU instance (NVML lost);
- its verdict (per host and per instance, with the evidence) is served by the host's nginx
  at /fleet/health to the front doors and the other GPU hosts; an instance it holds out
  is refused at once by the host's nginx (its gate: templates/stack/ollama.conf.j2), and
  the front doors take a host out whose verdict says so (templates/front_door/fleet.js);
- healing follows one chain of actions per fault kind (the agent's CHAINS and XIDS):
  restart, recreate, GPU reset when the GPU is idle, Fabric Manager restart; a reboot
  only with `health_allow_reboot` and while at most `health_max_unavailable` hosts are out
  at the front doors, drained ones counted; `health_heal: false` detects and evicts only;
  an instance returns only after `health_return_after` good checks and the GPU proof;
- while a deploy or a roll holds the host's run lock it takes nothing new out and acts on
  nothing (they recreate and prove the instances themselves; a roll's smoke test asks them
  through the host's nginx), and it never puts back what an operator or a roll drained at
  the front doors (those are theirs);
- every action is a line of EVENTS (`ollama-fleet INVENTORY events`) and of the journal;
- the agent is restarted only when its script, its configuration or its unit changed.
"""

from __future__ import annotations

import json
from io import StringIO

from pyinfra import host
from pyinfra.facts.files import File
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from ollama_fleet.tasks.kit import lock, paths
from ollama_fleet.tasks.kit.addresses import url_host
from ollama_fleet.tasks.kit.compose import templates
from ollama_fleet.tasks.kit.fleet import Fleet
from ollama_fleet.tasks.kit.modelname import canonical, parse
from ollama_fleet.tasks.kit.scripts import script_text
from ollama_fleet.tasks.kit.settings import Settings
from ollama_fleet.tasks.steps import nvidia_driver, packages
from ollama_fleet.tasks.steps.stack import HEALTH_DIR, PROJECT

TEMPLATES = paths.TEMPLATES / "health"
LIBEXEC = "/usr/local/libexec/ollama-fleet"
AGENT = f"{LIBEXEC}/health-agent"
CONFIG = "/etc/ollama-fleet/health.json"
UNIT = "ollama-fleet-health.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"
EVENTS = "/var/lib/ollama-fleet/health/events.jsonl"
VERDICT = f"{HEALTH_DIR}/verdict.json"
# The guard the agent replaces (a timer of earlier releases): stopped and removed.
OLD_GUARD = ["ollama-fleet-gpu-guard.timer", "ollama-fleet-gpu-guard.service"]


def instance_gpus(settings: Settings) -> list[list[int]]:
    """The GPU indexes of each instance, in instance order (stack.plan_instances' rule)."""
    ports = settings.instance_ports()
    if settings.topology == "per_gpu":
        return [[index] for index in settings.gpu_indexes[:len(ports)]]
    if settings.topology == "shared":
        return [list(settings.gpu_indexes)]
    return [[] for _ in ports]


def agent_config(settings: Settings, fleet: Fleet, name: str, fabricmanager: bool) -> dict:
    """The agent's configuration for host NAME: data, dumped as JSON."""
    instances = [{"name": f"{PROJECT}-{n}", "port": port, "gpus": gpus}
                 for (n, port), gpus in zip(settings.instance_ports(), instance_gpus(settings),
                                            strict=True)]
    # one spelling whichever the inventory uses from one run to the next: the shortest, in
    # lower case (Ollama compares names case-insensitively: tasks/kit/modelname.py)
    proof = canonical(settings.first_model).lower() if settings.first_model else None
    warm = {parse(model).key for model in settings.ollama_warm_models}
    return {
        "host": name,
        "interval_s": settings.health_interval,
        "gpu_count": settings.gpu_count if settings.gpu_indexes else 0,
        "fabricmanager_unit": f"{nvidia_driver.FABRICMANAGER_UNIT}" if fabricmanager else "",
        "address": settings.local_host(),
        "instances": instances,
        "project": PROJECT,
        "stack_dir": settings.ollama_stack_dir,
        "lock": lock.LOCK_PATH,
        "heal": settings.health_heal,
        "allow_reboot": settings.health_allow_reboot,
        "max_unavailable": settings.health_max_unavailable,
        "return_after": settings.health_return_after,
        "proof_model": proof,
        "proof_warm": proof is not None and parse(proof).key in warm,
        "proof_timeout_s": settings.ollama_health_timeout,
        "front_doors": [
            f"http://{url_host(lb.address)}:{lb.settings.front_door_health_port}/fleet/rotation"
            for lb in fleet.lb_servers],
    }


def unit_text() -> str:
    return templates(TEMPLATES).get_template(f"{UNIT}.j2").render(script=AGENT, config=CONFIG)


def retire_old_guard() -> None:
    """Stop and remove the GPU guard timer of earlier releases (the agent does its work)."""
    for unit in OLD_GUARD:
        path = f"/etc/systemd/system/{unit}"
        if host.get_fact(File, path=path):
            systemd.service(name=f"Old GPU guard stopped: {unit}", service=unit,
                            running=False, enabled=False)
            files.file(name=f"Old GPU guard removed: {path}", path=path, present=False)
    files.file(name="Old GPU guard script removed", path=f"{LIBEXEC}/gpu-guard", present=False)


def watch_health(settings: Settings, fleet: Fleet, dist) -> None:
    """Install and (re)start the health agent on this gpu_servers host."""
    plan = nvidia_driver.host_plan(settings, dist) if settings.gpu_count else None
    fabricmanager = bool(plan and plan.fabricmanager)
    packages.installed(name="The health agent's interpreter: python3", packages=["python3"])
    config = json.dumps(agent_config(settings, fleet, host.name, fabricmanager), indent=2,
                        sort_keys=True) + "\n"
    changes = [
        files.put(name=f"Health agent: {AGENT}",
                  src=StringIO(script_text("health/health-agent.py")), dest=AGENT, mode="755",
                  create_remote_dir=True),
        files.put(name=f"Health agent: {CONFIG}", src=StringIO(config), dest=CONFIG, mode="644",
                  create_remote_dir=True),
    ]
    unit = files.put(name=f"Health agent: {UNIT_PATH}", src=StringIO(unit_text()),
                     dest=UNIT_PATH, mode="644")
    retire_old_guard()
    systemd.daemon_reload(name="systemd reloaded for the health agent", _if=unit.did_change)
    systemd.service(name="Health agent running", service=UNIT, enabled=True, running=True,
                    restarted=True, _if=any_changed(unit, *changes))
    systemd.service(name="Health agent enabled", service=UNIT, enabled=True, running=True)
