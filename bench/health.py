"""Health benchmark: for each fault kind, how fast the fleet takes it out of rotation, what
clients through the front door saw, and how long until it was healed and back.

Two lab GPU hosts (HGX H100 boards, 2 GPUs each, one instance per GPU) behind a front door,
converged with one warm model; a closed loop of streamed and plain generate requests
through the front door by its DNS name (`llm.<lab>.test`, lab.loadgen, 4 clients) runs
all along. Each fault comes from `python -m lab fault` (shaped like the real one:
lab/UPSTREAM.md), one at a time, each after the fleet is whole again. Printed per kind:

- **out**: seconds from the fault (the `lab fault` command done) to the front door's
  rotation view (/fleet/rotation, polled on the front door every 0.25 s) showing the GPU's
  instance (or the host) out;
- **failed**: plain requests sent from 1 s after the fault until it was back that failed
  (one sent before, into a hang, may be lost with it: it counts in the total only);
- **cut**: streams begun since the fleet was whole before the fault that ended with an
  error the client saw (none may hang: **hung** counts requests that ended at their own
  60 s timeout);
- **back**: seconds from the fault to the instance (or host) back in rotation, healed with
  no operator; or the state it was left in and why (a GPU off the bus with reboots off).

The lab (`bench-health`, registry port 5108) is made fresh and removed after (unless
`--keep`). With `--lab NAME` it measures a lab already up (its GPU hosts' GPU 0; it is
neither made nor removed here); `--quick` measures `hang` and `crash` only.

    .venv/bin/python bench/health.py [--kinds hang,crash,...] [--keep]
    .venv/bin/python bench/health.py --lab NAME --quick

Wall clock on this machine: lab hosts are containers on 2 shared cores; the agent checks
every second (health_interval) and the front door polls every second.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab import dns  # noqa: E402
from lab.loadgen import LoadGenerator  # noqa: E402
from tests.labfleet import LabFleet, lab_cli, poll  # noqa: E402

NAME = "bench-health"
MODEL = "tinyllama"
# production's health_interval (1 s), whatever the lab's inventory sets
DEPLOY = ("deploy.py", "--data", f'ollama_models=["{MODEL}"]',
          "--data", f'ollama_warm_models=["{MODEL}"]', "--data", "health_interval=1")
# kind -> (host, GPU, what leaves rotation: an instance or the host), in the order measured;
# xid79 last: only a reboot brings its GPU back
KINDS = {"hang": ("gpu-1", 0, "instance"), "crash": ("gpu-2", 0, "instance"),
         "cpu": ("gpu-1", 1, "instance"), "nvml-lost": ("gpu-2", 1, "instance"),
         "xid48": ("gpu-1", 0, "instance"), "fm-down": ("gpu-2", None, "host"),
         "xid79": ("gpu-1", 1, "instance")}
QUICK = ("hang", "crash")
POLL_S = 0.25
OUT_WITHIN_S = 30
BACK_WITHIN_S = 300


class Rotation:
    """The front door's /fleet/rotation, read on the front door in a loop (bounded)."""

    def __init__(self, fleet: LabFleet) -> None:
        self.fleet = fleet
        self.lock = threading.Lock()

    def read(self) -> dict:
        with self.lock:
            _, out, _ = self.fleet.ssh("lb-1", "curl -sS --max-time 2 "
                                               "http://127.0.0.1:11391/fleet/rotation",
                                       check=False, timeout=10)
        try:
            return json.loads(out)["hosts"]
        except (ValueError, KeyError):
            return {}


def state_of(hosts: dict, host: str, gpu: int | None, what: str) -> str:
    entry = hosts.get(host) or {}
    if what == "host":
        return entry.get("state", "")
    if entry.get("state") not in ("in", None):
        return entry.get("state", "")
    return (entry.get("instances") or {}).get(f"ollama-{gpu}", {}).get("state", "")


def whole(hosts: dict) -> bool:
    return bool(hosts) and all(
        h.get("state") == "in" and all(i.get("state") == "in"
                                       for i in (h.get("instances") or {}).values())
        for h in hosts.values())


def left_as(fleet: LabFleet, host: str, gpu: int | None) -> str:
    """What the host's agent says of the GPU's instance (or the host): its action."""
    _, out, _ = fleet.ssh(host, "cat /run/ollama-fleet/health/verdict.json", check=False)
    try:
        doc = json.loads(out)
    except ValueError:
        return "no verdict"
    entry = doc if gpu is None else next(
        (i for i in doc["instances"] if i["name"] == f"ollama-{gpu}"), doc)
    return f"{entry.get('kind')}: {entry.get('action') or entry.get('reason')}"


