"""Reboot benchmark: from `systemctl reboot` of a converged GPU host to all its instances
serving from their GPUs again, with no deploy run.

One lab GPU host, an HGX H100 board with 2 simulated GPUs (one Ollama instance per GPU),
converged with one model. The host is rebooted twice, side by side:

- **fabric 0 s**: Fabric Manager brings the fabric up at once (the baseline);
- **fabric N s** (`--fabric-seconds`, 20): the fabric stays "In Progress" N seconds after
  Fabric Manager starts, as a real NVSwitch board's does, and CUDA answers 802 until then.

For each it prints the seconds from the reboot command to: the host answering SSH; the
boot wait (ollama-fleet-gpu-ready) done; Docker started; every instance healthy; every
instance answering a generate with its model wholly in GPU memory (`/api/ps` `size_vram`
equal to `size`), and the last as a ratio of the baseline. The lab (`bench-reboot`,
registry port 5085) is removed before and after (unless `--keep`).

    .venv/bin/python bench/reboot.py [--fabric-seconds 20] [--keep]
    .venv/bin/python bench/reboot.py --lab NAME --quick  # gpu-1 of a lab already up, 5 s

With `--lab NAME` it reboots gpu-1 of that lab (already up; deployed with `--limit gpu-1`;
one instance per GPU it has), which is neither made nor removed here.

Wall clock on this machine: lab hosts are containers, so "the reboot" is a container
restart with systemd's whole boot inside it, not firmware and a kernel.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.labfleet import LabFleet, lab_cli, poll  # noqa: E402

NAME = "bench-reboot"
HOST = "gpu-1"
MODEL = "tinyllama"
QUICK_FABRIC_S = 5  # --quick: --fabric-seconds


def instances(fleet: LabFleet) -> dict[str, int]:
    """HOST's Ollama instances, one per GPU: name -> port."""
    return {f"ollama-{i}": 11434 + i for i in range(len(fleet.host(HOST)["gpus"]))}


def seconds_since(start: float) -> float:
    return round(time.monotonic() - start, 1)


def serving_from_gpus(fleet: LabFleet) -> bool:
    for port in instances(fleet).values():
        code, _, _ = fleet.ssh(HOST, f"curl -sf --max-time 30 -d '{{\"model\":\"{MODEL}\","
                                        f"\"prompt\":\"hi\",\"stream\":false}}' "
                                        f"http://127.0.0.1:{port}/api/generate >/dev/null",
                               check=False, timeout=60)
        if code != 0:
            return False
        _, out, _ = fleet.ssh(HOST, f"curl -sf http://127.0.0.1:{port}/api/ps", check=False)
        models = (json.loads(out) if out.strip() else {}).get("models") or []
        if not models or models[0]["size_vram"] != models[0]["size"]:
            return False
    return True


def measure(fleet: LabFleet, fabric: float) -> dict[str, float]:
    lab_cli("fabric-delay", HOST, str(fabric), name=fleet.name)
    marks: dict[str, float] = {}
    before = fleet.started_at(HOST)
    fleet.forget(HOST)
    start = time.monotonic()
    fleet.ssh(HOST, "systemctl reboot", check=False)
    fleet.forget(HOST)
    poll(lambda: fleet.started_at(HOST) != before, 120, what="restarting")
    poll(lambda: fleet.ssh(HOST, "true", timeout=10, check=False)[0] == 0, 300,
         interval=0.2, what="ssh")
    marks["ssh"] = seconds_since(start)
    poll(lambda: fleet.ssh(HOST, "systemctl is-active -q ollama-fleet-gpu-ready",
                           check=False)[0] == 0, 600, interval=0.2, what="gpu-ready")
    marks["gpu-ready"] = seconds_since(start)
    poll(lambda: fleet.ssh(HOST, "systemctl is-active -q docker", check=False)[0] == 0,
         600, interval=0.2, what="docker")
    marks["docker"] = seconds_since(start)
    poll(lambda: all(fleet.ssh(HOST, f"docker inspect -f '{{{{.State.Health.Status}}}}' {i}",
                               check=False)[1].strip() == "healthy" for i in instances(fleet)),
         600, interval=0.5, what="healthy")
    marks["healthy"] = seconds_since(start)
    poll(lambda: serving_from_gpus(fleet), 600, interval=0.5, what="serving from the GPUs")
    marks["serving on GPUs"] = seconds_since(start)
    return marks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fabric-seconds", type=float, default=20)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--lab", metavar="NAME",
                        help="reboot gpu-1 of this lab, already up (its GPUs as they are; "
                             "neither made nor removed here)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a brief run: --fabric-seconds {QUICK_FABRIC_S}")
    args = parser.parse_args()
    if args.quick:
        args.fabric_seconds = QUICK_FABRIC_S
    name = args.lab or NAME
    if not args.lab:
        lab_cli("down", name=NAME, check=False)
    try:
        if not args.lab:
            lab_cli("up", "--gpu-hosts", "1", "--gpus-per-host", "2", "--registry-port", "5085",
                    "--model-scale", "0.1", name=NAME)
        fleet = LabFleet(name)
        fleet.refresh()
        proc = fleet.pyinfra("deploy.py", "--data", f'ollama_models=["{MODEL}"]', limit=HOST)
        if proc.returncode != 0:
            print(proc.output[-3000:], file=sys.stderr)
            return 1
        runs = {f"fabric {0:g} s": measure(fleet, 0),
                f"fabric {args.fabric_seconds:g} s": measure(fleet, args.fabric_seconds)}
        names = list(runs)
        print(f"{'seconds after `systemctl reboot`':<34}" + "".join(f"{n:>16}" for n in names))
        for mark in runs[names[0]]:
            print(f"{mark:<34}" + "".join(f"{runs[n][mark]:>16}" for n in names))
        base = runs[names[0]]["serving on GPUs"]
        print(f"{'serving on GPUs, ratio':<34}{1.0:>16.2f}"
              f"{runs[names[1]]['serving on GPUs'] / base:>16.2f}")
        fleet.close()
        return 0
    finally:
        if not args.keep and not args.lab:
            lab_cli("down", name=NAME, check=False)


if __name__ == "__main__":
    sys.exit(main())
