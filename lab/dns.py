"""The lab's DNS: the zone `<lab>.test`, served by dnsmasq in the services container.

Records: every lab host as `<host>.<lab>.test`; the front door as `llm.<lab>.test` (the
first lb host, when the lab has one); the services container as `services.`,
`registry.` and `blobs.<lab>.test`; the cloud stand-in (lab/cloud) as `cloud.<lab>.test`
and as `ollama.com`, the host Ollama's cloud calls, as the lab's registry stands in for
registry.ollama.ai. Every other name is forwarded to the services container's own
Docker resolver, so apt on the hosts still finds the Debian mirror.

Lab hosts get `/etc/resolv.conf` naming that server (a read-only bind mount of
RESOLV_CONF), and their inner Docker engines copy it into their containers. On the
operator's side nothing of this machine is edited: `python -m lab run -- CMD` runs CMD
in a private mount namespace where the same file is bind-mounted over /etc/resolv.conf
(what `ip netns exec` does with /etc/netns/NAME/resolv.conf).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import struct
import subprocess
from pathlib import Path

from lab.engine import LabError
from lab.state import LabState

TLD = "test"  # reserved for testing by RFC 6761: never a real zone
FRONT_DOOR = "llm"
SERVICE_NAMES = ("services", "registry", "blobs")
CLOUD_NAME = "cloud"
# Ollama's cloud (server/cloud_proxy.go defaultCloudProxyBaseURL): a release build
# accepts no other address than loopback, so the lab answers this name instead
CLOUD_HOSTS = ("ollama.com",)
UPSTREAM = "127.0.0.11"  # the services container's own Docker resolver
HOSTS_DIR = "/etc/fleetlab/dns"  # in the services container: dnsmasq's --hostsdir
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def zone(lab_name: str) -> str:
    """`<lab>.test`; the lab name must be one DNS label."""
    if not _LABEL.match(lab_name):
        raise LabError(f"--name {lab_name!r}: a lab name is also its DNS zone's label: "
                       "lower-case letters, digits and '-', at most 63, not starting or "
                       "ending with '-'")
    return f"{lab_name}.{TLD}"


def host_name(lab_name: str, host: str) -> str:
    return f"{host}.{zone(lab_name)}"


def front_door_name(lab_name: str) -> str:
    return f"{FRONT_DOOR}.{zone(lab_name)}"


def cloud_name(lab_name: str) -> str:
    return f"{CLOUD_NAME}.{zone(lab_name)}"


def records(lab_name: str, services_ip: str, hosts: list[dict], cloud_ip: str | None = None
            ) -> list[tuple[str, list[str]]]:
    """(address, names) of every record in the zone; the first name is the address's PTR."""
    rows = [(services_ip, [f"{n}.{zone(lab_name)}" for n in SERVICE_NAMES])]
    if cloud_ip:
        rows.append((cloud_ip, [cloud_name(lab_name), *CLOUD_HOSTS]))
    front_door = next((h for h in hosts if h["role"] == "lb"), None)
    for h in hosts:
        names = [host_name(lab_name, h["name"])]
        if h is front_door:
            names.append(front_door_name(lab_name))
        rows.append((h["address"], names))
    return rows


def hosts_file(lab_name: str, services_ip: str, hosts: list[dict],
               cloud_ip: str | None = None) -> str:
    lines = [f"# The zone {zone(lab_name)}, written by `python -m lab up`; dnsmasq rereads "
             "it when it changes."]
    lines += [f"{address} {' '.join(names)}" for address, names in
              records(lab_name, services_ip, hosts, cloud_ip)]
    return "\n".join(lines) + "\n"


def dnsmasq_conf(lab_name: str, services_ip: str) -> str:
    """dnsmasq's configuration: authoritative for the zone, the rest forwarded."""
    return "\n".join([
        f"# DNS of the lab {lab_name!r}, written by `python -m lab up`.",
        f"listen-address={services_ip}",
        # binds the address when it appears: at the container's start it may come after
        # dnsmasq does (bind-interfaces then fails "Cannot assign requested address")
        "bind-dynamic",
        "no-hosts",  # not the container's own /etc/hosts
        f"hostsdir={HOSTS_DIR}",  # the zone's records, reread when the lab rewrites them
        f"local=/{zone(lab_name)}/",  # never forwarded: a name not in the zone does not exist
        "domain-needed",  # a bare name is never forwarded either
        "no-resolv",
        f"server={UPSTREAM}",
        "",
    ])


def resolv_conf(lab_name: str, services_ip: str) -> str:
    """/etc/resolv.conf for lab hosts and for `python -m lab run`."""
    return (f"# DNS of the lab {lab_name} (python -m lab up)\n"
            f"nameserver {services_ip}\nsearch {zone(lab_name)}\n")


def resolv_conf_path(lab: LabState) -> Path:
    return lab.dir / "resolv.conf"


