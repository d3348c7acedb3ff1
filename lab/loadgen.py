"""A bounded load generator: streamed and plain /api/generate requests against one URL.

Used by the rolling-update tests and bench/rolling.py. Every loop is bounded in
count and time and stops by itself; each request has its own timeout.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class LoadStats:
    sent: int = 0
    failed: int = 0
    streams: int = 0
    streams_cut: int = 0
    errors: list[str] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    # (time.time() at its start, streamed, error) of each failed request, the first 100000
    # (a fleet that fails fast fails thousands a second: each one counts where it began)
    failures: list[tuple[float, bool, str]] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.sent} sent, {self.failed} failed, {self.streams} streams "
                f"({self.streams_cut} cut)")


class LoadGenerator:
    """Threads sending generate requests until stop(), MAX_REQUESTS or MAX_SECONDS."""

    def __init__(self, url: str, model: str, threads: int = 4, max_requests: int = 5000,
                 max_seconds: float = 900, num_predict: int = 24,
                 request_timeout: float = 120, pause: float = 0) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.model, self.threads, self.num_predict = model, threads, num_predict
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.request_timeout = request_timeout
        self.pause = pause  # seconds each thread waits between its requests (0: none)
        self.stats = LoadStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def __enter__(self) -> LoadGenerator:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self._deadline = time.monotonic() + self.max_seconds
        for n in range(self.threads):
            worker = threading.Thread(target=self._work, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self) -> LoadStats:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=self.request_timeout + 5)
        return self.stats

    def _take_slot(self) -> bool:
        with self._lock:
            if (self._stop.is_set() or self.stats.sent >= self.max_requests
                    or time.monotonic() > self._deadline):
                return False
            self.stats.sent += 1
            return True

    def _record(self, ok: bool, stream: bool, cut: bool, error: str = "",
                started: float = 0.0) -> None:
        with self._lock:
            if stream:
                self.stats.streams += 1
                self.stats.streams_cut += cut
            if not ok:
                self.stats.failed += 1
                if len(self.stats.errors) < 20:
                    self.stats.errors.append(error)
                if len(self.stats.failures) < 100000:
                    self.stats.failures.append((started or time.time(), stream, error[:200]))

    def _work(self, n: int) -> None:
        i = 0
        while self._take_slot():
            stream = (n + i) % 2 == 0
            i += 1
            self._one(stream)
            if self.pause:
                self._stop.wait(self.pause)  # a paced client; stop() still ends it at once

    def _connection(self) -> http.client.HTTPConnection:
        """A new connection for one request (a subclass may speak TLS)."""
        return http.client.HTTPConnection(self.host, self.port, timeout=self.request_timeout)

    def _headers(self) -> dict[str, str]:
        """Each request's headers (a subclass may add a key)."""
        return {"Content-Type": "application/json"}

    def _one(self, stream: bool) -> None:
        body = json.dumps({"model": self.model, "prompt": "load", "stream": stream,
                           "options": {"num_predict": self.num_predict}})
        conn = self._connection()
        started = time.time()
        try:
            conn.request("POST", "/api/generate", body, self._headers())
            response = conn.getresponse()
            if response.status != 200:
                self._record(False, stream, False, f"HTTP {response.status}: "
                             f"{response.read()[:200]!r}", started)
                return
            lines = [json.loads(raw) for raw in response if raw.strip()]
            done = bool(lines) and lines[-1].get("done") is True
            error = next((line["error"] for line in lines if "error" in line), "")
            self._record(done and not error, stream, stream and not done,
                         error or ("" if done else "stream ended before done"), started)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            self._record(False, stream, stream, f"{type(exc).__name__}: {exc}", started)
        finally:
            conn.close()
