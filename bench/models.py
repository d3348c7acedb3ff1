"""Model fan-out benchmark: upstream bytes and wall time, fan-out against every host pulling.

One lab of 4 GPU hosts (1 simulated GPU each) and the lab registry's llama3.2:1b at its
full lab size (300 MiB). The registry stands in for the internet: it is capped at
`--internet-rate` (default 50 MB/s, shared by every host that pulls, as a site's uplink
is); the LAN between lab hosts is not capped.

For each mode (`fan-out`: ollama_fanout true, the default; `every host pulls`: false) and
each fleet size N in 1, 2, 4, with the first N hosts:

1. the model is deleted from every host (through Ollama's API on loopback) and the
   registry's counters are reset;
2. `pyinfra -y --limit gpu-1 .. --limit gpu-N INV deploy.py --data
   ollama_models=["llama3.2:1b"] --data ollama_fanout=...` is timed (wall clock,
   pyinfra's start-up included; the stack was converged with the same knobs
   beforehand, so only models move);
3. the registry's blob byte counter gives the upstream bytes; every host must then list
   the model by one and the same ID (the fan-out copies the seed's stored manifest).

Run it (about 4 minutes here; needs Docker like the lab tests):

    .venv/bin/python bench/models.py [--internet-rate 50] [--keep]
    .venv/bin/python bench/models.py --lab NAME --quick  # a lab already up, one size

`--lab NAME` measures on a lab that is already up (fleet sizes up to its GPU hosts; the
model at that lab's --model-scale; neither made nor removed here, its registry's rate put
back afterwards); `--quick` measures only the largest size.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import labrun
from labrun import PYINFRA, BenchError, lab_options, open_lab, run, run_on_lab, say, start

LAB = "bench-models"
SIZES = (1, 2, 4)
MODEL = "llama3.2:1b"
DEPLOY_TIMEOUT_S = 1800


@dataclass
class Result:
    mode: str
    hosts: int
    upstream: int
    seconds: float


def registry(info: dict, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(  # noqa: S310 (the lab's http URL)
        f"{info['endpoints']['model_registry']}{path}", data=data,
        method="POST" if data is not None else "GET")
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (the lab's http URL)
        return json.load(answer)


def ssh(info: dict, host: dict, command: str) -> str:
    proc = run(["ssh", "-i", info["ssh_key"], "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                f"root@{host['address']}", command], timeout=120)
    if not proc.ok:
        raise BenchError(f"{host['name']}: `{command}` failed: {labrun.tail(proc.output)}")
    return proc.output


def deploy(info: dict, hosts: list[str], models: list[str], fanout: bool, log: Path):
    limits = [arg for name in hosts for arg in ("--limit", name)]
    cmd = [str(PYINFRA), "-y", *limits, info["inventory"], "deploy.py",
           "--data", f"ollama_models={json.dumps(models)}",
           "--data", f"ollama_fanout={'true' if fanout else 'false'}"]
    proc = run(cmd, DEPLOY_TIMEOUT_S, log)
    if not proc.ok or "No host matches" in proc.output:
        raise BenchError(f"deploy failed ({labrun.why(proc)}):\n{labrun.tail(proc.output)}")
    return proc


def measure(info: dict, mode: str, n: int, logs: Path) -> Result:
    gpus = [h for h in info["hosts"] if h["role"] == "gpu"]
    names = [h["name"] for h in gpus[:n]]
    fanout = mode == "fan-out"
    deploy(info, [h["name"] for h in gpus], [], fanout, logs / f"{mode}-{n}-converge.log")
    for host in gpus:
        ssh(info, host, "curl -sS -m 60 -X DELETE http://127.0.0.1:11434/api/delete "
                        f"-d '{{\"model\": \"{MODEL}\"}}' || true")
    registry(info, "/_lab/reset", {})
    proc = deploy(info, names, [MODEL], fanout, logs / f"{mode}-{n}.log")
    upstream = registry(info, "/_lab/stats")["blob_bytes_sent"]
    digests = {json.dumps(sorted(m["digest"] for m in json.loads(
        ssh(info, host, "curl -sS http://127.0.0.1:11434/api/tags"))["models"]))
        for host in gpus[:n]}
    if len(digests) != 1:
        raise BenchError(f"{mode}, {n} hosts: the hosts list different models: {digests}")
    result = Result(mode, n, upstream, proc.seconds)
    say(f"  {mode:16} {n} hosts: upstream {upstream / 1048576:7.1f} MiB, {proc.seconds:6.1f} s")
    return result


def report(results: list[Result], rate: int, lab: str) -> str:
    by = {(r.mode, r.hosts): r for r in results}
    lines = [f"model {MODEL} (300 MiB at the lab's full size; lab {lab}), registry capped at "
             f"{rate} MB/s, LAN uncapped",
             "",
             "| hosts | fan-out upstream | fan-out time | every host pulls upstream "
             "| every host pulls time | upstream ratio | time ratio |",
             "|---|---|---|---|---|---|---|"]
    for n in sorted({r.hosts for r in results}):
        f, p = by.get(("fan-out", n)), by.get(("every host pulls", n))
        if not (f and p):
            continue
        lines.append(f"| {n} | {f.upstream / 1048576:.1f} MiB | {f.seconds:.1f} s "
                     f"| {p.upstream / 1048576:.1f} MiB | {p.seconds:.1f} s "
                     f"| {f.upstream / p.upstream:.2f}x | {f.seconds / p.seconds:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/models.py",
                                     description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--internet-rate", type=int, default=50,
                        help="the registry's cap in MB/s, shared by all hosts (default 50)")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    lab_options(parser, "only the largest fleet size (all the lab's GPU hosts, at most 4)")
    args = parser.parse_args(argv)
    if args.internet_rate <= 0:
        parser.error("--internet-rate: must be a positive number of MB/s")
    logs = start(parser, "bench/models.py", "bench-models-")
    results: list[Result] = []
    lab = args.lab or LAB

    def body() -> None:
        _, info, _ = open_lab(args.lab, LAB, ("--gpu-hosts", "4", "--gpus-per-host", "1",
                                              "--registry-port", "5077", "--model-scale", "1"),
                              logs)
        gpus = sum(h["role"] == "gpu" for h in info["hosts"])
        sizes = [n for n in SIZES if n <= gpus]
        if not sizes:
            raise BenchError(f"lab {lab} has no GPU host")
        before = registry(info, "/_lab/rate")["bytes_per_sec"]
        registry(info, "/_lab/rate", {"bytes_per_sec": args.internet_rate * 1000 * 1000})
        try:
            for mode in ("fan-out", "every host pulls"):
                for n in sizes[-1:] if args.quick else sizes:
                    results.append(measure(info, mode, n, logs))
        finally:  # a lab that was up before is left as it was found
            registry(info, "/_lab/rate", {"bytes_per_sec": before})

    return run_on_lab(lab, logs, args.keep, body,
                      lambda: report(results, args.internet_rate, lab) if results else "",
                      owned=not args.lab)

if __name__ == "__main__":
    sys.exit(main())
