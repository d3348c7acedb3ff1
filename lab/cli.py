"""`python -m lab`: start, inspect, break and remove the lab fleet."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import urlsplit

from lab import dns
from lab.engine import LabError
from lab.fleet import FAULTS, HOST_FAULTS, Lab, Spec, state_root
from lab.tls import issue


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad input as one line and exit 2, without the usage dump.

    Abbreviated flags are refused: `--gpus 3` must not quietly mean `--gpus-per-host 3`.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _tags(text: str) -> list[str]:
    tags = [t.strip() for t in text.split(",") if t.strip()]
    if not tags:
        raise argparse.ArgumentTypeError("needs at least one tag")
    return tags


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m lab", description=__doc__)
    parser.add_argument("--name", default="fleetlab",
                        help="lab name; several labs can run side by side (default fleetlab)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    up = sub.add_parser("up", help="start the fleet (idempotent) and write its inventory")
    up.add_argument("--gpu-hosts", type=_nonneg_int, default=2)
    up.add_argument("--gpus-per-host", type=_nonneg_int, default=2)
    up.add_argument("--cpu-hosts", type=_nonneg_int, default=0)
    up.add_argument("--lb-hosts", type=_nonneg_int, default=0)
    up.add_argument("--gpu-model", default="H100", metavar="MODEL[,MODEL...]",
                    help="the GPU hosts' board: H100, A100, B100, B200, B300 (HGX) or L40S "
                         "(PCIe); one per GPU host in order, the last one repeating")
    up.add_argument("--gpu-suites", default="trixie", metavar="SUITE[,SUITE...]",
                    help="the GPU hosts' Debian release: trixie (13) or bookworm (12), as "
                         "--gpu-model")
    up.add_argument("--registry-port", type=_nonneg_int, default=5000,
                    help="loopback port the lab image registry is published on for pushes")
    up.add_argument("--model-scale", type=float, default=1.0,
                    help="multiply the lab model registry's model sizes (e.g. 0.05 for tests)")
    up.add_argument("--health-interval", type=int, default=5,
                    help="health_interval the lab's inventory sets (seconds between the "
                         "health agent's checks; 1, production's default, where health is "
                         "tested: 5 spares this machine's CPUs)")
    up.add_argument("--ollama-tags", type=_tags, default=None,
                    help="stand-in ollama/ollama tags to publish, comma-separated")
    up.add_argument("--nginx-tags", type=_tags, default=None)
    up.add_argument("--redis-tags", type=_tags, default=None,
                    help="stand-in redis tags to publish (Debian's redis-server), comma-separated")
    up.add_argument("--app-tags", type=_tags, default=None,
                    help="stand-in application fleetlab/chat-app tags to publish, comma-separated")
    up.add_argument("--inventory-names", action="store_true",
                    help="the inventory names hosts by lab DNS (gpu-1.<lab>.test) instead of "
                         "addresses; run pyinfra with it as `python -m lab run -- pyinfra ...`")

    sub.add_parser("down", help="remove every container, network and volume of the lab")
    status = sub.add_parser("status", help="hosts and endpoints")
    status.add_argument("--json", action="store_true")

    for name, text in (("cut", "take a host off the network"),
                       ("restore", "reconnect a host and power it on if it is off"),
                       ("stop", "shut a host down cleanly"),
                       ("kill", "power a host off without warning"),
                       ("reboot", "reboot a host as `systemctl reboot` does (its /run, /dev "
                                  "and faults are new) and wait for its sshd")):
        p = sub.add_parser(name, help=text)
        p.add_argument("host")

    fault = sub.add_parser("fault", help="break a host as a GPU, driver or Ollama fault "
                                         "would: " + "; ".join(
                                             f"{k}: {v}" for k, v in HOST_FAULTS.items()))
    fault.add_argument("host")
    fault.add_argument("kind", choices=list(HOST_FAULTS))
    fault.add_argument("--gpu", type=_nonneg_int, default=None,
                       help="the GPU (host index; default 0) or the instance that has it")
    fault.add_argument("--container", default=None,
                       help="the instance by its container name (nvml-lost, cpu, hang, crash)")

    fabric = sub.add_parser("fabric-delay",
                            help="seconds Fabric Manager on GPU HOST takes to bring the NVLink "
                                 "fabric up, from its next start (default 0)")
    fabric.add_argument("host")
    fabric.add_argument("seconds", type=float)

    cert = sub.add_parser("cert", help="a certificate for HOST from the lab's CA (JSON paths)")
    cert.add_argument("host")

    ask = sub.add_parser("ask", help="a streamed /api/generate through the front door, "
                                     "by its lab DNS name")
    ask.add_argument("prompt")
    ask.add_argument("--host", help="lab host to ask (default: the front door, else the "
                                    "first GPU host)")
    ask.add_argument("--model", default="tinyllama")
    ask.add_argument("--port", type=_nonneg_int, default=80, help="the host's nginx port")
    # set by `ask` itself when it runs again under the lab's resolver (`run`)
    ask.add_argument("--url", help=argparse.SUPPRESS)

    run = sub.add_parser("run", help="run a command that resolves lab names (gpu-1.<lab>.test) "
                                     "through the lab DNS; this machine's own files untouched")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")

    cloud = sub.add_parser("cloud-requests",
                           help="what the lab's cloud stand-in (ollama.com) has received, "
                                "as JSON: did a prompt leave the fleet?")
    cloud.add_argument("--clear", action="store_true", help="then forget them")

    image = sub.add_parser("ollama-image",
                           help="build and publish a stand-in ollama/ollama:TAG (e.g. a bad one)")
    image.add_argument("tag")
    image.add_argument("--fault", choices=sorted(FAULTS),
                       help="a broken release: " + "; ".join(
                           f"{name}: {what}" for name, what in sorted(FAULTS.items())))
    image.add_argument("--pad-mb", type=_nonneg_int, default=0,
                       help="add a layer of that many MiB (a real image's size: its "
                            "download takes time)")
    return parser


def _print_status(info: dict) -> None:
    if not info["up"]:
        print(f"lab {info['name']}: not up")
        return
    print(f"lab {info['name']}  network {info['subnet']}  inventory {info['inventory']}")
    for h in info["hosts"]:
        gpus = ", ".join(f"{g['index']}:{g['name']}" for g in h["gpus"]) or "-"
        print(f"  {h['name']:<8} {h['role']:<4} {h['address']:<15} {h['state']:<8} {gpus}")
    ep = info["endpoints"]
    print(f"  dns server      {ep['dns_server']}  zone {ep['dns_zone']}"
          + (f"  front door {ep['front_door_name']}" if ep["front_door_name"] else "")
          + "  (python -m lab run -- CMD resolves it)")
    print(f"  image registry  {ep['image_registry']['mirror']}")
    print(f"  model registry  {ep['model_registry']}")
    print(f"  apt repository  {ep['apt_repository']['base']}")


def ask_url(lab: Lab, host: str | None, port: int) -> str:
    """The URL `ask` posts to, by lab DNS name: the front door (llm.<lab>.test) when the
    lab has one, else the first GPU (or CPU) server's nginx; HOST names one host."""
    hosts = lab.status()["hosts"]
    if not hosts:
        raise LabError(f"no lab named {lab.name} is up (run: python -m lab up)")
    if host:
        name = dns.host_name(lab.name, lab.host(host).name)
    else:
        first = min(hosts, key=lambda h: {"lb": 0, "gpu": 1, "cpu": 2}[h["role"]])
        name = (dns.front_door_name(lab.name) if first["role"] == "lb"
                else dns.host_name(lab.name, first["name"]))
    netloc = name if port == 80 else f"{name}:{port}"
    return f"http://{netloc}/api/generate"


