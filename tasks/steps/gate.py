"""The gate in front of Ollama: TLS, API keys, admin endpoints, rate limits, body size.

The same gate serves on a GPU host's nginx and on the front door (lb_servers); the
knobs are the `nginx_*` ones of the host it runs on. What it renders lives beside
the nginx config it guards (`nginx/` in the Compose project):

- `nginx/api-keys.map` and `nginx/admin-keys.map`: `"<sha256 of the key>" "<name>";`
  lines for nginx `map`s (mode 600), read on the operator's machine from the SecretRef
  the knob names, never from the repository; no key is written on a host, only its
  digest. A re-run rewrites them and nginx is reloaded, not restarted, so a rotated key
  stops working at once and no stream in flight is cut. A key comes as
  `Authorization: Bearer <key>` or, as Anthropic's clients send it, `x-api-key: <key>`.
- `nginx/gate.js` (with keys): the digest of the key a request carries, which the maps
  look up (templates/nginx/gate.js; nginx's JavaScript module, loaded by the front door's
  nginx.conf and, where the gate has keys, the stack's).
- `nginx/tls/cert.pem`, `nginx/tls/key.pem` (mode 600): the operator's files for
  `nginx_tls: files`, or a pair generated once on the host for `self_signed`.

Keys are compared exactly (letter case counts) and without a timing oracle: nginx looks up
the SHA-256 of the key a request carries, never the key itself (see gate.js). Behind a
front door the keys stay there: it sends the GPU hosts no `Authorization` or `x-api-key`,
only the client's name in FLEET_CLIENT_HEADER, which a host takes from a front door's
address alone.

Secrets and keys are checked before anything is written; an error names the knob and the
line (or entry), never what it holds: a key written where its name goes stays unprinted.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex

from pyinfra import host
from pyinfra.api import OperationError, operation
from pyinfra.facts.files import File

from ollama_fleet.tasks.kit import paths
from ollama_fleet.tasks.kit.compose import holds_private_key
from ollama_fleet.tasks.kit.fleet import Fleet
from ollama_fleet.tasks.kit.settings import SecretRef, Settings, is_ip

# A key: RFC 6750's b64token (base64, base64url and hex keys all fit), = only as padding.
KEY = re.compile(r"[A-Za-z0-9._~+/-]+=*")
KEY_LENGTH = (32, 256)
KEY_ALPHABET = "A-Z a-z 0-9 - . _ ~ + / (then = padding)"
# Fewer different characters than this is a placeholder (aaaa...), not a generated key.
KEY_VARIETY = 6
# A name is shorter than any key, so that a key written in its column is never taken for one.
NAME = re.compile(r"[A-Za-z0-9._-]{1,31}")
# The client's name as a front door tells a GPU host (the host takes it from a front door's
# address only; templates/nginx/gate.j2).
FLEET_CLIENT_HEADER = "X-Ollama-Fleet-Client"
TLS_DIR = "nginx/tls"
GATE_JS = "nginx/gate.js"
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


def is_key(text: str) -> bool:
    return KEY_LENGTH[0] <= len(text) <= KEY_LENGTH[1] and KEY.fullmatch(text) is not None


def _key_problem(key: str, name: str | None) -> str | None:
    """What is wrong with an entry's KEY (and NAME, from a file), in words that quote
    neither: an error may be shown on a terminal or land in CI logs."""
    if name is not None and len(name) >= KEY_LENGTH[0]:
        return ("the first column is as long as a key: a line is `name key`, the name first "
                "and shorter")
    if not is_key(key):
        return (f"a key is {KEY_LENGTH[0]} to {KEY_LENGTH[1]} characters of {KEY_ALPHABET}"
                + (" (a line is `name key`, the name first)" if name is not None else ""))
    if len(set(key)) < KEY_VARIETY:
        return (f"the key has fewer than {KEY_VARIETY} different characters: a placeholder, "
                "not a generated key (`openssl rand -hex 32`)")
    if name is not None and not NAME.fullmatch(name):
        return "a name is 1 to 31 of A-Z a-z 0-9 . _ -"
    return None


def parse_keys(label: str, text: str, from_file: bool = True) -> dict[str, str]:
    """key -> name, from a file's `[name] key` lines (# comments, blank lines ignored) or
    from an environment variable's keys separated by spaces or commas (named key-N).

    An OperationError names LABEL and the line (file) or entry (variable), never the text:
    a key in the wrong column is not printed."""
    if from_file:
        where = "line"
        entries = [(n, line.split("#", 1)[0].split())
                   for n, line in enumerate(text.splitlines(), 1)]
        entries = [(n, parts) for n, parts in entries if parts]
    else:
        where = "entry"
        entries = [(n, [key]) for n, key in enumerate(text.replace(",", " ").split(), 1)]
    keys: dict[str, str] = {}
    line_of_key: dict[str, int] = {}
    line_of_name: dict[str, int] = {}
    for count, (n, parts) in enumerate(entries, 1):
        if len(parts) > 2:
            raise OperationError(f"{label}: {where} {n}: expected `[name] key` (one or two "
                                 "columns)")
        name, key = (parts[0], parts[1]) if len(parts) == 2 else (f"key-{count}", parts[0])
        problem = _key_problem(key, name if len(parts) == 2 else None)
        if problem:
            raise OperationError(f"{label}: {where} {n}: {problem}")
        if key in line_of_key:
            raise OperationError(f"{label}: {where} {n}: the same key as {where} "
                                 f"{line_of_key[key]}")
        # names are told apart whatever their case (rate-limit zones, logs, readers)
        if name.lower() in line_of_name:
            raise OperationError(f"{label}: {where} {n}: the same name as {where} "
                                 f"{line_of_name[name.lower()]}")
        keys[key] = name
        line_of_key[key], line_of_name[name.lower()] = n, n
    if not keys:
        raise OperationError(f"{label}: no keys (an empty key list would lock everyone out)")
    return keys


def key_digest(key: str) -> str:
    """What the gate's maps are keyed by: the SHA-256 of the key, in hex (gate.js says why)."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_map(keys: dict[str, str]) -> str:
    return "".join(f'"{digest}" "{name}";\n'
                   for digest, name in sorted((key_digest(k), n) for k, n in keys.items()))


