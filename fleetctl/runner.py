"""The one way an operator command runs pyinfra: a child `pyinfra` process, streamed.

Every command that changes hosts runs a deploy file (deploy.py, or one of tasks/deploys/)
with pyinfra's CLI, `--limit`ed to the hosts of this step, from the operator's folder
with the package's config.py (so ./group_data and the operator's ./config.py apply as in
`pyinfra INV deploy.py`). pyinfra
monkey-patches the standard library with gevent, so it stays in its own process.
Its output is shown as it happens, each line indented under the step that ran it,
and kept so that a failure can be named in one line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ollama_fleet.fleetctl.inventory import PYINFRA, data_args
from ollama_fleet.tasks.kit.fleet import Fleet
from ollama_fleet.tasks.kit.paths import CONFIG, PACKAGE
from ollama_fleet.tasks.kit.report import ERROR_MARK

DEFAULT_TIMEOUT_S = 3600


@dataclass
class Manners:
    """pyinfra's own options that every child run of this command gets: `-v`/`-vv` (what
    pyinfra prints), `--diff` (file diffs; secrets go through compose.secret_file, which
    never shows them)."""

    verbosity: int = 0
    diff: bool = False


MANNERS = Manners()


def pyinfra_options() -> list[str]:
    """The package's config.py (pyinfra reads the inventory and its group_data from the
    operator's folder, as `pyinfra` itself does), then the command's manners."""
    return ["--config", str(CONFIG), *(["-" + "v" * MANNERS.verbosity] if MANNERS.verbosity
                                       else []), *(["--diff"] if MANNERS.diff else [])]

Log = Callable[[str], None]


def log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Result:
    """How a pyinfra run ended: its exit status and everything it printed."""

    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def failure(self, host: str) -> str:
        if self.returncode < 0:  # killed by the watchdog: that is the news, not its last line
            return self.output.rstrip().splitlines()[-1]
        return failure_line(self.output, self.returncode, host)

    def failed_hosts(self) -> list[str]:
        """The hosts our report (tasks.kit.report) says failed, in the order they failed."""
        return [m.group(1) for m in FAILED_AT.finditer(self.output)]

    @property
    def changed_nothing(self) -> bool:
        """Whether pyinfra's results say no operation changed anything."""
        total = next((line.split() for line in self.output.splitlines()
                      if "Grand total" in line), [])
        return len(total) >= 4 and total[3] == "-"


FAILED_AT = re.compile(r"^--> (\S+): failed at step ", re.M)
# what pyinfra says of a host that is not why it failed
PYINFRA_NOISE = re.compile(r"^(Connected|Success|No changes|Ready: .*|"
                           r"Error( \(ignored[^)]*\))?: executed \d+ commands)$")


