"""Every bench in bench/ runs, briefly, and prints its figures: a default that changes under
a bench (as the GPU hosts' nginx admitting only their front doors did under
bench/rolling.py) fails here instead of the next time someone measures.

One lab for all of them (2 GPU hosts with 1 GPU, 2 lb hosts: lb-1 the front door, lb-2
the client that bench/proxy.py needs), each bench run as an operator runs it,
`.venv/bin/python bench/NAME.py --lab LAB --quick`, in file order: bench/converge.py
first (its first deploy is the deploy on fresh hosts the others build on), then the rest,
each leaving the lab serving. Each must exit 0 and print its figures (checked by the
lines below, numbers in them). No bench makes a lab of its own here.

Without a lab (the unit run): every bench/*.py has its row in BENCHES (or is a library
the benches import), and every bench starts (`--help`).

The lab's name and registry port can be moved (BENCH_TEST_LAB, BENCH_TEST_REGISTRY_PORT)
where another lab of that name or port is in use on the machine.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import running_lab
from tests.labfleet import REPO

BENCH = REPO / "bench"
NAME = os.environ.get("BENCH_TEST_LAB", "fleetlab-bench")
REGISTRY_PORT = os.environ.get("BENCH_TEST_REGISTRY_PORT", "5067")
UP_ARGS = ("--gpu-hosts", "2", "--gpus-per-host", "1", "--lb-hosts", "2",
           "--registry-port", REGISTRY_PORT, "--model-scale", "0.1")
RUN_TIMEOUT_S = 600
NUM = r"\d+(?:\.\d+)?"

# bench -> the lines (regular expressions, multiline) its quick run must print: its figures.
# In file order: converge makes the first deploy; rolling leaves the fleet at 0.6.8, last.
BENCHES: dict[str, tuple[str, ...]] = {
    # one size, the lab as it is: fresh converge, floor, no-op of its 4 hosts
    "converge": (rf"^4\s+-\s+{NUM} s\s+{NUM} s\s+{NUM} s\s+{NUM}x",
                 r"^\s+fresh converge: \d+ ops, \d+ changed, 0 errors$"),
    # every hop, every kind: 20 requests at c=1 timed, none failed
    "proxy": tuple(rf"^{hop} \S+\s+{where}\s+20\s+{NUM}\s+{NUM}\s+\d+\s+0\s"
                   for hop, where in (("direct \\(Ollama\\)", "gpu-1"),
                                      ("nginx \\(loopback\\)", "gpu-1"),
                                      ("nginx", "lb-2"), ("front door", "lb-2"))),
    # both modes at 2 hosts: upstream and time each
    "models": (rf"^\| 2 \| {NUM} MiB \| {NUM} s \| {NUM} MiB \| {NUM} s \| {NUM}x \| "
               rf"{NUM}x \|$",),
    # the watched connection names the lost host (in about 60 s), not "not within"
    "lost_host": (rf"^watched\s+{NUM} s\s+{NUM} s\s+\d+$",),
    # both reboots to serving on the GPUs, and their ratio
    "reboot": (rf"^serving on GPUs\s+{NUM}\s+{NUM}$",
               rf"^serving on GPUs, ratio\s+1\.00\s+{NUM}$"),
    # roll and naive side by side, every host polled (from the front door host) before and
    # after each: no "not answering" among the versions
    "rolling": (r"^requests sent\s+\d+\s+\d+",
                rf"^total duration \(command\)\s+{NUM} s\s+{NUM} s",
                rf"^longest host not answering\s+{NUM} s\s+{NUM} s",
                r"^  versions before: gpu-1 0\.6\.8, gpu-2 0\.6\.8, front door 0\.6\.8$",
                r"^  versions after:  gpu-1 0\.7\.0, gpu-2 0\.7\.0, front door 0\.7\.0$",
                r"^  versions after:  gpu-1 0\.6\.8, gpu-2 0\.6\.8, front door 0\.6\.8$"),
    # a hung and a crashed instance (each host's only one here): out, healed and back, with
    # no plain request failed and none hung (its deploy puts the default image back)
    "health": (r"^requests through http://llm\.\S+: \d+ sent, \d+ failed",
               rf"^hang\s+gpu-1 GPU 0\s+{NUM}\s+0\s+\d+\s+0\s+{NUM}$",
               rf"^crash\s+gpu-2 GPU 0\s+{NUM}\s+0\s+\d+\s+0\s+{NUM}$"),
}
LIBRARIES = {"labrun"}  # imported by the benches: every run above exercises it


@pytest.fixture(scope="module")
def bench_lab():
    with running_lab(NAME, *UP_ARGS) as lab:
        yield lab


@pytest.mark.lab
@pytest.mark.parametrize("bench", list(BENCHES))
def test_bench_runs_briefly_and_prints_its_figures(bench_lab, bench):
    figures = BENCHES[bench]
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(BENCH / f"{bench}.py"), "--lab", bench_lab.name,
                           "--quick"], cwd=REPO, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL)
    output = proc.stdout + proc.stderr
    print(f"bench/{bench}.py --quick: rc {proc.returncode} in "
          f"{time.monotonic() - started:.0f} s\n{output[-3000:]}")
    assert proc.returncode == 0, output[-6000:]
    missing = [line for line in figures if not re.search(line, proc.stdout, re.M)]
    assert not missing, f"figures not printed: {missing}\n{proc.stdout[-6000:]}"


def test_every_bench_has_its_quick_run_here():
    scripts = {path.stem for path in BENCH.glob("*.py")}
    assert scripts - LIBRARIES - set(BENCHES) == set(), "a bench without its row in BENCHES"
    assert set(BENCHES) <= scripts


@pytest.mark.parametrize("bench", sorted({p.stem for p in BENCH.glob("*.py")} - LIBRARIES))
def test_every_bench_starts(bench):
    proc = subprocess.run([sys.executable, str(BENCH / f"{bench}.py"), "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--quick" in proc.stdout and "--lab" in proc.stdout, proc.stdout


def test_labrun_stops_a_command_at_its_timeout(monkeypatch):
    spec = importlib.util.spec_from_file_location("labrun", BENCH / "labrun.py")
    labrun = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "labrun", labrun)  # as the benches import it
    spec.loader.exec_module(labrun)
    done = labrun.run(["sh", "-c", "sleep 60 & sleep 60; echo never"], timeout=1)
    assert (done.rc, done.ok, labrun.why(done)) == (None, False, "timed out")
    assert done.seconds < 30 and "never" not in done.output
    assert labrun.run(["sh", "-c", "echo out; echo err >&2"], timeout=30).output.split() == [
        "out", "err"]
