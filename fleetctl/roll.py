"""Roll a change through the fleet with no failed request: canary first, in inventory order.

    python -m tasks.rolling_update inventory/prod.py [--batch-size N] [--rollback]
        [--data ollama_image=ollama/ollama:0.7.0 ...] [--limit HOST ...]

The change is whatever `deploy.py` would do now (edit the inventory, or pass
`--data`); the roll applies it with the same tasks, one batch at a time (the
first batch is always the single first host, the canary). For each batch:

1. drain: the front door (lb_servers) marks the batch `down` and reloads; the run
   waits until the front door's old workers finished their requests;
2. apply: `deploy.py` on the batch, which waits until every instance is healthy;
3. smoke: a streamed generate with the host's first model through its nginx;
4. undrain: the front door takes the batch back.

The first failure stops the roll: the failed host stays out of the front door,
later hosts are untouched, the exit code is 1 and the last line names the host,
the step and how to roll it back (`--rollback` does that at once: the previous
image is applied again, smoke-tested and put back).

pyinfra's --serial does not follow inventory order, so each step is its own
pyinfra run with --limit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.settings import PYINFRA

SMOKE_TIMEOUT_S = 120


class RollError(Exception):
    def __init__(self, host: str, step: str, detail: str) -> None:
        self.host, self.step, self.detail = host, step, detail
        super().__init__(f"{host}: {step}: {detail}")


@dataclass
class FleetHost:
    name: str
    address: str
    nginx_port: int
    model: str | None
    image: str
    key: str | None = None  # an API key of the host's gate (nginx_api_keys), if it has one
    tls_port: int | None = None  # the gate's TLS port when nginx_tls is on


def parse_cli_value(text: str):
    """A --data value read the way pyinfra's CLI reads it: bool, int, JSON, else text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for parse in (int, json.loads):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def parse_data(items: Sequence[str]) -> dict:
    data = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"rolling_update: --data {item!r}: expected KEY=VALUE")
        data[key] = parse_cli_value(value)
    return data


def data_args(data: dict) -> list[str]:
    """pyinfra --data arguments for DATA."""
    args = []
    for key, value in data.items():
        args += ["--data", f"{key}={json.dumps(value)}"]
    return args


def load_fleet(inventory: str, data: dict) -> tuple[list[FleetHost], list[str]]:
    """GPU servers in inventory order (validated like deploy.py does) and front doors.

    The inventory is read by pyinfra itself (`debug-inventory --json`), in a child
    process: group data and --data apply exactly as in a deploy, and pyinfra's CLI
    (which monkey-patches the standard library with gevent) stays out of this one."""
    from tasks.settings import SettingsError, read_inventory, validate_fleet

    try:
        hosts = read_inventory(inventory, data_args(data), timeout=120)
    except ValueError as exc:
        raise SystemExit(f"rolling_update: {exc}") from None
    gpu = [h for h in hosts if "gpu_servers" in h["groups"]]
    lb = [h["name"] for h in hosts if "lb_servers" in h["groups"]]
    try:
        settings = validate_fleet({h["name"]: h["data"] for h in hosts},
                                  [h["name"] for h in gpu], lb)
    except SettingsError as exc:
        raise SystemExit("invalid inventory data, no host was changed:\n" +
                         "\n".join(f"    {p}" for p in exc.problems)) from None
    fleet = []
    for h in gpu:
        s = settings[h["name"]]
        fleet.append(FleetHost(h["name"], h["data"].get("ssh_hostname") or h["name"],
                               s.nginx_port, s.ollama_models[0] if s.ollama_models else None,
                               s.ollama_image, gate_key(h["name"], s),
                               s.nginx_tls_port if s.nginx_tls != "off" else None))
    return fleet, lb


def gate_key(host: str, settings) -> str | None:
    """A key the host's gate accepts, for the smoke test (read like the deploy reads it)."""
    from pyinfra.api import OperationError

    from tasks.gate import parse_keys, read_secret

    ref = settings.nginx_api_keys
    if ref is None:
        return None
    try:
        return next(iter(parse_keys("nginx_api_keys", read_secret("nginx_api_keys", ref),
                                    from_file=ref.file is not None)))
    except OperationError as exc:
        raise SystemExit(f"rolling_update: {host}: {exc}") from None


def batches(hosts: list[FleetHost], size: int) -> list[list[FleetHost]]:
    """The canary alone first, then batches of SIZE, in inventory order."""
    if not hosts:
        return []
    rest = hosts[1:]
    return [hosts[:1]] + [rest[i:i + size] for i in range(0, len(rest), size)]


