"""What the benchmark scripts share: running commands bounded, and a lab's life cycle.

bench/converge.py and bench/rolling.py import this as `labrun` (Python puts the script's own
folder, bench/, first on sys.path). Everything here that touches a lab takes the lab's name.

- `run`: a command from the repository root in its own session, stdout and stderr together,
  bounded by a timeout; a timeout or Ctrl-C stops it and everything it started (and nothing
  else). `Child` is the same start/wait/stop for a caller that reads the output itself.
- `lab_fresh_up` / `lab_status` / `lab_teardown`: `python -m lab --name LAB down` then `up`,
  `status --json`, and the final `down` (shielded from Ctrl-C, skipped with `--keep`).
- `lab_options` / `open_lab`: every bench's `--lab NAME` (measure on a lab that is already
  up, e.g. the one tests/lab/test_benches.py shares: neither made nor removed here) and
  `--quick` (the bench's smallest run, which still prints every figure).
- `copy_to_host`: files copied into a lab host, for a bench part that must run there (a lab
  host's Debian python3 runs this file: stdlib only).
- `start`: what both `main`s do first (pyinfra check, SIGTERM as Ctrl-C, a log directory).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYINFRA = Path(sys.executable).parent / "pyinfra"

LAB_UP_TIMEOUT_S = 1800
LAB_DOWN_TIMEOUT_S = 600
STATUS_TIMEOUT_S = 120


class BenchError(Exception):
    pass


def say(message: str) -> None:
    print(message, flush=True)


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# --- running things -------------------------------------------------------------------------

@dataclass
class Run:
    cmd: list[str]
    rc: int | None  # None: killed at its timeout
    seconds: float
    output: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


def why(proc: Run) -> str:
    return "timed out" if proc.rc is None else f"rc {proc.rc}"


def _stop(proc: subprocess.Popen) -> None:
    """Interrupt PROC's process group (it was started as its own session), then kill it.

    SIGINT first, so that `lab up` or pyinfra can stop cleanly; after that whatever is left
    of the group (e.g. a child that ignores SIGINT) is killed.
    """
    for sig, grace in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass


class Child:
    """CMD started from the repository root as its own session (POPEN: where its output goes;
    its stdin is /dev/null unless POPEN says otherwise).

    wait() bounds it by a timeout; if it is still running when wait() ends (timeout, Ctrl-C)
    its whole process group is stopped. `status`, `rc` and `seconds` say how it ended.
    """

    def __init__(self, cmd: list[str], **popen) -> None:
        self.cmd = cmd
        self.started = time.monotonic()
        self.status = "interrupted"
        self.rc: int | None = None
        self.seconds = 0.0
        popen = {"stdin": subprocess.DEVNULL, **popen}
        self.proc = subprocess.Popen(cmd, cwd=REPO, text=True, start_new_session=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"}, **popen)

    def wait(self, timeout: float) -> None:
        try:
            self.rc = self.proc.wait(timeout=timeout)
            self.status = f"rc {self.rc}"
        except subprocess.TimeoutExpired:
            self.status = f"timed out after {timeout} s"
        finally:
            if self.proc.returncode is None:
                _stop(self.proc)
            self.seconds = time.monotonic() - self.started

    def log_header(self) -> str:
        return f"$ {' '.join(self.cmd)}\n# {self.status}, {self.seconds:.1f} s\n\n"


def run(cmd: list[str], timeout: float, log: Path | None = None) -> Run:
    """Run CMD from the repository root, stdout and stderr together, bounded by TIMEOUT.

    The command gets its own session so that a timeout or Ctrl-C here stops it and
    everything it started, and nothing else. LOG, if given, gets the command, how it ended
    and its output (also when interrupted).
    """
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as sink:
        child = Child(cmd, stdout=sink, stderr=subprocess.STDOUT)
        try:
            child.wait(timeout)
        finally:
            sink.seek(0)
            output = sink.read()
            if log is not None:
                log.write_text(child.log_header() + output)
    return Run(cmd, child.rc, child.seconds, output)


# --- a lab ----------------------------------------------------------------------------------

def lab_cmd(lab: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "lab", "--name", lab, *args]


def lab_down(lab: str, log: Path) -> Run:
    """`lab down`, shielded from Ctrl-C: an interrupted down would leave containers behind."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return run(lab_cmd(lab, "down"), LAB_DOWN_TIMEOUT_S, log)
    finally:
        signal.signal(signal.SIGINT, previous)


def lab_fresh_up(lab: str, up_args: tuple[str, ...], logs: Path, prefix: str = "") -> Run:
    """Remove any earlier lab LAB (so its hosts are fresh), then `lab up UP_ARGS`.

    Logs go to LOGS/PREFIXdown-before.log and LOGS/PREFIXup.log. Raises BenchError if
    either fails; returns the `up` run.
    """
    say(f"[{lab}] removing any earlier lab of this name (so the hosts are fresh)")
    down = lab_down(lab, logs / f"{prefix}down-before.log")
    if not down.ok:
        raise BenchError(f"lab down failed ({why(down)}):\n{tail(down.output)}")

    say(f"[{lab}] lab up {' '.join(up_args)}")
    up = run(lab_cmd(lab, "up", *up_args), LAB_UP_TIMEOUT_S, logs / f"{prefix}up.log")
    if not up.ok:
        raise BenchError(f"lab up failed ({why(up)}):\n{tail(up.output)}")
    say(f"[{lab}] lab up in {up.seconds:.1f} s")
    return up


