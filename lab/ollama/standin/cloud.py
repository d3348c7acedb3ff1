"""Ollama's cloud (v0.32 images): which requests go to ollama.com, and how.

internal/modelref/modelref.go decides which model names are cloud models; envconfig
(OLLAMA_NO_CLOUD, ~/.ollama/server.json) and internal/cloud/policy.go whether the cloud
is off; server/cloud_proxy.go forwards a request to the cloud base URL
(OLLAMA_CLOUD_BASE_URL: a release build accepts only a loopback override) and copies
the answer back as it comes. Requests to ollama.com are signed with the server's key
(auth.Sign; the stand-in's key and signature are the lab's, not ed25519).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import ipaddress
import json
import os
import secrets
import socket
import ssl
import time
import urllib.parse

from .envconfig import env_bool, env_var, log
from .names import parse_name

DEFAULT_BASE_URL = "https://ollama.com:443"
DEFAULT_SIGNING_HOST = "ollama.com"
BASE_URL_ENV = "OLLAMA_CLOUD_BASE_URL"
CLIENT_VERSION_HEADER = "X-Ollama-Client-Version"
DISABLED_PREFIX = "ollama cloud is disabled"
SIGNIN_URL = "https://ollama.com/connect?name=%s&key=%s"
# server/routes.go: the operations a disabled cloud names
ERR_REMOTE_INFERENCE = "remote model is unavailable"
ERR_REMOTE_MODEL_DETAILS = "remote model details are unavailable"
ERR_WEB_SEARCH = "web search is unavailable"
ERR_WEB_FETCH = "web fetch is unavailable"
# gin's mode of a release build (-X server.mode=release in scripts/env.sh, release.yaml)
MODE = "release"
HOP_BY_HOP = {"connection", "content-length", "proxy-connection", "keep-alive",
              "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade"}


class ConflictingSource(ValueError):
    pass


def parse_ref(raw: str) -> tuple[str, str]:
    """modelref.ParseRef: (base, source) with source "cloud", "local" or "" (none said);
    `:cloud`/`:local` suffixes and a tag ending in `-cloud` name the source."""
    raw = raw.strip()
    if not raw:
        raise ValueError("model is required")
    base, source = _source_suffix(raw)
    if source and _source_suffix(base)[1]:
        raise ConflictingSource(f'use either :local or :cloud, not both: "{raw}"')
    return base, source


def _source_suffix(raw: str) -> tuple[str, str]:
    idx = raw.rfind(":")
    if idx >= 0:
        suffix_raw = raw[idx + 1:].strip()
        suffix = suffix_raw.lower()
        if suffix in ("cloud", "local"):
            return raw[:idx], suffix
        if "/" not in suffix_raw and suffix.endswith("-cloud"):
            return raw[:idx + 1] + suffix_raw[:-len("-cloud")], "cloud"
    return raw, ""


def cloud_base(raw: str) -> str | None:
    """parseAndValidateModelRef for the passthrough: the base name when RAW names a
    valid cloud model, else None (the request stays local)."""
    try:
        base, source = parse_ref(raw)
    except ValueError:
        return None
    if source != "cloud" or not parse_name(base).is_valid():
        return None
    return base


def explicit_cloud(raw: str) -> bool:
    """modelref.HasExplicitCloudSource: RAW parses and names the cloud (the base name is
    not validated)."""
    try:
        return parse_ref(raw)[1] == "cloud"
    except ValueError:
        return False


def _server_config_disabled() -> bool:
    """~/.ollama/server.json `disable_ollama_cloud` (read once, as envconfig caches it)."""
    global _SERVER_CFG
    if _SERVER_CFG is None:
        path = os.path.join(os.path.expanduser("~"), ".ollama", "server.json")
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            _SERVER_CFG = bool(isinstance(doc, dict) and doc.get("disable_ollama_cloud") is True)
        except (OSError, ValueError):
            _SERVER_CFG = False
    return _SERVER_CFG


_SERVER_CFG: bool | None = None


def disabled() -> bool:
    return env_bool("OLLAMA_NO_CLOUD") or _server_config_disabled()


def source() -> str:
    env, cfg = env_bool("OLLAMA_NO_CLOUD"), _server_config_disabled()
    return "both" if env and cfg else "env" if env else "config" if cfg else "none"


def disabled_error(operation: str) -> str:
    return f"{DISABLED_PREFIX}: {operation}" if operation else DISABLED_PREFIX


def _is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_base_url(raw: str, mode: str = MODE) -> tuple[str, str, bool]:
    """resolveCloudProxyBaseURL: (base URL, signing host, overridden); ValueError for an
    override that is refused (the server then warns and keeps ollama.com)."""
    raw = raw.strip()
    if not raw:
        return DEFAULT_BASE_URL, DEFAULT_SIGNING_HOST, False
    u = urllib.parse.urlsplit(raw)
    if not u.scheme or not u.netloc:
        raise ValueError("invalid URL: scheme and host are required")
    if "@" in u.netloc:
        raise ValueError("invalid URL: userinfo is not allowed")
    if u.path not in ("", "/"):
        raise ValueError("invalid URL: path is not allowed")
    if u.query or u.fragment:
        raise ValueError("invalid URL: query and fragment are not allowed")
    host = u.hostname or ""
    if not host:
        raise ValueError("invalid URL: host is required")
    loopback = _is_loopback_host(host)
    if mode == "release" and not loopback:
        raise ValueError("non-loopback cloud override is not allowed in release mode")
    if not loopback and u.scheme.lower() != "https":
        raise ValueError("non-loopback cloud override must use https")
    return f"{u.scheme}://{u.netloc}", host.lower(), True


BASE_URL = DEFAULT_BASE_URL
SIGNING_HOST = DEFAULT_SIGNING_HOST


def init() -> None:
    """cloud_proxy.go's init(): the override, accepted or warned about."""
    global BASE_URL, SIGNING_HOST
    try:
        base, host, overridden = resolve_base_url(env_var(BASE_URL_ENV))
    except ValueError as e:
        log("WARN", "cloud_proxy.go:62", "ignoring cloud base URL override", env=BASE_URL_ENV,
            error=str(e))
        return
    BASE_URL, SIGNING_HOST = base, host
    if overridden:
        log("INFO", "cloud_proxy.go:70", "cloud base URL override enabled", env=BASE_URL_ENV,
            url=BASE_URL, mode=MODE)


