"""Converge benchmark: how long `pyinfra -y INVENTORY deploy.py` takes on lab hosts.

For each fleet size (1 host, then 8 hosts) this starts a dedicated lab, then measures:

- **lab up**: wall clock of `python -m lab up` (not part of the deploy; shown for context);
- **floor**: `pyinfra -y INVENTORY exec -- true`, one connection and one command per host:
  what any pyinfra run of this fleet costs at least (median of 3);
- **fresh converge**: wall clock of `pyinfra -y INVENTORY deploy.py` on the fresh hosts
  (the lab is already up; hosts have never been deployed to);
- **no-op re-run**: wall clock of the same command right after, which must change nothing
  (median of 3; one more run under `-vv` gives the counts below);
- **CPU per no-op**: the seconds of CPU one no-op run costs pyinfra's process on this machine
  (the controller: user + system, from the kernel's accounting of waited-for children), and
  the lab hosts together (their containers' cgroup CPU accounting, nested Docker included).
  In the lab every host and the controller share this machine's cores (printed): when the
  hosts' and the controller's CPU seconds exceed the wall clock times the cores, the
  fleet is waiting for CPU, not for round trips; on real servers each host has its own;
- from the no-op run's output: the operations run (the `--> Results:` table's Grand total,
  one per operation and host), how many of them changed something, and the remote commands
  sent to each host, facts and operations together.

Sizes: `1` is one GPU host with 2 simulated GPUs; `3` is two such GPU hosts and one CPU-only
host, so both the GPU and the CPU path of deploy.py are covered; `8` is seven GPU hosts with
one GPU and a CPU host. The report gives the no-op re-run as a ratio of the floor, and each
size's no-op as a ratio of one host's. Each size uses its own lab (`bench-converge-N`,
registry port 5070 + N), which is removed
(`down`) before it is started, so the hosts are always fresh, and again afterwards, even on
failure or Ctrl-C (unless `--keep`).

How remote commands are counted: the no-op run is started with `-vv`, under which pyinfra 3
echoes every shell command it sends, fact or operation, as one `[host] >>> COMMAND` line
(`print_input` / `print_fact_input`, see pyinfra/connectors/ssh.py `run_shell_command`);
those lines are counted per host, split at `--> Beginning operation run...` into commands
sent while preparing (facts) and while executing. SFTP transfers are not echoed by pyinfra
and so are not counted; a no-op run makes none. `-vv` only adds a few hundred lines of output
to the timed run.

Run it from anywhere (needs Docker, like the lab tests; several minutes for 8 hosts here):

    .venv/bin/python bench/converge.py                  # sizes 1 and 8
    .venv/bin/python bench/converge.py --sizes 1        # one size only
    .venv/bin/python bench/converge.py --sizes 3 --keep # leave the lab up to look at it
    .venv/bin/python bench/converge.py --lab fleetlab --quick  # `make demo`'s lab, as it is

With `--lab NAME` it measures that lab (already up, every host of it; not made, not removed):
its "fresh converge" is then the first deploy on hosts as they are. `--quick` times one run
where it would take the median of 3.

The full output of every command is kept in a log directory (printed at the start).
Timings are wall clock on this machine and include pyinfra's own start-up; other work on
the machine (e.g. lab tests running at the same time) slows them down.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from labrun import (
    PYINFRA,
    BenchError,
    Run,
    lab_options,
    lab_status,
    lab_teardown,
    open_lab,
    run,
    say,
    start,
    tail,
    why,
)

CONVERGE_TIMEOUT_S = 1800
NOOP_TIMEOUT_S = 900


@dataclass(frozen=True)
class Size:
    hosts: int
    lab: str
    up_args: tuple[str, ...]
    describe: str


SIZES = {
    1: Size(1, "bench-converge-1",
            ("--gpu-hosts", "1", "--gpus-per-host", "2", "--cpu-hosts", "0",
             "--registry-port", "5071", "--model-scale", "0.25"),
            "1 GPU host (2 GPUs)"),
    3: Size(3, "bench-converge-3",
            ("--gpu-hosts", "2", "--gpus-per-host", "2", "--cpu-hosts", "1",
             "--registry-port", "5073", "--model-scale", "0.25"),
            "2 GPU hosts (2 GPUs each) + 1 CPU host"),
    8: Size(8, "bench-converge-8",
            ("--gpu-hosts", "7", "--gpus-per-host", "1", "--cpu-hosts", "1",
             "--registry-port", "5078", "--model-scale", "0.1"),
            "7 GPU hosts (1 GPU each) + 1 CPU host"),
}
REPEATS = 3

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# `[host] >>> command` or, inside a nested operation, `[host] nested >>> command`
COMMAND_LINE = re.compile(r"^\[(?P<host>[^\]\s]+)\]\s+(?:nested\s+)?>>> ")
# per operation and host: `[host] Success` / `[host] No changes` / `[host] Error...`
OP_RESULT_LINE = re.compile(r"^\s*\[(?P<host>[^\]\s]+)\]\s+(?P<result>Success|No changes|Error)\b")
EXECUTE_MARKER = "--> Beginning operation run"


@dataclass
class Totals:
    """The `--> Results:` table's Grand total line: operation x host counts."""

    ops: int
    changed: int
    errors: int
    unchanged: int