def lab_status(lab: str) -> dict:
    """`lab status --json` of a lab that must be up."""
    try:
        proc = subprocess.run(lab_cmd(lab, "status", "--json"), cwd=REPO, capture_output=True,
                              text=True, timeout=STATUS_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BenchError(f"lab status timed out after {STATUS_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise BenchError(f"lab status failed (rc {proc.returncode}):\n{tail(proc.stderr)}")
    info = json.loads(proc.stdout)
    if not info.get("up"):
        raise BenchError(f"lab {lab} is not up after `lab up`")
    return info


def require_running(hosts: list[dict]) -> None:
    """HOSTS (entries of `lab status --json`'s hosts) must all be running."""
    not_running = [h["name"] for h in hosts if h["state"] != "running"]
    if not_running:
        raise BenchError(f"lab hosts not running: {not_running}")


def lab_options(parser: argparse.ArgumentParser, quick: str) -> None:
    """`--lab NAME` and `--quick` (QUICK: what the bench's quick run leaves out or shrinks)."""
    parser.add_argument("--lab", metavar="NAME",
                        help="measure on this lab, already up (e.g. the one the bench tests "
                             "share): it is neither made nor removed here, and its hosts are "
                             "measured as they are (not fresh)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a brief run that still prints every figure: {quick}")


def open_lab(attach: str | None, lab: str, up_args: tuple[str, ...], logs: Path,
             prefix: str = "") -> tuple[str, dict, Run | None]:
    """The lab to measure on, its `status --json` and the `up` run: ATTACH (`--lab`), which
    must be up with every host running, else LAB made fresh by `lab_fresh_up` (no `up`
    run for an attached lab)."""
    up = None if attach else lab_fresh_up(lab, up_args, logs, prefix)
    name = attach or lab
    info = lab_status(name)
    require_running(info["hosts"])
    return name, info, up


def copy_to_host(container: str, files: list[Path], remote_dir: str, logs: Path,
                 timeout: float = 60) -> None:
    """FILES copied into the lab host CONTAINER's REMOTE_DIR (made if missing)."""
    steps = [["docker", "exec", container, "mkdir", "-p", remote_dir],
             *(["docker", "cp", str(f), f"{container}:{remote_dir}/{f.name}"] for f in files)]
    for i, cmd in enumerate(steps):
        proc = run(cmd, timeout, logs / f"copy-{container}-{i}.log")
        if not proc.ok:
            raise BenchError(f"`{' '.join(cmd)}` failed ({why(proc)}):\n{tail(proc.output)}")


def lab_teardown(lab: str, log: Path, keep: bool, owned: bool = True) -> None:
    """The final `lab down` (never raises: a failure is a warning), or with KEEP a hint;
    a lab not OWNED (`--lab`: up before the bench) is left as it is."""
    if not owned:
        say(f"[{lab}] --lab: the lab was up before; left up")
        return
    if keep:
        say(f"[{lab}] --keep: lab left up; remove it with "
            f"`{Path(sys.executable).name} -m lab --name {lab} down`")
        return
    say(f"[{lab}] lab down")
    down = lab_down(lab, log)
    if not down.ok:
        say(f"[{lab}] WARNING: lab down failed ({why(down)}); run "
            f"`python -m lab --name {lab} down`:\n{tail(down.output)}")


# --- main -----------------------------------------------------------------------------------

def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def start(parser: argparse.ArgumentParser, script: str, log_prefix: str) -> Path:
    """A benchmark's start: pyinfra must be there (else PARSER's usage error naming SCRIPT),
    SIGTERM ends up in the same `finally`s as Ctrl-C, and a new log directory (printed)."""
    if not PYINFRA.exists():
        parser.error(f"{PYINFRA} not found: run this with the project's virtualenv python "
                     f"(.venv/bin/python {script})")
    signal.signal(signal.SIGTERM, _terminate)  # `kill` ends up in the same finally as Ctrl-C
    logs = Path(tempfile.mkdtemp(prefix=log_prefix))
    say(f"logs: {logs}")
    return logs


def run_on_lab(lab: str, logs: Path, keep: bool, body: Callable[[], None],
               summary: Callable[[], str], owned: bool = True) -> int:
    """A benchmark's main part: BODY, then the lab's teardown (unless not OWNED) and
    SUMMARY (what was measured, even when BODY failed part way), whatever happened; the
    exit status."""
    try:
        body()
    except BenchError as exc:
        say(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        lab_teardown(lab, logs / "down.log", keep, owned)
        text = summary()
        if text:
            say("\n" + text)
        say(f"\nlogs: {logs}")
    return 0
