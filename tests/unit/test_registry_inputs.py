"""What a registry, a mirror, a peer, a host's store or a backup sends is bounded before it
is used (tasks.kit.manifests and the scripts that download): a corpus of hostile inputs,
each refused in one line or harmless for a reason it names; and the download scripts run
here against a small HTTP server on 127.0.0.1 that sends more than it declares."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from ollama_fleet.tasks.kit.manifests import (
    BLOB_MAX_BYTES,
    MANIFEST_MAX_BLOBS,
    MANIFEST_MAX_BYTES,
    MANIFEST_MAX_DEPTH,
    ManifestError,
    depth,
    manifest_layers,
)
from ollama_fleet.tasks.kit.scripts import script_command, script_text
from ollama_fleet.tasks.kit.settings import settings_for
from ollama_fleet.tasks.steps import models
from tests.unit.stubs import BASE_TOOLS, run_with_stubs

A, B, C = "a" * 64, "b" * 64, "c" * 64
NET_TOOLS = (*BASE_TOOLS, "curl", "truncate", "sha256sum")


def layer(digest: object = f"sha256:{A}", size: object = 10, **more: object) -> dict:
    return {"mediaType": "application/vnd.ollama.image.model", "digest": digest, "size": size,
            **more}


def manifest(*layers: dict, config: dict | None = None) -> str:
    return json.dumps({"schemaVersion": 2,
                       "config": config if config is not None else layer(f"sha256:{C}", 5),
                       "layers": list(layers)})


def nested(levels: int) -> str:
    """A manifest whose one layer carries an annotation nested LEVELS deep in all."""
    inner = "[" * (levels - 3) + "]" * (levels - 3)
    return manifest(layer()).replace('"size": 10}', f'"size": 10, "x": {inner}}}')


def size_text(raw: str) -> str:
    """A manifest whose layer's size is RAW, as the JSON text has it."""
    return manifest(layer()).replace('"size": 10', f'"size": {raw}')


# -- the corpus: (what, input, the refusal's words) ----------------------------------------

REFUSED = [
    ("a negative size", manifest(layer(size=-1)), "size -1 is not a number of bytes"),
    ("a fractional size", manifest(layer(size=1.5)), "size 1.5 is not a number of bytes"),
    ("a whole size written as a float", size_text("10.0"), "size 10.0 is not a number"),
    ("a size in exponent notation", size_text("1e3"), "size 1000.0 is not a number"),
    ("a size past any float", size_text("1e999"), "size inf is not a number"),
    ("a size that is NaN", size_text("NaN"), "size nan is not a number"),
    ("a size as a string", manifest(layer(size="10")), "size '10' is not a number"),
    ("a size as shell", manifest(layer(size="10; reboot")), "is not a number of bytes"),
    ("a size that is true", manifest(layer(size=True)), "size True is not a number"),
    ("a size that is a list", manifest(layer(size=[10])), "size [10] is not a number"),
    ("a size of 2**64", manifest(layer(size=2**64)), f"size {2**64} is not a number"),
    ("a size one past the ceiling", manifest(layer(size=BLOB_MAX_BYTES + 1)),
     f"from 0 to {BLOB_MAX_BYTES}"),
    ("a size of 5,000 digits", size_text("9" * 5000),  # Python 3.11 stops at 4,300 digits
     "not a manifest (Exceeds the limit" if hasattr(sys, "set_int_max_str_digits")
     else "is not a number of bytes"),
    ("another algorithm", manifest(layer("sha512:" + "a" * 128)), "is not a sha256 digest"),
    ("an upper-case digest", manifest(layer("sha256:" + "A" * 64)), "is not a sha256 digest"),
    ("a short digest", manifest(layer("sha256:" + "a" * 63)), "is not a sha256 digest"),
    ("a digest that is a path", manifest(layer("sha256:../../../../etc/passwd")),
     "is not a sha256 digest"),
    ("a digest followed by shell", manifest(layer(f"sha256:{A}$(touch /tmp/x)")),
     "is not a sha256 digest"),
    ("a digest followed by a newline", manifest(layer(f"sha256:{A}\n")),
     "is not a sha256 digest"),
    ("a digest that is a number", manifest(layer(12345)), "12345 is not a sha256 digest"),
    ("a layer without a digest", manifest({"size": 5}), "'' is not a sha256 digest"),
    ("a layer that is a string", manifest(f"sha256:{A}"), "'' is not a sha256 digest"),
    ("a config that is a string", manifest(layer(), config="x"), "'' is not a sha256 digest"),
    ("one blob with two sizes", manifest(layer(size=10), layer(size=20 << 20)),
     f"sha256:{A}: listed with sizes 10 and 20971520"),
    ("5,000 levels of nesting", nested(5000), "nested 5000 deep, over the 32"),
    ("one level past the bound", nested(MANIFEST_MAX_DEPTH + 1), "nested 33 deep"),
    ("a bare array 5,000 deep", "[" * 5000 + "]" * 5000, "nested 5000 deep"),
    ("an array, not an object", json.dumps([layer()]), "not a manifest (not a JSON object)"),
    ("a string, not an object", '"manifest"', "not a manifest (not a JSON object)"),
    ("null", "null", "not a manifest (not a JSON object)"),
    ("empty text", "", "not a manifest (Expecting value"),
    ("not JSON", "{not json", "not a manifest (Expecting property name"),
    ("text that is not UTF-8", b'{"layers": ["\xff"]}', "not a manifest (not UTF-8 text)"),
    ("a manifest one byte too large",
     manifest(layer()) + " " * (MANIFEST_MAX_BYTES + 1 - len(manifest(layer()))),
     f"more than the {MANIFEST_MAX_BYTES} bytes a manifest may have"),
    ("a manifest of 20 MiB", b" " * (20 << 20), "more than the 1048576 bytes"),
    ("layers that are a string", '{"layers": "abc"}', "its layers are not a list"),
    ("layers that are an object", '{"layers": {"digest": "x"}}', "its layers are not a list"),
    ("more layers than a manifest has",
     manifest(*(layer(f"sha256:{i:064x}") for i in range(MANIFEST_MAX_BLOBS))),
     f"{MANIFEST_MAX_BLOBS} layers, over the {MANIFEST_MAX_BLOBS - 1}"),
    ("no blob at all", '{"layers": []}', "references no blob"),
]


