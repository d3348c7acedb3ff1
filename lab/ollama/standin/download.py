"""Blob downloads (server/download.go, v0.6.8 to v0.7.1): HEAD for the size, parts of
a sixteenth (100 MB to 1000 MB), ``-partial`` files that resume a pull, the direct URL
of the parts, ranged GETs in parallel with retries; one shared download per digest."""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
import urllib.parse

from .envconfig import env_float, log
from .goformat import _json_kind, go_duration_str, go_json, go_json_decode_error, human_bytes
from .names import Name
from .registry import (
    MAX_REDIRECTS,
    USE_LAST_RESPONSE,
    PullError,
    _Retryable,
    go_do,
    go_net_error,
    make_request_with_retry,
)
from .store import Store, _listdir

MAX_DOWNLOAD_ATTEMPTS = 6  # server/download.go maxRetries
NUM_DOWNLOAD_PARTS = 16  # server/download.go numDownloadParts (also the parallel parts)
MIN_DOWNLOAD_PART_SIZE = 100 * 1000 * 1000  # minDownloadPartSize, 100 format.MegaByte
MAX_DOWNLOAD_PART_SIZE = 1000 * 1000 * 1000  # maxDownloadPartSize
DIRECT_URL_TIMEOUT_S = 30  # the directURL closure's context.WithTimeout
PART_STALL_S = 30  # downloadChunk: a part with no byte for 30 s is stalled
ERR_NO_LOCATION = "http: no Location header in response"  # net/http ErrNoLocation
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 1.0


def lab_part_scale() -> float:
    """OLLAMA_LAB_PART_SCALE (lab only, default 1): multiplies upstream's part sizes."""
    v = env_float("OLLAMA_LAB_PART_SCALE", 1.0)
    return v if v > 0 else 1.0


