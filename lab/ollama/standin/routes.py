"""The HTTP API (server/routes.go): routes, CORS and allowed hosts, the handlers."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler

from . import state
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


def _host_allowed(host: str) -> bool:
    """allowedHostsMiddleware for a loopback listener."""
    h, port = _split_host_port(host)
    if h is None:
        h = host
    h = h.strip("[]").lower()
    try:
        ip = ipaddress.ip_address(h)
        return ip.is_loopback or ip.is_private or ip.is_unspecified or ip.is_link_local
    except ValueError:
        pass
    if h in ("", "localhost") or h == socket.gethostname().lower():
        return True
    return h.endswith((".localhost", ".local", ".internal"))


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


def _match_route(path: str) -> dict[str, str] | None:
    if path in ROUTES:
        return ROUTES[path]
    for rx, methods in PARAM_ROUTES:
        if rx.match(path):
            return methods
    return None


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
            self._send(status, w.frames(obj), "text/event-stream")
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
                         else "text/event-stream")
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
        methods = _match_route(path)
        if methods is None and path != "/" and path.endswith("/"):
            if _match_route(path.rstrip("/")) is not None:
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
        if methods is None:
            self._send(404, b"404 page not found", "text/plain")
            return
        if self.command == "OPTIONS" and "OPTIONS" not in methods:
            self._send(204, b"", None)
            return
        action = methods.get(self.command)
        if action is None:
            self._send(405, b"405 method not allowed", "text/plain",
                       {"Allow": ", ".join(sorted(methods))})
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
        models = state.STATE.store.models()
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
                pull_model(state.STATE.store, name, insecure, keep)
            except PullError as e:
                raise ApiError(500, str(e)) from None
            self.send_json(200, latest)
            return
        self.start_stream()
        try:
            pull_model(state.STATE.store, name, insecure, self.stream_line)
        except PullError as e:
            log("INFO", "routes.go:611", "pull failed", model=raw_name, error=str(e))
            self.stream_line({"error": str(e)})
        self.end_stream()

    def h_show(self, body, path):
        req = parse_body(body, SPEC_SHOW)
        raw = req.get("model") or req.get("name") or ""
        if not raw:
            raise ApiError(400, "model is required")
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
        runner = state.STATE.sched.acquire(info, keep_alive)
        try:
            t_loaded = time.monotonic_ns()
            empty = (not req.get("messages")) if chat else (not req.get("prompt"))
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
            stream = req.get("stream") is not False
            prompt_count = max(1, eval_words)
            if stream:
                self.start_stream()
            t_eval = time.monotonic_ns()
            pieces = []
            for tok in tokens:
                if delay:
                    time.sleep(delay)
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
        info = self._embed_model(req.get("model") or "", legacy=True)
        keep_alive = parse_keep_alive(req)
        runner = state.STATE.sched.acquire(info, keep_alive)
        try:
            prompt = req.get("prompt") or ""
            self.send_json(200, {"embedding": embed_vector(prompt) if prompt else []})
        finally:
            state.STATE.sched.release(runner)