@pytest.mark.parametrize("what, raw, said", REFUSED, ids=[r[0] for r in REFUSED])
def test_a_hostile_manifest_is_refused_in_one_short_line(what, raw, said):
    with pytest.raises(ManifestError) as refused:
        manifest_layers(raw)
    message = str(refused.value)
    assert said in message, message
    assert "\n" not in message and len(message) < 200, message


HARMLESS = [  # (what, input, the blobs taken, why that is harmless)
    ("the same blob listed twice with one size", manifest(layer(), layer()),
     [(C, 5), (A, 10)], "one download: blobs are taken once by digest"),
    ("a size left out", manifest(layer(), {"digest": f"sha256:{B}"}), [(C, 5), (A, 10), (B, 0)],
     "an empty blob, as distribution omits a zero size: the download reads 0 bytes"),
    ("a size of null", manifest(layer(size=None)), [(C, 5), (A, 0)],
     "0 as Go decodes null into an int64: the download reads 0 bytes"),
    ("a size at the ceiling", manifest(layer(size=BLOB_MAX_BYTES)),
     [(C, 5), (A, BLOB_MAX_BYTES)], "a number the hosts' shell arithmetic holds"),
    ("a key given twice", size_text("1, \"size\": 10"), [(C, 5), (A, 10)],
     "the last one counts, as in Go's encoding/json that Ollama reads it with"),
    ("brackets inside strings", manifest(layer(mediaType="[[[[" * 100)), [(C, 5), (A, 10)],
     "a string's characters are not nesting"),
    ("nesting at the bound", nested(MANIFEST_MAX_DEPTH), [(C, 5), (A, 10)],
     "32 levels: a manifest needs 4"),
    ("a manifest exactly at the length bound",
     manifest(layer()) + " " * (MANIFEST_MAX_BYTES - len(manifest(layer()))),
     [(C, 5), (A, 10)], "1 MiB is the bound, inclusive"),
    ("as many layers as allowed",
     manifest(*(layer(f"sha256:{i:064x}", 1) for i in range(MANIFEST_MAX_BLOBS - 1)),
              config={}),
     [(f"{i:064x}", 1) for i in range(MANIFEST_MAX_BLOBS - 1)], "255 layers"),
    ("fields nobody reads", manifest(layer(urls=["http://evil/"], annotations={"a": "$(x)"})),
     [(C, 5), (A, 10)], "never read: only digest and size leave this module"),
    ("Ollama's own config-less manifest", manifest(layer(), config={"digest": "", "size": 0}),
     [(A, 10)], "the empty digest Ollama stores for a model without a config"),
]


