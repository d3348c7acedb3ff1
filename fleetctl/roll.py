"""Roll a change through the fleet with no failed request: canary first, in inventory order.

    ollama-fleet INVENTORY roll [--batch-size N|P%] [--rollback] [--data KEY=VALUE ...]
        [--limit HOST|GROUP|GLOB ...] [--dry] [-y]

The change is whatever `deploy.py` would do now (edit the inventory, or pass
`--data`); the roll applies it with the same tasks, one batch at a time (the
first batch is always the single first host, the canary). For each batch:

1. pull: every image the batch's stack will run is downloaded (tasks/deploys/pull.py)
   while the batch still serves; a failed pull stops the roll before any drain;
2. drain: the front door (lb_servers) marks the batch `down` and reloads; the run
   waits until the front door's old workers finished their requests;
3. apply: `deploy.py` on the batch, which waits until every instance is healthy and
   stops at once, with the evidence, on an instance that is unhealthy, exited or
   restarting in a loop;
4. smoke: a streamed generate with the host's first model through its nginx, asked on
   the host itself (over SSH, from loopback, where the gate needs no key and nginx_allow
   may keep the operator's machine out), and the version it reports must be the image
   tag's when the tag is a version;
5. undrain: the front door takes the batch back.

The first failure stops the roll: the failed host stays out of the front door,
later hosts are untouched, the exit code is 1 and the last line names the host,
the step and how to roll it back (`--rollback` does that at once: the previous
image is applied again, smoke-tested and put back).

pyinfra's --serial does not follow inventory order, so each step is its own
pyinfra run with --limit (fleetctl.runner), its output streamed as it happens.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ollama_fleet.fleetctl.inventory import UsageError
from ollama_fleet.fleetctl.runner import (
    DEFAULT_TIMEOUT_S,
    Log,
    held_causes,
    log_stderr,
    read_fact,
    run_pyinfra,
)
from ollama_fleet.tasks.kit.fleet import Fleet, Member

SMOKE_TIMEOUT_S = 210  # the pyinfra run: SSH, then smoke.sh (curl bounded at 30 s + 120 s)
PULL_DEPLOY = "tasks/deploys/pull.py"
VERSION_TAG = re.compile(r"v?(\d+\.\d+\.\d+(?:-rc\d+)?)")


def tag_version(image: str) -> str | None:
    """The Ollama version an image's tag names (`ollama/ollama:0.7.0` -> 0.7.0, also
    `v0.7.0`, `0.7.0-rc1`, `0.7.0-rocm`), or None for a tag that names none (`latest`)."""
    name = image.split("@", 1)[0]
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
    match = VERSION_TAG.match(tag)
    return match.group(1) if match else None


@dataclass(frozen=True)
class Smoke:
    """What the smoke test saw of a host."""

    version: str
    model: str | None
    load_s: float | None  # the model's load_duration in the smoke request

    def __str__(self) -> str:
        loaded = f", {self.model} loaded in {self.load_s:.2f} s" if self.model else ""
        return f"version {self.version}{loaded}"


class RollError(Exception):
    def __init__(self, host: str, step: str, detail: str) -> None:
        self.host, self.step, self.detail = host, step, detail
        super().__init__(f"{host}: {step}: {detail}")


@dataclass
class RollHost:
    name: str
    url: str  # the host's own nginx, from the host: http(s)://127.0.0.1:PORT
    model: str | None
    image: str


def roll_hosts(hosts: list[Member]) -> list[RollHost]:
    """What the roll needs of each gpu_servers host, in inventory order."""
    rolled = []
    for h in hosts:
        s = h.settings
        model = s.first_model  # a warm one first
        url = (f"https://127.0.0.1:{s.nginx_tls_port}" if s.nginx_tls != "off"
               else f"http://127.0.0.1:{s.nginx_port}")
        rolled.append(RollHost(h.name, url, model, s.ollama_image))
    return rolled


def smoke_result(h: RollHost, answer: dict[str, str] | None) -> Smoke:
    """What the smoke test's answer (tasks.kit.facts.SmokeAnswer, None: the host could not be
    asked) says of H: its version, which must be the image tag's, and the model's load
    time (Ollama's load_duration); RollError naming what is wrong."""
    if answer is None:
        raise RollError(h.name, "smoke", "could not ask the host over SSH")
    if "error" in answer:
        raise RollError(h.name, "smoke", f"{h.url}: {answer['error']}")
    try:
        version = json.loads(answer["version"])["version"]
        load_s = None
        if h.model:
            last = json.loads(answer.get("generate") or "{}")
            if answer.get("status") != "200" or not last.get("done"):
                raise RollError(h.name, "smoke", f"generate with {h.model}: HTTP "
                                f"{answer.get('status', '?')} {last or 'no answer'}")
            load_s = last.get("load_duration", 0) / 1e9
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RollError(h.name, "smoke", f"{h.url}: unexpected answer {answer}: {exc}") \
            from exc
    expected = tag_version(h.image)
    if expected and version.lstrip("v") != expected:
        raise RollError(h.name, "smoke", f"answers version {version}, but its image "
                        f"{h.image} is {expected}")
    return Smoke(version, h.model, load_s)


def batch_size(text: str, hosts: int) -> int:
    """`--batch-size`: a number of hosts, or a percentage of the hosts after the canary
    (rounded up, at least 1)."""
    try:
        if text.endswith("%"):
            percent = float(text[:-1])
            if not 0 < percent <= 100:
                raise ValueError
            return max(1, -(-int(percent * max(hosts - 1, 1)) // 100))
        size = int(text)
    except ValueError:
        raise UsageError(f"--batch-size {text}: a number of hosts (1 or more) or a "
                         "percentage (1%-100%)") from None
    if size < 1:
        raise UsageError(f"--batch-size {text}: must be 1 or more")
    return size


def batches(hosts: list[RollHost], size: int) -> list[list[RollHost]]:
    """The canary alone first, then batches of SIZE, in inventory order."""
    if not hosts:
        return []
    rest = hosts[1:]
    return [hosts[:1]] + [rest[i:i + size] for i in range(0, len(rest), size)]


class Roll:
    """One roll of FLEET's change (its --data) over some of its gpu_servers."""

    # Download each batch's images before it is drained (off only in bench/rolling.py, to
    # measure what it saves).
    pull_ahead = True

    def __init__(self, fleet: Fleet, log: Log = log_stderr,
                 inventory_images: dict[str, str] | None = None,
                 step_timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.fleet = fleet
        self.step_timeout = step_timeout  # each pyinfra run of the roll (pull, drain, apply)
        self.data = fleet.data
        self.lb = [h.name for h in fleet.lb_servers]
        self.log = log
        # what the inventory says without this roll's --data: the fallback "previous" image
        self.inventory_images = inventory_images or {}

    def pyinfra(self, limit: list[str], data: dict, step: str, host: str,
                deploy: str = "deploy.py") -> None:
        self.log(f"--> roll: {step}: pyinfra {deploy} --limit {','.join(limit)}")
        result = run_pyinfra(self.fleet, deploy, limit, data, log=self.log,
                             timeout=self.step_timeout)
        if not result.ok:
            # in a batch, the host that failed (the first, if several did)
            host = next((h for h in result.failed_hosts() if h in limit), host)
            raise RollError(host, step, result.failure(host))

    def front_door(self, step: str, host: str, out: Sequence[str] = (),
                   back: Sequence[str] = ()) -> None:
        """Hold OUT out of the front door too (held by a roll), or take BACK in; the front
        doors keep what they hold and why (tasks.steps.front_door.HELD_OUT), so a plain
        deploy cannot undo it and the rotation view tells a roll from an operator's drain."""
        if not self.lb:
            return
        # read again each time: another operator's drain or undrain since is kept
        why = dict(self.read_held_out())
        for name in out:
            why.setdefault(name, "roll")  # one an operator drained stays the operator's
        held = [n for n in why if n not in back]
        self.pyinfra(self.lb, {**self.data, "front_door_out": held,
                               "front_door_out_roll": [n for n in held if why[n] == "roll"]},
                     step, host)

    def read_held_out(self) -> dict[str, str]:
        """What the front doors hold out now and why (roll: another roll's stopped batch;
        drain: an operator's `drain`)."""
        out = held_causes(self.fleet, self.data)
        if out is None:
            raise RollError(self.lb[0], "drain", "cannot read which hosts the front door "
                            "holds out; is it reachable?")
        return out

    def running_image(self, host: str) -> str | None:
        by_host = read_fact(self.fleet, [host], "ollama_fleet.tasks.kit.facts.ComposeContainers",
                            ["project=ollama"], self.data)
        try:
            return by_host[host]["ollama-0"]["image"]  # type: ignore[index]
        except (KeyError, TypeError):
            return None

    def smoke(self, h: RollHost) -> Smoke:
        """A streamed generate through the host's nginx, asked on the host (see
        smoke_result): the version it reports, and how long the model took to load."""
        answer = read_fact(self.fleet, [h.name], "ollama_fleet.tasks.kit.facts.SmokeAnswer",
                           [f"url={h.url}", f"model={h.model or ''}"], self.data,
                           timeout=SMOKE_TIMEOUT_S)
        return smoke_result(h, answer.get(h.name) if answer else None)

    def plan(self, hosts: list[RollHost], size: int) -> list[str]:
        """The roll in lines: batches, hosts, and the image each host gets."""
        plan = batches(hosts, size)
        lines = [f"roll of {len(hosts)} gpu_servers host{'s' if len(hosts) != 1 else ''} "
                 f"in {len(plan)} batch{'es' if len(plan) != 1 else ''} "
                 f"(front door: {', '.join(self.lb) or 'none'}); --data: "
                 f"{json.dumps(self.data) if self.data else 'none'}"]
        for number, batch in enumerate(plan, 1):
            label = "canary" if number == 1 else f"batch {number}/{len(plan)}"
            lines.append(f"  {label}: " + ", ".join(f"{h.name} ({h.image})" for h in batch))
        if not self.lb:
            lines.append("  no lb_servers: requests sent to a host while it updates can fail")
        return lines

    def dry(self, hosts: list[RollHost]) -> int:
        """What the apply step would change on every host of the roll, changing nothing."""
        self.log("--> roll: dry run: what deploy.py would change (pyinfra --dry); "
                 "nothing is drained or changed")
        result = run_pyinfra(self.fleet, "deploy.py", [h.name for h in hosts], self.data,
                             log=self.log, dry=True)
        if not result.ok:
            self.log(f"--> roll: dry run failed: {result.failure(hosts[0].name)}")
            return 1
        return 0

    def run(self, hosts: list[RollHost], size: int, rollback: bool) -> int:
        started = time.monotonic()
        done: list[str] = []
        plan = batches(hosts, size)
        for number, batch in enumerate(plan, 1):
            names = [h.name for h in batch]
            label = "canary" if number == 1 else f"batch {number}/{len(plan)}"
            self.log(f"--> roll: {label}: {', '.join(names)}")
            previous = {h.name: self.running_image(h.name) or self.inventory_images.get(h.name)
                        for h in batch}
            current = names[0]
            try:
                if self.pull_ahead:
                    self.pyinfra(names, self.data, "pull", current, deploy=PULL_DEPLOY)
                self.front_door("drain", current, out=names)
                self.pyinfra(names, self.data, "apply", current)
                for h in batch:
                    current = h.name
                    self.log(f"--> roll: {h.name}: healthy, answers, {self.smoke(h)}")
                self.front_door("undrain", current, back=names)
            except RollError as exc:
                return self.stopped(exc, batch, done, hosts, previous, rollback)
            done += names
        self.log(f"--> roll: done: {len(done)} hosts in {time.monotonic() - started:.0f}s")
        return 0

    def roll_back(self, batch: list[RollHost], previous: dict[str, str | None]) -> bool:
        """The batch on its previous images again, smoke-tested, back in the front door;
        False (the batch left out) when a host has no known previous image or fails."""
        if not all(previous.get(h.name) for h in batch):
            self.log("--> roll: no previous image known for "
                     f"{', '.join(h.name for h in batch if not previous.get(h.name))}")
            return False
        try:
            for image in dict.fromkeys(previous[h.name] for h in batch):
                group = [h for h in batch if previous[h.name] == image]
                names = [h.name for h in group]
                self.log(f"--> roll: rolling {', '.join(names)} back to {image}")
                self.pyinfra(names, {**self.data, "ollama_image": image}, "rollback", names[0])
                for h in group:
                    self.smoke(replace(h, image=image))  # the version it runs now
            self.front_door("undrain after rollback", batch[0].name, back=[h.name for h in batch])
        except RollError as again:
            self.log(f"--> roll: rollback failed too: {again}")
            return False
        for h in batch:
            self.log(f"--> roll: {h.name} is back on {previous[h.name]} and in the front door")
        return True

    def stopped(self, exc: RollError, batch: list[RollHost], done: list[str],
                hosts: list[RollHost], previous: dict[str, str | None], rollback: bool) -> int:
        names = [h.name for h in batch]
        untouched = [h.name for h in hosts if h.name not in done and h.name not in names]
        where = f"{exc.host} failed at step {exc.step!r}: {exc.detail}"
        rest = f"untouched: {', '.join(untouched) or 'none'}; done: {', '.join(done) or 'none'}"
        if exc.step == "pull":  # before the drain: the batch still serves, unchanged
            self.log(f"roll stopped: {where}. Nothing of this batch was drained or changed; "
                     f"untouched: {', '.join([*names, *untouched])}; done: "
                     f"{', '.join(done) or 'none'}. Fix the image, then roll again.")
            return 1
        if rollback and self.roll_back(batch, previous):
            self.log(f"roll stopped: {where}. Rolled back, in the front door again: "
                     f"{', '.join(names)}; {rest}.")
            return 1
        out = f"{', '.join(names)} {'stays' if len(names) == 1 else 'stay'}"
        hints = []
        for image in dict.fromkeys(previous.get(n) for n in names):
            limits = " ".join(f"--limit {n}" for n in names if previous.get(n) == image)
            hints.append(f"ollama-fleet {self.fleet.inventory} roll -y {limits} "
                         f"--data ollama_image={image}")
        self.log(f"roll stopped: {where}. {out} out of the front door; {rest}. "
                 f"Roll back: {'; '.join(hints)}")
        return 1