class Roll:
    def __init__(self, inventory: str, data: dict, log=print,
                 inventory_images: dict[str, str] | None = None) -> None:
        self.inventory = inventory
        self.data = data
        self.log = log
        # what the inventory says without this roll's --data: the fallback "previous" image
        self.inventory_images = inventory_images or {}

    def pyinfra(self, limit: list[str], data: dict, step: str, host: str) -> None:
        cmd = [PYINFRA, "-y", self.inventory, "deploy.py", *data_args(data)]
        for name in limit:
            cmd += ["--limit", name]
        self.log(f"--> roll: {step}: pyinfra --limit {','.join(limit)}")
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=3600)
        if proc.returncode != 0:
            failed = [line for line in proc.stderr.splitlines() if "failed at step" in line
                      or "Error" in line or "error" in line]
            sys.stderr.write(proc.stderr[-6000:])
            raise RollError(host, step, failed[-1].strip() if failed else
                            f"pyinfra exited {proc.returncode}")

    def front_door(self, lb: list[str], drained: list[str], step: str, host: str) -> None:
        if lb:
            self.pyinfra(lb, {**self.data, "front_door_drained": drained}, step, host)

    def running_image(self, host: str) -> str | None:
        cmd = [PYINFRA, self.inventory, "--limit", host, "fact",
               "tasks.facts.ComposeContainers", "project=ollama", "--json"]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=120)
        try:  # {"<fact> (<args>)": {"<host>": {"<service>": {...}}}}
            by_host = next(iter(json.loads(proc.stdout).values()))
            return by_host[host]["ollama-0"]["image"]
        except (ValueError, StopIteration, AttributeError, KeyError, TypeError):
            return None

    def smoke(self, h: FleetHost) -> str:
        """A streamed generate through the host's nginx; returns the version it reports."""
        import http.client

        if h.tls_port:
            import ssl

            # liveness through the host's own gate, not its identity (it may be self-signed)
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                h.address, h.tls_port, timeout=SMOKE_TIMEOUT_S,
                context=ssl._create_unverified_context())  # noqa: S323
        else:
            conn = http.client.HTTPConnection(h.address, h.nginx_port, timeout=SMOKE_TIMEOUT_S)
        auth = {"Authorization": f"Bearer {h.key}"} if h.key else {}
        try:
            conn.request("GET", "/api/version", headers=auth)
            version = json.loads(conn.getresponse().read())["version"]
            if h.model:
                body = json.dumps({"model": h.model, "prompt": "rolling update smoke test",
                                   "options": {"num_predict": 8}})
                conn.request("POST", "/api/generate", body,
                             {"Content-Type": "application/json", **auth})
                response = conn.getresponse()
                lines = [json.loads(raw) for raw in response if raw.strip()]
                if response.status != 200 or not lines or not lines[-1].get("done"):
                    raise RollError(h.name, "smoke", f"generate with {h.model}: HTTP "
                                    f"{response.status} {lines[-1] if lines else 'no answer'}")
            return version
        except (OSError, ValueError, KeyError) as exc:
            raise RollError(h.name, "smoke", f"{h.address}:{h.nginx_port}: {exc}") from exc
        finally:
            conn.close()

    def run(self, hosts: list[FleetHost], lb: list[str], batch_size: int,
            rollback: bool) -> int:
        if not lb:
            self.log("--> roll: no lb_servers: requests sent to a host while it updates can fail")
        started = time.monotonic()
        done: list[str] = []
        plan = batches(hosts, batch_size)
        for number, batch in enumerate(plan, 1):
            names = [h.name for h in batch]
            label = "canary" if number == 1 else f"batch {number}/{len(plan)}"
            self.log(f"--> roll: {label}: {', '.join(names)}")
            previous = {h.name: self.running_image(h.name) or self.inventory_images.get(h.name)
                        for h in batch}
            current = names[0]
            try:
                self.front_door(lb, names, "drain", current)
                self.pyinfra(names, self.data, "apply", current)
                for h in batch:
                    current = h.name
                    version = self.smoke(h)
                    self.log(f"--> roll: {h.name}: healthy, answers, version {version}")
                self.front_door(lb, [], "undrain", current)
            except RollError as exc:
                return self.stopped(exc, done, hosts, lb, previous, rollback)
            done += names
        self.log(f"--> roll: done: {len(done)} hosts in {time.monotonic() - started:.0f}s")
        return 0

    def stopped(self, exc: RollError, done: list[str], hosts: list[FleetHost], lb: list[str],
                previous: dict[str, str | None], rollback: bool) -> int:
        untouched = [h.name for h in hosts if h.name not in done and h.name != exc.host]
        image = previous.get(exc.host)
        where = f"{exc.host} failed at step {exc.step!r}: {exc.detail}"
        if rollback and image:
            self.log(f"--> roll: rolling {exc.host} back to {image}")
            try:
                self.pyinfra([exc.host], {**self.data, "ollama_image": image}, "rollback",
                             exc.host)
                self.smoke(next(h for h in hosts if h.name == exc.host))
                self.front_door(lb, [], "undrain after rollback", exc.host)
                self.log(f"--> roll: {exc.host} is back on {image} and in the front door")
            except RollError as again:
                self.log(f"--> roll: rollback failed too: {again}")
        print(f"roll stopped: {where}. {exc.host} stays out of the front door; "
              f"untouched: {', '.join(untouched) or 'none'}; done: {', '.join(done) or 'none'}. "
              f"Roll back: pyinfra -y {self.inventory} deploy.py --limit {exc.host} "
              f"--data ollama_image={image}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.rolling_update",
                                     description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("inventory")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="hosts per batch after the canary (default 1)")
    parser.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                        help="inventory data for this roll, as pyinfra's --data")
    parser.add_argument("--limit", action="append", default=[], metavar="HOST",
                        help="roll only these gpu_servers hosts (inventory order kept)")
    parser.add_argument("--rollback", action="store_true",
                        help="on failure, apply the failed host's previous image again")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: must be 1 or more")
    if not Path(args.inventory).is_file():
        parser.error(f"{args.inventory}: no such inventory file")
    data = parse_data(args.data)
    hosts, lb = load_fleet(args.inventory, data)
    inventory_images = {h.name: h.image for h in load_fleet(args.inventory, {})[0]}
    if args.limit:
        unknown = sorted(set(args.limit) - {h.name for h in hosts})
        if unknown:
            parser.error(f"--limit {', '.join(unknown)}: not in gpu_servers")
        hosts = [h for h in hosts if h.name in args.limit]
    roll = Roll(args.inventory, data, log=lambda m: print(m, file=sys.stderr, flush=True),
                inventory_images=inventory_images)
    return roll.run(hosts, lb, args.batch_size, args.rollback)


if __name__ == "__main__":
    sys.exit(main())
