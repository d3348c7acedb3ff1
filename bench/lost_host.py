"""Lost-host benchmark: how long a run waits on a host that vanishes mid-command.

One lab of 2 hosts. For each mode, `pyinfra -y INV exec -- sleep HOLD` runs on both;
once the command runs on gpu-2, gpu-2 is cut off the network (`lab cut`: its address
stops answering, as after a power or switch failure) and the clock starts. Measured:
the seconds until pyinfra reports gpu-2 failed, and until the whole run ends
(gpu-1's command finishes by itself after HOLD seconds).

- `watched`: the repository's config.py (SSH sockets with keepalive and a user
  timeout, tasks/engine/connection.py);
- `pyinfra alone`: a config with the same connect timeout and nothing else, as
  pyinfra runs by default.

A mode that has not reported the lost host within `--bound` seconds is stopped and
shown as "not within BOUND s". Run it (about 6 minutes here; Docker as for the lab):

    .venv/bin/python bench/lost_host.py [--hold 90] [--bound 240] [--keep]
    .venv/bin/python bench/lost_host.py --lab NAME --quick  # a lab already up, watched only

`--lab NAME` measures on a lab that is already up (every host of its inventory runs the
command; its gpu-2 is cut and restored; the lab is neither made nor removed here).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import labrun
from labrun import (
    BenchError,
    Child,
    lab_cmd,
    lab_options,
    open_lab,
    run,
    run_on_lab,
    say,
    start,
)

LAB = "bench-lost-host"
LOST = "gpu-2"
PLAIN_CONFIG = "from pyinfra import config\n\nconfig.CONNECT_TIMEOUT = 15\n"
# --quick: --hold, --bound (the watched connection gives up after about 60 s), watched only
QUICK = (10, 80)


@dataclass
class Result:
    mode: str
    lost_after: float | None  # seconds from the cut to pyinfra naming the lost host
    run_after: float | None  # seconds from the cut to the end of the run
    rc: int | None


def ssh_ok(info: dict, host: str, command: str) -> bool:
    address = next(h["address"] for h in info["hosts"] if h["name"] == host)
    proc = run(["ssh", "-i", info["ssh_key"], "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", "ConnectTimeout=5", f"root@{address}", command], timeout=20)
    return proc.ok


def wait_for(what: str, predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.5)


def measure(info: dict, mode: str, config: Path, hold: int, bound: int, logs: Path) -> Result:
    lab = info["name"]
    say(f"[{mode}] sleep {hold} on both hosts, then cut {LOST}")
    marker = f"sleep {hold}"
    cmd = [str(labrun.PYINFRA), "-y", "--config", str(config), info["inventory"], "exec", "--",
           f"{marker}; echo bench-done"]
    lines: list[tuple[float, str]] = []
    child = Child(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def read() -> None:
        for line in child.proc.stdout:
            lines.append((time.monotonic(), line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    lost = re.compile(rf"\[{re.escape(LOST)}\].*(rror|ailed|isconnect)|"
                      rf"{re.escape(LOST)}: failed at step")
    try:
        wait_for(f"{LOST} running the command", lambda: child.proc.poll() is None
                 and ssh_ok(info, LOST, f"pgrep -f '^{marker}$' >/dev/null"), 60)
        proc = run(lab_cmd(lab, "cut", LOST), 60, logs / f"{mode}-cut.log")
        if not proc.ok:
            raise BenchError(f"lab cut failed: {labrun.tail(proc.output)}")
        cut_at = time.monotonic()
        child.wait(bound)
    finally:
        if child.proc.returncode is None:
            child.wait(0)
        reader.join(timeout=10)
        (logs / f"{mode}.log").write_text(child.log_header() + "".join(t for _, t in lines))
        restore = run(lab_cmd(lab, "restore", LOST), 120, logs / f"{mode}-restore.log")
        if not restore.ok:
            say(f"WARNING: lab restore {LOST} failed: {labrun.tail(restore.output)}")
    named = next((at for at, text in lines if lost.search(text) and at >= cut_at), None)
    ended = child.started + child.seconds if child.rc is not None else None
    return Result(mode, named - cut_at if named else None,
                  ended - cut_at if ended else None, child.rc)


def report(results: list[Result], hold: int, bound: int) -> str:
    def secs(value: float | None) -> str:
        return f"{value:.1f} s" if value is not None else f"not within {bound} s"

    rows = [("mode", "lost host named after", "run ended after", "exit")]
    rows += [(r.mode, secs(r.lost_after), secs(r.run_after),
              str(r.rc) if r.rc is not None else "stopped") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    by = {r.mode: r for r in results}
    if {"watched", "pyinfra alone"} <= set(by) and by["watched"].lost_after:
        base = by["pyinfra alone"].lost_after
        ratio = (f"{base / by['watched'].lost_after:.1f}x sooner" if base
                 else f"more than {bound / by['watched'].lost_after:.1f}x sooner")
        lines.append(f"\nlost host noticed {ratio} when watched (the healthy host's command "
                     f"takes {hold} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/lost_host.py",
                                     description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--hold", type=int, default=90,
                        help="seconds the command runs on each host (default 90)")
    parser.add_argument("--bound", type=int, default=240,
                        help="seconds after the cut a mode is given (default 240)")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    lab_options(parser, f"--hold {QUICK[0]} --bound {QUICK[1]}, the watched mode only")
    args = parser.parse_args(argv)
    if args.quick:
        args.hold, args.bound = QUICK
    if not 10 <= args.hold <= 600 or not args.hold < args.bound <= 1800:
        parser.error("--hold: 10 to 600; --bound: more than --hold, at most 1800")
    logs = start(parser, "bench/lost_host.py", "bench-lost-host-")
    plain = logs / "plain_config.py"
    plain.write_text(PLAIN_CONFIG)
    results: list[Result] = []

    def body() -> None:
        _, info, _ = open_lab(args.lab, LAB, ("--gpu-hosts", "2", "--gpus-per-host", "1",
                                              "--registry-port", "5078"), logs)
        if LOST not in {h["name"] for h in info["hosts"]}:
            raise BenchError(f"lab {info['name']} has no {LOST}")
        modes = (("watched", labrun.REPO / "config.py"), ("pyinfra alone", plain))
        for mode, config in modes[:1] if args.quick else modes:
            results.append(measure(info, mode, config, args.hold, args.bound, logs))
            wait_for(f"{LOST} back after restore", lambda: ssh_ok(info, LOST, "true"), 120)

    return run_on_lab(args.lab or LAB, logs, args.keep, body,
                      lambda: report(results, args.hold, args.bound) if results else "",
                      owned=not args.lab)

if __name__ == "__main__":
    sys.exit(main())
