"""The HTTP API (server/routes.go): routes, CORS and allowed hosts, the handlers."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import socket
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler

from . import cloud, state
from .anthropic import AnthropicWriter, anthropic_error, messages_chat_request
from .apierror import ApiError
from .envconfig import _log_level, _split_host_port, env_float, gin_log, log
from .goformat import _json_kind, go_json, go_time
from .inference import _normalize, embed_vector, fake_context, plan_tokens, show_payload
from .names import DEFAULT_NAMESPACE, parse_name
from .openai_compat import (
    SPEC_OAI_CHAT,
    SPEC_OAI_COMPLETION,
    SPEC_OAI_EMBED,
    OpenAIWriter,
    oai_chat_request,
    oai_completion_request,
    oai_embed_request,
    oai_error,
    oai_parse,
)
from .pull import pull_model
from .registry import PullError
from .responses import (
    ResponsesWriter,
    TranscriptionWriter,
    responses_chat_request,
    transcription_request,
)
from .store import ModelInfo, StoreError
from .validation import (
    SPEC_CHAT,
    SPEC_COPY,
    SPEC_DELETE,
    SPEC_EMBED,
    SPEC_EMBEDDINGS,
    SPEC_GENERATE,
    SPEC_PULL,
    SPEC_SHOW,
    check_format,
    check_images,
    check_think,
    parse_body,
    parse_keep_alive,
    parse_num_predict,
)

UNHEALTHY_MSG = "lab: this build is deliberately unhealthy"


def _origin_allowed(origin: str, allowed: list[str]) -> bool:
    if origin.startswith(("chrome-extension://", "safari-extension://", "moz-extension://",
                          "ms-browser-extension://")):
        return True
    for pat in allowed:
        if pat == "*" or pat == origin:
            return True
        if "*" in pat:
            pre, _, post = pat.partition("*")
            if origin.startswith(pre) and origin.endswith(post) and len(origin) >= len(pat) - 1:
                return True
    return False


def _go_netip(h: str):
    """netip.ParseAddr: an address literal (no brackets; an IPv6 zone allowed), else None."""
    try:
        return ipaddress.ip_address(h)
    except ValueError:
        return None


def _unmap(ip):
    return ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip


_GO_PRIVATE = [ipaddress.ip_network(n) for n in
               ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")]


def _go_is_private(ip) -> bool:
    """netip.Addr.IsPrivate: RFC 1918 and RFC 4193 only (not link-local, not CGNAT)."""
    ip = _unmap(ip)
    return any(ip.version == n.version and ip in n for n in _GO_PRIVATE)


def _local_addresses() -> set[str]:
    """The addresses of this machine's interfaces (net.Interfaces, Addrs), as strings."""
    found: set[str] = set()
    try:
        with open("/proc/net/fib_trie", encoding="ascii") as f:
            lines = f.read().splitlines()
        for i, line in enumerate(lines[1:], 1):
            if "/32 host LOCAL" in line and "|--" in lines[i - 1]:
                found.add(lines[i - 1].split("|--")[1].strip())
    except OSError:
        pass
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as f:
            for line in f:
                hexaddr = line.split()[0]
                found.add(str(ipaddress.IPv6Address(int(hexaddr, 16))))
    except (OSError, ValueError, IndexError):
        pass
    return found


def _is_local_ip(ip) -> bool:
    """isLocalIP: the address (as written, zone included) is one of an interface's."""
    return str(ip) in _local_addresses()


def _host_allowed(host: str) -> bool:
    """allowedHostsMiddleware for a loopback listener (v0.6.8 and v0.32.15 alike): an IP
    literal that is loopback, private (Go's IsPrivate), unspecified or one of this
    machine's own addresses; else `localhost`, the machine's name or a name under
    `.localhost`, `.local`, `.internal`. A link-local address is not allowed unless an
    interface has it."""
    h, _port = _split_host_port(host)
    if h is None:
        h = host
    if _host_allowed_ip_only(h):
        return True
    h = h.lower()
    if h in ("", "localhost") or h == socket.gethostname().lower():
        return True
    return h.endswith((".localhost", ".local", ".internal"))


def _host_allowed_ip_only(h: str) -> bool:
    ip = _go_netip(h)
    if ip is None:
        return False
    return _unmap(ip).is_loopback or _go_is_private(ip) or str(ip) in ("0.0.0.0", "::") \
        or _is_local_ip(ip)


