#!/usr/bin/env python3
"""The lab's stand-in for Ollama's cloud (ollama.com) as Ollama v0.32 calls it.

It answers what a v0.32 server forwards there (server/cloud_proxy.go: the OpenAI,
Responses and Anthropic routes and the native /api/chat, /api/generate, /api/embed,
/api/show for `:cloud` models; /api/web_search and /api/web_fetch; /api/me and
DELETE /api/user/keys/<key>) with upstream-shaped answers, streamed where the request
asks for it, and records every request it receives, so a test can tell whether a
prompt left the fleet:

    GET    /_lab/requests    {"requests": [{"method", "path", "query", "headers", "body",
                              "time"}]}, oldest first
    DELETE /_lab/requests    forget them

A request without an Authorization header (the signature the server adds for
ollama.com) is answered 401 `{"error": "unauthorized"}`, as the real cloud answers one
it cannot attribute. The answers are formatted by the stand-in Ollama's own writers
(lab/ollama/standin: OpenAI, Responses, Anthropic), so both speak the same shapes.

Run: cloud.py [--port N] [--cert PEM --key PEM] (HTTPS with a certificate, else HTTP).
The lab runs it in `<lab>-cloud` on the lab network, and its DNS names it ollama.com.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.realpath(__file__))
# the stand-in Ollama's package: beside this directory in a checkout (lab/ollama), or
# where the lab mounts it
for candidate in (os.path.join(HERE, "..", "ollama"), "/srv/fleetlab-ollama"):
    if os.path.isdir(os.path.join(candidate, "standin")):
        sys.path.insert(0, os.path.realpath(candidate))
        break

from standin.anthropic import AnthropicWriter  # noqa: E402 (after the path above)
from standin.goformat import go_json  # noqa: E402
from standin.openai_compat import OpenAIWriter  # noqa: E402
from standin.responses import ResponsesWriter  # noqa: E402

WORDS = ["cloud", "answer", "from", "the", "lab", "stand-in"]
USER = {"id": "0a1b2c3d-0000-4000-8000-000000000001", "email": "lab@ollama.test",
        "name": "fleetlab", "plan": "free"}


class Record:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict] = []

    def add(self, entry: dict) -> None:
        with self.lock:
            self.requests.append(entry)

    def all(self) -> list[dict]:
        with self.lock:
            return list(self.requests)

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()


RECORD = Record()


def _prompt_of(req: dict) -> str:
    for key in ("prompt", "input"):
        if isinstance(req.get(key), str):
            return req[key]
    msgs = req.get("messages") if isinstance(req.get("messages"), list) else []
    for m in reversed(msgs):
        if isinstance(m, dict) and isinstance(m.get("content"), str):
            return m["content"]
    return ""


def _lines(model: str, chat: bool, stream: bool) -> list[dict]:
    """The native answer: stream lines (each word) and the final one."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
    out = []
    if stream:
        for w in WORDS:
            line: dict = {"model": model, "created_at": now}
            if chat:
                line["message"] = {"role": "assistant", "content": w + " "}
            else:
                line["response"] = w + " "
            line["done"] = False
            out.append(line)
    text = "" if stream else " ".join(WORDS) + " "
    final: dict = {"model": model, "created_at": now}
    if chat:
        final["message"] = {"role": "assistant", "content": text}
    else:
        final["response"] = text
    final.update(done=True, done_reason="stop", total_duration=1000, prompt_eval_count=4,
                 eval_count=len(WORDS))
    out.append(final)
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "fleetlab-cloud"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler signature
        sys.stderr.write("cloud: " + (format % args) + "\n")

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(65537)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, go_json(obj) + b"\n", "application/json; charset=utf-8")

    def _stream(self, ctype: str, pieces: list[bytes]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for data in pieces:
            if data:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def _handle(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        body = self._body()
        if url.path == "/_lab/requests":
            if self.command == "DELETE":
                RECORD.clear()
                self._json(200, {"requests": []})
            else:
                self._json(200, {"requests": RECORD.all()})
            return
        RECORD.add({"method": self.command, "path": url.path, "query": url.query,
                    "headers": {k: v for k, v in self.headers.items()},
                    "body": body.decode("utf-8", "replace"), "time": time.time()})
        if not self.headers.get("Authorization"):
            self._json(401, {"error": "unauthorized"})
            return
        try:
            req = json.loads(body) if body.strip() else {}
        except ValueError:
            self._json(400, {"error": "invalid JSON body"})
            return
        req = req if isinstance(req, dict) else {}
        self._answer(url.path, req)

    def _answer(self, path: str, req: dict) -> None:
        model = str(req.get("model") or "")
        if path == "/api/me" and self.command == "POST":
            self._json(200, USER)
        elif path.startswith("/api/user/keys/") and self.command == "DELETE":
            self._send(200, b"", "application/json")
        elif path == "/api/web_search":
            query = str(req.get("query") or "")
            self._json(200, {"results": [{"title": f"Lab result for {query}",
                                          "url": "https://example.test/lab",
                                          "content": f"The lab cloud searched for {query}."}]})
        elif path == "/api/web_fetch":
            self._json(200, {"title": "Lab page", "content": "Fetched by the lab cloud.",
                             "links": [str(req.get("url") or "")]})
        elif path in ("/api/chat", "/api/generate"):
            stream = req.get("stream") is not False
            lines = _lines(model, path == "/api/chat", stream)
            if stream:
                self._stream("application/x-ndjson", [go_json(x) + b"\n" for x in lines])
            else:
                self._json(200, lines[-1])
        elif path == "/api/embed":
            self._json(200, {"model": model, "embeddings": [[0.6, 0.8]],
                             "prompt_eval_count": 2})
        elif path == "/api/show" or path.startswith("/v1/models/"):
            name = model or path.rsplit("/", 1)[-1]
            if path.startswith("/v1/models/"):
                self._json(200, {"id": name, "object": "model", "created": 0,
                                 "owned_by": "library"})
            else:
                self._json(200, {"details": {"format": "", "family": "cloud"},
                                 "model_info": {}, "capabilities": ["completion"],
                                 "remote_model": name, "remote_host": "https://ollama.com"})
        elif path == "/v1/embeddings":
            self._json(200, {"object": "list", "data": [
                {"object": "embedding", "embedding": [0.6, 0.8], "index": 0}],
                "model": model, "usage": {"prompt_tokens": 2, "total_tokens": 2}})
        elif path in ("/v1/chat/completions", "/v1/completions", "/v1/responses",
                      "/v1/messages"):
            self._compat(path, req)
        else:
            self._json(404, {"error": "not found"})

    def _compat(self, path: str, req: dict) -> None:
        stream = req.get("stream") is True
        writer: OpenAIWriter | ResponsesWriter | AnthropicWriter
        if path == "/v1/responses":
            writer = ResponsesWriter(req)
        elif path == "/v1/messages":
            writer = AnthropicWriter(req)
        else:
            kind = "chat" if path == "/v1/chat/completions" else "completion"
            writer = OpenAIWriter(kind, model=str(req.get("model") or ""), stream=stream,
                                  stream_options=req.get("stream_options"))
        lines = _lines(str(req.get("model") or ""), path != "/v1/completions", stream)
        if stream:
            self._stream("text/event-stream", [writer.frames(x) for x in lines])
        else:
            self._send(200, writer.document(lines[-1]))

    do_GET = do_POST = do_DELETE = do_PUT = _handle


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bind", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=443)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    args = ap.parse_args(argv)
    httpd = ThreadingHTTPServer((args.bind, args.port), Handler)
    httpd.daemon_threads = True
    if args.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    sys.stderr.write(f"cloud: listening on {args.bind}:{httpd.server_address[1]}\n")
    sys.stderr.flush()
    httpd.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