@pytest.mark.parametrize("what, raw, blobs, why", HARMLESS, ids=[h[0] for h in HARMLESS])
def test_what_looks_odd_but_is_harmless_is_taken(what, raw, blobs, why):
    assert manifest_layers(raw) == blobs, why


def test_the_corpus_is_at_least_twenty_inputs():
    assert len(REFUSED) + len(HARMLESS) >= 20


def test_nesting_is_counted_without_parsing_and_in_linear_time():
    assert depth('{"a": "[[[[", "b": [{"c": "\\"]]]"}]}') == 3
    assert depth('["\\\\", [[]]]') == 3
    assert depth('"' + '\\"' * 100_000) == 0  # an unterminated string: read once, to its end
    assert depth("[" * MANIFEST_MAX_BYTES) == MANIFEST_MAX_BYTES


# -- the shell: sizes checked as numbers before any arithmetic ---------------------------

NOT_SIZES = ["-1", "1e3", "1.5", "", "abc", "0x10", "99999999999999999999",
             str(10**15), " 5", "5 ", "$(reboot)"]


@pytest.mark.parametrize("size", NOT_SIZES)
def test_free_space_refuses_a_size_that_is_not_a_number_before_adding_it(tmp_path, size):
    store = tmp_path / "store"
    (store / "blobs").mkdir(parents=True)
    df = ("echo 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
          "echo '/dev/x 99999999 1 4096 1% /'\n")
    proc = run_with_stubs(script_command("models/free-space.sh", store, "llama3:8b", 1024,
                                         f"{A}:10", f"{B}:{size}"), tmp_path, {"df": df},
                          tools=(*BASE_TOOLS, "awk"))
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"llama3:8b: blob sha256-{B}: size ")
    assert proc.stderr.endswith("is not a number of bytes (at most 15 digits)\n")
    assert proc.stderr.count("\n") == 1


def test_free_space_with_the_largest_sizes_finds_no_room_where_there_is_none(tmp_path):
    store = tmp_path / "store"
    (store / "blobs").mkdir(parents=True)
    df = ("echo 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
          "echo '/dev/x 99999999 1 99999999 1% /'\n")
    layers = [f"{i:064x}:{'9' * 15}" for i in range(3)]  # 3 x 888 TiB: added, not wrapped
    proc = run_with_stubs(script_command("models/free-space.sh", store, "big", 1024, *layers),
                          tmp_path, {"df": df}, tools=(*BASE_TOOLS, "awk"))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == (f"big: needs 2861022950 MiB more in {store} (with 1024 MiB to "
                           "spare), 97656 MiB free\n")


# -- the downloads, against a source that sends more than it declares --------------------