@dataclass
class HostCounts:
    prepare: int = 0  # commands sent before `--> Beginning operation run` (facts)
    execute: int = 0  # commands sent while operations run (operation commands and facts)
    ops: int = 0
    changed: int = 0
    distinct: set[str] = field(default_factory=set)  # the command texts, repeats counted once

    @property
    def commands(self) -> int:
        return self.prepare + self.execute


@dataclass
class Result:
    size: Size
    hosts: list[dict] = field(default_factory=list)
    up_s: float | None = None
    fresh: Run | None = None
    fresh_totals: Totals | None = None
    noop: Run | None = None
    noop_s: float | None = None  # median of REPEATS no-op runs
    floor_s: float | None = None  # median of REPEATS `exec -- true`
    noop_totals: Totals | None = None
    per_host: dict[str, HostCounts] = field(default_factory=dict)
    controller_cpu_s: float | None = None  # per no-op run, pyinfra's process
    hosts_cpu_s: float | None = None  # per no-op run, every lab host together
    error: str | None = None


# --- CPU accounting -------------------------------------------------------------------------

def children_cpu_s() -> float:
    """User + system CPU seconds of every waited-for child process so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _container_cpu_s(container_id: str) -> float | None:
    """A container's CPU seconds from its cgroup (v1 cpuacct, or v2 cpu.stat)."""
    v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage")
    if v1.exists():
        return int(v1.read_text()) / 1e9
    for v2 in (Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat"),
               Path(f"/sys/fs/cgroup/docker/{container_id}/cpu.stat")):
        if v2.exists():
            usec = re.search(r"^usage_usec (\d+)$", v2.read_text(), re.M)
            return int(usec[1]) / 1e6 if usec else None
    return None


def hosts_cpu_s(hosts: list[dict]) -> float | None:
    """CPU seconds used so far by HOSTS' containers together; None where unreadable."""
    total = 0.0
    for host in hosts:
        proc = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", host["container"]],
                              capture_output=True, text=True, timeout=30)
        used = _container_cpu_s(proc.stdout.strip()) if proc.returncode == 0 else None
        if used is None:
            return None
        total += used
    return total


# --- reading pyinfra's output ---------------------------------------------------------------

def grand_total(output: str) -> Totals:
    """Parse `Grand total <ops> <success> <error> <no change>` ('-' meaning 0)."""
    results = ANSI.sub("", output).split("--> Results:")
    if len(results) < 2:
        raise BenchError("no `--> Results:` table in pyinfra's output")
    for line in results[-1].splitlines():
        words = line.split()
        if words[:2] == ["Grand", "total"] and len(words) == 6:
            ops, changed, errors, unchanged = (0 if w == "-" else int(w) for w in words[2:])
            return Totals(ops, changed, errors, unchanged)
    raise BenchError("no Grand total line in pyinfra's results table")


def per_host_counts(output: str, hosts: list[str]) -> dict[str, HostCounts]:
    """Remote commands (`[host] >>> ...` lines under -vv) and operation results per host."""
    counts = {h: HostCounts() for h in hosts}
    executing = False
    for raw in output.splitlines():
        line = ANSI.sub("", raw)
        if line.startswith(EXECUTE_MARKER):
            executing = True
            continue
        match = COMMAND_LINE.match(line)
        if match and match["host"] in counts:
            c = counts[match["host"]]
            c.distinct.add(line[match.end():])
            if executing:
                c.execute += 1
            else:
                c.prepare += 1
            continue
        match = OP_RESULT_LINE.match(line)
        if match and executing and match["host"] in counts:
            counts[match["host"]].ops += 1
            if match["result"] == "Success":
                counts[match["host"]].changed += 1
    return counts


# --- one size -------------------------------------------------------------------------------

def attached_size(lab: str) -> Size:
    """The Size of a lab that is already up (`--lab`): every host of it, as it is."""
    hosts = lab_status(lab)["hosts"]
    roles = {role: sum(h["role"] == role for h in hosts) for role in ("gpu", "cpu", "lb")}
    return Size(len(hosts), lab, (), f"lab {lab} as it is: " + ", ".join(
        f"{n} {role}" for role, n in roles.items() if n))