def gate_files(settings: Settings) -> tuple[dict[str, str], set[str]]:
    """(relative path -> content, the paths that are secret) for the gate's files. A file
    that holds a private key is secret whatever its name (compose.checked_files sees to
    that too)."""
    files: dict[str, str] = {}
    for knob in ("nginx_api_keys", "nginx_admin_keys"):
        ref = getattr(settings, knob)
        if ref:
            keys = parse_keys(knob, read_secret(knob, ref), from_file=ref.file is not None)
            files[f"nginx/{knob.removeprefix('nginx_').replace('_', '-')}.map"] = key_map(keys)
    if compares_keys(settings):
        files[GATE_JS] = (paths.TEMPLATES / "nginx" / "gate.js").read_text()
    if settings.nginx_tls == "files":
        for knob, rel in (("nginx_tls_cert", "cert.pem"), ("nginx_tls_key", "key.pem")):
            path = getattr(settings, knob)
            text = read_secret(knob, SecretRef(file=path))
            if "-----BEGIN" not in text:
                raise OperationError(f"{knob}: {path}: not a PEM file")
            files[f"{TLS_DIR}/{rel}"] = text
    secret = {rel for rel in files if rel.endswith((".map", "key.pem"))} \
        | {rel for rel, text in files.items() if holds_private_key(text)}
    return files, secret


def compares_keys(settings: Settings) -> bool:
    """Whether this gate checks keys (and so needs gate.js, nginx's JavaScript module)."""
    return bool(settings.nginx_api_keys or settings.nginx_admin_keys)


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
        "compares_keys": compares_keys(settings),
        "gate_js": f"{CONF_D}/{GATE_JS.removeprefix('nginx/')}",
        "client_header": FLEET_CLIENT_HEADER,
        "client_var": "$http_" + FLEET_CLIENT_HEADER.lower().replace("-", "_"),
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