class Source(ThreadingHTTPServer):
    """A web server on 127.0.0.1 serving PAGES (path -> (status, body, framed)): framed
    with Content-Length, else close-delimited (HTTP/1.0, no length). A Range `bytes=N-`
    is answered 206 from byte N (its Content-Range says where the body ends: a liar's).
    What a client does not read is dropped with the connection."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Page)
        self.pages: dict[str, tuple[int, bytes, bool]] = {}
        self.ranges: list[str] = []

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Page(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server: Source

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        status, body, framed = self.server.pages.get(self.path, (404, b"no such page", True))
        start = 0
        if self.headers.get("Range", "").startswith("bytes="):
            self.server.ranges.append(self.headers["Range"])
            start = int(self.headers["Range"][6:].split("-")[0])
            status = 206 if status == 200 else status
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        if framed:
            self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        try:
            for at in range(start, len(body), 1 << 16):
                self.wfile.write(body[at:at + (1 << 16)])
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def source() -> Iterator[Source]:
    server = Source()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()


BLOB = b"GGUF" + bytes(range(256)) * 40  # 10,244 bytes
HEX = hashlib.sha256(BLOB).hexdigest()
SURPLUS = 20 << 20  # what the finding saw: 20 MiB behind a blob declared much smaller


def fetch(tmp_path: Path, source: Source, *layers: str) -> subprocess.CompletedProcess:
    return run_with_stubs(script_command("stack/fetch-model.sh", tmp_path / "store",
                                         source.url("/blobs/sha256-"), *layers),
                          tmp_path, tools=NET_TOOLS)


@pytest.mark.parametrize("framed", [True, False], ids=["with a length", "without one"])
def test_a_blob_streamed_past_its_size_is_cut_there_and_refused_in_one_line(
        tmp_path, source, framed):
    source.pages[f"/blobs/sha256-{HEX}"] = (200, BLOB + b"\0" * SURPLUS, framed)
    proc = fetch(tmp_path, source, f"{HEX}:{len(BLOB)}")
    assert proc.returncode == 3, proc.stderr
    said = proc.stderr.splitlines()[-1]
    assert said == (f"sha256-{HEX} from {source.url('/blobs/sha256-')}{HEX}: the source sent "
                    f"more than its declared {len(BLOB)} bytes (cut there)")
    part = tmp_path / "store" / ".fanout" / f"sha256-{HEX}.partial"
    assert part.read_bytes() == BLOB  # cut at the size: what was there is the blob
    assert not (tmp_path / "store" / "blobs" / f"sha256-{HEX}").exists()
    # the next source is honest: nothing is left to fetch, the cut file verifies
    source.pages[f"/blobs/sha256-{HEX}"] = (200, BLOB, True)
    proc = fetch(tmp_path, source, f"{HEX}:{len(BLOB)}")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "store" / "blobs" / f"sha256-{HEX}").read_bytes() == BLOB


def test_a_resumed_blob_is_capped_at_what_it_lacks(tmp_path, source):
    part = tmp_path / "store" / ".fanout" / f"sha256-{HEX}.partial"
    part.parent.mkdir(parents=True)
    part.write_bytes(BLOB[:4000])
    source.pages[f"/blobs/sha256-{HEX}"] = (200, BLOB + b"\0" * SURPLUS, False)
    proc = fetch(tmp_path, source, f"{HEX}:{len(BLOB)}")
    assert proc.returncode == 3 and "more than its declared" in proc.stderr
    assert source.ranges == ["bytes=4000-"]
    assert part.read_bytes() == BLOB


def test_a_blob_declared_smaller_than_it_is_never_read_past_its_declared_size(tmp_path, source):
    # the finding: a blob declared at 10 bytes; the mirror streams 20 MiB
    source.pages[f"/blobs/sha256-{HEX}"] = (200, BLOB + b"\0" * SURPLUS, False)
    proc = fetch(tmp_path, source, f"{HEX}:10")
    assert proc.returncode == 3
    assert proc.stderr.splitlines()[-1].endswith("more than its declared 10 bytes (cut there)")
    assert (tmp_path / "store" / ".fanout" / f"sha256-{HEX}.partial").stat().st_size == 10


def test_an_honest_source_and_a_short_one(tmp_path, source):
    source.pages[f"/blobs/sha256-{HEX}"] = (200, BLOB, False)
    empty = hashlib.sha256(b"").hexdigest()
    proc = fetch(tmp_path, source, f"{HEX}:{len(BLOB)}", f"{empty}:0")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "store" / "blobs" / f"sha256-{empty}").read_bytes() == b""
    (tmp_path / "store" / "blobs" / f"sha256-{HEX}").unlink()
    source.pages[f"/blobs/sha256-{HEX}"] = (200, BLOB[:-1], True)
    proc = fetch(tmp_path, source, f"{HEX}:{len(BLOB)}")
    assert proc.returncode == 4 and proc.stderr.endswith("sha256 does not match\n")


@pytest.mark.parametrize("word", [f"{HEX}:-1", f"{HEX}:1e3", f"{HEX}:{10**15}", f"{HEX}:",
                                  f"{HEX.upper()}:10", f"{HEX[:63]}:10", "../../etc/passwd:10",
                                  f"{HEX}"])
def test_fetch_refuses_a_word_that_is_not_hex_and_size_before_any_download(
        tmp_path, source, word):
    proc = fetch(tmp_path, source, word)
    assert proc.returncode == 2
    assert proc.stderr.endswith(": not HEX:SIZE (a sha256, a number of bytes of at most 15 "
                                "digits)\n") and proc.stderr.count("\n") == 1
    assert source.ranges == [] and not list((tmp_path / "store" / ".fanout").iterdir())


def registry_manifest(tmp_path: Path, url: str, model: str = "qwen2.5:0.5b"):
    dest = tmp_path / "stack" / ".fanout" / "manifests" / "m"
    proc = run_with_stubs(script_command("models/registry-manifest.sh", dest, url, model,
                                         models.MANIFEST_TYPE, MANIFEST_MAX_BYTES),
                          tmp_path, tools=NET_TOOLS)
    return proc, dest


@pytest.mark.parametrize("framed", [True, False], ids=["with a length", "without one"])
def test_a_registrys_manifest_past_the_bound_is_refused_in_one_line(tmp_path, source, framed):
    path = "/v2/library/qwen2.5/manifests/0.5b"
    source.pages[path] = (200, manifest(layer()).encode() + b" " * SURPLUS, framed)
    proc, dest = registry_manifest(tmp_path, source.url(path))
    assert proc.returncode == 1
    assert proc.stderr == (f"ollama_models: qwen2.5:0.5b: the registry's answer is over "
                           f"{MANIFEST_MAX_BYTES} bytes, more than a manifest may have "
                           f"({source.url(path)})\n")
    assert not any(dest.parent.iterdir())  # nothing staged, nothing left beside it


def test_a_registrys_manifest_within_the_bound_is_staged(tmp_path, source):
    path = "/v2/library/qwen2.5/manifests/0.5b"
    body = manifest(layer()).encode()
    source.pages[path] = (200, body, False)
    proc, dest = registry_manifest(tmp_path, source.url(path))
    assert proc.returncode == 0, proc.stderr
    assert dest.read_bytes() == body and [p.name for p in dest.parent.iterdir()] == ["m"]
    proc, dest = registry_manifest(tmp_path, source.url("/v2/library/nope/manifests/x"))
    assert proc.returncode == 1 and "not in the registry (HTTP 404 from" in proc.stderr


def test_a_peers_manifest_past_the_bound_is_refused_in_one_line(tmp_path, source):
    dest = tmp_path / "peer"
    source.pages["/m"] = (200, b"{" + b" " * SURPLUS, False)
    proc = run_with_stubs(script_command("models/peer-manifest.sh", dest, source.url("/m"),
                                         MANIFEST_MAX_BYTES), tmp_path, tools=NET_TOOLS)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (f"its manifest is over {MANIFEST_MAX_BYTES} bytes, more than a "
                           f"manifest may have ({source.url('/m')})\n")
    assert not dest.exists()
    source.pages["/m"] = (200, b'{"layers": []}', True)
    proc = run_with_stubs(script_command("models/peer-manifest.sh", dest, source.url("/m"),
                                         MANIFEST_MAX_BYTES), tmp_path, tools=NET_TOOLS)
    assert (proc.returncode, proc.stdout) == (0, '{"layers": []}')
    proc = run_with_stubs(script_command("models/peer-manifest.sh", dest, source.url("/no"),
                                         MANIFEST_MAX_BYTES), tmp_path, tools=NET_TOOLS)
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", "")  # no answer: next peer


# -- the deploy's side: the host, the model and what was wrong, in one line --------------

class LocalHost:
    """A host that is this machine: its commands run here (the mover's background job
    included); what the deploy says to the operator is kept in SAID."""

    name = "gpu-4"

    def __init__(self) -> None:
        self.said: list[str] = []

    def run_shell_command(self, command: str, _timeout: int = 60):
        proc = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True,
                              timeout=_timeout)
        output = SimpleNamespace(stdout=proc.stdout, stderr=proc.stderr,
                                 stdout_lines=proc.stdout.splitlines(),
                                 stderr_lines=proc.stderr.splitlines())
        return proc.returncode == 0, output

    def log(self, message: str) -> None:
        self.said.append(message)

    def log_styled(self, message: str, **kwargs: object) -> None:
        self.said.append(message)


MODEL = "llama3.2:1b"


def _receive(tmp_path: Path, source: Source, staged: str, monkeypatch) -> tuple[bool, list]:
    monkeypatch.setattr(models, "POLL_S", 0.05)
    monkeypatch.setattr(models, "PULL_ATTEMPTS", 1)
    monkeypatch.setattr(models, "pull_command", lambda address, port, model, stream: (
        f"echo 'pull {model}: no registry in this test' >&2; exit 1"))
    settings = settings_for("gpu-4", {
        "ollama_stack_dir": str(tmp_path / "stack"), "ollama_models_path": str(tmp_path),
        "ollama_registry_mirror": source.url(), "fleet_insecure_http": True,
        "ollama_fanout": False, "ollama_models": [MODEL]})
    fetcher = tmp_path / "stack" / models.FETCH_SCRIPT
    fetcher.parent.mkdir(parents=True)
    fetcher.write_text(script_text("stack/fetch-model.sh"))
    path = Path(models.staged_manifest(settings, MODEL))
    path.parent.mkdir(parents=True)
    path.write_text(staged)
    host = LocalHost()
    ok = models.receive(None, host, settings, [MODEL], [], None)
    return ok, host.said


def test_a_mirror_that_sends_more_than_a_blob_is_named_with_the_model(
        tmp_path, source, monkeypatch):
    config = b'{"model_format":"gguf"}'
    staged = manifest(layer(f"sha256:{HEX}", len(BLOB)),
                      config=layer(f"sha256:{hashlib.sha256(config).hexdigest()}",
                                   len(config)))
    blobs = "/v2/library/llama3.2/blobs/sha256:"
    source.pages[f"{blobs}{hashlib.sha256(config).hexdigest()}"] = (200, config, True)
    source.pages[f"{blobs}{HEX}"] = (200, BLOB + b"\0" * SURPLUS, False)
    ok, said = _receive(tmp_path, source, staged, monkeypatch)
    assert not ok
    assert f"{MODEL} from the mirror failed (sha256-{HEX} from {source.url(blobs)}{HEX}: the " \
           f"source sent more than its declared {len(BLOB)} bytes (cut there)); trying the " \
           "next source" in said, said
    assert said[-1] == f"{MODEL}: not received from any peer, mirror nor the registry"
    assert all("\n" not in line for line in said), said
    assert (tmp_path / "models" / ".fanout" / f"sha256-{HEX}.partial").stat().st_size \
        == len(BLOB)
    assert not (tmp_path / "models" / "manifests").exists()  # nothing of it is listed


def test_a_manifest_nested_5000_deep_is_one_line_naming_the_model(
        tmp_path, source, monkeypatch):
    ok, said = _receive(tmp_path, source, nested(5000), monkeypatch)
    assert not ok
    assert said == [f"models: {MODEL}: the registry's manifest: not a manifest (nested 5000 "
                    f"deep, over the {MANIFEST_MAX_DEPTH} a manifest may be)"]


def test_a_stored_manifest_past_the_bound_is_damage_read_no_further(tmp_path):
    from pyinfra.context import ctx_host

    from ollama_fleet.tasks.kit.facts import StoredManifests
    from tests.unit.ophelper import FakeHost

    store = tmp_path / "models"
    for name, text in (("llama3.2:1b", manifest(layer()) + "\n" * 10 + " " * (2 << 20)),
                       ("tinyllama", nested(5000))):
        path = store / models.manifest_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    settings = settings_for("gpu-1", {"ollama_models_path": str(tmp_path),
                                      "ollama_models": ["llama3.2:1b", "tinyllama"]})
    fact = StoredManifests()
    paths = [models.manifest_path(m) for m in ("llama3.2:1b", "tinyllama:latest")]
    proc = run_with_stubs(fact.command(str(store), paths), tmp_path,
                          tools=("find", "stat", "tr", "sed", "sh", "cat", "head"))
    assert proc.returncode == 0, proc.stderr
    found = fact.process(proc.stdout.splitlines())
    assert len(found["manifests"][paths[0]]) == MANIFEST_MAX_BYTES + 1  # read no further
    with ctx_host.use(FakeHost(facts={StoredManifests.name: found})):
        assert models.store_damage(settings, {"llama3.2:1b": "x", "tinyllama:latest": "y"}) \
            == {"llama3.2:1b": "its manifest: not a manifest (more than the 1048576 bytes a "
                               "manifest may have)",
                "tinyllama:latest": "its manifest: not a manifest (nested 5000 deep, over "
                                    "the 32 a manifest may be)"}
