"""Proxy cost: what the GPU host's nginx and the front door add to a request's latency.

One lab (`bench-proxy`, registry port 5080): 1 GPU host with 1 GPU (gpu-1: one Ollama instance
on 127.0.0.1:11434 behind the host's nginx on port 80) and 2 lb hosts: lb-1 is the front door
(its nginx on port 80, upstream gpu-1's nginx); lb-2 is never deployed to, a bare Debian lab
host on the same network that stands in for a client machine. `pyinfra -y --limit gpu-1
--limit lb-1 INVENTORY deploy.py` installs the fleet, with the ports given explicitly
(`ollama_base_port`, `nginx_port`, `front_door_port`) so that the bench knows where they are
whatever the defaults become.

Hops, each measured from a lab host (never from this machine):

1. **direct**: the Ollama instance itself, `127.0.0.1:11434`, from gpu-1 (the instance
   listens on loopback only, so gpu-1 is the only place it can be reached from);
2. **nginx (loopback)**: gpu-1's nginx, `127.0.0.1:80`, also from gpu-1: the same place as
   direct, so `nginx (loopback) - direct` is nginx's own cost, no network in it;
3. **nginx**: gpu-1's nginx at its lab address, port 80, from lb-2;
4. **front door**: lb-1's nginx, port 80, from lb-2. Hops 3 and 4 are measured from the same
   place, so `front door - nginx` is the front door's cost *and* one more network hop (lb-2 ->
   lb-1 -> gpu-1 instead of lb-2 -> gpu-1), which is what a client pays for the front door;
   `nginx - direct` likewise is nginx plus one network hop (lb-2 -> gpu-1).

Requests, each at concurrency 1 and 16 (threads, one keep-alive connection each):

- **generate**: `POST /api/generate` `{"model": "tinyllama", "prompt": "hi", "stream": false,
  "options": {"num_predict": 1}}`: latency from sending the request to having read the
  whole answer (checked: HTTP 200, `"done": true`);
- **stream**: the same with `"stream": true`: time to the first byte of the first chunk of the
  body (the rest is read and checked, untimed, before the connection's next request);
- **version**: `GET /api/version`, a request with no model in it: what the proxies cost
  without the instance's model routing and scheduling (to tell proxy cost from routing cost);
- **stream 220 KB**: the stream request with a prompt of 220 KB (a long chat's context),
  at c=1 only: the front door reads a request's whole body to find the model it names
  (fleet.js), where the host's nginx streams it on; the table gives `front door / nginx` as
  a ratio too.

Per cell (hop x request x concurrency) 500 requests at c=1 and 2000 at c=16 (`--requests`)
are timed, after 5 untimed requests per connection that open the connections and load the
model; the table gives p50 and p99 (nearest rank) to 0.01 ms, the number of timed requests,
failures and requests per second, and the difference each hop adds (p50 and p99 of one hop
minus those of the previous one; a difference of percentiles, not a percentile of differences).

How it is measured: this file and bench/labrun.py (stdlib only) are copied to /root/bench-proxy/
on gpu-1 and lb-2 (`docker cp`) and run there by `docker exec ... python3 proxy.py --client
SPEC` (the hosts' Debian python3), one host at a time, each run a few cells; the clock
(`time.perf_counter`) runs inside that process, around each request, so the copy, the exec
and Python's start-up are not in any figure, nor are connection set-ups (a connection that
has to be reopened is reopened before the clock starts; such reopens are counted). At c=16
the 16 client threads share one Python process (the GIL): the client's own queueing is in
the figures, the same for every hop.

The stand-in Ollama (lab/ollama/ollama.py) is made as cheap as it goes: `ollama_environment`
sets OLLAMA_LAB_TOKEN_DELAY=0 (no sleep per token) and OLLAMA_LAB_LOAD_SECONDS=0,
tinyllama is kept loaded (`ollama_warm_models`), `num_predict` 1 makes one token, and
`ollama_num_parallel` 16 lets 16 requests in at once instead of queueing them at the model.
The absolute figures still include the stand-in's own time (a Python HTTP server, its JSON
and its log line per request); the differences between hops are the proxies' (and the
network's) cost.

The stand-in answers as Go's servers do, with TCP_NODELAY (header and body never wait for
the peer's delayed ACK), so no 40 ms stall hides the proxies' fraction of a millisecond.

Bounds: every request has a 10 s socket timeout, every cell at most 90 s (fewer requests are
then timed, and the table says how many), every client run `timeout -s KILL` on the host plus
a bound here; lab up and the deploy have labrun's and this file's timeouts.

Run it (needs Docker, like the lab tests; about 3 minutes here, mostly lab up and the deploy):

    .venv/bin/python bench/proxy.py                     # lab up, deploy, measure, lab down
    .venv/bin/python bench/proxy.py --requests 100 400  # fewer requests per cell (c=1, c=16)
    .venv/bin/python bench/proxy.py --keep              # leave the lab up to look at it
    .venv/bin/python bench/proxy.py --kinds stream-220k  # only the 220 KB prompt
    .venv/bin/python bench/proxy.py --lab NAME --quick   # on a lab already up, 20/40 requests

`--lab NAME` measures on a lab that is already up and has gpu-1 (1 GPU), lb-1 and lb-2 (it
may have more hosts; it is neither made nor removed here); the deploy is the same.

The lab is removed before it is started (so the hosts are fresh) and again at the end, also on
failure or Ctrl-C (unless `--keep`). The full output of every command is kept in a log
directory (printed at the start). All lab hosts share this machine's cores with each other
(and with whatever else runs here): the client, both nginx and the stand-in compete for the
same CPUs, so figures are noisy on a small, busy machine; compare hops within one run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from labrun import (
    PYINFRA,
    BenchError,
    copy_to_host,
    lab_options,
    open_lab,
    run,
    run_on_lab,
    say,
    start,
    tail,
    why,
)

LAB = "bench-proxy"
UP_ARGS = ("--gpu-hosts", "1", "--gpus-per-host", "1", "--cpu-hosts", "0", "--lb-hosts", "2",
           "--registry-port", "5080", "--model-scale", "0.1")
GPU, FRONT, CLIENT = "gpu-1", "lb-1", "lb-2"
MODEL = "tinyllama"  # inventory/group_data/all.py's ollama_models
OLLAMA_PORT, NGINX_PORT, FRONT_DOOR_PORT = 11434, 80, 80
STANDIN_ENV = {"OLLAMA_LAB_TOKEN_DELAY": "0", "OLLAMA_LAB_LOAD_SECONDS": "0"}
NUM_PARALLEL = 16

CONCURRENCY = (1, 16)
DEFAULT_REQUESTS = (500, 2000)  # per cell, at c=1 and c=16
QUICK_REQUESTS = (20, 40)  # --quick
MAX_REQUESTS = 100_000
WARMUP_PER_CONNECTION = 5
REQUEST_TIMEOUT_S = 10.0
CELL_MAX_S = 90.0
PREFLIGHT_REQUESTS = 20
DEPLOY_TIMEOUT_S = 1800
COPY_TIMEOUT_S = 60
REMOTE_DIR = "/root/bench-proxy"
RESULT = "PROXYBENCH "  # the client's result lines on stdout start with this

KINDS = {
    "generate": 'POST /api/generate, "stream": false: latency (ms), request sent -> whole '
                "answer read",
    "stream": 'POST /api/generate, "stream": true: first chunk (ms), request sent -> first '
              "byte of the body's first chunk",
    "version": "GET /api/version (no model): latency (ms), request sent -> whole answer read",
    "stream-220k": 'POST /api/generate, "stream": true, a 220 KB prompt: first chunk (ms), '
                   "request sent -> first byte of the body's first chunk",
}
KIND_CONCURRENCY = {"stream-220k": (1,)}  # the body, not concurrency, is what it measures
BIG_PROMPT_BYTES = 220 * 1024
STREAMED = ("stream", "stream-220k")


# --- the client: runs on a lab host (stdlib only) -------------------------------------------

def _generate_body(kind: str) -> bytes:
    """The body of a KIND request (none for version)."""
    if kind == "version":
        return b""
    # words, as a prompt has them (a JSON string the parsers must walk, no escapes)
    words = "the fleet answers by model " * (BIG_PROMPT_BYTES // 27 + 1)
    prompt = words[:BIG_PROMPT_BYTES] if kind == "stream-220k" else "hi"
    return json.dumps({"model": MODEL, "prompt": prompt, "stream": kind in STREAMED,
                       "options": {"num_predict": 1}}).encode()


def _one(conn: http.client.HTTPConnection, kind: str, body: bytes
         ) -> tuple[float, str | None, bool]:
    """One request of KIND on CONN: (ms to the figure, what was wrong or None, must reconnect)."""
    t0 = time.perf_counter()
    if kind == "version":
        conn.request("GET", "/api/version")
    else:
        conn.request("POST", "/api/generate", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    if kind in STREAMED:
        first = response.read1(65536)
        t1 = time.perf_counter()
        data = first + response.read()
    else:
        data = response.read()
        t1 = time.perf_counter()
    ms = (t1 - t0) * 1000
    if response.status != 200:
        return ms, f"HTTP {response.status}: {data[:200]!r}", True
    lines = [line for line in data.splitlines() if line.strip()]
    try:
        last = json.loads(lines[-1]) if lines else {}
    except ValueError:
        return ms, f"not JSON: {data[-200:]!r}", True
    ok = "version" in last if kind == "version" else last.get("done") is True
    if not ok or (kind in STREAMED and len(lines) < 2):
        return ms, f"unexpected answer: {data[-200:]!r}", True
    return ms, None, response.will_close


@dataclass
class _Cell:
    """One cell's shared state while its threads run."""

    spec: dict
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failed: int = 0
    reconnects: int = 0
    sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _worker(cell: _Cell, barrier: threading.Barrier, deadline: list[float]) -> None:
    spec = cell.spec
    body = _generate_body(spec["kind"])
    conn: http.client.HTTPConnection | None = None

    def connect() -> http.client.HTTPConnection:
        c = http.client.HTTPConnection(spec["address"], spec["port"], timeout=REQUEST_TIMEOUT_S)
        c.connect()
        return c

    def fail(error: str) -> None:
        with cell.lock:
            cell.failed += 1
            if len(cell.errors) < 10:
                cell.errors.append(error)

    try:  # untimed: open the connection, warm it (and the model) up
        conn = connect()
        for _ in range(WARMUP_PER_CONNECTION):
            _, error, close = _one(conn, spec["kind"], body)
            if error or close:
                conn.close()
                conn = connect()
    except (OSError, http.client.HTTPException, ValueError) as exc:
        fail(f"warm-up: {type(exc).__name__}: {exc}")
        if conn is not None:
            conn.close()
        conn = None
    try:
        barrier.wait(timeout=WARMUP_PER_CONNECTION * REQUEST_TIMEOUT_S + 30)
    except threading.BrokenBarrierError:
        pass
    while True:
        with cell.lock:
            if cell.sent >= spec["requests"] or time.monotonic() > deadline[0]:
                break
            cell.sent += 1
        try:
            if conn is None:  # before the clock starts
                conn = connect()
                with cell.lock:
                    cell.reconnects += 1
            ms, error, close = _one(conn, spec["kind"], body)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            error, close = f"{type(exc).__name__}: {exc}", True
        if error:
            fail(error)
        else:
            with cell.lock:
                cell.latencies.append(ms)
        if close and conn is not None:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()