def bench_size(size: Size, logs: Path, keep: bool, attached: bool = False,
               repeats: int = REPEATS) -> Result:
    """SIZE measured on its own lab, made fresh (or, ATTACHED, on the lab of its name as it
    is); medians of REPEATS runs."""
    result = Result(size)
    prefix = logs / size.lab
    say(f"[{size.lab}] {size.describe}")
    try:
        _, info, up = open_lab(size.lab if attached else None, size.lab, size.up_args, logs,
                               f"{size.lab}-")
        result.up_s = up.seconds if up else None
        # every host the deploy runs on (the sizes made here have no lb hosts)
        result.hosts = info["hosts"]
        inventory = info["inventory"]
        if len(result.hosts) != size.hosts:
            raise BenchError(f"expected {size.hosts} hosts, lab has {result.hosts}")

        deploy = [str(PYINFRA), "-y", inventory, "deploy.py"]
        say(f"[{size.lab}] {'first deploy' if attached else 'fresh converge'}: "
            f"{' '.join(deploy[1:])}")
        result.fresh = run(deploy, CONVERGE_TIMEOUT_S, Path(f"{prefix}-fresh.log"))
        if not result.fresh.ok:
            raise BenchError(f"fresh converge failed ({why(result.fresh)}):\n"
                             f"{tail(result.fresh.output)}")
        result.fresh_totals = grand_total(result.fresh.output)
        say(f"[{size.lab}] {'first deploy' if attached else 'fresh converge'} in "
            f"{result.fresh.seconds:.1f} s")

        say(f"[{size.lab}] no-op re-run: {' '.join(deploy[1:])} -vv")
        result.noop = run([*deploy, "-vv"], NOOP_TIMEOUT_S, Path(f"{prefix}-noop.log"))
        if not result.noop.ok:
            raise BenchError(f"no-op re-run failed ({why(result.noop)}):\n"
                             f"{tail(result.noop.output)}")
        result.noop_totals = grand_total(result.noop.output)
        result.per_host = per_host_counts(result.noop.output, [h["name"] for h in result.hosts])
        _check_counts(result)
        every = info["hosts"]
        controller, hosts = children_cpu_s(), hosts_cpu_s(every)
        result.noop_s = median(deploy, NOOP_TIMEOUT_S, prefix, "noop", repeats)  # not -vv
        result.controller_cpu_s = (children_cpu_s() - controller) / repeats
        after = hosts_cpu_s(every)
        if hosts is not None and after is not None:
            result.hosts_cpu_s = (after - hosts) / repeats
        say(f"[{size.lab}] no-op re-run in {result.noop_s:.2f} s (median of {repeats})")
        floor = [str(PYINFRA), "-y", inventory, "exec", "--", "true"]
        result.floor_s = median(floor, NOOP_TIMEOUT_S, prefix, "floor", repeats)
        say(f"[{size.lab}] floor ({' '.join(floor[1:])}) in {result.floor_s:.2f} s")
    except BenchError as exc:
        result.error = str(exc)
        say(f"[{size.lab}] FAILED: {exc}")
    finally:
        lab_teardown(size.lab, Path(f"{prefix}-down.log"), keep, owned=not attached)
    return result