# -- the server's key (auth/auth.go; cmd initializeKeypair makes it at serve) ----------

def _key_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".ollama")


def ensure_key() -> None:
    """The key pair `serve` creates when ~/.ollama/id_ed25519 is missing. The lab's is a
    random secret, not an ed25519 key: its "public key" is an `ssh-ed25519` line whose
    blob is the secret's hash, and signatures are HMACs (the cloud stand-in checks only
    that a request is signed)."""
    priv = os.path.join(_key_dir(), "id_ed25519")
    if os.path.exists(priv):
        return
    try:
        os.makedirs(_key_dir(), exist_ok=True)
        secret = secrets.token_bytes(32)
        with open(priv, "w", encoding="utf-8") as f:
            f.write("fleetlab-standin-key " + base64.b64encode(secret).decode() + "\n")
        os.chmod(priv, 0o600)
        with open(priv + ".pub", "w", encoding="utf-8") as f:
            f.write(public_key_line(secret) + "\n")
    except OSError:
        pass


def _secret() -> bytes | None:
    try:
        with open(os.path.join(_key_dir(), "id_ed25519"), encoding="utf-8") as f:
            return base64.b64decode(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None


def public_key_line(secret: bytes) -> str:
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + hashlib.sha256(secret).digest()
    return "ssh-ed25519 " + base64.b64encode(blob).decode()


def public_key() -> str | None:
    secret = _secret()
    return public_key_line(secret) if secret else None


def sign(challenge: str) -> str | None:
    """auth.Sign: `<public key blob>:<signature>`; None without a key."""
    secret = _secret()
    if secret is None:
        return None
    sig = hmac.new(secret, challenge.encode(), hashlib.sha256).digest()
    return public_key_line(secret).split()[1] + ":" + base64.b64encode(sig).decode()


def signin_url() -> str | None:
    pub = public_key()
    if pub is None:
        return None
    enc = base64.urlsafe_b64encode(pub.encode()).decode().rstrip("=")
    return SIGNIN_URL % (urllib.parse.quote(socket.gethostname(), safe=""), enc)


# -- the request ----------------------------------------------------------------------

class Answer:
    """The cloud's answer as it arrives: status, headers to copy, and its body in reads."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse):
        self.conn, self.resp = conn, resp
        self.status = resp.status
        tokens = {t.strip().lower() for v in resp.headers.get_all("Connection") or []
                  for t in v.split(",") if t.strip()}
        self.headers = [(k, v) for k, v in resp.getheaders()
                        if k.lower() not in HOP_BY_HOP and k.lower() not in tokens]

    def chunks(self):
        try:
            while True:
                data = self.resp.read1(32 * 1024)
                if not data:
                    return
                yield data
        finally:
            self.conn.close()


def _tls_context() -> ssl.SSLContext:
    """The system's CAs, verified as Go's crypto/x509 verifies: not OpenSSL's strict mode
    (Python 3.13 sets it), which also demands key usage extensions Go does not."""
    ctx = ssl.create_default_context()
    ctx.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    return ctx


class CloudError(Exception):
    """The request could not be made (Go's `*url.Error` text: `Post "URL": reason`)."""

    def __init__(self, status: int, message: str, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra or {}


def request(method: str, path: str, query: str, body: bytes, headers: list[tuple[str, str]],
            version: str, base_url: str | None = None) -> Answer:
    """proxyCloudRequestWithPath from `if disabled` on: the target URL is the base with
    PATH and the client's query; the client's headers go along except hop-by-hop ones.
    BASE_URL (the default) is the cloud base; /api/me and /api/signout name ollama.com."""
    base = urllib.parse.urlsplit(base_url or BASE_URL)
    target_query = query
    out_headers: dict[str, str] = {}
    tokens = {t.strip().lower() for k, v in headers if k.lower() == "connection"
              for t in v.split(",") if t.strip()}
    for k, v in headers:
        if k.lower() in HOP_BY_HOP or k.lower() in tokens or k.lower() == "host":
            continue
        out_headers[k] = v
    if version.strip():
        out_headers[CLIENT_VERSION_HEADER] = version.strip()
    if not any(k.lower() == "content-type" for k in out_headers) and body:
        out_headers["Content-Type"] = "application/json"
    signing_host = SIGNING_HOST if base_url is None else DEFAULT_SIGNING_HOST
    if (base.hostname or "").lower() == signing_host:
        ts = str(int(time.time()))
        q = urllib.parse.parse_qsl(target_query, keep_blank_values=True)
        q = [(k, v) for k, v in q if k != "ts"] + [("ts", ts)]
        target_query = urllib.parse.urlencode(sorted(q))
        token = sign(f"{method},{path}?{target_query}")
        if token is None:
            log("WARN", "cloud_proxy.go:211", "cloud proxy signing failed",
                error="open " + os.path.join(_key_dir(), "id_ed25519") +
                ": no such file or directory")
            url = signin_url()
            raise CloudError(401, "unauthorized", {"signin_url": url} if url else {})
        out_headers = {k: v for k, v in out_headers.items() if k.lower() != "authorization"}
        out_headers["Authorization"] = token
    url = urllib.parse.urlunsplit((base.scheme, base.netloc, path, target_query, ""))
    verb = method[:1].upper() + method[1:].lower()
    port = base.port or (443 if base.scheme == "https" else 80)
    try:
        if base.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                base.hostname, port, timeout=600, context=_tls_context())
        else:
            conn = http.client.HTTPConnection(base.hostname, port, timeout=600)
        conn.request(method, urllib.parse.urlunsplit(("", "", path, target_query, "")),
                     body=body or None, headers={**out_headers, **(
                         {"Content-Length": str(len(body))} if body or method == "POST"
                         else {})})
        resp = conn.getresponse()
    except socket.gaierror:
        raise CloudError(502, f'{verb} "{url}": dial tcp: lookup {base.hostname}: no such host'
                         ) from None
    except ssl.SSLCertVerificationError:
        raise CloudError(502, f'{verb} "{url}": tls: failed to verify certificate: x509: '
                              "certificate signed by unknown authority") from None
    except ConnectionRefusedError:
        raise CloudError(502, f'{verb} "{url}": dial tcp {base.hostname}:{port}: connect: '
                              "connection refused") from None
    except (OSError, http.client.HTTPException) as e:
        raise CloudError(502, f'{verb} "{url}": {e}') from None
    return Answer(conn, resp)
