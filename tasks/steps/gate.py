"""The gate in front of Ollama: TLS, API keys, admin endpoints, rate limits, body size.

The same gate serves on a GPU host's nginx and on the front door (lb_servers); the
knobs are the `nginx_*` ones of the host it runs on. What it renders lives beside
the nginx config it guards (`nginx/` in the Compose project):

- `nginx/api-keys.map` and `nginx/admin-keys.map`: `"Bearer <key>" "<name>";` lines
  for nginx `map`s (mode 600), read on the operator's machine from the SecretRef
  the knob names, never from the repository; a re-run rewrites them and nginx is
  reloaded, not restarted, so a rotated key stops working at once and no stream in
  flight is cut. A key comes as `Authorization: Bearer <key>` or, as Anthropic's clients
  send it, `x-api-key: <key>` (templates/nginx/gate.j2 reads it as the same bearer key).
- `nginx/tls/cert.pem`, `nginx/tls/key.pem` (mode 600): the operator's files for
  `nginx_tls: files`, or a pair generated once on the host for `self_signed`.

Secrets and keys are checked before anything is written: a key that is missing,
short, or holds characters nginx would need quoting for fails the host with a line
naming the knob.
"""

from __future__ import annotations

import os
import re
import shlex

from pyinfra import host
from pyinfra.api import OperationError, operation
from pyinfra.facts.files import File

from ollama_fleet.tasks.kit.fleet import Fleet
from ollama_fleet.tasks.kit.settings import SecretRef, Settings, is_ip

KEY = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")
NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
TLS_DIR = "nginx/tls"
# Paths as the nginx container sees them (the project's nginx/ is its conf.d).
CONF_D = "/etc/nginx/conf.d"


def read_secret(label: str, ref: SecretRef) -> str:
    """The secret REF names, read on the operator's machine; OperationError names LABEL."""
    if ref.env is not None:
        if ref.env not in os.environ:
            raise OperationError(f"{label}: environment variable {ref.env} is not set on "
                                 "this machine")
        return os.environ[ref.env]
    try:
        with open(os.path.expanduser(ref.file)) as handle:
            return handle.read()
    except OSError as exc:
        raise OperationError(f"{label}: {ref.file}: {exc.strerror}") from None


def parse_keys(label: str, text: str, from_file: bool = True) -> dict[str, str]:
    """key -> name, from a file's `[name] key` lines (# comments, blank lines ignored) or
    from an environment variable's keys separated by spaces or commas (named key-N)."""
    keys: dict[str, str] = {}
    if from_file:
        lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        entries = [line for line in lines if line]
    else:
        entries = text.replace(",", " ").split()
    for n, entry in enumerate(entries, 1):
        parts = entry.split()
        if len(parts) == 1:
            name, key = f"key-{n}", parts[0]
        elif len(parts) == 2:
            name, key = parts
        else:
            raise OperationError(f"{label}: entry {n}: expected `[name] key`")
        if not KEY.fullmatch(key):
            raise OperationError(f"{label}: entry {n} ({name}): a key is 16 to 256 of "
                                 "A-Z a-z 0-9 . _ ~ + / = -")
        if not NAME.fullmatch(name):
            raise OperationError(f"{label}: entry {n}: name {name!r} is not A-Z a-z 0-9 . _ -")
        if key in keys:
            raise OperationError(f"{label}: entry {n} ({name}): the same key is listed twice")
        keys[key] = name
    if not keys:
        raise OperationError(f"{label}: no keys (an empty key list would lock everyone out)")
    return keys


def key_map(keys: dict[str, str]) -> str:
    return "".join(f'"Bearer {key}" "{name}";\n' for key, name in sorted(keys.items()))


def gate_files(settings: Settings) -> tuple[dict[str, str], set[str]]:
    """(relative path -> content, the paths that are secret) for the gate's files."""
    files: dict[str, str] = {}
    for knob in ("nginx_api_keys", "nginx_admin_keys"):
        ref = getattr(settings, knob)
        if ref:
            keys = parse_keys(knob, read_secret(knob, ref), from_file=ref.file is not None)
            files[f"nginx/{knob.removeprefix('nginx_').replace('_', '-')}.map"] = key_map(keys)
    if settings.nginx_tls == "files":
        for knob, rel in (("nginx_tls_cert", "cert.pem"), ("nginx_tls_key", "key.pem")):
            path = getattr(settings, knob)
            text = read_secret(knob, SecretRef(file=path))
            if "-----BEGIN" not in text:
                raise OperationError(f"{knob}: {path}: not a PEM file")
            files[f"{TLS_DIR}/{rel}"] = text
    secret = {rel for rel in files if rel.endswith((".map", "key.pem"))}
    return files, secret


