"""Fan-out planning and the registry's names: pure functions, no host."""

from __future__ import annotations

import json
import re
import shlex
import time

import pytest
import yaml

from ollama_fleet.tasks.kit.fleet import Fleet
from ollama_fleet.tasks.kit.scripts import script_command
from ollama_fleet.tasks.kit.settings import settings_for
from ollama_fleet.tasks.steps import models
from ollama_fleet.tasks.steps.metrics import render_metrics
from ollama_fleet.tasks.steps.models import (
    ManifestError,
    Peer,
    canonical,
    manifest_layers,
    manifest_path,
    manifest_url,
    sources,
    wave_of,
)
from tests.unit.stubs import run_with_stubs


def test_waves_double_the_receivers():
    assert [wave_of(i) for i in range(8)] == [0, 1, 2, 2, 3, 3, 3, 3]


def test_each_wave_is_served_by_a_host_of_an_earlier_wave_then_every_other_peer():
    fleet = [Peer(f"gpu-{i}", f"10.0.0.{i}", 11380) for i in range(1, 7)]
    assigned = {p.name: sources(i, fleet)[0].name for i, p in enumerate(fleet) if i}
    assert assigned == {"gpu-2": "gpu-1", "gpu-3": "gpu-1", "gpu-4": "gpu-2", "gpu-5": "gpu-1",
                        "gpu-6": "gpu-2"}
    for i, peer in enumerate(fleet):
        tried = sources(i, fleet)
        assert peer not in tried and sorted(p.name for p in tried) == sorted(
            p.name for p in fleet if p != peer)
        if i:
            assert wave_of(fleet.index(tried[0])) < wave_of(i)


@pytest.mark.parametrize("name, path, url", [
    ("tinyllama", "manifests/registry.ollama.ai/library/tinyllama/latest",
     "https://registry.ollama.ai/v2/library/tinyllama/manifests/latest"),
    ("llama3.2:1b", "manifests/registry.ollama.ai/library/llama3.2/1b",
     "https://registry.ollama.ai/v2/library/llama3.2/manifests/1b"),
    ("acme/coder:7b", "manifests/registry.ollama.ai/acme/coder/7b",
     "https://registry.ollama.ai/v2/acme/coder/manifests/7b"),
    ("hf.co/org/model:q4", "manifests/hf.co/org/model/q4",
     "https://hf.co/v2/org/model/manifests/q4"),
    ("registry.ollama.ai/library/tinyllama",
     "manifests/registry.ollama.ai/library/tinyllama/latest",
     "https://registry.ollama.ai/v2/library/tinyllama/manifests/latest"),
])
def test_names_map_to_ollamas_store_and_the_registry(name, path, url):
    assert manifest_path(name) == path
    assert canonical(name) in ("tinyllama:latest", "llama3.2:1b", "acme/coder:7b",
                               "hf.co/org/model:q4")  # one spelling, as Ollama lists it
    assert manifest_url(settings_for("gpu-1", {}), name) == url


def test_a_mirror_of_the_registry_is_used_for_its_models():
    settings = settings_for("gpu-1", {"ollama_registry_mirror": "http://10.0.0.9:8081/",
                                      "fleet_insecure_http": True})
    assert manifest_url(settings, "tinyllama") == (
        "http://10.0.0.9:8081/v2/library/tinyllama/manifests/latest")
    assert models.registry_base(settings, "registry.ollama.ai/acme/coder:7b") == (
        "http://10.0.0.9:8081/v2/acme/coder")
    assert models.from_mirror(settings, "library/tinyllama")
    # another registry's models are not the mirror's business
    assert manifest_url(settings, "hf.co/org/model:q4") == (
        "https://hf.co/v2/org/model/manifests/q4")
    assert not models.from_mirror(settings, "hf.co/org/model:q4")
    assert not models.from_mirror(settings_for("gpu-1", {}), "tinyllama")


def test_layers_are_the_config_and_every_layer_once():
    manifest = {"config": {"digest": "sha256:" + "c" * 64, "size": 10},
                "layers": [{"digest": "sha256:" + "a" * 64, "size": 300},
                           {"digest": "sha256:" + "b" * 64, "size": 5},
                           {"digest": "sha256:" + "a" * 64, "size": 300}]}
    assert manifest_layers(json.dumps(manifest)) == [("c" * 64, 10), ("a" * 64, 300),
                                                     ("b" * 64, 5)]