def run_cell(spec: dict) -> dict:
    """SPEC (hop, kind, address, port, concurrency, requests): the cell's timed latencies."""
    cell = _Cell(spec)
    c = spec["concurrency"]
    barrier = threading.Barrier(c + 1)
    deadline = [time.monotonic() + CELL_MAX_S + WARMUP_PER_CONNECTION * REQUEST_TIMEOUT_S]
    threads = [threading.Thread(target=_worker, args=(cell, barrier, deadline), daemon=True)
               for _ in range(c)]
    for t in threads:
        t.start()
    try:
        barrier.wait(timeout=WARMUP_PER_CONNECTION * REQUEST_TIMEOUT_S + 30)
    except threading.BrokenBarrierError:
        pass
    deadline[0] = time.monotonic() + CELL_MAX_S  # the timed part's own bound
    started = time.perf_counter()
    for t in threads:
        t.join(timeout=max(0.0, deadline[0] - time.monotonic()) + REQUEST_TIMEOUT_S + 5)
    seconds = time.perf_counter() - started
    with cell.lock:
        return {**spec, "latencies": [round(x, 4) for x in cell.latencies],
                "failed": cell.failed, "errors": list(cell.errors),
                "reconnects": cell.reconnects, "seconds": round(seconds, 4),
                "stuck_threads": sum(t.is_alive() for t in threads)}