def context(settings: Settings, trusted: list[str] | None = None) -> dict:
    """What the gate's template macros need besides the settings; TRUSTED are the front
    doors' addresses, which a GPU host's nginx treats like loopback, and the only callers
    besides loopback and the app services unless nginx_allow says otherwise. The host's
    app services (their network, when any calls Ollama) need no key and pass nginx_allow,
    but not the admin endpoints."""
    trusted = [a for a in trusted or [] if is_ip(a)]
    uses_ollama = any(app.uses_ollama for app in settings.app_services.values())
    apps = settings.app_network if uses_ollama else None
    allow = settings.nginx_allow
    return {
        "trusted": trusted,
        "apps": apps,
        # Whether the API is limited to loopback and `allowed`: nginx_allow set and not
        # empty, or unset behind a front door (tasks.kit.settings refuses one reached by name).
        "restricted": bool(allow) or (allow is None and bool(trusted)),
        "allowed": trusted + (allow or []) + ([apps] if apps else []),
        "tls": settings.nginx_tls != "off",
        "cert": f"{CONF_D}/tls/cert.pem",
        "key": f"{CONF_D}/tls/key.pem",
        "api_keys": f"{CONF_D}/api-keys.map" if settings.nginx_api_keys else None,
        "admin_keys": f"{CONF_D}/admin-keys.map" if settings.nginx_admin_keys else None,
    }


def front_door_addresses(fleet: Fleet) -> list[str]:
    """The addresses of FLEET's lb_servers (as the inventory reaches them)."""
    return [lb.address for lb in fleet.lb_servers]


@operation()
def self_signed(root: str, common_name: str, addresses: list[str]):
    """
    Generate a self-signed certificate and key once (kept across runs) for
    `nginx_tls: self_signed`, in ROOT/nginx/tls and its staging copy.

    + root: the Compose project directory
    + common_name: the certificate's subject (the host's name)
    + addresses: IP addresses and DNS names for subjectAltName
    """
    live = f"{root}/{TLS_DIR}"
    if host.get_fact(File, path=f"{live}/cert.pem") and host.get_fact(File, path=f"{live}/key.pem"):
        host.noop("self-signed certificate present")
        return
    sans = ",".join(f"IP:{a}" if is_ip(a) else f"DNS:{a}"
                    for a in dict.fromkeys(addresses))
    q = shlex.quote
    yield (f"mkdir -p {q(live)} && umask 077 && openssl req -x509 -newkey rsa:2048 -nodes "
           f"-days 825 -subj {q('/CN=' + common_name)} -addext {q('subjectAltName=' + sans)} "
           f"-keyout {q(live)}/key.pem.new -out {q(live)}/cert.pem.new 2>&1 "
           f"&& mv {q(live)}/key.pem.new {q(live)}/key.pem "
           f"&& mv {q(live)}/cert.pem.new {q(live)}/cert.pem && chmod 644 {q(live)}/cert.pem")
    yield (f"mkdir -p {q(root)}/.staged/{TLS_DIR} && cp -p {q(live)}/cert.pem {q(live)}/key.pem "
           f"{q(root)}/.staged/{TLS_DIR}/")


def host_addresses() -> list[str]:
    """The names this host is reached by, for a self-signed certificate."""
    return [a for a in (host.data.get("ssh_hostname"), host.name) if a]


def prepare(settings: Settings, root: str) -> None:
    """Operations the gate needs before its files are checked (the self-signed pair)."""
    if settings.nginx_tls == "self_signed":
        from ollama_fleet.tasks.steps.packages import installed

        installed(name="openssl (for the self-signed certificate)", packages=["openssl"])
        self_signed(name="Self-signed TLS certificate (generated once)", root=root,
                    common_name=host.name, addresses=host_addresses())