def part_sizes(total: int, scale: float = 1.0) -> list[tuple[int, int]]:
    """blobDownload.Prepare: (offset, size) of each part: total/16 bytes, at least 100 MB
    and at most 1000 MB (times the lab's scale), the last part what is left."""
    lo = max(1, int(MIN_DOWNLOAD_PART_SIZE * scale))
    hi = max(lo, int(MAX_DOWNLOAD_PART_SIZE * scale))
    size = min(max(total // NUM_DOWNLOAD_PARTS, lo), hi)
    parts, offset = [], 0
    while offset < total:
        size = min(size, total - offset)
        parts.append((offset, size))
        offset += size
    return parts


class BlobPart:
    """blobDownloadPart, kept in ``<blob>-partial-N`` as upstream's JSON."""

    def __init__(self, n: int, offset: int, size: int, completed: int = 0):
        self.n, self.offset, self.size, self.completed = n, offset, size, completed

    def to_json(self) -> bytes:
        return go_json({"N": self.n, "Offset": self.offset, "Size": self.size,
                        "Completed": self.completed}) + b"\n"  # json.NewEncoder: a newline

    @classmethod
    def read(cls, path: str) -> BlobPart:
        with open(path, "rb") as f:
            raw = f.read()
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise PullError(go_json_decode_error(raw, e)) from None
        if not isinstance(obj, dict):
            raise PullError(f"json: cannot unmarshal {_json_kind(obj)} into Go value of "
                            "type server.jsonBlobDownloadPart")
        vals = {}
        for key in ("N", "Offset", "Size", "Completed"):
            v = next((obj[k] for k in obj if k.lower() == key.lower()), 0)
            if v is None:
                v = 0
            if isinstance(v, bool) or not isinstance(v, int):
                raise PullError(f"json: cannot unmarshal {_json_kind(v)} into Go struct field "
                                f"jsonBlobDownloadPart.{key} of type int64")
            vals[key] = v
        return cls(vals["N"], vals["Offset"], vals["Size"], vals["Completed"])


class BlobDownload:
    """One shared download per digest (blobDownloadManager, server/download.go v0.6.8)."""

    def __init__(self, store: Store, url: str, digest: str):
        self.store = store
        self.url = url  # the registry's blob URL (requestURL)
        self.digest = digest
        self.name = store.blob_path(digest)  # b.Name
        self.total = 0
        self._completed = 0
        self._lock = threading.Lock()
        self.parts: list[BlobPart] = []
        self.error: str | None = None
        self.done = threading.Event()
        self._cancel = threading.Event()

    @property
    def completed(self) -> int:
        return self._completed

    def _add(self, n: int) -> None:
        with self._lock:
            self._completed += n

    def _part_path(self, part: BlobPart) -> str:
        return f"{self.name}-partial-{part.n}"

    def _write_part(self, part: BlobPart) -> None:
        with open(self._part_path(part), "wb") as f:
            f.write(part.to_json())

    def prepare(self) -> None:
        """Prepare: resume from the ``-partial-N`` files, else HEAD the blob (following
        redirects as net/http does) for its size and cut it in parts."""
        paths = sorted(p for p in _listdir(os.path.dirname(self.name))
                       if p.startswith(os.path.basename(self.name) + "-partial-"))
        for p in paths:
            part = BlobPart.read(os.path.join(os.path.dirname(self.name), p))
            self.total += part.size
            self._completed += part.completed
            self.parts.append(part)
        if not self.parts:
            try:
                conn, resp, _ = make_request_with_retry("HEAD", self.url)
            except _Retryable as e:
                raise PullError(str(e)) from None
            try:
                self.total = int(resp.getheader("Content-Length") or 0)
            except ValueError:
                self.total = 0
            finally:
                conn.close()
            for offset, size in part_sizes(self.total, lab_part_scale()):
                part = BlobPart(len(self.parts), offset, size)
                self._write_part(part)
                self.parts.append(part)
        if self.parts:
            log("INFO", "download.go:176", f"downloading {self.digest[7:19]} in "
                f"{len(self.parts)} {human_bytes(self.parts[0].size)} part(s)")

    def run(self) -> None:
        try:
            self._run()
        except PullError as e:
            self.error = str(e)
        except Exception as e:  # noqa: BLE001 - report anything as a pull error line
            self.error = str(e) or e.__class__.__name__
        finally:
            with DOWNLOADS_LOCK:
                DOWNLOADS.pop(self.digest, None)
            self.done.set()

    def _run(self) -> None:
        partial = self.name + "-partial"
        fd = os.open(partial, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                os.ftruncate(fd, self.total)  # sized in full before the first byte
            except OSError:
                pass
            direct = self._direct_url()
            todo = [p for p in self.parts if p.completed != p.size]
            errors: list[str] = []
            sem = threading.Semaphore(NUM_DOWNLOAD_PARTS)  # errgroup SetLimit

            def work(part: BlobPart) -> None:
                with sem:
                    if self._cancel.is_set():
                        return
                    try:
                        self._download_part(fd, direct, part)
                    except PullError as e:
                        errors.append(str(e))
                        self._cancel.set()

            threads = [threading.Thread(target=work, args=(p,), daemon=True,
                                        name=f"part-{self.digest[7:19]}-{p.n}") for p in todo]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise PullError(errors[0])
        finally:
            os.close(fd)
        for i in range(len(self.parts)):
            os.remove(f"{partial}-{i}")
        os.replace(partial, self.name)

    def _direct_url(self) -> str:
        """The directURL closure: GET the registry's blob URL following redirects only
        while the host name stays the same; the response must be 307 or 200, and its
        Location is the URL of the parts. A 200 without Location fails. Failed requests
        are retried with backoff for 30 s."""
        host = urllib.parse.urlsplit(self.url).hostname

        def check(nxt: str, via: list[str]):
            if len(via) > MAX_REDIRECTS:
                return "maximum redirects exceeded (10) for directURL"
            if urllib.parse.urlsplit(nxt).hostname == host:
                return None
            return USE_LAST_RESPONSE

        deadline = time.monotonic() + DIRECT_URL_TIMEOUT_S
        n = 0
        while True:
            try:
                conn, resp, final = make_request_with_retry("GET", self.url, None, check)
            except (_Retryable, PullError) as e:
                log("WARN", "download.go:256", "failed to get direct URL; backing off and "
                    "retrying", err=str(e))
                n += 1
                d = min(n * n * 0.01, 10.0) * (random.random() + 0.5)  # noqa: S311 - jitter
                left = deadline - time.monotonic()
                if d >= left:
                    time.sleep(max(0.0, left))
                    raise PullError("context deadline exceeded") from None
                time.sleep(d)
                continue
            try:
                if resp.status not in (307, 200):
                    raise PullError(f"unexpected status code {resp.status}")
                loc = resp.getheader("Location")
                if not loc:
                    raise PullError(ERR_NO_LOCATION)
                return urllib.parse.urljoin(final, loc)
            finally:
                conn.close()

    def _download_part(self, fd: int, direct: str, part: BlobPart) -> None:
        err = ""
        for attempt in range(MAX_DOWNLOAD_ATTEMPTS):
            if self._cancel.is_set():
                return
            err = self._download_chunk(fd, direct, part)
            if not err:
                return
            sleep = min(BACKOFF_CAP_S, BACKOFF_BASE_S * (2 ** attempt))
            log("INFO", "download.go:301", f"{self.digest[7:19]} part {part.n} attempt "
                f"{attempt} failed: {err}, retrying in {go_duration_str(int(sleep * 1e9))}")
            time.sleep(sleep)
        raise PullError(f"max retries exceeded: {err}")

    def _download_chunk(self, fd: int, direct: str, part: BlobPart) -> str:
        """downloadChunk: one ranged GET of what the part lacks, written at its offset.
        Returns "" when the part is complete, else the error. The status is not looked
        at (upstream copies the body whatever it is). A body cut short keeps what came
        (io.ErrUnexpectedEOF, resumable); any other failure drops it from the progress."""
        start, stop = part.offset + part.completed, part.offset + part.size
        want = part.size - part.completed
        try:
            conn, resp, _ = go_do("GET", direct, {"Range": f"bytes={start}-{stop - 1}"},
                                  timeout=PART_STALL_S)
        except (_Retryable, PullError) as e:
            return str(e)
        n = 0
        err = ""
        keep = True
        try:
            while n < want:
                try:
                    chunk = resp.read(min(256 * 1024, want - n))
                except http.client.IncompleteRead as e:
                    chunk, err = e.partial, "unexpected EOF"
                except TimeoutError:
                    chunk, err = b"", "part stalled"
                except (OSError, http.client.HTTPException) as e:
                    chunk, err, keep = b"", go_net_error("Get", direct, e), False
                if chunk:
                    os.pwrite(fd, chunk, start + n)
                    n += len(chunk)
                    self._add(len(chunk))
                if err:
                    break
                if not chunk:
                    # body over: cut short of its Content-Length, or whole but too short
                    cut = resp.length is not None and resp.length > 0
                    err, keep = ("unexpected EOF", True) if cut else ("EOF", False)
                    break
        finally:
            conn.close()
        if not keep:
            self._add(-n)  # rollback progress
            return err
        part.completed += n
        self._write_part(part)
        return err


DOWNLOADS: dict[str, BlobDownload] = {}
DOWNLOADS_LOCK = threading.Lock()


def _layer_line(digest: str, total: int, completed: int) -> dict:
    d = {"status": f"pulling {digest[7:19]}", "digest": digest}
    if total:
        d["total"] = total
    if completed:
        d["completed"] = completed
    return d


def download_blob(store: Store, base: str, name: Name, layer: dict, emit) -> BlobDownload | None:
    """downloadBlob: None on a cache hit, else the finished download. The first puller
    of a digest prepares it (HEAD, parts) before the download starts; others wait."""
    digest = str(layer.get("digest", ""))
    final = store.blob_path(digest)
    with DOWNLOADS_LOCK:
        if os.path.isfile(final):
            size = os.path.getsize(final)
            dl, fresh = None, False
        else:
            dl = DOWNLOADS.get(digest)
            fresh = dl is None
            if dl is None:
                url = f"{base}/v2/{name.namespace}/{name.model}/blobs/{digest}"
                dl = BlobDownload(store, url, digest)
                DOWNLOADS[digest] = dl
    if dl is None:
        emit(_layer_line(digest, size, size))
        return None
    if fresh:
        try:
            dl.prepare()
        except BaseException as e:
            with DOWNLOADS_LOCK:
                DOWNLOADS.pop(digest, None)
            dl.error = str(e) if isinstance(e, PullError) else (str(e) or type(e).__name__)
            dl.done.set()
            raise PullError(dl.error) from None
        threading.Thread(target=dl.run, name=f"download-{digest[7:19]}", daemon=True).start()
    while not dl.done.wait(0.06):  # Wait: a progress line every 60 ms
        emit(_layer_line(digest, dl.total, dl.completed))
    if dl.error:
        raise PullError(dl.error)
    emit(_layer_line(digest, dl.total, dl.completed))
    return dl