def client_main(spec_json: str) -> int:
    """`proxy.py --client SPEC` on a lab host: run SPEC's cells one after the other, print a
    RESULT line (JSON) for the host and one per cell."""
    spec = json.loads(spec_json)
    print(RESULT + json.dumps({"info": {"host": platform.node(),
                                        "python": platform.python_version(),
                                        "cpus": os.cpu_count()}}), flush=True)
    for cell in spec["cells"]:
        print(RESULT + json.dumps({"cell": run_cell(cell)}), flush=True)
    return 0


# --- running the client on a lab host -------------------------------------------------------

@dataclass
class Host:
    name: str
    address: str
    container: str
    info: dict = field(default_factory=dict)  # the client's python, cpus


def install_client(host: Host, logs: Path) -> None:
    """Copy this file and labrun.py (its only import) to HOST:REMOTE_DIR."""
    here = Path(__file__).resolve().parent
    copy_to_host(host.container, [here / "proxy.py", here / "labrun.py"], REMOTE_DIR, logs,
                 COPY_TIMEOUT_S)


def run_client(host: Host, cells: list[dict], label: str, logs: Path) -> list[dict]:
    """CELLS run by the client on HOST (bounded there and here); the cells' results."""
    bound = sum(CELL_MAX_S + (WARMUP_PER_CONNECTION + 2) * REQUEST_TIMEOUT_S + 10
                for _ in cells) + 30
    spec = json.dumps({"cells": cells})
    cmd = ["docker", "exec", host.container, "timeout", "-s", "KILL", str(int(bound)),
           "python3", f"{REMOTE_DIR}/proxy.py", "--client", spec]
    proc = run(cmd, bound + 30, logs / f"client-{label}.log")
    results = []
    for line in proc.output.splitlines():
        if not line.startswith(RESULT):
            continue
        got = json.loads(line[len(RESULT):])
        if "info" in got:
            host.info = got["info"]
        else:
            results.append(got["cell"])
    if not proc.ok or len(results) != len(cells):
        raise BenchError(f"client on {host.name} ({label}) failed ({why(proc)}), "
                         f"{len(results)} of {len(cells)} cells:\n{tail(proc.output, 20)}")
    return results


