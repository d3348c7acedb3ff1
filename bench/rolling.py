"""Rolling update vs naive redeploy: what each costs the clients of the front door.

In one process, on one lab (3 GPU hosts with 1 GPU each, 1 front door; lab `bench-rolling`,
registry port 5075), under the same load through the front door (lab.loadgen.LoadGenerator:
4 threads, half streamed, num_predict 40), this runs one after the other:

1. **roll**: `ollama-fleet INVENTORY roll -y --data ollama_image=ollama/ollama:0.7.0`
   (from 0.6.8, which the first deploy installs, `--data ollama_image=ollama/ollama:0.6.8`):
   canary first, one host at a time, each drained from the front door, updated,
   smoke-tested and put back;
2. **naive**: `pyinfra -y INVENTORY deploy.py --data ollama_image=ollama/ollama:0.6.8`: back
   to 0.6.8 on every host at once, nothing drained;

and prints, side by side: requests sent and failed, streams cut, the command's wall clock,
and how long hosts were out of service:

- **out of the front door** (roll only; the naive redeploy never drains): per host, from the
  roll's stderr, each line timestamped as it is read (Popen, line by line). The batch line
  (`--> roll: canary: gpu-1`) names the hosts; the host is out from its `--> roll: drain: ...`
  line until the undrain run has finished (the first line after `--> roll: ... undrain`). The
  reloads happen somewhere inside those two pyinfra runs, so that is an upper bound; the
  lower bound (drain run finished -> undrain run started) is printed next to it;
- **host not answering**: for both runs, per host, the longest time the host's own nginx
  (`http://HOST:80/api/version`, polled every 0.2 s, 1 s timeout, in a thread per host)
  did not answer 200: from the first failed poll to the next poll that got 200 (start times).
  A GPU host's nginx answers only its front doors, so these polls run on the front door host
  (this file copied there and run by its python3, `--watch`), not on this machine;
- **front door not answering**: the same for the front door's `/api/version` (which goes to
  a GPU host), polled from here as its clients call it, and the most hosts that were not
  answering at the same moment.

Each run has 3 s of load before the command starts and 3 s after it ends (the same for both),
so requests hit at the edges are counted.

Then, on the same lab, **where a roll's time goes** (issue: pull before drain, fail fast):

3. **before / after pulling ahead**: two rolls to releases whose image carries a 256 MiB
   layer of incompressible bytes (`python -m lab ollama-image TAG --pad-mb 256`: a real
   Ollama image is GBs, so its download takes time), the first with the roll's pull step
   switched off (`Roll.pull_ahead = False`: the download happens inside `apply`, after
   the drain, as before), the second as shipped (pulled while the batch still serves).
   Per roll: the longest time a host was out of the front door, and the split of that
   host's batch into its steps, from the roll's stamped stderr: pull (still serving),
   drain, apply (up to the health wait), health (the wait for healthy), rest (the rest of
   deploy.py and the smoke test), warm (loading `ollama_warm_models`, tinyllama here),
   undrain;
4. **broken releases**: a roll (`--rollback`, default health knobs) to each of the lab's
   broken releases (never healthy, exits at start, panics in a loop): the time from the
   canary's `--> roll: canary` line to the line that calls it (`rolling gpu-1 back`), next
   to `ollama_health_timeout` (300 s), the bound the deploy waited for before.

`--phases-only` runs 3 and 4 without the roll-vs-naive comparison; `--quick` runs 1 and 2
only. `--lab NAME` measures on a lab that is already up (any number of GPU hosts, its first
lb host the front door; neither made nor removed here; the lab tests of the benches run
`--lab NAME --quick`, tests/lab/test_benches.py).

Run it (needs Docker, like the lab tests; a few minutes):

    .venv/bin/python bench/rolling.py           # lab up, first deploy, roll, naive, lab down
    .venv/bin/python bench/rolling.py --keep    # leave the lab up to look at it
    .venv/bin/python bench/rolling.py --lab fleetlab --quick  # on `make demo`'s lab

The lab is removed before it is started (so the hosts are fresh) and again at the end, also on
failure or Ctrl-C (unless `--keep`). The full output of every command is kept in a log
directory (printed at the start). Timings are wall clock on this machine; other work on it
(e.g. lab tests running at the same time) slows them down.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from labrun import (
    PYINFRA,
    REPO,
    BenchError,
    Child,
    Run,
    copy_to_host,
    lab_cmd,
    lab_options,
    lab_teardown,
    open_lab,
    run,
    say,
    start,
    tail,
    why,
)

if TYPE_CHECKING:
    from lab.loadgen import LoadStats

LAB = "bench-rolling"
UP_ARGS = ("--gpu-hosts", "3", "--gpus-per-host", "1", "--lb-hosts", "1",
           "--registry-port", "5075", "--model-scale", "0.1")
A, B = "ollama/ollama:0.6.8", "ollama/ollama:0.7.0"
MODEL = "tinyllama"  # inventory/group_data/all.py's ollama_models
THREADS, NUM_PREDICT = 4, 40

DEPLOY_TIMEOUT_S = 1800
ROLL_TIMEOUT_S = 1800
NAIVE_TIMEOUT_S = 1200
READY_TIMEOUT_S = 120  # before a run: every host and the front door answer
SETTLE_S = 3.0  # load before the command starts and after it ends
POLL_INTERVAL_S = 0.2
POLL_TIMEOUT_S = 1.0

BIG_MB = 256  # the padded releases' extra layer
BIG_BEFORE, BIG_AFTER = "ollama/ollama:0.8.0", "ollama/ollama:0.8.1"
BROKEN = {"never healthy": ("0.7.1-bad", "unhealthy"), "exits at start": ("0.7.2-exits", "exits"),
          "panics in a loop": ("0.7.3-crashes", "crashes")}
HEALTH_TIMEOUT_S = 300  # ollama_health_timeout's default: what a broken canary cost before
ANSI = re.compile(r"\x1b\[[0-9;]*m")
STEP_LINE = re.compile(r"^--> roll: (?P<step>pull|drain|apply|undrain): ")
HEALTH_OP = re.compile(r"--> Starting operation: Every Ollama instance healthy")
NEXT_OP = re.compile(r"--> Starting operation: ")
WARM_OP = re.compile(r"--> Starting operation: Warm models loaded")
SMOKED = re.compile(r"^--> roll: (?P<host>\S+): healthy, answers")
CALLED = re.compile(r"^(--> roll: rolling \S+ back to |roll stopped: )")
BATCH_LINE = re.compile(r"^--> roll: (?:canary|batch \d+/\d+): (?P<hosts>.+)$")
DRAIN_LINE = re.compile(r"^--> roll: drain: ")
UNDRAIN_LINE = re.compile(r"^--> roll: undrain: ")


# --- running things -------------------------------------------------------------------------

@dataclass
class TimedRun(Run):
    lines: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, stderr line)


def run_timestamped(cmd: list[str], timeout: float, log: Path) -> TimedRun:
    """Run CMD, reading its stderr live, line by line, each line stamped as it arrives."""
    lines: list[tuple[float, str]] = []
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as out:
        child = Child(cmd, stdout=out, stderr=subprocess.PIPE, bufsize=1, errors="replace")

        def read() -> None:  # ends when the pipe closes (the process and its children exit)
            assert child.proc.stderr is not None  # noqa: S101 (stderr=PIPE)
            for line in child.proc.stderr:
                lines.append((time.monotonic(), line.rstrip("\n")))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            child.wait(timeout)
        finally:
            reader.join(timeout=30)
            out.seek(0)
            stdout = out.read()
            stderr = "\n".join(f"[{t - child.started:7.2f}] {line}" for t, line in list(lines))
            log.write_text(f"{child.log_header()}--- stderr (seconds since start) ---\n"
                           f"{stderr}\n--- stdout ---\n{stdout}")
    output = "\n".join(line for _, line in lines) + ("\n" + stdout if stdout else "")
    return TimedRun(cmd, child.rc, child.seconds, output, lines)


# --- watching hosts -------------------------------------------------------------------------
# A GPU host's nginx answers only its front doors (and loopback), so the hosts are polled
# from the front door host: this file and labrun.py are copied there and run by its python3
# (`rolling.py --watch SPEC`), one thread per host, each poll printed as a WATCH line that
# the bench reads as it comes. The front door itself is polled from here, where its
# clients are. Lab hosts are containers: their monotonic clock is this machine's.

WATCH = "ROLLWATCH "
REMOTE_DIR = "/root/bench-rolling"


def get_version(address: str, port: int = 80, timeout: float = POLL_TIMEOUT_S) -> str | None:
    """The version a GET /api/version answers with 200, or None."""
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", "/api/version")
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            return None
        return str(json.loads(body).get("version", "?"))
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


@dataclass
class Outages:
    longest: float = 0.0
    total: float = 0.0
    count: int = 0
    ongoing: bool = False  # still not answering at the last poll
    intervals: list[tuple[float, float]] = field(default_factory=list)


class Samples:
    """One target's polls, (poll start, answered 200), and the outages they show."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.samples: list[tuple[float, bool]] = []

    def outages(self) -> Outages:
        """Periods without a 200: first failed poll -> next poll answered 200 (start times)."""
        result = Outages()
        down_since: float | None = None
        samples = list(self.samples)
        for t, ok in samples:
            if not ok and down_since is None:
                down_since = t
            elif ok and down_since is not None:
                result.intervals.append((down_since, t))
                down_since = None
        if down_since is not None:
            result.intervals.append((down_since, samples[-1][0]))
            result.ongoing = True
        lengths = [end - start for start, end in result.intervals]
        result.count = len(lengths)
        result.total = sum(lengths)
        result.longest = max(lengths, default=0.0)
        return result