def median(cmd: list[str], timeout: float, prefix: Path, what: str, repeats: int = REPEATS,
           first: float | None = None) -> float:
    """The median wall clock of REPEATS runs of CMD (FIRST: one already measured)."""
    times = [first] if first is not None else []
    while len(times) < repeats:
        done = run(cmd, timeout, Path(f"{prefix}-{what}-{len(times)}.log"))
        if not done.ok:
            raise BenchError(f"{what} failed ({why(done)}):\n{tail(done.output)}")
        times.append(done.seconds)
    return sorted(times)[len(times) // 2]


def _check_counts(result: Result) -> None:
    """The per-host counts must add up to pyinfra's own table, or the parsing is wrong."""
    totals = result.noop_totals
    assert totals is not None  # noqa: S101 (type narrowing)
    ops = sum(c.ops for c in result.per_host.values())
    changed = sum(c.changed for c in result.per_host.values())
    if (ops, changed) != (totals.ops, totals.changed):
        raise BenchError(f"per-host operation lines ({ops} ops, {changed} changed) do not match "
                         f"the Grand total ({totals.ops} ops, {totals.changed} changed)")
    silent = [h for h, c in result.per_host.items() if c.commands == 0]
    if silent:
        raise BenchError(f"no `[host] >>>` command lines for {silent}: is -vv still echoing?")


# --- report ---------------------------------------------------------------------------------

def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _secs2(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def report(results: list[Result]) -> str:
    header = ("hosts", "lab up", "fresh converge", "floor", "no-op re-run", "no-op/floor",
              "no-op/1 host", "CPU: pyinfra", "CPU: hosts", "CPU-bound", "ops (no-op)",
              "ops/host",
              "changed (no-op)", "remote cmds/host (no-op)")
    one = next((r.noop_s for r in results if r.size.hosts == 1 and r.noop_s), None)
    rows = []
    for r in results:
        fresh = r.fresh.seconds if r.fresh and r.fresh.ok else None
        noop, floor = r.noop_s, r.floor_s
        ratio = f"{noop / floor:.2f}x" if noop and floor else "-"
        scale = f"{noop / one:.2f}x" if noop and one else "-"
        if r.noop_totals and r.per_host:
            n = len(r.per_host)
            ops, changed = str(r.noop_totals.ops), str(r.noop_totals.changed)
            ops_host = _spread([c.ops for c in r.per_host.values()], n)
            cmds_host = _spread([c.commands for c in r.per_host.values()], n)
        else:
            ops = changed = ops_host = cmds_host = "-"
        rows.append((str(r.size.hosts), _secs(r.up_s), _secs(fresh), _secs2(floor),
                     _secs2(noop), ratio, scale, _secs2(r.controller_cpu_s),
                     _secs2(r.hosts_cpu_s), _secs2(cpu_bound(r)), ops, ops_host, changed,
                     cmds_host))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = ["converge benchmark (lab hosts; stand-in NVIDIA/Ollama)", line(header)]
    out += [line(row) for row in rows]
    out += [f"CPU: seconds of CPU per no-op run, of pyinfra's process and of the lab hosts "
            f"together; this machine has {os.cpu_count()} cores, shared by both.",
            "CPU-bound: the least wall clock that CPU takes here, max(pyinfra, (pyinfra + "
            "hosts) / cores): pyinfra runs on one core; a no-op near it waits for CPU, not "
            "for the hosts (on real servers each host has its own)."]

    out += ["", "per host, no-op run (remote commands: sent while preparing + while executing;"
                " distinct: repeats of the same command text counted once):"]
    for r in results:
        out.append(f"  {r.size.hosts} host(s): {r.size.describe}, lab {r.size.lab}")
        if r.fresh_totals:
            t = r.fresh_totals
            out.append(f"    fresh converge: {t.ops} ops, {t.changed} changed, "
                       f"{t.errors} errors")
        roles = {h["name"]: h["role"] for h in r.hosts}
        for name, c in r.per_host.items():
            out.append(f"    {name:<6} {roles.get(name, '?'):<4} {c.ops:>3} ops  "
                       f"{c.changed} changed  {c.commands:>3} remote cmds "
                       f"({c.prepare} + {c.execute}; {len(c.distinct)} distinct)")
        if r.error:
            out.append(f"    FAILED: {r.error.splitlines()[0]}")
    return "\n".join(out)


def cpu_bound(r: Result) -> float | None:
    """The least wall clock R's no-op CPU needs on this machine: pyinfra's process on one
    core, and the controller and the hosts together on all of them."""
    if r.controller_cpu_s is None or r.hosts_cpu_s is None:
        return None
    cores = os.cpu_count() or 1
    return max(r.controller_cpu_s, (r.controller_cpu_s + r.hosts_cpu_s) / cores)


def _spread(values: list[int], n: int) -> str:
    """'42' when every host has the same count, else 'mean (min-max)'."""
    if min(values) == max(values):
        return str(values[0])
    return f"{sum(values) / n:.1f} ({min(values)}-{max(values)})"


# --- main -----------------------------------------------------------------------------------

def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes are whole numbers, e.g. 1,3") from None
    unknown = [s for s in sizes if s not in SIZES]
    if not sizes or unknown:
        raise argparse.ArgumentTypeError(f"sizes must be among {sorted(SIZES)}, got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/converge.py", description=__doc__.split("\n\n")[0],
        allow_abbrev=False)
    parser.add_argument("--sizes", type=_sizes, default=[1, 8],
                        help="comma-separated fleet sizes to measure, among 1,3,8 (default 1,8)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the labs up afterwards (for debugging); they are still "
                             "removed and recreated at the start of the next run")
    lab_options(parser, "one run each instead of the median of 3 (with --lab: its one size)")
    args = parser.parse_args(argv)
    logs = start(parser, "bench/converge.py", "bench-converge-")
    results: list[Result] = []
    repeats = 1 if args.quick else REPEATS
    try:
        if args.lab:
            results.append(bench_size(attached_size(args.lab), logs, args.keep, attached=True,
                                      repeats=repeats))
        for n in [] if args.lab else args.sizes:
            results.append(bench_size(SIZES[n], logs, args.keep, repeats=repeats))
    except KeyboardInterrupt:
        say("interrupted; labs were removed (unless --keep)")
        if results:
            say("\n" + report(results))
        return 130
    say("\n" + report(results))
    say(f"\nlogs: {logs}")
    return 0 if all(r.error is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