# --- the measurements -----------------------------------------------------------------------

@dataclass(frozen=True)
class Hop:
    key: str
    label: str
    host: str  # the lab host the client runs on
    address: str
    port: int

    def where(self) -> str:
        return f"{self.address}:{self.port}"


def hops(gpu: dict, front: dict) -> list[Hop]:
    return [Hop("direct", "direct (Ollama)", GPU, "127.0.0.1", OLLAMA_PORT),
            Hop("nginx-lo", "nginx (loopback)", GPU, "127.0.0.1", NGINX_PORT),
            Hop("nginx", "nginx", CLIENT, gpu["address"], NGINX_PORT),
            Hop("front", "front door", CLIENT, front["address"], FRONT_DOOR_PORT)]


def cell_spec(hop: Hop, kind: str, concurrency: int, requests: int) -> dict:
    return {"hop": hop.key, "kind": kind, "address": hop.address, "port": hop.port,
            "concurrency": concurrency, "requests": requests}


@dataclass
class Results:
    hops: list[Hop] = field(default_factory=list)
    hosts: dict[str, Host] = field(default_factory=dict)
    cells: dict[tuple[str, str, int], dict] = field(default_factory=dict)  # (hop, kind, c)
    kinds: tuple[str, ...] = tuple(KINDS)  # the request kinds measured (--kinds)
    deploy_data: tuple[str, ...] = ()  # more `--data KEY=VALUE` for the deploy (--data)
    lab: str = LAB
    attached: bool = False  # the lab was up before (--lab)
    up_s: float | None = None
    deploy_s: float | None = None
    measure_s: float | None = None