ROUTES: dict[str, dict[str, str]] = {
    "/": {"GET": "root", "HEAD": "root"},
    "/api/version": {"GET": "version", "HEAD": "version"},
    "/api/pull": {"POST": "pull"},
    "/api/push": {"POST": "unsupported"},
    "/api/tags": {"GET": "tags", "HEAD": "tags"},
    "/api/show": {"POST": "show"},
    "/api/delete": {"DELETE": "delete"},
    "/api/create": {"POST": "unsupported"},
    "/api/copy": {"POST": "copy"},
    "/api/ps": {"GET": "ps"},
    "/api/generate": {"POST": "generate"},
    "/api/chat": {"POST": "chat"},
    "/api/embed": {"POST": "embed"},
    "/api/embeddings": {"POST": "embeddings"},
    "/v1/chat/completions": {"POST": "openai_chat"},
    "/v1/completions": {"POST": "openai_completions"},
    "/v1/embeddings": {"POST": "openai_embeddings"},
    "/v1/models": {"GET": "openai_models"},
}
PARAM_ROUTES = [
    (re.compile(r"^/api/blobs/[^/]+$"), {"POST": "unsupported", "HEAD": "head_blob"}),
    (re.compile(r"^/v1/models/[^/]+$"), {"GET": "openai_retrieve"}),
]
# server/routes.go GenerateRoutes of v0.32.15: the routes 0.6/0.7 do not have (404 there)
ROUTES_CURRENT: dict[str, dict[str, str]] = {
    "/api/status": {"GET": "status"},
    "/api/me": {"POST": "whoami"},
    "/api/signout": {"POST": "signout"},
    "/api/experimental/web_search": {"POST": "web_search"},
    "/api/experimental/web_fetch": {"POST": "web_fetch"},
    "/api/experimental/model-recommendations": {"GET": "model_recommendations"},
    "/v1/responses": {"POST": "openai_responses"},
    "/v1/audio/transcriptions": {"POST": "openai_transcriptions"},
    "/v1/messages": {"POST": "anthropic_messages"},
}
PARAM_ROUTES_CURRENT = [
    (re.compile(r"^/api/user/keys/[^/]+$"), {"DELETE": "signout"}),
]
# cloudPassthroughMiddleware sits on these (v0.32.15)
CLOUD_PASSTHROUGH = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                     "/v1/responses", "/v1/messages"}
# defaultModelRecommendations (server/model_recommendations.go, v0.32.15), the first ones
MODEL_RECOMMENDATIONS = [
    {"model": "kimi-k2.6:cloud", "description": "State-of-the-art coding, long-horizon "
     "execution, and multimodal agent swarm capability", "context_length": 262144,
     "max_output_tokens": 262144},
    {"model": "glm-5.1:cloud", "description": "Reasoning and code generation",
     "context_length": 202752, "max_output_tokens": 131072},
    {"model": "gemma4", "description": "Reasoning and code generation locally",
     "vram_bytes": 12 * 10**9},
]


def _match_route(path: str, current: bool = False) -> dict[str, str] | None:
    if path in ROUTES:
        return ROUTES[path]
    if current and path in ROUTES_CURRENT:
        return ROUTES_CURRENT[path]
    for rx, methods in PARAM_ROUTES + (PARAM_ROUTES_CURRENT if current else []):
        if rx.match(path):
            return methods
    return None


def _list_capabilities(caps: list[str]) -> list[str]:
    """buildModelListSummary's order: the model file's (completion or embedding), then
    tools, insert, thinking from the template, vision from a projector."""
    order = ["completion", "embedding", "tools", "insert", "thinking", "vision"]
    return sorted(caps, key=lambda c: order.index(c) if c in order else len(order))


def _has_web_search_tool(path: str, payload: dict) -> bool:
    """hasWebSearchTool: a Responses `web_search` tool, or a Messages tool whose type
    starts with `web_search`."""
    tools = payload.get("tools")
    if not isinstance(tools, list):
        return False
    types = [str(t.get("type") or "") for t in tools if isinstance(t, dict)]
    if path == "/v1/responses":  # openai.HasWebSearchTool: the type exactly, not trimmed
        return "web_search" in types
    return path == "/v1/messages" and any(t.strip().startswith("web_search") for t in types)