def measure(fleet: LabFleet, rotation: Rotation, load: LoadGenerator, kind: str,
            host: str, gpu: int | None, what: str) -> dict:
    since = time.time()
    poll(lambda: whole(rotation.read()), BACK_WITHIN_S, interval=1,
         what=f"{kind}: the fleet whole before the fault")
    lab_cli("fault", host, kind, *(["--gpu", str(gpu)] if gpu is not None else []),
            name=fleet.name)
    fault_at = time.time()
    result = {"kind": kind, "where": f"{host}" + (f" GPU {gpu}" if gpu is not None else ""),
              "out_s": None, "back_s": None, "left": ""}
    deadline = time.monotonic() + OUT_WITHIN_S
    while time.monotonic() < deadline:
        if state_of(rotation.read(), host, gpu, what) not in ("in", ""):
            result["out_s"] = time.time() - fault_at
            break
        time.sleep(POLL_S)
    deadline = time.monotonic() + BACK_WITHIN_S
    while time.monotonic() < deadline and result["out_s"] is not None:
        if state_of(rotation.read(), host, gpu, what) == "in":
            result["back_s"] = time.time() - fault_at
            break
        if kind == "xid79" and "health_allow_reboot is off" in left_as(fleet, host, gpu):
            break
        time.sleep(1)
    end = time.time()
    if result["back_s"] is None:
        result["left"] = left_as(fleet, host, gpu)
    # each failure where its request began
    window = [f for f in list(load.stats.failures) if since <= f[0] <= end]
    result["failed"] = sum(1 for t, stream, _ in window if not stream and t > fault_at + 1)
    result["cut"] = sum(1 for _, stream, _ in window if stream)
    result["hung"] = sum(1 for _, _, error in window if "timed out" in error)
    result["errors"] = sorted({e for _, _, e in window})[:3]
    if kind == "xid79":  # its GPU comes back with a reboot only: the operator's, here
        lab_cli("reboot", host, name=fleet.name)
        fleet.forget(host)
    return result


def inner(args: argparse.Namespace) -> int:
    """The measurement, run through `python -m lab run` (the lab's DNS names resolve)."""
    fleet = LabFleet(args.lab)
    fleet.refresh()
    rotation = Rotation(fleet)
    kinds = args.kinds or (list(QUICK) if args.quick else list(KINDS))
    gpus = len([g for g in fleet.host("gpu-1").get("gpus", [])]) or 2
    url = f"http://{dns.front_door_name(args.lab)}"
    results = []
    # the load starts once the fleet is whole (a deploy just ran: instances may be proving)
    poll(lambda: whole(rotation.read()), BACK_WITHIN_S, interval=1, what="the fleet whole")
    with LoadGenerator(url, MODEL, threads=4, max_requests=100000, max_seconds=3000,
                       request_timeout=60, num_predict=16) as load:
        for kind in kinds:
            host, gpu, what = KINDS[kind]
            if gpu is not None and gpu >= gpus:
                gpu = 0  # a lab with fewer GPUs a host
            results.append(measure(fleet, rotation, load, kind, host, gpu, what))
            print(f"measured {kind}: {results[-1]}", flush=True)
        sent, failed = load.stats.sent, load.stats.failed
    fleet.close()
    print(f"\nrequests through {url}: {sent} sent, {failed} failed (4 clients, half streamed)")
    print(f"{'fault':<10} {'where':<12} {'out (s)':>8} {'failed':>7} {'cut':>5} {'hung':>5}"
          f"  back (s) / left as")
    for r in results:
        out = f"{r['out_s']:.1f}" if r["out_s"] is not None else "never"
        back = f"{r['back_s']:.1f}" if r["back_s"] is not None else f"left: {r['left']}"
        print(f"{r['kind']:<10} {r['where']:<12} {out:>8} {r['failed']:>7} {r['cut']:>5} "
              f"{r['hung']:>5}  {back}")
    counted = sum(r["failed"] + r["cut"] for r in results)
    print(f"failed outside those counts (plain ones sent before a fault's first second was "
          f"over, or while the operator rebooted after xid79): {max(0, failed - counted)}"
          + "".join(f"\n  {n} x {e}" for e, n in Counter(
              e[:120] for _, _, e in load.stats.failures).most_common(3)))
    goals = [r for r in results if r["out_s"] is None or r["out_s"] > 5 or r["failed"]
             or r["hung"]]
    print("goals (out within 5 s, no plain request failed after 1 s, none hung): "
          + ("met" if not goals else f"missed by {', '.join(r['kind'] for r in goals)}"))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", type=lambda v: v.split(","), default=None,
                        help=f"comma-separated, of {', '.join(KINDS)} (default: all)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--lab", metavar="NAME",
                        help="measure this lab, already up (neither made nor removed here)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a brief run: {', '.join(QUICK)} only")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = [k for k in args.kinds or [] if k not in KINDS]
    if unknown:
        parser.error(f"--kinds: {', '.join(unknown)}: not one of {', '.join(KINDS)}")
    if args.inner:
        return inner(args)
    name = args.lab or NAME
    if not args.lab:
        lab_cli("down", name=NAME, check=False)
    try:
        if not args.lab:
            lab_cli("up", "--gpu-hosts", "2", "--gpus-per-host", "2", "--lb-hosts", "1",
                    "--registry-port", "5108", "--model-scale", "0.1", name=NAME,
                    timeout=1800)
        fleet = LabFleet(name)
        fleet.refresh()
        proc = fleet.pyinfra(*DEPLOY)
        fleet.close()
        if proc.returncode != 0:
            print(proc.output[-3000:], file=sys.stderr)
            return 1
        again = [sys.executable, str(Path(__file__).resolve()), "--inner", "--lab", name,
                 *(["--quick"] if args.quick else []),
                 *(["--kinds", ",".join(args.kinds)] if args.kinds else [])]
        proc = lab_cli("run", "--", *again, name=name, check=False, timeout=3600)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        return proc.returncode
    finally:
        if not args.keep and not args.lab:
            lab_cli("down", name=NAME, check=False)


if __name__ == "__main__":
    sys.exit(main())