def preflight(result: Results, logs: Path) -> None:
    """A few requests of each kind at each hop: everything answers, the model is loaded."""
    for name in (GPU, CLIENT):
        cells = [cell_spec(hop, kind, 1, PREFLIGHT_REQUESTS)
                 for hop in result.hops if hop.host == name for kind in result.kinds]
        for got in run_client(result.hosts[name], cells, f"preflight-{name}", logs):
            if got["failed"] or len(got["latencies"]) != PREFLIGHT_REQUESTS:
                raise BenchError(f"pre-flight: {got['hop']} {got['kind']} from {name}: "
                                 f"{got['failed']} failed, e.g. {got['errors'][:3]}")


def measure(result: Results, requests: dict[int, int], logs: Path) -> None:
    """Every cell; one client run per (concurrency, request kind, host), hosts in turn, so the
    hops of one kind are measured close together in time."""
    started = time.monotonic()
    for c in CONCURRENCY:
        for kind in result.kinds:
            if c not in KIND_CONCURRENCY.get(kind, CONCURRENCY):
                continue
            for name in (GPU, CLIENT):
                cells = [cell_spec(hop, kind, c, requests[c])
                         for hop in result.hops if hop.host == name]
                label = f"{kind}-c{c}-{name}"
                say(f"[{result.lab}] {kind}, c={c}, from {name}: "
                    f"{', '.join(cell['hop'] for cell in cells)}")
                for got in run_client(result.hosts[name], cells, label, logs):
                    result.cells[(got["hop"], kind, c)] = got
                    say(f"  {got['hop']:<9} {_summary(got)}")
    result.measure_s = time.monotonic() - started


# --- report ---------------------------------------------------------------------------------