class _ClientGone(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Go's net package sets TCP_NODELAY on every TCP connection (net/tcpsock_posix.go,
    # newTCPConn -> setNoDelay): an answer's header and body segments go out at once,
    # never held for the peer's delayed ACK (a 40 ms stall per answer with Nagle on).
    disable_nagle_algorithm = True
    server_version = "ollama"
    sys_version = ""

    # -- plumbing ---------------------------------------------------------

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler signature
        if _log_level() <= 10:
            log("DEBUG", "server.go:3300", "http: " + (format % args))

    def send_response(self, code, message=None):
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())
        self._status = code

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, body: bytes, ctype: str | None, extra: dict | None = None):
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        for k, v in self._cors.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self.wfile.flush()

    def send_json(self, status: int, obj) -> None:
        w = self._oai
        if w is None:
            self._send(status, go_json(obj), "application/json; charset=utf-8")
        elif status != 200:
            self._send(status, w.error(status, obj), "application/json")
        elif w.stream:
            self._send(status, w.frames(obj),
                       getattr(w, "content_type", "text/event-stream"))
        else:
            self._send(status, w.document(obj), "application/json")

    def send_error_json(self, status: int, message: str) -> None:
        self.send_json(status, {"error": message})

    def send_empty(self, status: int = 200) -> None:
        self._send(status, b"", None)

    def start_stream(self) -> None:
        self._chunked = self.request_version != "HTTP/1.0"
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson" if self._oai is None
                         else getattr(self._oai, "content_type", "text/event-stream"))
        for k, v in self._cors.items():
            self.send_header(k, v)
        if self._chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:  # HTTP/1.0 has no chunked encoding: the body ends when the connection closes
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self._streaming = True

    def stream_line(self, obj) -> None:
        data = go_json(obj) + b"\n" if self._oai is None else self._oai.frames(obj)
        if not data:  # a writer that holds its answer until the end (transcriptions)
            return
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)
            self.wfile.flush()
        except OSError:
            raise _ClientGone() from None

    def end_stream(self) -> None:
        if not self._chunked:
            return
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            raise _ClientGone() from None

    def _handle(self) -> None:
        t0 = time.monotonic_ns()
        self._status = 0
        self._streaming = False
        self._cors: dict[str, str] = {}
        self._oai: OpenAIWriter | None = None  # set by the OpenAI-compatible routes
        self._cloud_web_search = False  # cloudWebSearchOrchestrationKey
        path = urllib.parse.urlsplit(self.path).path or "/"
        try:
            body = self._read_body()
            self._dispatch(path, body)
        except _ClientGone:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - never kill the connection thread silently
            log("ERROR", "routes.go:0", "lab: unhandled error", path=path, error=repr(e))
            if self._status == 0:
                try:
                    self.send_error_json(500, str(e) or e.__class__.__name__)
                except OSError:
                    self.close_connection = True
            else:
                self.close_connection = True
        finally:
            ip = self.client_address[0]
            gin_log(self._status or 500, time.monotonic_ns() - t0,
                    ip[7:] if ip.startswith("::ffff:") else ip, self.command, path)

    do_GET = do_HEAD = do_POST = do_DELETE = do_PUT = do_PATCH = do_OPTIONS = _handle

    def _dispatch(self, path: str, body: bytes) -> None:
        st = state.STATE
        assert st is not None  # noqa: S101 (type narrowing)
        if st.unhealthy():
            self.send_error_json(500, UNHEALTHY_MSG)
            return
        methods = _match_route(path, st.current)
        if methods is None and path != "/" and path.endswith("/"):
            if _match_route(path.rstrip("/"), st.current) is not None:
                code = 301 if self.command == "GET" else 307
                self._send(code, b"", None, {"Location": path.rstrip("/")})
                return
        # gin-contrib/cors
        origin = self.headers.get("Origin")
        host = self.headers.get("Host", "")
        if origin and origin not in (f"http://{host}", f"https://{host}"):
            if not _origin_allowed(origin, st.origins):
                self._send(403, b"", None)
                return
            self._cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
            if self.command == "OPTIONS":
                self._send(204, b"", None, {
                    "Access-Control-Allow-Methods": "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS",
                    "Access-Control-Allow-Headers": "Authorization,Content-Type,User-Agent,"
                    "Accept,X-Requested-With,OpenAI-Beta",
                    "Access-Control-Max-Age": "43200",
                })
                return
        if st.loopback and not _host_allowed(host):
            self._send(403, b"", None)
            return
        if st.loopback and self.command == "OPTIONS" and not _host_allowed_ip_only(
                _split_host_port(host)[0] or host):
            self._send(204, b"", None)  # allowed by name: an OPTIONS ends here
            return
        if methods is None:
            self._send(404, b"404 page not found", "text/plain")
            return
        if st.current and self.command == "GET" and path.startswith("/v1/models/") and \
                self._cloud_model_path(path):
            return
        if self.command == "OPTIONS" and "OPTIONS" not in methods:
            self._send(204, b"", None)
            return
        action = methods.get(self.command)
        if action is None:
            self._send(405, b"405 method not allowed", "text/plain",
                       {"Allow": ", ".join(sorted(methods))})
            return
        if st.current and self._cloud_passthrough(path, body):
            return
        try:
            getattr(self, "h_" + action)(body, path)
        except ApiError as e:
            if self._streaming:
                self.stream_line({"error": e.message})
                self.end_stream()
            else:
                self.send_error_json(e.status, e.message)

    # -- handlers ---------------------------------------------------------

    def h_root(self, body, path):
        self._send(200, b"Ollama is running", "text/plain; charset=utf-8")

    def h_version(self, body, path):
        self.send_json(200, {"version": state.STATE.version})

    # -- v0.32: the cloud (server/cloud_proxy.go) ------------------------------------

    def _send_gin_json(self, status: int, obj) -> None:
        """c.JSON from a middleware or handler that answers before any OpenAI writer."""
        self._send(status, go_json(obj), "application/json; charset=utf-8")

    def _proxy(self, body: bytes, path: str, operation: str, *, base_url: str | None = None,
               headers: list[tuple[str, str]] | None = None) -> None:
        """proxyCloudRequestWithPath: refused while the cloud is disabled, else the
        request goes to the cloud and its answer is copied back as it arrives."""
        if cloud.disabled():
            self._proxy_error(403, {"error": cloud.disabled_error(operation)})
            return
        query = urllib.parse.urlsplit(self.path).query
        try:
            answer = cloud.request(self.command, path, query, body,
                                   list(self.headers.items()) if headers is None else headers,
                                   state.STATE.version, base_url=base_url)
        except cloud.CloudError as e:
            self._proxy_error(e.status, {"error": e.message, **e.extra})
            return
        if self._oai is not None:
            self._proxy_through_writer(answer)
            return
        self._chunked = self.request_version != "HTTP/1.0"
        self.send_response(answer.status)
        for k, v in answer.headers:
            self.send_header(k, v)
        for k, v in self._cors.items():
            self.send_header(k, v)
        if self._chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self._streaming = True
        try:
            for data in answer.chunks():
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)
                self.wfile.flush()
        except OSError as e:
            log("WARN", "cloud_proxy.go:262", "cloud proxy response copy failed", path=path,
                upstream_path=path, status=answer.status, error=str(e))
            self.close_connection = True
            return
        self.end_stream()

    def _proxy_error(self, status: int, obj: dict) -> None:
        """c.JSON(status, ...) in proxyCloudRequestWithPath: a plain gin answer from the
        passthrough middleware; from a handler behind a compatibility middleware its
        writer shapes it (ChatWriter/ResponsesWriter/AnthropicWriter.writeError), and the
        Responses web_search writer answers with writeWebSearchError."""
        w = self._oai
        if isinstance(w, ResponsesWriter) and w.web_search:
            if w.stream:  # the status stays with the wrapper: the stream goes out as 200
                self._send(200, w.failed_frames(status, obj), "text/event-stream",
                           {"Cache-Control": "no-cache", "Connection": "keep-alive"})
            else:
                self._send(status, w.web_search_error(status, obj), "application/json")
            return
        self.send_json(status, obj)

    def _proxy_through_writer(self, answer) -> None:
        """The cloud's answer copied into c.Writer, which is the compatibility writer: a
        200's native lines are translated by it, anything else is its error."""
        data = b"".join(answer.chunks())
        lines = [ln for ln in data.splitlines() if ln.strip()]
        docs = []
        for ln in lines:
            try:
                docs.append(json.loads(ln))
            except ValueError:
                docs.append(None)
        if answer.status != 200:
            doc = docs[0] if len(docs) == 1 and isinstance(docs[0], dict) else \
                {"error": data.decode("utf-8", "replace")}
            self._proxy_error(answer.status, doc)
            return
        docs = [d for d in docs if isinstance(d, dict)]
        if getattr(self._oai, "stream", False):
            self.start_stream()
            for d in docs:
                self.stream_line(d)
            self.end_stream()
        else:
            self.send_json(200, docs[-1] if docs else {})

    def _cloud_passthrough(self, path: str, body: bytes) -> bool:
        """cloudPassthroughMiddleware: a POST whose JSON `model` names a cloud model goes
        to the cloud with the model's base name (the body re-encoded as Go encodes a
        map: keys sorted); anything else goes on to the local handler."""
        if self.command != "POST" or path not in CLOUD_PASSTHROUGH:
            return False
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            return False
        model = payload.get("model") if isinstance(payload, dict) else None
        if not isinstance(model, str) or not model.strip():
            return False
        base = cloud.cloud_base(model.strip())
        if base is None:
            return False
        payload["model"] = base
        if _has_web_search_tool(path, payload):
            # kept on the local middleware path; ChatHandler sends it to the cloud's
            # /api/chat (cloudWebSearchOrchestrationKey)
            self._cloud_web_search = True
            return False
        self._proxy(go_json({k: payload[k] for k in sorted(payload)}), path,
                    cloud.ERR_REMOTE_INFERENCE)
        return True

    def _cloud_model_path(self, path: str) -> bool:
        """cloudModelPathPassthroughMiddleware for GET /v1/models/:model."""
        base = cloud.cloud_base(urllib.parse.unquote(path[len("/v1/models/"):]).strip())
        if base is None:
            return False
        self._proxy(b"", "/v1/models/" + base, cloud.ERR_REMOTE_MODEL_DETAILS)
        return True

    def _native_cloud(self, req: dict, fallback_status: int, fallback_message: str | None,
                      operation: str) -> bool:
        """The native handlers' parseAndValidateModelRef (v0.32): a cloud model's request
        goes to the cloud under the same path, re-encoded with its base name."""
        if not state.STATE.current:
            return False
        raw = req.get("model") or ""
        try:
            base, source = cloud.parse_ref(raw)
        except cloud.ConflictingSource as e:
            raise ApiError(400, str(e)) from None
        except ValueError as e:
            raise ApiError(fallback_status, fallback_message or str(e)) from None
        if not parse_name(base).is_valid():
            raise ApiError(400, "invalid model name")
        if source != "cloud":
            return False
        path = urllib.parse.urlsplit(self.path).path
        if self._cloud_web_search and operation == cloud.ERR_REMOTE_INFERENCE:
            path = "/api/chat"  # ChatHandler: proxyCloudJSONRequestWithPath(.., "/api/chat")
        self._proxy(go_json(dict(req, model=base)), path, operation)
        return True

    def h_status(self, body, path):
        """StatusHandler."""
        self._send_gin_json(200, {"cloud": {"disabled": cloud.disabled(),
                                            "source": cloud.source()}})

    def _web(self, body: bytes, proxy_path: str, operation: str) -> None:
        """webExperimentalProxyHandler: the client's Authorization is dropped, an empty
        body refused, the rest proxied to the cloud's web endpoint."""
        if not body.strip():
            raise ApiError(400, "missing request body")
        headers = [(k, v) for k, v in self.headers.items() if k.lower() != "authorization"]
        self._proxy(body, proxy_path, operation, headers=headers)

    def h_web_search(self, body, path):
        self._web(body, "/api/web_search", cloud.ERR_WEB_SEARCH)

    def h_web_fetch(self, body, path):
        self._web(body, "/api/web_fetch", cloud.ERR_WEB_FETCH)

    def h_model_recommendations(self, body, path):
        """ModelRecommendationsExperimentalHandler with the built-in defaults (the
        stand-in never refreshes them from ollama.com)."""
        self._send_gin_json(200, {"recommendations": MODEL_RECOMMENDATIONS})

    def _account_call(self, method: str, path: str):
        """api.Client.do against https://ollama.com (signed): (status, decoded body)."""
        try:
            answer = cloud.request(method, path, "", b"", [
                ("Content-Type", "application/json"), ("Accept", "application/json"),
                ("User-Agent", f"ollama/{state.STATE.version} (amd64 linux) Go/go1.24")],
                state.STATE.version, base_url="https://ollama.com")
        except cloud.CloudError as e:
            if e.status == 401:
                return 401, {"error": "unauthorized", **e.extra}
            return None, {"error": e.message}
        data = b"".join(answer.chunks())
        try:
            doc = json.loads(data) if data else None
        except ValueError:
            doc = {"error": data.decode("utf-8", "replace")}
        return answer.status, doc

    def h_whoami(self, body, path):
        """WhoamiHandler: always ollama.com, whatever the cloud settings."""
        status, doc = self._account_call("POST", "/api/me")
        signin = cloud.signin_url()
        if status == 401:
            url = (doc or {}).get("signin_url") or signin
            if not url:
                self._send_gin_json(500, {"error": "error getting authorization details"})
                return
            self._send_gin_json(401, {"error": "unauthorized", "signin_url": url})
            return
        if status is None or status >= 400:
            log("ERROR", "routes.go:2215", str((doc or {}).get("error") or status))
            self._send_gin_json(503, {"error": "account unavailable"})
            return
        user = doc if isinstance(doc, dict) else {}
        if not user.get("name"):
            if not signin:
                self._send_gin_json(500, {"error": "error getting authorization details"})
                return
            self._send_gin_json(401, {"error": "unauthorized", "signin_url": signin})
            return
        out = {"id": user.get("id") or "00000000-0000-0000-0000-000000000000",
               "email": user.get("email") or "", "name": user["name"]}
        for k in ("bio", "avatarurl", "firstname", "lastname"):
            if user.get(k):
                out[k] = user[k]
        out["plan"] = (user.get("plan") or "").strip() or "free"
        self._send_gin_json(200, out)

    def h_signout(self, body, path):
        """SignoutHandler: DELETE /api/user/keys/<key> at ollama.com."""
        pub = cloud.public_key()
        if pub is None:
            self._send_gin_json(500, {"error": "there was an error signing out"})
            return
        enc = base64.urlsafe_b64encode(pub.encode()).decode().rstrip("=")
        status, _doc = self._account_call("DELETE", f"/api/user/keys/{enc}")
        if status == 401:
            self._send_gin_json(401, {"error": "you are not currently signed in"})
        elif status is None or status >= 400:
            self._send_gin_json(500, {"error": "there was an error signing out"})
        else:
            self._send_gin_json(200, None)

    # -- v0.32: Responses, Anthropic Messages, transcriptions ---------------------------

    def h_openai_responses(self, body, path):
        try:
            req, native = responses_chat_request(body)
        except ApiError as e:
            self._oai_abort(e)
            return
        self._oai = ResponsesWriter(req)
        self._oai.web_search = _has_web_search_tool(path, req)  # WebSearchResponsesWriter
        self.h_chat(go_json(native), path)

    def h_anthropic_messages(self, body, path):
        try:
            req, native = messages_chat_request(body)
        except ApiError as e:
            self.send_json(e.status, anthropic_error(e.status, e.message))
            return
        tools = req.get("tools") if isinstance(req.get("tools"), list) else []
        if any(isinstance(t, dict) and str(t.get("type") or "").startswith("web_search")
               for t in tools) and cloud.explicit_cloud(req["model"]) and cloud.disabled():
            # AnthropicMessagesMiddleware: the web_search guard, after the stream headers
            # are set (gin's c.JSON then keeps their Content-Type)
            err = go_json(anthropic_error(403, cloud.disabled_error(cloud.ERR_WEB_SEARCH)))
            if req.get("stream") is True:
                self._send(403, err, "text/event-stream",
                           {"Cache-Control": "no-cache", "Connection": "keep-alive"})
            else:
                self._send(403, err, "application/json; charset=utf-8")
            return
        self._oai = AnthropicWriter(req)
        self.h_chat(go_json(native), path)

    def h_openai_transcriptions(self, body, path):
        try:
            native, fmt = transcription_request(self.headers.get("Content-Type") or "", body)
        except ApiError as e:
            self._oai_abort(e)
            return
        self._oai = TranscriptionWriter(fmt)
        self.h_chat(go_json(native), path)

    def h_unsupported(self, body, path):
        self.send_error_json(500, f"lab: {self.command} {path} is not implemented by the lab "
                                  "stand-in")

    def h_openai_models(self, body, path):
        data = [{"id": m.short, "object": "model", "created": m.manifest.mtime_ns // 10**9,
                 "owned_by": m.name.namespace if m.name.namespace != DEFAULT_NAMESPACE
                 else DEFAULT_NAMESPACE} for m in self._sorted_models()]
        self.send_json(200, {"object": "list", "data": data})

    # -- OpenAI compatibility: translate, run the native handler, translate back --

    def _oai_abort(self, e: ApiError) -> None:
        """c.AbortWithStatusJSON(code, openai.NewError(code, ...)) in the middleware."""
        self.send_json(e.status, oai_error(e.status, e.message))

    def h_openai_chat(self, body, path):
        try:
            req = oai_parse(body, SPEC_OAI_CHAT)
            if not req.get("messages"):
                raise ApiError(400, "[] is too short - 'messages'")
            native = oai_chat_request(req)
        except ApiError as e:
            self._oai_abort(e)
            return
        self._oai = OpenAIWriter("chat", stream=native["stream"],
                                 stream_options=req.get("stream_options"))
        self.h_chat(go_json(native), path)

    def h_openai_completions(self, body, path):
        try:
            req = oai_parse(body, SPEC_OAI_COMPLETION)
            native = oai_completion_request(req)
        except ApiError as e:
            self._oai_abort(e)
            return
        self._oai = OpenAIWriter("completion", stream=native["stream"],
                                 stream_options=req.get("stream_options"))
        self.h_generate(go_json(native), path)

    def h_openai_embeddings(self, body, path):
        try:
            native = oai_embed_request(oai_parse(body, SPEC_OAI_EMBED))
        except ApiError as e:
            self._oai_abort(e)
            return
        self._oai = OpenAIWriter("embed", model=native["model"])
        self.h_embed(go_json(native), path)

    def h_openai_retrieve(self, body, path):
        model = urllib.parse.unquote(path[len("/v1/models/"):])
        if "/" in model:  # gin matches :model on the decoded path, and it holds no "/"
            self._send(404, b"404 page not found", "text/plain")
            return
        self._oai = OpenAIWriter("retrieve", model=model)
        self.h_show(go_json({"model": "", "name": model}), path)

    def h_head_blob(self, body, path):
        digest = path.rsplit("/", 1)[-1]
        try:
            p = state.STATE.store.blob_path(digest)
        except StoreError as e:
            raise ApiError(400, str(e)) from None
        if not os.path.isfile(p):
            raise ApiError(404, f'blob "{digest}" not found')
        self.send_empty(200)

    def _sorted_models(self) -> list[ModelInfo]:
        models = state.STATE.store.models(current=state.STATE.current)
        models.sort(key=lambda m: m.manifest.mtime_ns // 10**9, reverse=True)
        return models

    def h_tags(self, body, path):
        out = []
        for m in self._sorted_models():
            out.append({
                "name": m.short,
                "model": m.short,
                "modified_at": go_time(m.manifest.mtime_ns),
                "size": m.manifest.size(),
                "digest": m.manifest.digest,
                "details": m.details(),
            })
            if state.STATE.current:  # modelListSummary: parent model and capabilities
                out[-1]["details"]["parent_model"] = next(
                    (str(x.get("from") or "") for x in m.manifest.layers
                     if x.get("mediaType") == "application/vnd.ollama.image.model"), "")
                caps = _list_capabilities(m.capabilities())
                if caps:
                    out[-1]["capabilities"] = caps
        self.send_json(200, {"models": out})

    def h_ps(self, body, path):
        self.send_json(200, {"models": state.STATE.sched.snapshot()})

    def h_pull(self, body, path):
        req = parse_body(body, SPEC_PULL)
        raw_name = req.get("model") or req.get("name") or ""
        name = parse_name(raw_name)
        if not name.is_valid():
            raise ApiError(400, "invalid model name")
        name = state.STATE.store.existing_name(name)
        insecure = bool(req.get("insecure"))
        stream = req.get("stream")
        if stream is False:
            latest: dict = {}

            def keep(obj):
                latest.clear()
                latest.update(obj)

            try:
                pull_model(state.STATE.store, name, insecure, keep,
                           registry_bytes=state.STATE.current)
            except PullError as e:
                raise ApiError(500, str(e)) from None
            self.send_json(200, latest)
            return
        self.start_stream()
        try:
            pull_model(state.STATE.store, name, insecure, self.stream_line,
                       registry_bytes=state.STATE.current)
        except PullError as e:
            log("INFO", "routes.go:611", "pull failed", model=raw_name, error=str(e))
            self.stream_line({"error": str(e)})
        self.end_stream()

    def h_show(self, body, path):
        req = parse_body(body, SPEC_SHOW)
        raw = req.get("model") or req.get("name") or ""
        if not raw:
            raise ApiError(400, "model is required")
        if self._native_cloud(dict(req, model=raw), 400, None, cloud.ERR_REMOTE_MODEL_DETAILS):
            return
        name = parse_name(raw)
        if not name.is_valid():
            raise ApiError(500, "invalid model path")
        info = state.STATE.store.get_model(state.STATE.store.existing_name(name))
        if info is None or not info.model_present:  # getModelData: os.Stat of the model
            raise ApiError(404, f"model '{raw}' not found")
        if req.get("system"):
            info.system = req["system"]
        self.send_json(200, show_payload(state.STATE.store, info))

    def h_copy(self, body, path):
        req = parse_body(body, SPEC_COPY)
        src_raw, dst_raw = req.get("source") or "", req.get("destination") or ""
        src = parse_name(src_raw)
        if not src.is_valid():
            raise ApiError(400, f'source "{src_raw}" is invalid')
        src = state.STATE.store.existing_name(src)
        dst = parse_name(dst_raw)
        if not dst.is_valid():
            raise ApiError(400, f'destination "{dst_raw}" is invalid')
        dst = state.STATE.store.existing_name(dst)
        if not state.STATE.store.copy(src, dst):
            raise ApiError(404, f'model "{src_raw}" not found')
        self.send_empty(200)

    def h_delete(self, body, path):
        req = parse_body(body, SPEC_DELETE)
        raw = req.get("model") or req.get("name") or ""
        name = parse_name(raw)
        if not name.is_valid():
            raise ApiError(400, f'name "{raw}" is invalid')
        if not state.STATE.store.delete(state.STATE.store.existing_name(name)):
            raise ApiError(404, f"model '{raw}' not found")
        self.send_empty(200)

    # -- inference --------------------------------------------------------

    def _run_completion(self, *, req, info, model_raw, prompt_text, eval_words, chat, t0):
        keep_alive = parse_keep_alive(req)
        num_predict = parse_num_predict(req)
        fmt = check_format(req)
        num_ctx = (req.get("options") or {}).get("num_ctx")
        sched = state.STATE.sched
        runner = sched.acquire(
            info, keep_alive, num_ctx if isinstance(num_ctx, int) and num_ctx > 0 else None)
        try:
            t_loaded = time.monotonic_ns()
            empty = (not req.get("messages")) if chat else (not req.get("prompt"))
            stream = req.get("stream") is not False
            fault = None if empty else sched.runner_fault(runner)
            if fault:  # the runner aborts at its first step: a stream has begun by then
                if stream:
                    self.start_stream()
                raise ApiError(500, fault)
            if empty:
                resp = {"model": model_raw, "created_at": go_time(time.time_ns(), utc=True)}
                if chat:
                    resp["message"] = {"role": "assistant", "content": ""}
                    resp["done_reason"] = "load"
                    resp["done"] = True
                else:
                    resp.update(response="", done=True, done_reason="load")
                self.send_json(200, resp)
                return
            tokens, reason = plan_tokens(prompt_text, fmt, num_predict)
            delay = env_float("OLLAMA_LAB_TOKEN_DELAY", 0.02)
            if runner.slow:  # on the CPU
                delay *= env_float("OLLAMA_LAB_CPU_SLOWDOWN", 10.0)
            prompt_count = max(1, eval_words)
            if stream:
                self.start_stream()
            t_eval = time.monotonic_ns()
            pieces = []
            for tok in tokens:
                if delay:
                    time.sleep(delay)
                fault = sched.runner_fault(runner)
                if fault:  # its GPU broke under it: the request ends with the error
                    raise ApiError(500, fault)
                pieces.append(tok)
                if stream:
                    line = {"model": model_raw, "created_at": go_time(time.time_ns(), utc=True)}
                    if chat:
                        line["message"] = {"role": "assistant", "content": tok}
                    else:
                        line["response"] = tok
                    line["done"] = False
                    self.stream_line(line)
            t_end = time.monotonic_ns()
            text = "".join(pieces)
            final = {"model": model_raw, "created_at": go_time(time.time_ns(), utc=True)}
            if chat:
                final["message"] = {"role": "assistant", "content": "" if stream else text}
                final["done_reason"] = reason
                final["done"] = True
            else:
                final["response"] = "" if stream else text
                final["done"] = True
                final["done_reason"] = reason
                if not req.get("raw"):
                    final["context"] = fake_context(prompt_text + " " + text)
            final.update(
                total_duration=max(1, t_end - t0),
                load_duration=max(1, t_loaded - t0),
                prompt_eval_count=prompt_count,
                prompt_eval_duration=max(1, prompt_count * 100_000),
                eval_count=len(tokens),
                eval_duration=max(1, t_end - t_eval),
            )
            if stream:
                self.stream_line(final)
                self.end_stream()
            else:
                self.send_json(200, final)
        finally:
            state.STATE.sched.release(runner)

    def _check_caps(self, info: ModelInfo, model_raw: str, want: list[str], verb: str) -> None:
        have = info.capabilities()
        if "completion" in want and "completion" not in have:
            raise ApiError(400, f'"{model_raw}" does not support {verb}')
        missing = [c for c in want if c not in have and c != "completion"]
        if missing:
            raise ApiError(400, f"{info.name} does not support {', '.join(missing)}")

    def h_generate(self, body, path):
        t0 = time.monotonic_ns()
        req = parse_body(body, SPEC_GENERATE)
        raw = req.get("model") or ""
        if self._native_cloud(req, 404, f"model '{raw}' not found",
                              cloud.ERR_REMOTE_INFERENCE):
            return
        name = parse_name(raw)
        if not name.is_valid():
            raise ApiError(404, f"model '{raw}' not found")
        info = state.STATE.store.get_model(state.STATE.store.existing_name(name))
        if info is None:
            raise ApiError(404, f"model '{raw}' not found")
        keep_alive = parse_keep_alive(req)
        prompt = req.get("prompt") or ""
        if not prompt and keep_alive == 0 and "keep_alive" in req:
            state.STATE.sched.expire(info)
            self.send_json(200, {"model": raw, "created_at": go_time(time.time_ns(), utc=True),
                                 "response": "", "done": True, "done_reason": "unload"})
            return
        if req.get("raw") and (req.get("template") or req.get("system") or req.get("context")):
            raise ApiError(400, "raw mode does not support template, system, or context")
        check_images(req.get("images"))
        check_think(req, info, raw)
        want = ["completion"] + (["insert"] if req.get("suffix") else [])
        self._check_caps(info, raw, want, "generate")
        system = req.get("system") or info.system
        words = len((system + " " + prompt).split())
        self._run_completion(req=req, info=info, model_raw=raw, prompt_text=prompt,
                             eval_words=words, chat=False, t0=t0)

    def h_chat(self, body, path):
        t0 = time.monotonic_ns()
        req = parse_body(body, SPEC_CHAT)
        raw = req.get("model") or ""
        if self._native_cloud(req, 400, "model is required", cloud.ERR_REMOTE_INFERENCE):
            return
        messages = req.get("messages") or []
        for msg in messages:
            if not isinstance(msg, dict):
                raise ApiError(400, f"json: cannot unmarshal {_json_kind(msg)} into Go struct "
                                    "field ChatRequest.messages of type api.Message")
            for k in ("role", "content"):
                if msg.get(k) is not None and not isinstance(msg.get(k), str):
                    raise ApiError(400, f"json: cannot unmarshal {_json_kind(msg[k])} into Go "
                                        f"struct field Message.messages.{k} of type string")
            check_images(msg.get("images"))
        keep_alive = parse_keep_alive(req)
        name = parse_name(raw)
        if not messages and keep_alive == 0 and "keep_alive" in req:
            info = state.STATE.store.get_model(state.STATE.store.existing_name(name)) \
                if name.is_valid() else None
            if info is None:
                raise ApiError(404, f"model '{raw}' not found")
            state.STATE.sched.expire(info)
            self.send_json(200, {"model": raw, "created_at": go_time(time.time_ns(), utc=True),
                                 "message": {"role": "assistant", "content": ""},
                                 "done_reason": "unload", "done": True})
            return
        if not name.is_valid():
            raise ApiError(400, "model is required")
        info = state.STATE.store.get_model(state.STATE.store.existing_name(name))
        if info is None:
            raise ApiError(404, f'model "{raw}" not found, try pulling it first')
        check_think(req, info, raw)
        want = ["completion"] + (["tools"] if req.get("tools") else [])
        self._check_caps(info, raw, want, "chat")
        last = ""
        for msg in messages:
            if msg.get("role") == "user":
                last = msg.get("content") or ""
        if not last and messages:
            last = messages[-1].get("content") or ""
        words = sum(len(str(m.get("content") or "").split()) + 1 for m in messages)
        if info.system and (not messages or messages[0].get("role") != "system"):
            words += len(info.system.split())
        self._run_completion(req=req, info=info, model_raw=raw, prompt_text=last,
                             eval_words=words, chat=True, t0=t0)

    def _embed_model(self, raw: str, legacy: bool) -> ModelInfo:
        name = parse_name(raw)
        if legacy and not name.is_valid():
            raise ApiError(400, "model is required")
        info = state.STATE.store.get_model(state.STATE.store.existing_name(name)) \
            if name.is_valid() else None
        if info is None or not info.model_present:  # the load's LoadModel: not exist
            raise ApiError(404, f'model "{raw}" not found, try pulling it first')
        return info

    def h_embed(self, body, path):
        t0 = time.monotonic_ns()
        req = parse_body(body, SPEC_EMBED)
        raw = req.get("model") or ""
        if self._native_cloud(req, 404, f"model '{raw}' not found", cloud.ERR_REMOTE_INFERENCE):
            return
        inp = req.get("input")
        if isinstance(inp, str):
            inputs = [inp] if inp else []
        elif isinstance(inp, list):
            if not all(isinstance(x, str) for x in inp):
                raise ApiError(400, "invalid input type")
            inputs = list(inp)
        elif inp is None:
            inputs = []
        else:
            raise ApiError(400, "invalid input type")
        info = self._embed_model(raw, legacy=False)
        keep_alive = parse_keep_alive(req)
        runner = state.STATE.sched.acquire(info, keep_alive)
        try:
            t_loaded = time.monotonic_ns()
            fault = state.STATE.sched.runner_fault(runner) if inputs else None
            if fault:
                raise ApiError(500, fault)
            if not inputs:
                self.send_json(200, {"model": raw, "embeddings": []})
                return
            dims = req.get("dimensions") or 0
            vecs = []
            count = 0
            for text in inputs:
                v = embed_vector(text)
                if isinstance(dims, (int, float)) and 0 < int(dims) < len(v):
                    v = _normalize(v[:int(dims)])
                vecs.append(v)
                count += max(1, len(text.split())) + 2
            self.send_json(200, {
                "model": raw,
                "embeddings": vecs,
                "total_duration": max(1, time.monotonic_ns() - t0),
                "load_duration": max(1, t_loaded - t0),
                "prompt_eval_count": count,
            })
        finally:
            state.STATE.sched.release(runner)

    def h_embeddings(self, body, path):
        req = parse_body(body, SPEC_EMBEDDINGS)
        if self._native_cloud(req, 400, "model is required", cloud.ERR_REMOTE_INFERENCE):
            return  # EmbeddingsHandler: a cloud model goes to the cloud's /api/embeddings
        info = self._embed_model(req.get("model") or "", legacy=True)
        keep_alive = parse_keep_alive(req)
        runner = state.STATE.sched.acquire(info, keep_alive)
        try:
            prompt = req.get("prompt") or ""
            fault = state.STATE.sched.runner_fault(runner) if prompt else None
            if fault:
                raise ApiError(500, fault)
            self.send_json(200, {"embedding": embed_vector(prompt) if prompt else []})
        finally:
            state.STATE.sched.release(runner)