def write_files(lab: LabState, services_ip: str, hosts: list[dict],
                cloud_ip: str | None = None) -> None:
    """Write the resolv.conf, dnsmasq's configuration and the zone into the lab's state dir.

    The zone file is replaced by a rename into its directory, so dnsmasq (watching the
    directory) never reads half a file; resolv.conf is bind-mounted into hosts by inode,
    so it is rewritten in place, and only when it changed.
    """
    config = lab.dir / "services"
    (config / "dns").mkdir(parents=True, exist_ok=True)
    (config / "dns").chmod(0o755)  # dnsmasq reads as nobody, whatever this umask is
    _write_if_changed(config / "dnsmasq.conf", dnsmasq_conf(lab.name, services_ip))
    _write_if_changed(resolv_conf_path(lab), resolv_conf(lab.name, services_ip))
    text = hosts_file(lab.name, services_ip, hosts, cloud_ip)
    target = config / "dns" / "zone"
    if not target.exists() or target.read_text() != text:
        tmp = config / "zone.tmp"
        tmp.write_text(text)
        tmp.chmod(0o644)
        os.replace(tmp, target)


def _write_if_changed(path: Path, text: str) -> None:
    """(Each readable by all: dnsmasq runs as nobody, apt's sandbox reads resolv.conf.)"""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    path.chmod(0o644)


# -- the operator's side -------------------------------------------------------
_BIND_AND_EXEC = ('mount --bind "$0" /etc/resolv.conf || '
                  '{ echo "lab run: cannot bind-mount $0 over /etc/resolv.conf" >&2; exit 2; }; '
                  'exec "$@"')


def resolver_argv(lab: LabState) -> list[str]:
    """The argv prefix that runs a command with the lab's DNS as its resolver.

    A private mount namespace gets the lab's resolv.conf over /etc/resolv.conf; this
    machine's own file and every other process are untouched.
    """
    path = resolv_conf_path(lab)
    if not path.exists():
        raise LabError(f"no lab named {lab.name} is up (run: python -m lab up)")
    return ["unshare", "--mount", "--propagation", "private",
            "sh", "-c", _BIND_AND_EXEC, str(path)]


class NamespaceError(LabError):
    """This machine refuses the private mount namespace (`run` exits 2)."""


def check_namespace(lab: LabState) -> None:
    """Raise NamespaceError (one line) when this machine refuses the mount namespace, or
    when a name of the lab does not resolve through it."""
    path = resolv_conf_path(lab)
    argv = [*resolver_argv(lab)[:4], "mount", "--bind", str(path), "/etc/resolv.conf"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except FileNotFoundError as exc:
        raise NamespaceError(f"run: {exc.filename}: not found (util-linux's unshare and mount "
                       "give a command the lab's resolver)") from exc
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise NamespaceError(f"run: cannot give a command the lab's resolver ({why}); a private "
                       "mount namespace needs root (CAP_SYS_ADMIN)")
    # the mount is not enough: glibc must read resolv.conf for hosts (nsswitch `dns`), not
    # ask a daemon outside the namespace (nss-resolve, nscd)
    services_ip = (lab.load() or {}).get("services_ip")
    if not services_ip:  # no lab state to check against (only its files)
        return
    name = f"services.{zone(lab.name)}"
    try:
        proc = subprocess.run([*resolver_argv(lab), "getent", "hosts", name],
                              capture_output=True, text=True, timeout=30)
        found = proc.stdout.split()[:1]
    except subprocess.TimeoutExpired:
        found = []
    if found != [services_ip]:
        raise NamespaceError(f"run: {name} does not resolve to {services_ip} through the lab's "
                             f"resolv.conf (got {' '.join(found) or 'nothing'}): is the lab up, "
                             "and does this machine's /etc/nsswitch.conf `hosts:` use dns "
                             "(not only nss-resolve or nscd)?")


# -- a minimal DNS client: `up` waits for the server with it ------------------------
def build_query(name: str, query_id: int) -> bytes:
    """A recursive DNS query for NAME's A records (RFC 1035 4.1)."""
    header = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
    question = b"".join(bytes([len(p)]) + p.encode("ascii") for p in name.rstrip(".").split("."))
    return header + question + b"\0" + struct.pack("!HH", 1, 1)


def _skip_name(data: bytes, pos: int) -> int:
    while True:
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:  # a compression pointer ends the name
            return pos + 2
        pos += 1 + length


def parse_answer(data: bytes, query_id: int) -> list[str]:
    """The IPv4 addresses in a response to query QUERY_ID; [] for NXDOMAIN or none."""
    rid, flags, qdcount, ancount, _, _ = struct.unpack("!HHHHHH", data[:12])
    if rid != query_id or not flags & 0x8000:
        raise ValueError("not the answer to this query")
    if flags & 0x000F not in (0, 3):
        raise ValueError(f"DNS error, rcode {flags & 0x000F}")
    pos = 12
    for _ in range(qdcount):
        pos = _skip_name(data, pos) + 4
    addresses = []
    for _ in range(ancount):
        pos = _skip_name(data, pos)
        rtype, rclass, _, length = struct.unpack("!HHIH", data[pos:pos + 10])
        pos += 10
        if rtype == 1 and rclass == 1 and length == 4:
            addresses.append(socket.inet_ntoa(data[pos:pos + 4]))
        pos += length
    return addresses


def query_a(server: str, name: str, timeout: float = 2.0, port: int = 53) -> list[str]:
    """Ask SERVER (UDP) for NAME's A records."""
    query_id = secrets.randbelow(1 << 16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(build_query(name, query_id), (server, port))
        data, _ = s.recvfrom(4096)
    return parse_answer(data, query_id)
