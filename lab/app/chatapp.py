#!/usr/bin/env python3
"""Lab stand-in application: a small chat service with a Redis cache in front of Ollama.

It is what an operator would run beside the fleet (image ``fleetlab/chat-app``): one
stdlib-only file, Python 3.11+, no third-party client libraries (the Redis protocol,
RESP, is spoken directly).

Environment:

    PORT             listen port on 0.0.0.0 (default 8000)
    OLLAMA_BASE_URL  Ollama to ask, e.g. http://ollama:11434 (default http://127.0.0.1:11434)
    OLLAMA_MODEL     model for /api/generate (default tinyllama)
    OLLAMA_TIMEOUT   seconds one Ollama request may take (default 300)
    REDIS_URL        redis://[[user]:password@]host[:port][/db]; unset or empty: no cache
    CACHE_TTL        seconds a cached answer lives (default 3600)
    APP_GREETING     free text, only reported by /whoami (to see what a deploy set)

Endpoints:

    GET  /health         200 {"status": "ok"}
    POST /ask            {"prompt": "..."}   (also GET /ask?q=... or ?prompt=...)
                         200 {"answer", "cached", "model", "cache", "cache_key"
                              [, "ollama_version" on a miss]}
                         cache: "hit" | "miss" | "off" (no REDIS_URL) | "unavailable"
                         400 {"error"} bad request; 502 {"error"} Ollama failed
    GET  /whoami         {"hostname", "env": {OLLAMA_BASE_URL, OLLAMA_MODEL, APP_GREETING}}

The cache key is ``chat:<sha256 hex of model + "\\0" + prompt>`` (UTF-8); the value
is the answer text, stored with ``SET key answer EX $CACHE_TTL``. When Redis cannot
be reached the request is still answered from Ollama, with ``"cache": "unavailable"``.

``chatapp.py --check`` exits 0 when http://127.0.0.1:$PORT/health answers 200, 1
otherwise: a healthcheck for images without curl.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_PORT = 8000
DEFAULT_OLLAMA = "http://127.0.0.1:11434"
DEFAULT_MODEL = "tinyllama"
REDIS_TIMEOUT = 2.0
MAX_BODY = 1 << 20


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} chatapp: {message}", file=sys.stderr,
          flush=True)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"chatapp: {name}={raw!r} is not a whole number") from None


# ---------------------------------------------------------------------------
# Redis (RESP2), one short connection per request
# ---------------------------------------------------------------------------


class RedisError(Exception):
    """Redis could not be reached or answered with an error."""


class Redis:
    def __init__(self, url: str, timeout: float = REDIS_TIMEOUT) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "redis":
            raise RedisError(f"REDIS_URL: scheme {parts.scheme!r} not supported (redis:// only)")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.username = urllib.parse.unquote(parts.username) if parts.username else None
        self.password = urllib.parse.unquote(parts.password) if parts.password else None
        db = parts.path.lstrip("/")
        self.db = int(db) if db.isdigit() else 0
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"

    def run(self, *commands: tuple[str, ...]) -> list:
        """Send COMMANDS on a fresh connection (after AUTH/SELECT); return their replies."""
        prelude: list[tuple[str, ...]] = []
        if self.password is not None:
            prelude.append(("AUTH", self.username, self.password) if self.username
                           else ("AUTH", self.password))
        if self.db:
            prelude.append(("SELECT", str(self.db)))
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
                sock.sendall(b"".join(encode(c) for c in (*prelude, *commands)))
                reader = sock.makefile("rb")
                replies = [read_reply(reader) for _ in range(len(prelude) + len(commands))]
        except (OSError, ValueError) as exc:
            raise RedisError(f"{self!r}: {exc}") from exc
        for reply in replies:
            if isinstance(reply, RespError):
                raise RedisError(f"{self!r}: {reply}")
        return replies[len(prelude):]

    def ping(self) -> bool:
        return self.run(("PING",))[0] == "PONG"

    def get(self, key: str) -> str | None:
        value = self.run(("GET", key))[0]
        return value.decode() if isinstance(value, bytes) else None

    def set(self, key: str, value: str, ex: int | None = None) -> None:
        command = ("SET", key, value) + (("EX", str(ex)) if ex and ex > 0 else ())
        self.run(command)


class RespError(str):
    """An error reply (-ERR ...)."""


def encode(command: tuple[str, ...]) -> bytes:
    out = [b"*%d\r\n" % len(command)]
    for arg in command:
        data = arg.encode() if isinstance(arg, str) else bytes(arg)
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def read_reply(reader):
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ValueError("connection closed by Redis")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RespError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = reader.read(size + 2)
        if len(data) != size + 2:
            raise ValueError("connection closed by Redis")
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [read_reply(reader) for _ in range(count)]
    raise ValueError(f"unexpected reply from Redis: {line[:40]!r}")


# ---------------------------------------------------------------------------
# Ollama
# ---------------------------------------------------------------------------


class OllamaError(Exception):
    pass


def ollama_call(base: str, path: str, body: dict | None, timeout: float) -> dict:
    url = base.rstrip("/") + path
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip()
        try:
            detail = json.loads(detail).get("error", detail)
        except (ValueError, AttributeError):
            pass
        raise OllamaError(f"ollama at {url}: HTTP {exc.code}: {detail or exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise OllamaError(f"ollama at {url}: {reason}") from exc
    except ValueError as exc:
        raise OllamaError(f"ollama at {url}: answer is not JSON ({exc})") from exc


# ---------------------------------------------------------------------------
# the application
# ---------------------------------------------------------------------------


class Config:
    def __init__(self) -> None:
        self.port = env_int("PORT", DEFAULT_PORT)
        self.ollama = os.environ.get("OLLAMA_BASE_URL", "").strip() or DEFAULT_OLLAMA
        self.model = os.environ.get("OLLAMA_MODEL", "").strip() or DEFAULT_MODEL
        self.ollama_timeout = env_int("OLLAMA_TIMEOUT", 300)
        self.ttl = env_int("CACHE_TTL", 3600)
        self.redis_url = os.environ.get("REDIS_URL", "").strip()
        self.redis = Redis(self.redis_url) if self.redis_url else None


def cache_key(model: str, prompt: str) -> str:
    return "chat:" + hashlib.sha256(f"{model}\0{prompt}".encode()).hexdigest()


def ask(cfg: Config, prompt: str) -> tuple[int, dict]:
    key = cache_key(cfg.model, prompt)
    cache = "off"
    if cfg.redis is not None:
        try:
            hit = cfg.redis.get(key)
        except RedisError as exc:
            log(f"cache unavailable: {exc}")
            cache = "unavailable"
        else:
            if hit is not None:
                return 200, {"answer": hit, "cached": True, "model": cfg.model, "cache": "hit",
                             "cache_key": key}
            cache = "miss"
    try:
        reply = ollama_call(cfg.ollama, "/api/generate",
                            {"model": cfg.model, "prompt": prompt, "stream": False},
                            cfg.ollama_timeout)
    except OllamaError as exc:
        log(str(exc))
        return 502, {"error": str(exc)}
    if not isinstance(reply.get("response"), str):
        return 502, {"error": f"ollama at {cfg.ollama}: no response text in {reply!r:.200}"}
    answer = reply["response"]
    try:
        version = ollama_call(cfg.ollama, "/api/version", None, 10).get("version")
    except OllamaError as exc:
        log(str(exc))
        version = None
    if cache == "miss":
        try:
            cfg.redis.set(key, answer, ex=cfg.ttl)
        except RedisError as exc:
            log(f"cache unavailable: {exc}")
            cache = "unavailable"
    return 200, {"answer": answer, "cached": False, "model": cfg.model, "cache": cache,
                 "cache_key": key, "ollama_version": version}


class Handler(BaseHTTPRequestHandler):
    server_version = "chatapp/1.0"
    protocol_version = "HTTP/1.1"
    cfg: Config  # set on the subclass made in serve()

    def log_message(self, fmt: str, *args) -> None:
        log(f"{self.address_string()} {fmt % args}")

    def reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/health":
            self.reply(200, {"status": "ok"})
        elif url.path == "/whoami":
            self.reply(200, {"hostname": socket.gethostname(),
                             "env": {k: os.environ.get(k) for k in
                                     ("OLLAMA_BASE_URL", "OLLAMA_MODEL", "APP_GREETING")}})
        elif url.path == "/ask":
            query = urllib.parse.parse_qs(url.query)
            prompt = (query.get("q") or query.get("prompt") or [""])[0]
            self.answer(prompt)
        else:
            self.reply(404, {"error": f"no route {url.path}"})

    def do_POST(self) -> None:  # noqa: N802
        path = urllib.parse.urlsplit(self.path).path
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            self.reply(400, {"error": "bad or missing Content-Length"})
            return
        raw = self.rfile.read(length)
        if path != "/ask":
            self.reply(404 if path not in ("/health", "/whoami") else 405,
                       {"error": f"no route POST {path}"})
            return
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            self.reply(400, {"error": "body is not JSON; send {\"prompt\": \"...\"}"})
            return
        prompt = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(prompt, str):
            self.reply(400, {"error": "send {\"prompt\": \"...\"} (a string)"})
            return
        self.answer(prompt)

    def answer(self, prompt: str) -> None:
        if not prompt.strip():
            self.reply(400, {"error": "empty prompt"})
            return
        status, body = ask(self.cfg, prompt)
        self.reply(status, body)


def serve(cfg: Config) -> None:
    handler = type("BoundHandler", (Handler,), {"cfg": cfg})
    httpd = ThreadingHTTPServer(("0.0.0.0", cfg.port), handler)
    httpd.daemon_threads = True
    # PID 1 in a container gets no default SIGTERM handling: stop cleanly on `docker stop`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    cache = repr(cfg.redis) if cfg.redis else "off"
    if cfg.redis:
        try:
            cfg.redis.ping()
        except RedisError as exc:
            log(f"cache not reachable yet (requests go to Ollama until it is): {exc}")
    log(f"listening on 0.0.0.0:{cfg.port}; ollama {cfg.ollama} model {cfg.model}; "
        f"cache {cache} ttl {cfg.ttl}s")
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()


def check() -> int:
    port = env_int("PORT", DEFAULT_PORT)
    url = f"http://127.0.0.1:{port}/health"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url, timeout=3) as response:
            if response.status == 200:
                return 0
            print(f"chatapp --check: {url}: HTTP {response.status}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"chatapp --check: {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    if argv[1:] == ["--check"]:
        return check()
    if argv[1:] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if argv[1:]:
        print(f"usage: {argv[0]} [--check]", file=sys.stderr)
        return 2
    try:
        cfg = Config()
    except RedisError as exc:
        print(f"chatapp: {exc}", file=sys.stderr)
        return 2
    serve(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