@pytest.mark.parametrize("layer, problem", [
    ({"digest": "sha256:" + "A" * 64}, "is not a sha256 digest"),
    ({"digest": "sha256-" + "a" * 64}, "is not a sha256 digest"),
    ({"digest": "sha256:" + "a" * 63}, "is not a sha256 digest"),
    ({"digest": "sha256:../../../../etc/passwd"}, "is not a sha256 digest"),
    ({"digest": "sha256:" + "a" * 64 + "$(reboot)"}, "is not a sha256 digest"),
    ({"digest": "sha256:" + "a" * 64 + "\n"}, "is not a sha256 digest"),
    ({"size": 5}, "'' is not a sha256 digest"),
    ({"digest": "sha256:" + "a" * 64, "size": "5 ; rm -rf /"}, "is not a number of bytes"),
    ({"digest": "sha256:" + "a" * 64, "size": -1}, "is not a number of bytes"),
])
def test_a_registrys_manifest_names_blobs_by_sha256_or_is_refused(layer, problem):
    # what a registry answers reaches file names and the hosts' fan-out commands
    manifest = {"config": {"digest": "sha256:" + "c" * 64, "size": 10}, "layers": [layer]}
    with pytest.raises(ManifestError, match=re.escape(problem)):
        manifest_layers(json.dumps(manifest))


@pytest.mark.parametrize("raw, problem", [
    ("{not json", "not a manifest"), ("[]", "not a manifest (not a JSON object)"),
    ('{"layers": "abc"}', "not a manifest (its layers are not a list)"),
    ('{"layers": []}', "references no blob"),
])
def test_what_is_not_a_manifest_is_refused(raw, problem):
    with pytest.raises(ManifestError, match=re.escape(problem)):
        manifest_layers(raw)


def test_peers_at_ipv6_addresses_are_bracketed_in_urls():
    assert Peer("gpu-1", "fd00::1", 11380).url == "http://[fd00::1]:11380"
    assert Peer("gpu-1", "10.0.0.1", 11380).url == "http://10.0.0.1:11380"
    assert Peer("gpu-1", "gpu-1.lan", 11380).url == "http://gpu-1.lan:11380"


def test_fanout_server_is_rendered_for_peers_only_and_rate_capped():
    from ollama_fleet.tasks.steps.stack import plan_instances, stack_files

    gpu = settings_for("gpu-1", {"gpu_count": 1, "ollama_fanout_rate": "20m",
                                 "ollama_fanout_allow": ["10.1.0.0/16"]})
    files = stack_files(gpu, plan_instances(gpu, [{"index": 0, "uuid": "GPU-0"}]), Fleet())
    conf = files["nginx/ollama.conf"]
    fanout = conf.split("listen 11380;")[1]
    assert "allow 10.1.0.0/16;" in fanout and "deny all;" in fanout
    assert "limit_rate 20m;" in fanout and "alias /srv/ollama/models/blobs/;" in fanout
    assert "ollama-models:/srv/ollama:ro" in files["compose.yaml"]
    assert files[models.FETCH_SCRIPT].startswith("#!/bin/sh")
    off = settings_for("gpu-1", {"gpu_count": 1, "ollama_fanout": False})
    files = stack_files(off, plan_instances(off, [{"index": 0, "uuid": "GPU-0"}]), Fleet())
    assert "11380" not in files["nginx/ollama.conf"] and models.FETCH_SCRIPT not in files


def test_the_gpu_exporter_renders_with_every_gpu_and_only_sys_admin():
    settings = settings_for("gpu-1", {"gpu_count": 2, "nvidia_exporter": True})
    service = yaml.safe_load(render_metrics(settings))["services"]["dcgm-exporter"]
    assert service["image"].startswith("nvcr.io/nvidia/k8s/dcgm-exporter:")
    assert service["cap_drop"] == ["ALL"] and service["cap_add"] == ["SYS_ADMIN"]
    assert service["environment"]["DCGM_EXPORTER_LISTEN"] == "127.0.0.1:9400"
    device = service["deploy"]["resources"]["reservations"]["devices"][0]
    assert device == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    assert service["logging"]["options"]["max-size"] == "50m"


# -- the scripts a transfer runs on the host, run here against stand-ins (templates/models)