def failure_line(output: str, returncode: int, host_name: str) -> str:
    """The one line that says why a pyinfra run failed: the host's ERROR_MARK line, else
    the last thing the host said that is not pyinfra's bookkeeping (a failed command's
    error output: our scripts say why in one line), else our report's "failed at step"
    line, else pyinfra's own last error."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    marked = [line.split(ERROR_MARK, 1)[1].strip() for line in lines
              if ERROR_MARK in line and "echo" not in line.split(ERROR_MARK, 1)[0]]
    if marked:
        return marked[-1]
    prefix = f"[{host_name}] "
    about = [line.removeprefix(prefix) for line in lines if line.startswith(prefix)
             and not PYINFRA_NOISE.match(line.removeprefix(prefix))]
    if about:
        return about[-1]
    stopped = [line for line in lines if "failed at step" in line]
    if stopped:
        return stopped[-1]
    errors = [line for line in lines if "rror" in line]
    return errors[-1] if errors else f"pyinfra exited {returncode}"


def run_pyinfra(fleet: Fleet, deploy: str, limit: Sequence[str], data: dict[str, Any],
                log: Log = log_stderr, dry: bool = False, job: dict[str, Any] | None = None,
                job_env: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> Result:
    """`pyinfra -y INVENTORY DEPLOY --limit ... --data ...`, its output streamed to LOG
    line by line, indented. DEPLOY is relative to the package (deploy.py,
    tasks/deploys/pull.py). JOB, if given, is
    written to a temporary JSON file whose path the child finds in JOB_ENV."""
    # --dry without -y: pyinfra then prints the changes it detected (with -y it skips them)
    # and exits before it would ask
    cmd = [*PYINFRA, *(["--dry"] if dry else ["-y"]), *pyinfra_options(), fleet.path,
           str(PACKAGE / deploy), *data_args(data)]
    for name in limit:
        cmd += ["--limit", name]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYINFRA_PROGRESS": "off"}
    env.pop("PYINFRA_YES", None)  # -y or --dry is on the command line: --dry must show its plan
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="fleet-job-") as f:
        if job is not None and job_env:
            json.dump(job, f)
            f.flush()
            env[job_env] = f.name
        return _stream(cmd, env, log, timeout)


def _stream(cmd: list[str], env: dict[str, str], log: Log, timeout: float) -> Result:
    lines: list[str] = []
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    watchdog = threading.Timer(timeout, proc.kill)  # a child that hangs silently ends too
    watchdog.start()
    try:
        assert proc.stdout is not None  # noqa: S101 (stdout=PIPE: never None)
        for line in proc.stdout:
            lines.append(line)
            if line.strip():
                log(f"    {line.rstrip()}")
        returncode = proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if returncode < 0:
        lines.append(f"pyinfra did not finish within {timeout:g}s (killed; what it was "
                     "doing on the hosts may still run there until its own bound)\n")
    return Result(returncode, "".join(lines))


def read_fact(fleet: Fleet, hosts: Sequence[str], fact: str, args: Sequence[str],
              data: dict[str, Any], timeout: float = 120) -> dict[str, Any] | None:
    """`pyinfra INVENTORY --limit HOSTS fact FACT ARGS --json`: host -> the fact's value, or
    None when it could not be read (unreachable, pyinfra failed)."""
    cmd = [*PYINFRA, "--config", str(CONFIG), fleet.path,
           *(a for h in hosts for a in ("--limit", h)), "fact", fact,
           *args, "--json", *data_args(data)]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
        # {"<fact> (<args>)": {"<host>": <value>}}
        by_host = next(iter(json.loads(proc.stdout).values()))
    except (subprocess.SubprocessError, ValueError, StopIteration):
        return None
    return by_host if isinstance(by_host, dict) else None


def held_causes(fleet: Fleet, data: dict[str, Any]) -> dict[str, str] | None:
    """The hosts the front doors hold out for ollama-fleet (tasks.steps.front_door.HELD_OUT)
    and why (drain: an operator's `drain`; roll: a roll's batch), all front doors together,
    in inventory order (a drain at any of them makes it a drain); None when a front door
    cannot be read."""
    from ollama_fleet.tasks.steps.front_door import HELD_OUT, Held

    why: dict[str, str] = {}
    for lb in fleet.lb_servers:
        got = read_fact(fleet, [lb.name], "ollama_fleet.tasks.kit.facts.Lines",
                        [f"path={lb.settings.front_door_dir}/{HELD_OUT}"], data)
        if got is None or not isinstance(got.get(lb.name), list):
            return None
        for held in map(Held.parse, got[lb.name]):
            why[held.host] = "drain" if "drain" in (held.cause, why.get(held.host)) \
                else held.cause
    return {h.name: why[h.name] for h in fleet.gpu_servers if h.name in why}


def held_out(fleet: Fleet, data: dict[str, Any]) -> list[str] | None:
    """The hosts the front doors hold out for ollama-fleet (held_causes), in inventory
    order; None when a front door cannot be read."""
    causes = held_causes(fleet, data)
    return None if causes is None else list(causes)