def ask(lab: Lab, prompt: str, host: str | None, model: str, port: int) -> int:
    """Ask by name: run `ask --url` again under the lab's resolver; its exit status."""
    url = ask_url(lab, host, port)
    dns.check_namespace(lab)
    argv = [*dns.resolver_argv(lab), sys.executable, "-m", "lab", "--name", lab.name,
            "ask", prompt, "--model", model, "--url", url]
    return subprocess.run(argv, check=False).returncode


def stream_generate(url: str, model: str, prompt: str) -> None:
    """POST a streamed /api/generate to URL, printing tokens as they arrive."""
    import http.client

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=120)
    try:
        conn.request("POST", parts.path, json.dumps({"model": model, "prompt": prompt}),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        address = conn.sock.getpeername()[0] if conn.sock else "?"
        print(f"asked {parts.netloc} ({address} by the lab DNS): HTTP {response.status}")
        chunks = 0
        for raw in response:
            line = json.loads(raw)
            if "error" in line:
                raise LabError(f"ask: {parts.netloc}: {line['error']}")
            print(line.get("response", ""), end="", flush=True)
            chunks += 1
        print(f"\n({chunks} chunks streamed)")
    except OSError as exc:
        raise LabError(f"ask: {parts.netloc}: {exc} "
                       "(has the deploy run? pyinfra -y inventory/lab.py deploy.py)") from exc
    finally:
        conn.close()


def run_by_name(lab: Lab, cmd: list[str]) -> int:
    """Replace this process with CMD under the lab's resolver; its exit status is CMD's."""
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    if not cmd:
        raise _UsageError("run: give a command after --, e.g. run -- getent hosts "
                          f"gpu-1.{dns.zone(lab.name)}")
    dns.check_namespace(lab)
    argv = [*dns.resolver_argv(lab), *cmd]
    sys.stdout.flush()
    os.execvp(argv[0], argv)  # noqa: S606 (the operator's own command, by design)


class _UsageError(LabError):
    """Bad input found after parsing: exit 2, like argparse's own errors."""


@contextmanager
def machine_lock() -> Iterator[None]:
    """One `up` (or image build) at a time on this machine, whichever lab: two labs started
    at once would build the same images and may pick the same free subnet. Held only while
    the lab is made; its deploys and tests run side by side."""
    root = state_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".machine.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    lab = Lab(args.name, log=lambda msg: print(f"lab: {msg}", file=sys.stderr))
    state_root().mkdir(parents=True, exist_ok=True)
    try:
        if args.command == "status":
            info = lab.status()
            print(json.dumps(info, indent=2)) if args.json else _print_status(info)
            return 0
        # These change nothing and may run for long (`run -- pyinfra ...`): no lock.
        if args.command == "run":
            return run_by_name(lab, args.cmd)
        if args.command == "cloud-requests":
            print(json.dumps(lab.cloud_requests(clear=args.clear), indent=2))
            return 0
        if args.command == "ask":
            if args.url:
                stream_generate(args.url, args.model, args.prompt)
                return 0
            return ask(lab, args.prompt, host=args.host, model=args.model, port=args.port)
        # One command at a time per lab: `up` from two terminals must not race.
        with open(state_root() / f"{args.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return _run(args, lab)
    except LabError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (_UsageError, dns.NamespaceError)) else 1
    except KeyboardInterrupt:
        print("lab: interrupted; `python -m lab up` cleans up and carries on", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, lab: Lab) -> int:
    if args.command == "up":
        spec = Spec(gpu_hosts=args.gpu_hosts, gpus_per_host=args.gpus_per_host,
                    cpu_hosts=args.cpu_hosts, lb_hosts=args.lb_hosts, gpu_model=args.gpu_model,
                    gpu_suites=args.gpu_suites,
                    registry_port=args.registry_port, model_scale=args.model_scale,
                    health_interval=args.health_interval)
        if args.ollama_tags:
            spec.ollama_tags = args.ollama_tags
        if args.nginx_tags:
            spec.nginx_tags = args.nginx_tags
        if args.redis_tags:
            spec.redis_tags = args.redis_tags
        if args.app_tags:
            spec.app_tags = args.app_tags
        started = time.monotonic()
        with machine_lock():  # labs started side by side (pytest -n 2) share images, subnets
            lab.up(spec, inventory_names=args.inventory_names)
        lab.log(f"up in {time.monotonic() - started:.1f}s")
        _print_status(lab.status())
    elif args.command == "down":
        lab.down()
    elif args.command == "cert":
        host = lab.host(args.host)
        names = [dns.host_name(lab.name, host.name)]
        front_door = next((h["name"] for h in lab.load()["hosts"] if h["role"] == "lb"), None)
        if host.name == front_door:  # the first lb host also answers as llm.<lab>.test
            names.append(dns.front_door_name(lab.name))
        print(json.dumps(issue(lab.dir, host.name, host.address, tuple(names))))
    elif args.command == "fault":
        if args.container and args.gpu is not None:
            raise _UsageError("fault: give --gpu or --container, not both")
        if args.container and args.kind not in ("nvml-lost", "cpu", "hang", "crash"):
            raise _UsageError(f"fault {args.kind}: --container is for nvml-lost, cpu, hang "
                              "and crash")
        result = lab.fault(args.host, args.kind, gpu=args.gpu, container=args.container)
        print(f"{args.host}: {args.kind}: {result['result']}")
    elif args.command == "fabric-delay":
        lab.set_fabric_init_seconds(args.host, args.seconds)
    elif args.command == "ollama-image":
        with machine_lock():
            lab.publish_ollama_image(args.tag, fault=args.fault, pad_mb=args.pad_mb)
    else:
        getattr(lab, args.command)(args.host)
    return 0