def test_a_pull_succeeds_only_on_a_stream_that_ends_in_success(tmp_path):
    # the stub curl writes $STREAM where -o says, as curl does
    curl = ('echo "$*" > "$0.args"\nwhile [ $# -gt 1 ]; do [ "$1" = -o ] && out=$2; shift; '
            'done\nprintf "%s\\n" "$STREAM" > "$out"\n'
            '[ "${CURL_RC:-0}" = 0 ] || { echo "curl: (7) refused" >&2; exit "$CURL_RC"; }\n')
    stream_file = tmp_path / "job.stream"
    command = models.pull_command("127.0.0.1", 11435, "qwen2.5:0.5b", str(stream_file))
    for stream, curl_rc, rc, said in [
        ('{"status":"pulling"}\n{"status":"success"}', 0, 0, ""),
        ('{"status":"pulling"}\n{"error":"max retries exceeded"}', 0, 1,
         'pull qwen2.5:0.5b: {"error":"max retries exceeded"}\n'),
        ('{"status":"pulling"}', 0, 1, "pull qwen2.5:0.5b: stream ended without success\n"),
        ("", 7, 1, "pull qwen2.5:0.5b: curl: (7) refused\n"),
    ]:
        proc = run_with_stubs(f"STREAM={shlex.quote(stream)} CURL_RC={curl_rc} {command}",
                              tmp_path, {"curl": curl})
        assert (proc.returncode, proc.stderr) == (rc, said), stream
        assert stream_file.read_text() == stream + "\n"  # kept for job-progress.sh
    args = (tmp_path / "stub-bin" / "curl.args").read_text().split()
    assert args == ["-sS", "-N", "--max-time", str(models.PULL_TIMEOUT_S), "-X", "POST",
                    "http://127.0.0.1:11435/api/pull", "-d", '{"model":', '"qwen2.5:0.5b"}',
                    "-o", str(stream_file)]


REGISTRY_CURL = r"""for a; do url=$a; done
while [ $# -gt 1 ]; do [ "$1" = -D ] && head=$2; shift; done
case "$url" in
*/library/tinyllama/manifests/latest) echo 'HTTP/1.1 200 OK' > "$head"; echo '{"layers": []}';;
*/down/*) echo "curl: (7) Failed to connect" >&2; exit 7;;
*) printf 'HTTP/1.1 404 Not Found\r\n' > "$head"; echo '{"errors": []}';;
esac
"""