class Poller(Samples):
    """A thread polling ADDRESS:80/api/version every POLL_INTERVAL_S until stop() (bounded);
    REPORT, if given, is called with each poll (name, start, version or None)."""

    def __init__(self, name: str, address: str, max_seconds: float,
                 report: Callable[[str, float, str | None], None] | None = None) -> None:
        super().__init__(name)
        self.address, self.report = address, report
        self.max_polls = int(max_seconds / POLL_INTERVAL_S) + 1
        self.max_seconds = max_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def start(self) -> Poller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=POLL_TIMEOUT_S + 5)

    def _poll(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        for _ in range(self.max_polls):
            started = time.monotonic()
            if self._stop.is_set() or started > deadline:
                return
            version = get_version(self.address)
            self.samples.append((started, version is not None))
            if self.report:
                self.report(self.name, started, version)
            self._stop.wait(max(0.0, started + POLL_INTERVAL_S - time.monotonic()))


def watch_main(spec_json: str) -> int:
    """`rolling.py --watch SPEC` on the front door host: poll SPEC's targets ({name:
    address}), once each (`once`) or every POLL_INTERVAL_S until this process's stdin closes
    (the bench is done) or SPEC's `seconds` pass; one WATCH line (JSON) per poll."""
    spec = json.loads(spec_json)
    lock = threading.Lock()

    def report(name: str, t: float, version: str | None) -> None:
        with lock:
            print(WATCH + json.dumps({"host": name, "t": t, "version": version}), flush=True)

    if spec.get("once"):
        for name, address in spec["targets"].items():
            report(name, time.monotonic(), get_version(address, timeout=5))
        return 0
    pollers = [Poller(name, address, spec["seconds"], report).start()
               for name, address in spec["targets"].items()]
    stdin_closed = threading.Thread(target=sys.stdin.read, daemon=True)
    stdin_closed.start()
    stdin_closed.join(spec["seconds"])
    for poller in pollers:
        poller.stop()
    return 0


def watch_command(front: dict, spec: dict, bound: float) -> list[str]:
    """`rolling.py --watch SPEC` on the front door host FRONT (`lab status` entry)."""
    return ["docker", "exec", "-i", front["container"], "timeout", "-s", "KILL",
            str(int(bound)), "python3", f"{REMOTE_DIR}/rolling.py", "--watch", json.dumps(spec)]


def install_watch(front: dict, logs: Path) -> None:
    here = Path(__file__).resolve().parent
    copy_to_host(front["container"], [here / "rolling.py", here / "labrun.py"], REMOTE_DIR, logs)


def _watch_line(line: str) -> dict | None:
    return json.loads(line[len(WATCH):]) if line.startswith(WATCH) else None


class HostWatch:
    """Every host's nginx polled from the front door host FRONT until stop() (bounded by
    MAX_SECONDS there and here): `hosts`, one Samples per host."""

    def __init__(self, front: dict, hosts: list[dict], max_seconds: float, log: Path) -> None:
        self.hosts = {h["name"]: Samples(h["name"]) for h in hosts}
        self.other: list[str] = []  # lines that are not polls (errors), for the log
        self.log = log
        spec = {"targets": {h["name"]: h["address"] for h in hosts}, "seconds": max_seconds}
        self.child = Child(watch_command(front, spec, max_seconds + 10), stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1,
                           errors="replace")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:  # ends when the pipe closes (the watcher exits)
        assert self.child.proc.stdout is not None  # noqa: S101 (stdout=PIPE)
        for line in self.child.proc.stdout:
            try:
                got = _watch_line(line)
            except ValueError:
                got = None
            if got and got["host"] in self.hosts:
                self.hosts[got["host"]].samples.append((got["t"], got["version"] is not None))
            else:
                self.other.append(line)

    def stop(self) -> None:
        """Close the watcher's stdin (it stops polling and exits), wait for it (bounded)."""
        try:
            assert self.child.proc.stdin is not None  # noqa: S101 (stdin=PIPE)
            self.child.proc.stdin.close()
        except OSError:
            pass
        self.child.wait(POLL_TIMEOUT_S + 15)
        self._reader.join(timeout=10)
        polls = sum(len(s.samples) for s in self.hosts.values())
        self.log.write_text(f"{self.child.log_header()}{polls} polls\n{''.join(self.other)}")
        if not polls:
            say(f"WARNING: no poll came back from the front door host ({self.child.status}): "
                f"{tail(''.join(self.other), 5)}")


def host_versions(front: dict, hosts: list[dict], log: Path) -> dict[str, str | None]:
    """Each host's /api/version, asked once from the front door host FRONT."""
    spec = {"targets": {h["name"]: h["address"] for h in hosts}, "once": True}
    done = run(watch_command(front, spec, 30), 60, log)
    got: dict[str, str | None] = dict.fromkeys(spec["targets"])
    for line in done.output.splitlines():
        try:
            polled = _watch_line(line)
        except ValueError:
            polled = None
        if polled and polled["host"] in got:
            got[polled["host"]] = polled["version"]
    return got


def most_down_at_once(outages: list[Outages]) -> int:
    events = sorted([(s, 1) for o in outages for s, _ in o.intervals]
                    + [(e, -1) for o in outages for _, e in o.intervals],
                    key=lambda ev: (ev[0], ev[1]))  # an end before a start at the same time
    down = most = 0
    for _, delta in events:
        down += delta
        most = max(most, down)
    return most


def wait_ready(hosts: list[dict], front: dict, logs: Path, label: str
               ) -> dict[str, str | None]:
    """Wait (bounded) until every host's nginx (asked from the front door host) and the
    front door (asked from here) answer; their versions."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        got = host_versions(front, hosts, logs / f"{label}-ready.log")
        got["front door"] = get_version(front["address"], timeout=5)
        if all(got.values()) or time.monotonic() > deadline:
            return got
        time.sleep(1)


# --- one measured run -----------------------------------------------------------------------

@dataclass
class Measured:
    label: str
    command: str
    run: Run | None = None
    stats: LoadStats | None = None
    load_seconds: float = 0.0
    hosts: dict[str, Outages] = field(default_factory=dict)
    front: Outages | None = None
    at_once: int = 0
    out_of_front: dict[str, tuple[float, float]] = field(default_factory=dict)  # (low, high)
    before: dict[str, str | None] = field(default_factory=dict)
    after: dict[str, str | None] = field(default_factory=dict)
    error: str | None = None


def measured(label: str, cmd: list[str], timeout: float, logs: Path, hosts: list[dict],
             front: dict, timestamped: bool) -> Measured:
    """CMD under the load through the front door (FRONT, its `lab status` entry), every
    host's nginx polled from the front door host and the front door from here."""
    from lab.loadgen import LoadGenerator

    result = Measured(label, " ".join([Path(cmd[0]).name, *cmd[1:]]))
    result.before = wait_ready(hosts, front, logs, f"{label}-before")
    if not all(result.before.values()):
        raise BenchError(f"{label}: not everything answers before the run: {result.before}")
    bound = timeout + 4 * SETTLE_S + 60
    watch = HostWatch(front, hosts, bound, logs / f"{label}-watch.log")
    front_poller = Poller("front door", front["address"], bound).start()
    load = LoadGenerator(f"http://{front['address']}", MODEL, threads=THREADS,
                         num_predict=NUM_PREDICT, max_requests=1_000_000, max_seconds=bound)
    load_started = time.monotonic()
    load.start()
    try:
        time.sleep(SETTLE_S)
        say(f"[{label}] {result.command}")
        result.run = (run_timestamped if timestamped else run)(cmd, timeout,
                                                               logs / f"{label}.log")
        time.sleep(SETTLE_S)
    finally:
        result.stats = load.stop()
        result.load_seconds = time.monotonic() - load_started
        front_poller.stop()
        watch.stop()
    result.hosts = {name: samples.outages() for name, samples in watch.hosts.items()}
    result.front = front_poller.outages()
    result.at_once = most_down_at_once(list(result.hosts.values()))
    if result.stats.sent >= load.max_requests:
        say(f"[{label}] WARNING: the load hit its request cap; later requests were not sent")
    say(f"[{label}] {why(result.run)} in {result.run.seconds:.1f} s; load: "
        f"{result.stats.summary()}")
    if not result.run.ok:
        result.error = f"{label} failed ({why(result.run)}):\n{tail(result.run.output, 60)}"
        say(f"[{label}] FAILED ({why(result.run)}); its output:\n{tail(result.run.output, 60)}")
    result.after = wait_ready(hosts, front, logs, f"{label}-after")
    return result


def out_of_front_door(lines: list[tuple[float, str]], end: float
                      ) -> dict[str, tuple[float, float]]:
    """Per host, from the roll's stamped stderr: (drain done -> undrain started,
    drain started -> undrain done). A host drained but never undrained counts until END."""
    result: dict[str, tuple[float, float]] = {}
    batch: list[str] = []
    drain_start = drain_done = undrain_start = None
    for i, (t, line) in enumerate(lines):
        match = BATCH_LINE.match(line)
        if match:
            batch = [h.strip() for h in match["hosts"].split(",")]
            drain_start = drain_done = undrain_start = None
        elif DRAIN_LINE.match(line):
            drain_start = t
            drain_done = next((t2 for t2, _ in lines[i + 1:]), end)
        elif UNDRAIN_LINE.match(line) and drain_start is not None:
            undrain_start = t
            undrain_done = next((t2 for t2, _ in lines[i + 1:]), end)
            for name in batch:
                result[name] = (undrain_start - (drain_done or drain_start),
                                undrain_done - drain_start)
            drain_start = None
    if drain_start is not None:  # drained and left out (a failed roll)
        for name in batch:
            result[name] = (end - (drain_done or drain_start), end - drain_start)
    return result


# --- where a roll's time goes ---------------------------------------------------------------

STEPS = ("pull", "drain", "apply", "health", "rest", "warm", "undrain")


def step_split(lines: list[tuple[float, str]], end: float) -> dict[str, dict[str, float]]:
    """Per host, from a roll's stamped stderr: seconds in each of STEPS of its batch.

    pull/drain/apply/undrain start at the roll's `--> roll: STEP:` lines; apply ends where
    deploy.py's health wait starts (`Every Ollama instance healthy`), health where the
    operation after it starts, rest (the rest of deploy.py and the smoke test) at the
    batch's last `healthy, answers` line; undrain ends at the next roll line."""
    result: dict[str, dict[str, float]] = {}
    batch: list[str] = []
    marks: dict[str, float] = {}

    def close(at: float) -> None:
        m = marks
        if "warm" in m and "warm_end" not in m and "smoked" in m:
            m["warm_end"] = m["smoked"]  # the last operation of deploy.py: up to the smoke
        spans = {"pull": ("pull", "drain"), "drain": ("drain", "apply"),
                 "apply": ("apply", "health"), "health": ("health", "rest"),
                 "rest": ("rest", "smoked"), "warm": ("warm", "warm_end"),
                 "undrain": ("undrain", "end")}
        times = {**m, "end": at}
        for step, (a, b) in spans.items():
            if a in times and b in times:
                seconds = times[b] - times[a]
                if step == "rest" and "warm" in m and "warm_end" in m:
                    seconds -= m["warm_end"] - m["warm"]  # the warm-up is its own column
                for name in batch:
                    result.setdefault(name, {})[step] = seconds

    for t, raw in lines:
        line = ANSI.sub("", raw).strip()
        batch_match, step = BATCH_LINE.match(line), STEP_LINE.match(line)
        if batch_match or line.startswith(("--> roll: done", "roll stopped")):
            if batch:
                close(t)
            batch = [h.strip() for h in batch_match["hosts"].split(",")] if batch_match else []
            marks = {}
        elif step:
            marks[step["step"]] = t
        elif HEALTH_OP.search(line) and "apply" in marks:
            marks["health"] = t
        elif "health" in marks and "rest" not in marks and NEXT_OP.search(line):
            marks["rest"] = t
            if WARM_OP.search(line):
                marks["warm"] = t
        elif WARM_OP.search(line):
            marks["warm"] = t
        elif "warm" in marks and "warm_end" not in marks and NEXT_OP.search(line):
            marks["warm_end"] = t
        elif SMOKED.match(line):
            marks["smoked"] = t
    if batch:
        close(end)
    return result


def out_of_service(split: dict[str, float]) -> float:
    return sum(split.get(step, 0.0) for step in STEPS if step != "pull")


def called_after(lines: list[tuple[float, str]]) -> float | None:
    """Seconds from the canary's line to the line that calls the release broken."""
    start = next((t for t, line in lines if line.startswith("--> roll: canary")), None)
    called = next((t for t, line in lines if CALLED.match(line)), None)
    return None if start is None or called is None else called - start


def roll_command(inventory: str, *args: str, pull_ahead: bool = True) -> list[str]:
    if pull_ahead:
        return [sys.executable, "-m", "ollama_fleet", inventory, "roll", "-y", *args]
    program = ("from gevent import monkey; monkey.patch_all(); import sys; "
               "import ollama_fleet.fleetctl.roll as r; r.Roll.pull_ahead = False; "
               "from ollama_fleet.fleetctl.cli import main; sys.exit(main())")
    return [sys.executable, "-c", program, inventory, "roll", "-y", *args]


@dataclass
class Phases:
    splits: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # label ->
    seconds: dict[str, float] = field(default_factory=dict)  # label -> the roll's wall clock
    failed: dict[str, int] = field(default_factory=dict)  # label -> requests failed
    called: dict[str, float | None] = field(default_factory=dict)  # broken kind -> seconds
    evidence: dict[str, str] = field(default_factory=dict)


def phases(lab: str, inventory: str, front: str, logs: Path) -> Phases:
    """Rolls 3 and 4 of the module's docstring, on LAB (FRONT: the front door's address)."""
    from lab.loadgen import LoadGenerator

    result = Phases()
    for image in (BIG_BEFORE, BIG_AFTER):
        tag = image.split(":")[1]
        say(f"[{lab}] publishing {image} with a {BIG_MB} MiB layer")
        published = run(lab_cmd(lab, "ollama-image", tag, "--pad-mb", str(BIG_MB)), 900,
                        logs / f"publish-{tag}.log")
        if not published.ok:
            raise BenchError(f"publishing {image} failed:\n{tail(published.output)}")
    for tag, fault in BROKEN.values():
        published = run(lab_cmd(lab, "ollama-image", tag, "--fault", fault), 900,
                        logs / f"publish-{tag}.log")
        if not published.ok:
            raise BenchError(f"publishing {tag} failed:\n{tail(published.output)}")
    for label, image, ahead in (("before (pull after drain)", BIG_BEFORE, False),
                                ("after (pull ahead)", BIG_AFTER, True)):
        say(f"[{lab}] roll to {image}: {label}")
        with LoadGenerator(f"http://{front}", MODEL, threads=THREADS,
                           num_predict=NUM_PREDICT) as load:
            timed = run_timestamped(roll_command(inventory, "--data", f"ollama_image={image}",
                                                 "--data", f'ollama_warm_models=["{MODEL}"]',
                                                 pull_ahead=ahead),
                                    ROLL_TIMEOUT_S, logs / f"roll-{image.split(':')[1]}.log")
        if not timed.ok:
            raise BenchError(f"roll to {image} failed ({why(timed)}):\n{tail(timed.output)}")
        end = timed.lines[-1][0] if timed.lines else time.monotonic()
        result.splits[label] = step_split(timed.lines, end)
        result.seconds[label] = timed.seconds
        result.failed[label] = load.stats.failed + load.stats.streams_cut
    for kind, (tag, _) in BROKEN.items():
        say(f"[{lab}] roll to ollama/ollama:{tag} ({kind}), --rollback")
        timed = run_timestamped(roll_command(inventory, "--rollback", "--data",
                                             f"ollama_image=ollama/ollama:{tag}"),
                                ROLL_TIMEOUT_S, logs / f"roll-{tag}.log")
        result.called[kind] = called_after(timed.lines)
        stopped = [line for _, line in timed.lines if line.startswith("roll stopped: ")]
        result.evidence[kind] = stopped[-1].split(". ")[0] if stopped else why(timed)
    return result


def phases_report(p: Phases, shape: str) -> str:
    out = [f"where a roll's time goes ({shape}; one host at a time; releases with a "
           f"{BIG_MB} MiB layer; load through the front door):", ""]
    rows = [("", *STEPS, "out of front door", "roll", "failed requests")]
    longest: dict[str, float] = {}
    for label, split in p.splits.items():
        if not split:
            continue
        host = max(split, key=lambda h: out_of_service(split[h]))
        longest[label] = out_of_service(split[host])
        rows.append((f"{label}, {host}",
                     *(f"{split[host][s]:.1f}" if s in split[host] else "-" for s in STEPS),
                     f"{longest[label]:.1f} s", f"{p.seconds[label]:.0f} s",
                     str(p.failed[label])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]
    if len(longest) == 2:
        before, after = longest.values()
        out.append(f"longest out of the front door, before/after: {before / after:.2f}x"
                   if after else "")
    out += ["", f"broken release called (canary's start -> called; before: the deploy waited "
                f"for ollama_health_timeout, {HEALTH_TIMEOUT_S} s):"]
    for kind, seconds in p.called.items():
        ratio = f", {HEALTH_TIMEOUT_S / seconds:.1f}x sooner" if seconds else ""
        out.append(f"  {kind:<17} {_s(seconds)}{ratio}: {p.evidence.get(kind, '')}")
    return "\n".join(out)


# --- report ---------------------------------------------------------------------------------

def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _ratio(naive: float | None, roll: float | None, fmt: str = "{:.2f}x") -> str:
    if naive is None or roll is None:
        return "-"
    if roll == 0:
        return "-" if naive == 0 else "n/a (roll: 0)"
    return fmt.format(naive / roll)


def report(roll: Measured | None, naive: Measured | None, first_deploy: Run | None,
           up_s: float | None, shape: str, fresh: bool = True) -> str:
    def stat(m: Measured | None, what: str):
        if m is None or m.stats is None:
            return None
        return getattr(m.stats, what)

    def duration(m: Measured | None) -> float | None:
        return m.run.seconds if m and m.run else None

    def longest_host(m: Measured | None) -> float | None:
        return max((o.longest for o in m.hosts.values()), default=0.0) if m and m.hosts else None

    def front(m: Measured | None) -> float | None:
        return m.front.longest if m and m.front else None

    roll_out = max((hi for _, hi in roll.out_of_front.values()), default=None) if roll else None
    roll_out_low = max((lo for lo, _ in roll.out_of_front.values()), default=None) \
        if roll else None

    def succeeded(m: Measured | None) -> int | None:
        sent, failed = stat(m, "sent"), stat(m, "failed")
        return None if sent is None else sent - failed

    def count(v) -> str:
        return "-" if v is None else str(v)

    def pct(m: Measured | None, what: str) -> str:
        sent, n = stat(m, "sent"), stat(m, what)
        if sent is None or n is None:
            return "-"
        return f"{n} ({100 * n / sent:.1f}%)" if sent else str(n)

    rows = [
        ("", f"roll ({_tag(A)} -> {_tag(B)})", f"naive ({_tag(B)} -> {_tag(A)})", "naive/roll"),
        ("requests sent", count(stat(roll, "sent")), count(stat(naive, "sent")), ""),
        ("requests failed", pct(roll, "failed"), pct(naive, "failed"),
         _ratio(stat(naive, "failed"), stat(roll, "failed"))),
        ("requests succeeded", count(succeeded(roll)), count(succeeded(naive)), ""),
        ("streams", count(stat(roll, "streams")), count(stat(naive, "streams")), ""),
        ("streams cut", count(stat(roll, "streams_cut")), count(stat(naive, "streams_cut")),
         _ratio(stat(naive, "streams_cut"), stat(roll, "streams_cut"))),
        ("total duration (command)", _s(duration(roll)), _s(duration(naive)),
         _ratio(duration(naive), duration(roll))),
        ("longest out of front door",
         f"{_s(roll_out)} (>= {_s(roll_out_low)})" if roll_out is not None else "-",
         "0 s (never drained)" if naive else "-", ""),
        ("longest host not answering", _s(longest_host(roll)), _s(longest_host(naive)),
         _ratio(longest_host(naive), longest_host(roll))),
        ("front door not answering", _s(front(roll)), _s(front(naive)),
         _ratio(front(naive), front(roll))),
        ("most hosts down at once", count(roll.at_once if roll and roll.hosts else None),
         count(naive.at_once if naive and naive.hosts else None), ""),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]

    def line(cells) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [f"rolling update vs naive redeploy ({shape}; load {THREADS} threads, num_predict "
           f"{NUM_PREDICT}, half streamed, through the front door; hosts polled from the "
           "front door host)"]
    if up_s is not None:
        out.append(f"lab up: {up_s:.1f} s")
    if first_deploy is not None:
        out.append(f"first deploy (pyinfra -y INVENTORY deploy.py --data ollama_image={A}, "
                   f"{'fresh hosts' if fresh else 'hosts as the lab had them'}): "
                   f"{first_deploy.seconds:.1f} s ({why(first_deploy)})")
    out += ["", *(line(r) for r in rows)]
    out += ["", "notes: the load is closed-loop (each thread sends its next request as soon as "
                "one ends, no pause), so a request the front door fails at once (502) is followed "
                "by the next within milliseconds: `requests sent/failed` count how fast failures "
                "come back, not how many clients a real fleet would fail (hence no ratio for "
                "them); `front door not answering` is the time-based figure. Not-answering times "
                f"have the poll's resolution ({POLL_INTERVAL_S} s: one failed poll reads "
                f"{POLL_INTERVAL_S} s)."]

    out += ["", "per host: out of the front door (roll: drain started -> undrain done; "
                "in brackets drain done -> undrain started) / host's nginx not answering "
                "(longest, total, periods):"]
    names = sorted({*(roll.hosts if roll else {}), *(naive.hosts if naive else {})})
    for name in names:
        cells = [f"  {name:<6}"]
        for m in (roll, naive):
            if m is None or name not in m.hosts:
                cells.append("-")
                continue
            o = m.hosts[name]
            drained = m.out_of_front.get(name)
            out_txt = (f"out {drained[1]:.1f} s [{drained[0]:.1f}]" if drained
                       else "never drained" if m is naive else "not drained")
            still = ", still down" if o.ongoing else ""
            cells.append(f"{m.label}: {out_txt}, not answering {o.longest:.1f} s "
                         f"(total {o.total:.1f} s, {o.count}x{still})")
        out.append("  |  ".join(cells))

    for m in (roll, naive):
        if m is None:
            continue
        out.append("")
        out.append(f"{m.label}: {m.command}")
        if m.run:
            out.append(f"  {why(m.run)}, {m.run.seconds:.1f} s; load ran {m.load_seconds:.1f} s "
                       f"({SETTLE_S:.0f} s before and after)")
        out.append(f"  versions before: {_versions(m.before)}")
        out.append(f"  versions after:  {_versions(m.after)}")
        if m.stats and m.stats.errors:
            distinct: dict[str, int] = {}
            for e in m.stats.errors:
                kind = _error_kind(e)
                distinct[kind] = distinct.get(kind, 0) + 1
            out.append(f"  failed requests (the first {len(m.stats.errors)} recorded, by kind):")
            out += [f"    {n}x {e}" for e, n in distinct.items()]
        if m.error:
            out.append(f"  FAILED: {m.error.splitlines()[0]}")
    return "\n".join(out)


def _error_kind(error: str) -> str:
    """`HTTP 502: b'<html>...<title>502 Bad Gateway</title>...nginx/1.26.3...'` -> short."""
    title = re.search(r"<title>([^<]*)</title>", error)
    server = re.search(r"(nginx/[0-9.]+)", error)
    if error.startswith("HTTP ") and title:
        origin = f" from {server[1]}" if server else ""
        return f"HTTP {title[1]} (html page{origin})"
    return " ".join(error.split())[:160]


def _tag(image: str) -> str:
    return image.rpartition(":")[2]


def _versions(got: dict[str, str | None]) -> str:
    return ", ".join(f"{k} {v or 'not answering'}" for k, v in got.items()) or "-"


# --- main -----------------------------------------------------------------------------------

def bench(logs: Path, keep: bool, phases_only: bool = False, attach: str | None = None,
          quick: bool = False) -> int:
    roll = naive = None
    split: Phases | None = None
    first_deploy: Run | None = None
    up_s: float | None = None
    failed = False
    lab, shape = attach or LAB, f"lab {attach or LAB}"
    try:
        lab, info, up = open_lab(attach, LAB, UP_ARGS, logs)
        up_s = up.seconds if up else None
        hosts = [h for h in info["hosts"] if h["role"] in ("gpu", "cpu")]
        lbs = [h for h in info["hosts"] if h["role"] not in ("gpu", "cpu")]
        # its own lab has the shape above; a lab given by --lab needs a host and a front door
        if not (hosts and lbs if attach else (len(hosts), len(lbs)) == (3, 1)):
            raise BenchError(f"expected {'GPU' if attach else '3 GPU'} hosts and a front door, "
                             f"lab has {info['hosts']}")
        inventory, front = info["inventory"], lbs[0]
        shape = (f"lab {lab}: {len(hosts)} GPU/CPU hosts, front door {front['name']}"
                 + (f" of {len(lbs)} lb hosts" if len(lbs) > 1 else ""))
        install_watch(front, logs)

        deploy = [str(PYINFRA), "-y", inventory, "deploy.py"]
        say(f"[{lab}] first deploy: pyinfra -y {inventory} deploy.py --data ollama_image={A}")
        first_deploy = run([*deploy, "--data", f"ollama_image={A}"], DEPLOY_TIMEOUT_S,
                           logs / "first-deploy.log")
        if not first_deploy.ok:
            raise BenchError(f"first deploy failed ({why(first_deploy)}):\n"
                             f"{tail(first_deploy.output)}")
        say(f"[{lab}] first deploy in {first_deploy.seconds:.1f} s")

        if phases_only:
            split = phases(lab, inventory, front["address"], logs)
            return 0
        roll_cmd = [sys.executable, "-m", "ollama_fleet", inventory, "roll", "-y",
                    "--data", f"ollama_image={B}"]
        roll = measured("roll", roll_cmd, ROLL_TIMEOUT_S, logs, hosts, front, timestamped=True)
        assert isinstance(roll.run, TimedRun)  # noqa: S101 (type narrowing)
        roll_end = roll.run.lines[-1][0] if roll.run.lines else time.monotonic()
        roll.out_of_front = out_of_front_door(roll.run.lines, max(roll_end, time.monotonic()))
        failed |= roll.error is not None

        naive = measured("naive", [*deploy, "--data", f"ollama_image={A}"], NAIVE_TIMEOUT_S,
                         logs, hosts, front, timestamped=False)
        failed |= naive.error is not None
        if quick:
            say(f"[{lab}] --quick: where a roll's time goes (rolls 3 and 4) not measured")
        else:
            split = phases(lab, inventory, front["address"], logs)
    except BenchError as exc:
        failed = True
        say(f"[{lab}] FAILED: {exc}")
    except KeyboardInterrupt:
        say("interrupted")
        failed = True
        raise
    finally:
        lab_teardown(lab, logs / "down.log", keep, owned=not attach)
        if not phases_only:
            say("\n" + report(roll, naive, first_deploy, up_s, shape, fresh=not attach))
        if split is not None:
            say("\n" + phases_report(split, shape))
        say(f"\nlogs: {logs}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/rolling.py",
                                     description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--keep", action="store_true",
                        help="leave the lab up afterwards (it is still removed and recreated "
                             "at the start of the next run)")
    parser.add_argument("--phases-only", action="store_true",
                        help="only where a roll's time goes (pull ahead, broken releases)")
    lab_options(parser, "the roll and the naive redeploy only (not where a roll's time goes)")
    parser.add_argument("--watch", metavar="SPEC", help=argparse.SUPPRESS)  # on the front door
    args = parser.parse_args(argv)
    if args.watch is not None:
        return watch_main(args.watch)
    if args.quick and args.phases_only:
        parser.error("--quick leaves out what --phases-only measures")
    logs = start(parser, "bench/rolling.py", "bench-rolling-")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # lab.loadgen
    try:
        return bench(logs, args.keep, args.phases_only, args.lab, args.quick)
    except KeyboardInterrupt:
        say("interrupted; the lab was removed (unless --keep or --lab)")
        return 130


if __name__ == "__main__":
    sys.exit(main())