def percentile(values: list[float], p: float) -> float | None:
    """Nearest rank: the smallest value with at least P % of VALUES at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _summary(cell: dict) -> str:
    lat = cell["latencies"]
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    rate = f"{len(lat) / cell['seconds']:.0f}/s" if cell["seconds"] > 0 else "-"
    text = f"n {len(lat)}, p50 {_ms(p50)} ms, p99 {_ms(p99)} ms, {rate}"
    if cell["failed"]:
        text += f", {cell['failed']} FAILED"
    return text


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _diff(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a - b:+.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"x{a / b:.2f}"


def report(result: Results, requests: dict[int, int]) -> str:
    if not result.cells:
        return ""
    by_key = {h.key: h for h in result.hops}
    gpu_info = result.hosts[GPU].info if GPU in result.hosts else {}
    client_info = result.hosts[CLIENT].info if CLIENT in result.hosts else {}
    out = [f"proxy cost (lab {result.lab}: {GPU} with 1 GPU, 1 Ollama instance; front door "
           f"{FRONT}; client host {CLIENT}"
           f"{', as the lab has it' if result.attached else ', not deployed to'})",
           f"stand-in Ollama: {', '.join(f'{k}={v}' for k, v in STANDIN_ENV.items())}, "
           f"OLLAMA_NUM_PARALLEL={NUM_PARALLEL}, {MODEL} kept loaded, num_predict 1",
           f"clients: python {gpu_info.get('python', '?')} on {GPU}, "
           f"python {client_info.get('python', '?')} on {CLIENT} "
           f"({client_info.get('cpus', '?')} CPUs seen), one keep-alive connection per thread; "
           f"requests per cell: {requests[1]} at c=1, {requests[16]} at c=16 "
           f"(after {WARMUP_PER_CONNECTION} untimed per connection)",
           "hops, and where each is measured from:"]
    for hop in result.hops:
        out.append(f"  {hop.label:<17} {hop.where():<18} from {hop.host}")
    if result.up_s is not None:
        out.append(f"lab up {result.up_s:.0f} s, deploy {result.deploy_s or 0:.0f} s, "
                   f"measuring {result.measure_s or 0:.0f} s")

    headers = ["hop", "from"]
    for c in CONCURRENCY:
        headers += [f"c={c} n", "p50", "p99", "req/s", "failed"]
    diffs = (("nginx", "direct", "nginx - direct (1 network hop + nginx)"),
             ("nginx-lo", "direct", "nginx (loopback) - direct (nginx only)"),
             ("front", "nginx", "front door - nginx (1 network hop + front door)"))
    for kind, title in KINDS.items():
        if kind not in result.kinds:
            continue
        rows = [headers]
        for hop in result.hops:
            row = [f"{hop.label} {hop.where()}", hop.host]
            for c in CONCURRENCY:
                cell = result.cells.get((hop.key, kind, c))
                if cell is None:
                    row += ["-"] * 5
                    continue
                lat = cell["latencies"]
                rate = f"{len(lat) / cell['seconds']:.0f}" if cell["seconds"] > 0 else "-"
                row += [str(len(lat)), _ms(percentile(lat, 50)), _ms(percentile(lat, 99)),
                        rate, str(cell["failed"])]
            rows.append(row)
        for a, b, label in diffs:
            if a not in by_key or b not in by_key:
                continue
            row = [label, ""]
            for c in CONCURRENCY:
                ca, cb = result.cells.get((a, kind, c)), result.cells.get((b, kind, c))
                la, lb = (ca or {}).get("latencies", []), (cb or {}).get("latencies", [])
                row += ["", _diff(percentile(la, 50), percentile(lb, 50)),
                        _diff(percentile(la, 99), percentile(lb, 99)), "", ""]
            rows.append(row)
        row = ["front door / nginx (ratio)", ""]
        for c in CONCURRENCY:
            ca, cb = result.cells.get(("front", kind, c)), result.cells.get(("nginx", kind, c))
            la, lb = (ca or {}).get("latencies", []), (cb or {}).get("latencies", [])
            row += ["", _ratio(percentile(la, 50), percentile(lb, 50)),
                    _ratio(percentile(la, 99), percentile(lb, 99)), "", ""]
        rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(headers))]

        def line(cells: list[str], widths: list[int] = widths) -> str:
            left = "  ".join(cells[i].ljust(widths[i]) for i in range(2))
            right = "  ".join(cells[i].rjust(widths[i]) for i in range(2, len(cells)))
            return f"{left}  {right}".rstrip()

        out += ["", title, line(rows[0]), *(line(r) for r in rows[1:])]

    notes = []
    for (hop, kind, c), cell in sorted(result.cells.items()):
        n, wanted = len(cell["latencies"]), cell["requests"]
        if cell["failed"] or cell["stuck_threads"] or n < wanted:
            notes.append(f"  {hop} {kind} c={c}: {n} of {wanted} timed, {cell['failed']} "
                         f"failed, {cell['stuck_threads']} threads stuck; e.g. "
                         f"{cell['errors'][:2]}")
        if cell["reconnects"]:
            notes.append(f"  {hop} {kind} c={c}: {cell['reconnects']} connections reopened "
                         "(untimed)")
    if notes:
        out += ["", "notes:", *notes]
    out += ["", "absolute figures include the stand-in Ollama's own time (a Python server) and "
                "the client's (Python threads); the differences are the proxies' (and the "
                "network's) cost. Differences are of percentiles, not percentiles of "
                "differences; p99 differences are noisy."]
    return "\n".join(out)


# --- main -----------------------------------------------------------------------------------

def deploy(lab: str, inventory: str, logs: Path, data: tuple[str, ...] = ()) -> float:
    cmd = [str(PYINFRA), "-y", "--limit", GPU, "--limit", FRONT, inventory, "deploy.py",
           *(arg for item in data for arg in ("--data", item)),
           "--data", f"ollama_base_port={OLLAMA_PORT}",
           "--data", f"nginx_port={NGINX_PORT}",
           "--data", f"front_door_port={FRONT_DOOR_PORT}",
           "--data", f'ollama_warm_models=["{MODEL}"]',
           "--data", f"ollama_environment={json.dumps(STANDIN_ENV)}",
           "--data", f"ollama_num_parallel={NUM_PARALLEL}"]
    say(f"[{lab}] deploy: {' '.join([PYINFRA.name, *cmd[1:]])}")
    proc = run(cmd, DEPLOY_TIMEOUT_S, logs / "deploy.log")
    if not proc.ok or "No host matches" in proc.output:
        raise BenchError(f"deploy failed ({why(proc)}):\n{tail(proc.output)}")
    say(f"[{lab}] deploy in {proc.seconds:.1f} s")
    return proc.seconds


def bench(result: Results, requests: dict[int, int], logs: Path, attach: str | None) -> None:
    lab, info, up = open_lab(attach, LAB, UP_ARGS, logs)
    result.lab, result.attached, result.up_s = lab, bool(attach), up.seconds if up else None
    by_name = {h["name"]: h for h in info["hosts"]}
    # a lab given by --lab may have more hosts (its front door then shares the requests
    # among its GPU hosts), not fewer
    wanted, names = {GPU, FRONT, CLIENT}, set(by_name)
    if not (wanted <= names if attach else wanted == names) or len(by_name[GPU]["gpus"]) != 1:
        raise BenchError(f"expected {GPU} (1 GPU), {FRONT} and {CLIENT}; lab has "
                         f"{info['hosts']}")
    result.deploy_s = deploy(lab, info["inventory"], logs, result.deploy_data)
    result.hops = hops(by_name[GPU], by_name[FRONT])
    for name in (GPU, CLIENT):
        h = by_name[name]
        result.hosts[name] = Host(name, h["address"], h["container"])
        install_client(result.hosts[name], logs)
    say(f"[{lab}] pre-flight: {PREFLIGHT_REQUESTS} requests of each kind at each hop")
    preflight(result, logs)
    measure(result, requests, logs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/proxy.py",
                                     description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--requests", type=int, nargs=2, metavar=("C1", "C16"),
                        default=list(DEFAULT_REQUESTS),
                        help="timed requests per cell at concurrency 1 and 16 "
                             f"(default {DEFAULT_REQUESTS[0]} {DEFAULT_REQUESTS[1]})")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS),
                        help="the request kinds to measure (default: all)")
    parser.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                        help="more host data for the deploy (e.g. an image tag the lab "
                             "carries), as pyinfra's --data")
    parser.add_argument("--keep", action="store_true",
                        help="leave the lab up afterwards (it is still removed and recreated "
                             "at the start of the next run)")
    lab_options(parser, f"--requests {QUICK_REQUESTS[0]} {QUICK_REQUESTS[1]}")
    parser.add_argument("--client", metavar="SPEC", help=argparse.SUPPRESS)  # on a lab host
    args = parser.parse_args(argv)
    if args.client is not None:
        return client_main(args.client)
    if not all(1 <= n <= MAX_REQUESTS for n in args.requests):
        parser.error(f"--requests: 1 to {MAX_REQUESTS} each")
    requests = dict(zip(CONCURRENCY, QUICK_REQUESTS if args.quick else args.requests,
                        strict=True))
    logs = start(parser, "bench/proxy.py", "bench-proxy-")
    result = Results(kinds=tuple(k for k in KINDS if k in args.kinds),
                     deploy_data=tuple(args.data))
    return run_on_lab(args.lab or LAB, logs, args.keep,
                      lambda: bench(result, requests, logs, args.lab),
                      lambda: report(result, requests), owned=not args.lab)


if __name__ == "__main__":
    sys.exit(main())