def test_the_registrys_manifest_is_staged_whole_or_the_model_is_named(tmp_path):
    settings = settings_for("gpu-1", {"ollama_stack_dir": str(tmp_path / "stack")})
    dest = models.staged_manifest(settings, "tinyllama")

    def fetch(model: str, url: str):
        return run_with_stubs(script_command("models/registry-manifest.sh", dest, url, model,
                                             models.MANIFEST_TYPE, models.MANIFEST_MAX_BYTES),
                              tmp_path, {"curl": REGISTRY_CURL})

    proc = fetch("tinyllama", models.manifest_url(settings, "tinyllama"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "stack" / ".fanout").is_dir()
    assert open(dest).read() == '{"layers": []}\n'
    (tmp_path / "stack" / ".fanout").joinpath("x").touch()
    proc = fetch("no-such-model", "https://registry.ollama.ai/v2/library/nope/manifests/latest")
    assert proc.returncode == 1
    assert proc.stderr == ("ollama_models: no-such-model: not in the registry (HTTP 404 from "
                           "https://registry.ollama.ai/v2/library/nope/manifests/latest)\n")
    proc = fetch("it's", "https://registry.example/down/manifests/latest")
    assert proc.returncode == 1
    assert proc.stderr.endswith("ollama_models: it's: the registry does not answer "
                                "(https://registry.example/down/manifests/latest)\n")
    assert not any(p.name.endswith(".new") for p in (tmp_path / "stack").rglob("*"))


def test_a_background_job_ends_with_its_status_and_its_bytes_are_counted(tmp_path):
    store, job = tmp_path / "store", tmp_path / "stack" / ".fanout" / "job"
    done, pulling, staged, none = "a" * 64, "b" * 64, "c" * 64, "d" * 64
    (store / "blobs").mkdir(parents=True)
    (store / ".fanout").mkdir()
    job.parent.mkdir(parents=True)
    (store / "blobs" / f"sha256-{done}").write_bytes(b"x" * 10)
    # Ollama sizes its partial file in full at once: the stream says how far it is
    (store / "blobs" / f"sha256-{pulling}-partial").write_bytes(b"x" * 50)
    job.with_name("job.stream").write_text(
        f'{{"status":"pulling {pulling[:12]}","digest":"sha256:{pulling}","total":50,'
        f'"completed":1}}\n{{"status":"pulling {pulling[:12]}","digest":"sha256:{pulling}",'
        f'"total":50,"completed":3}}\n{{"status":"pulling manifest"}}\n')
    (store / ".fanout" / f"sha256-{staged}.partial").write_bytes(b"x" * 7)
    progress = script_command("models/job-progress.sh", job, store, done, pulling, staged, none)
    before = run_with_stubs(progress, tmp_path)
    assert before.stdout.split() == ["running", "10", "3", "7", "0"]
    work = "echo working; echo trouble >&2; exit 3"
    started = run_with_stubs(script_command("models/start-job.sh", job, work), tmp_path)
    assert started.returncode == 0, started.stderr
    for _ in range(100):
        if job.with_name("job.rc").exists():
            break
        time.sleep(0.05)
    after = run_with_stubs(progress, tmp_path)
    assert after.stdout.split() == ["3", "10", "0", "7", "0"]  # the old stream is gone
    assert job.with_name("job.log").read_text() == "working\ntrouble\n"


# -- names: every spelling of a model is one entry of Ollama's store

SPELLINGS = {  # spelling -> the one name Ollama lists, and where its manifest lives
    "llama3.2": ("llama3.2:latest", "registry.ollama.ai/library/llama3.2/latest"),
    "llama3.2:latest": ("llama3.2:latest", "registry.ollama.ai/library/llama3.2/latest"),
    "library/llama3.2": ("llama3.2:latest", "registry.ollama.ai/library/llama3.2/latest"),
    "registry.ollama.ai/library/llama3.2:latest": (
        "llama3.2:latest", "registry.ollama.ai/library/llama3.2/latest"),
    "llama3.2:1b": ("llama3.2:1b", "registry.ollama.ai/library/llama3.2/1b"),
    "library/llama3.2:1b": ("llama3.2:1b", "registry.ollama.ai/library/llama3.2/1b"),
    "registry.ollama.ai/library/llama3.2:1b": (
        "llama3.2:1b", "registry.ollama.ai/library/llama3.2/1b"),
    "acme/coder": ("acme/coder:latest", "registry.ollama.ai/acme/coder/latest"),
    "registry.ollama.ai/acme/coder:latest": (
        "acme/coder:latest", "registry.ollama.ai/acme/coder/latest"),
    "hf.co/user/model:Q4_K_M": ("hf.co/user/model:Q4_K_M", "hf.co/user/model/Q4_K_M"),
    "hf.co/user/model": ("hf.co/user/model:latest", "hf.co/user/model/latest"),
}


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_every_spelling_is_the_name_ollama_lists_and_its_store_entry(spelling):
    name, path = SPELLINGS[spelling]
    assert canonical(spelling) == name
    assert canonical(name) == name  # listed once, the configured spelling is present
    assert manifest_path(spelling) == f"manifests/{path}"


# -- a damaged store: Ollama lists the model, the deploy sees what is missing

def _store(tmp_path):
    store = tmp_path / "store"
    (store / "blobs").mkdir(parents=True)

    def model(name: str, blobs: dict[str, bytes]) -> None:
        manifest = {"schemaVersion": 2, "config": {}, "layers": []}
        for n, (hex_, data) in enumerate(blobs.items()):
            entry = {"digest": f"sha256:{hex_}", "size": len(data)}
            if n == 0:
                manifest["config"] = entry
            else:
                manifest["layers"].append(entry)
        path = store / manifest_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest, indent=1))  # newlines too: read as one line

    return store, model


