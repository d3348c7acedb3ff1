"""The registry client (server/images.go): registry URLs, requests with net/http's
redirect rules, and Go's texts for network errors."""

from __future__ import annotations

import errno
import http.client
import socket
import ssl
import urllib.parse

from .envconfig import env_var, lab_version
from .names import DEFAULT_HOST, Name

DEFAULT_REGISTRY_URL = "https://registry.ollama.ai"
ERR_NOT_EXIST = "file does not exist"
MAX_REDIRECTS = 10


class PullError(Exception):
    pass


class _Retryable(Exception):
    pass


def registry_base(name: Name, insecure: bool) -> str:
    if name.host.lower() == DEFAULT_HOST:
        base = env_var("OLLAMA_LAB_REGISTRY") or DEFAULT_REGISTRY_URL
    else:
        base = "https://" + name.host
    if insecure and base.startswith("https://"):
        base = "http://" + base[len("https://"):]
    return base.rstrip("/")


def go_net_error(method: str, url: str, exc: BaseException) -> str:
    u = urllib.parse.urlsplit(url)
    host = u.hostname or ""
    port = u.port or (443 if u.scheme == "https" else 80)
    hp = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(exc, ConnectionRefusedError):
        detail = f"dial tcp {hp}: connect: connection refused"
    elif isinstance(exc, socket.gaierror):
        detail = f"dial tcp: lookup {host}: no such host"
    elif isinstance(exc, ssl.SSLCertVerificationError):
        detail = f"tls: failed to verify certificate: x509: {exc.verify_message or exc}"
    elif isinstance(exc, ssl.SSLError):
        text = str(exc)
        if any(k in text for k in ("WRONG_VERSION_NUMBER", "record layer failure",
                                   "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST", "UNEXPECTED_EOF")):
            detail = "http: server gave HTTP response to HTTPS client"
        else:
            detail = f"tls: {exc.reason or text}"
    elif isinstance(exc, (socket.timeout, TimeoutError)):
        detail = f"dial tcp {hp}: i/o timeout"
    elif isinstance(exc, OSError) and exc.errno == errno.ENETUNREACH:
        detail = f"dial tcp {hp}: connect: network is unreachable"
    elif isinstance(exc, OSError) and exc.errno == errno.EHOSTUNREACH:
        detail = f"dial tcp {hp}: connect: no route to host"
    elif isinstance(exc, ConnectionResetError):
        detail = f"read tcp {hp}: read: connection reset by peer"
    elif isinstance(exc, (http.client.IncompleteRead, http.client.RemoteDisconnected)):
        detail = "EOF"
    else:
        detail = str(exc) or exc.__class__.__name__
    return f'{method} "{url}": {detail}'


def _user_agent() -> str:
    return f"ollama/{lab_version()} (amd64 linux) Go/go1.24.0"


class _Stop:
    """CheckRedirect's http.ErrUseLastResponse: hand back the redirect response itself."""


USE_LAST_RESPONSE = _Stop()


def _default_check_redirect(url: str, via: list[str]):
    """net/http's default redirect policy: any host, at most 10 redirects."""
    if len(via) >= MAX_REDIRECTS:
        return "stopped after 10 redirects"
    return None


def go_do(method: str, url: str, headers: dict | None = None, check_redirect=None,
          timeout: float = 30.0):
    """http.Client.Do: send METHOD to URL, following redirects as CHECK_REDIRECT(next_url,
    via) allows (None: follow; USE_LAST_RESPONSE: return the redirect itself; a string:
    fail with it). Returns (conn, response, url of that response). Network errors raise
    _Retryable with Go's ``Get "URL": ...`` text. A 3xx without Location is returned."""
    check = check_redirect or _default_check_redirect
    via: list[str] = []
    for _ in range(MAX_REDIRECTS + 2):  # the policy stops by then; bounded regardless
        u = urllib.parse.urlsplit(url)
        op = method.capitalize()
        if u.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                u.hostname, u.port, timeout=timeout, context=ssl.create_default_context())
        elif u.scheme == "http":
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        else:
            raise PullError(f'{op} "{url}": unsupported protocol scheme "{u.scheme}"')
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        hdrs = {"User-Agent": _user_agent()}
        hdrs.update(headers or {})
        try:
            conn.request(method, path, headers=hdrs)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise _Retryable(go_net_error(op, url, e)) from None
        loc = resp.getheader("Location")
        if resp.status not in (301, 302, 303, 307, 308) or not loc:
            return conn, resp, url
        nxt = urllib.parse.urljoin(url, loc)
        via.append(url)
        verdict = check(nxt, via)
        if verdict is USE_LAST_RESPONSE:
            return conn, resp, url
        conn.close()
        if verdict is not None:
            raise _Retryable(f'{op} "{nxt}": {verdict}')
        if resp.status in (301, 302, 303) and method not in ("GET", "HEAD"):
            method = "GET"
        url = nxt
    raise _Retryable(f'{method.capitalize()} "{url}": stopped after 10 redirects')


def make_request_with_retry(method: str, url: str, headers: dict | None = None,
                            check_redirect=None):
    """makeRequestWithRetry (server/images.go): 404 is os.ErrNotExist, any other status
    >= 400 an error "STATUS: BODY"; network errors raise _Retryable."""
    conn, resp, final = go_do(method, url, headers, check_redirect)
    if resp.status < 400:
        return conn, resp, final
    try:
        body = b"" if method == "HEAD" else resp.read(65536)
    except (OSError, http.client.HTTPException) as e:
        body = str(e).encode()
    finally:
        conn.close()
    if resp.status == 404:
        raise PullError(ERR_NOT_EXIST)
    raise PullError(f"{resp.status}: {body.decode('utf-8', 'replace')}")


def http_get(url: str, headers: dict | None = None, timeout: float = 30.0):
    """GET following redirects (net/http's default policy); returns (conn, response)."""
    conn, resp, _ = go_do("GET", url, headers, timeout=timeout)
    return conn, resp