def test_the_store_says_which_models_lack_a_blob_or_hold_a_short_one(tmp_path):
    from ollama_fleet.tasks.kit.facts import StoredManifests
    from tests.unit.ophelper import FakeHost

    store, model = _store(tmp_path)
    whole, gone, short = "a" * 64, "b" * 64, "c" * 64
    for hex_, data in ((whole, b"config"), (short, b"xx")):
        (store / "blobs" / f"sha256-{hex_}").write_bytes(data)
    model("tinyllama", {whole: b"config"})
    model("llama3.2:1b", {whole: b"config", gone: b"layer"})
    model("acme/coder:7b", {whole: b"config", short: b"xxxx"})
    settings = settings_for("gpu-1", {
        "ollama_models_path": str(tmp_path), "ollama_models": [
            "library/tinyllama", "llama3.2:1b", "registry.ollama.ai/acme/coder:7b", "absent"]})
    fact = StoredManifests()
    names = sorted({canonical(m) for m in settings.all_models})
    proc = run_with_stubs(fact.command(str(store), [manifest_path(m) for m in names]),
                          tmp_path, tools=("find", "stat", "tr", "sed", "sh", "cat", "head"))
    assert proc.returncode == 0, proc.stderr
    found = fact.process(proc.stdout.splitlines())
    assert found["manifests"][manifest_path("absent")] is None
    assert found["blobs"] == {f"sha256-{whole}": 6, f"sha256-{short}": 2}
    fake = FakeHost(facts={StoredManifests.name: found})
    from pyinfra.context import ctx_host
    with ctx_host.use(fake):
        assert models.store_damage(settings) == {
            "llama3.2:1b": f"blob sha256:{gone[:12]} is missing",
            "acme/coder:7b": f"blob sha256:{short[:12]} has 2 of its 4 bytes",
        }


def test_no_store_yet_is_no_damage(tmp_path):
    from ollama_fleet.tasks.kit.facts import StoredManifests

    fact = StoredManifests()
    proc = run_with_stubs(fact.command(str(tmp_path / "none"), ["manifests/x/y/z/latest"]),
                          tmp_path, tools=("find", "stat", "tr", "sed", "sh", "cat", "head"))
    assert (proc.returncode, fact.process(proc.stdout.splitlines())) == (
        0, {"manifests": {"manifests/x/y/z/latest": None}, "blobs": {}})


def test_spellings_of_one_model_are_one_model_of_the_host():
    spellings = [s for s in SPELLINGS if SPELLINGS[s][0] == "llama3.2:1b"] + ["LLAMA3.2:1B"]
    settings = settings_for("gpu-1", {"ollama_models": [*spellings, "tinyllama"]})
    assert settings.all_models == ["llama3.2:1b", "tinyllama"]  # the first spelling kept


def test_a_model_without_a_config_is_one_ollama_stores_with_an_empty_digest():
    stored = {"config": {"mediaType": "", "digest": "", "size": 0},
              "layers": [{"digest": "sha256:" + "a" * 64, "size": 3}]}
    assert manifest_layers(json.dumps(stored)) == [("a" * 64, 3)]


def test_a_blob_of_the_wrong_size_is_dropped_before_ollama_pulls(tmp_path):
    # Ollama's pull takes a blob that is there as done, whatever its size
    store = tmp_path / "store"
    (store / "blobs").mkdir(parents=True)
    whole, short, absent = "a" * 64, "b" * 64, "c" * 64
    (store / "blobs" / f"sha256-{whole}").write_bytes(b"xyz")
    (store / "blobs" / f"sha256-{short}").write_bytes(b"x")
    proc = run_with_stubs(script_command("models/drop-damaged.sh", store, f"{whole}:3",
                                         f"{short}:3", f"{absent}:3"), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (store / "blobs").iterdir()) == [f"sha256-{whole}"]


def test_a_model_is_named_as_the_store_spells_it():
    """Ollama keeps a model's files under the case it was pulled with: the deploy names
    them so (the configured spelling only for a model not there yet)."""
    settings = settings_for("gpu-1", {"ollama_models": ["LLAMA3.2:1B", "TinyLlama"]})
    assert models.as_stored(settings, {"llama3.2:1b": "d1"}) == ["llama3.2:1b",
                                                                   "TinyLlama:latest"]


def test_warm_models_are_named_as_the_store_spells_them():
    settings = settings_for("gpu-1", {"ollama_models": ["LLAMA3.2:1B", "TinyLlama"],
                                      "ollama_warm_models": ["llama3.2:1b"]})
    assert models.warm_as_stored(settings, {"LLAMA3.2:1B": "d1", "tinyllama:latest": "d2"}) \
        == ["LLAMA3.2:1B"]
