"""Models across the fleet: one download from the registry, copies over the LAN, verified.

One lab of 4 GPU hosts and a model of 300 MiB (llama3.2:1b at the lab's full size),
tests in file order: the fan-out, a no-op re-run with other spellings of the model, a
dropped and a corrupted registry download, a damaged store, a mirror that streams a blob
past its size, an air-gapped fleet with a mirror, then the seed killed in the middle of the
fan-out (last: it powers a host off).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import running_lab
from tests.labfleet import PYINFRA, REPO, lab_cli, poll

pytestmark = pytest.mark.lab

NAME = "fleetlab-models"
MODEL = "llama3.2:1b"
MODELS = f'ollama_models=["{MODEL}"]'
STORE = "/var/lib/docker/volumes/ollama-models/_data/models"


@pytest.fixture(scope="module")
def fleet():
    with running_lab(NAME, "--gpu-hosts", "4", "--gpus-per-host", "1",
                     "--registry-port", "5060", "--model-scale", "1") as lab:
        registry(lab, "/_lab/reset", {})
        lab.first = lab.pyinfra("deploy.py", "--data", MODELS)
        assert lab.first.returncode == 0, lab.first.output[-4000:]
        yield lab


def registry(fleet, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{fleet.endpoint('model_registry')}{path}", data=data,
                                     method="POST" if data is not None else "GET")
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


def manifest(fleet) -> tuple[str, dict]:
    """(Ollama's digest of the registry's manifest, the manifest)."""
    url = f"{fleet.endpoint('model_registry')}/v2/library/llama3.2/manifests/1b"
    with urllib.request.urlopen(url, timeout=30) as answer:
        raw = answer.read()
    return hashlib.sha256(raw).hexdigest(), json.loads(raw)


def blob_digests(fleet) -> dict[str, int]:
    _, m = manifest(fleet)
    return {e["digest"]: e["size"] for e in [m["config"], *m["layers"]]}


def listed(fleet, host: str) -> dict[str, str]:
    _, out, _ = fleet.ssh(host, "curl -sS -m 10 http://127.0.0.1:11434/api/tags")
    return {m["name"]: m["digest"] for m in json.loads(out)["models"]}


def stored_digest(fleet, host: str) -> str:
    """sha256 of the manifest HOST's Ollama keeps: the ID `ollama list` shows."""
    path = f"{STORE}/manifests/registry.ollama.ai/library/llama3.2/1b"
    _, out, _ = fleet.ssh(host, f"sha256sum {path}")
    return out.split()[0]


def assert_verified(fleet, host: str) -> None:
    """HOST lists the model by the digest of the manifest it keeps, that manifest names the
    registry's blobs, and every blob on disk checks out."""
    assert listed(fleet, host).get(MODEL) == stored_digest(fleet, host), host
    _, out, _ = fleet.ssh(host, f"cat {STORE}/manifests/registry.ollama.ai/library/llama3.2/1b")
    kept = json.loads(out)
    assert {e["digest"]: e["size"] for e in [kept["config"], *kept["layers"]]} == \
        blob_digests(fleet), host
    checks = " && ".join(f"echo '{d[7:]}  {STORE}/blobs/sha256-{d[7:]}' | sha256sum -c --quiet"
                         for d in blob_digests(fleet))
    fleet.ssh(host, checks)


def assert_one_id(fleet) -> None:
    """Every host lists the model by the same ID (fan-out copies the seed's own manifest)."""
    ids = {h["name"]: listed(fleet, h["name"]).get(MODEL) for h in fleet.hosts()}
    assert len(set(ids.values())) == 1 and None not in ids.values(), ids


def forget(fleet, *hosts: str) -> None:
    for host in hosts:
        fleet.ssh(host, "curl -sS -m 30 -X DELETE http://127.0.0.1:11434/api/delete "
                        f"-d '{{\"model\": \"{MODEL}\"}}'")
        assert MODEL not in listed(fleet, host)


def test_each_model_crosses_the_internet_once(fleet):
    sizes = blob_digests(fleet)
    stats = registry(fleet, "/_lab/stats")
    assert stats["by_blob"] == sizes  # every blob served exactly once, for 4 hosts
    for host in fleet.hosts():
        assert_verified(fleet, host["name"])
    output = fleet.first.output
    assert re.search(rf"\[gpu-1\] +models received: {re.escape(MODEL)} [\d.]+ MiB from the "
                     r"registry", output), output[-3000:]
    for host in ("gpu-2", "gpu-3", "gpu-4"):
        assert re.search(rf"\[{host}\] +models received: {re.escape(MODEL)} [\d.]+ MiB from "
                         r"gpu-\d \(LAN\)", output), output[-3000:]
    # waves: gpu-2 copies from the seed, then gpu-3 and gpu-4 from gpu-1 and gpu-2
    assert re.search(r"\[gpu-4\] +models received: .* from gpu-2 \(LAN\)", output)
    assert_one_id(fleet)


SPELLINGS = ["LLAMA3.2:1B", "registry.ollama.ai/library/llama3.2:1b", "library/llama3.2:1b",
             "https://registry.ollama.ai/library/llama3.2:1b", "llama3.2:1b"]


def test_second_run_moves_nothing(fleet):
    """... whichever way the inventory spells the model (tests/unit/test_models.py has the
    whole table: each spelling is the one name Ollama lists)."""
    before = registry(fleet, "/_lab/stats")["blob_bytes_sent"]
    proc = fleet.pyinfra("deploy.py", "--data", f"ollama_models={json.dumps(SPELLINGS)}")
    assert proc.returncode == 0, proc.output[-3000:]
    results = proc.output.split("--> Results:")[-1]
    grand_total = next(line for line in results.splitlines() if "Grand total" in line).split()
    assert grand_total[3:5] == ["-", "-"], results
    assert registry(fleet, "/_lab/stats")["blob_bytes_sent"] == before


def test_a_dropped_registry_download_resumes_to_a_verified_model(fleet):
    forget(fleet, "gpu-4")
    layer = max(blob_digests(fleet).items(), key=lambda item: item[1])[0]
    registry(fleet, "/_lab/reset", {})
    registry(fleet, "/_lab/fault", {"drop_after_bytes": 64 << 20, "times": 2, "digest": layer})
    try:
        proc = fleet.pyinfra("deploy.py", "--data", MODELS, "--data", "ollama_fanout=false",
                             limit="gpu-4")
    finally:
        registry(fleet, "/_lab/fault", {"times": 0})
    assert proc.returncode == 0, proc.output[-3000:]
    assert registry(fleet, "/_lab/stats")["faults_injected"] == 2
    assert_verified(fleet, "gpu-4")


def test_a_corrupt_registry_download_is_never_listed(fleet):
    forget(fleet, "gpu-4")
    layer = max(blob_digests(fleet).items(), key=lambda item: item[1])[0]
    registry(fleet, "/_lab/fault", {"corrupt": True, "times": -1, "digest": layer})
    try:
        proc = fleet.pyinfra("deploy.py", "--data", MODELS, "--data", "ollama_fanout=false",
                             limit="gpu-4")
    finally:
        registry(fleet, "/_lab/fault", {"times": 0})
    assert proc.returncode != 0
    assert f"{MODEL}: not received from any peer, mirror nor the registry" in proc.output
    assert re.search(r'^--> gpu-4: failed at step "Models received \(fan-out wave \d+\)"',
                     proc.output, re.M), proc.output[-3000:]
    assert MODEL not in listed(fleet, "gpu-4")
    # no blob under its final name that does not match it
    fleet.ssh("gpu-4", f"f={STORE}/blobs/sha256-{layer[7:]}; [ ! -e $f ] || "
                       f"echo '{layer[7:]}  '$f | sha256sum -c --quiet")
    # the next run, with the registry healthy again, converges
    proc = fleet.pyinfra("deploy.py", "--data", MODELS, limit="gpu-4")
    assert proc.returncode == 0, proc.output[-3000:]
    assert_verified(fleet, "gpu-4")


CANARY = "/tmp/fleetlab-canary"  # lab/registry/modelregistry.py HOSTILE_CANARY


def test_a_hostile_registry_fails_the_host_in_one_line_and_runs_nothing(fleet):
    """A registry that serves shell, paths and nonsense for digests and sizes."""
    forget(fleet, "gpu-4")
    registry(fleet, "/_lab/fault", {"hostile": True, "times": -1})
    try:
        proc = fleet.pyinfra("deploy.py", "--data", MODELS, limit="gpu-4")
    finally:
        registry(fleet, "/_lab/fault", {"times": 0})
    assert proc.returncode != 0, proc.output[-3000:]
    failed = re.findall(r'^--> (\S+): failed at step "([^"]+)"', proc.output, re.M)
    assert [host for host, _ in failed] == ["gpu-4"], proc.output[-3000:]
    said = [line for line in proc.output.splitlines()
            if "gpu-4" in line and "is not a sha256 digest" in line]
    assert said, proc.output[-3000:]
    for host in fleet.hosts():  # nothing of the manifest ran, anywhere
        status, _, _ = fleet.ssh(host["name"], f"test ! -e {CANARY}", check=False)
        assert status == 0, f"{host['name']} ran the registry's {CANARY} command"
    assert not Path(CANARY).exists()
    assert MODEL not in listed(fleet, "gpu-4")
    proc = fleet.pyinfra("deploy.py", "--data", MODELS, limit="gpu-4")  # registry honest again
    assert proc.returncode == 0, proc.output[-3000:]
    assert_verified(fleet, "gpu-4")


def test_a_host_that_joins_later_gets_the_model_over_the_lan(fleet):
    forget(fleet, "gpu-3")  # a host whose store is empty: new, or rebuilt
    before = registry(fleet, "/_lab/stats")["blob_bytes_sent"]
    proc = fleet.pyinfra("deploy.py", "--data", MODELS, limit="gpu-3")
    assert proc.returncode == 0, proc.output[-3000:]
    assert re.search(rf"\[gpu-3\] +models received: {re.escape(MODEL)} [\d.]+ MiB from "
                     r"gpu-\d \(LAN\)", proc.output), proc.output[-3000:]
    assert registry(fleet, "/_lab/stats")["blob_bytes_sent"] == before
    assert_verified(fleet, "gpu-3")


def test_a_damaged_store_is_named_and_repaired_from_a_peer(fleet):
    """A blob of a model gone from the store: whether Ollama still lists the model depends
    on the release and the layer (0.6.8 lists it; 0.32.15 drops a model whose template is
    gone, server/model_list_cache.go), so the deploy reads the store itself: the next run
    says so and copies the blob from a peer."""
    smallest = min(blob_digests(fleet).items(), key=lambda item: item[1])[0]
    fleet.ssh("gpu-3", f"rm {STORE}/blobs/sha256-{smallest[7:]}")
    before = registry(fleet, "/_lab/stats")["blob_bytes_sent"]
    proc = fleet.pyinfra("deploy.py", "--data", MODELS, limit="gpu-3")
    assert proc.returncode == 0, proc.output[-3000:]
    assert re.search(rf"\[gpu-3\] +{re.escape(MODEL)}: damaged in the store \(blob "
                     rf"sha256:{smallest[7:19]} is missing\)", proc.output), proc.output[-3000:]
    assert re.search(rf"\[gpu-3\] +models received: {re.escape(MODEL)} [\d.]+ MiB from "
                     r"gpu-\d \(LAN\)", proc.output), proc.output[-3000:]
    assert registry(fleet, "/_lab/stats")["blob_bytes_sent"] == before
    assert_verified(fleet, "gpu-3")
    assert_one_id(fleet)


def test_a_mirror_streaming_a_blob_past_its_size_is_cut_there_and_refused(fleet):
    """A compromised mirror streams the model's largest blob 64 MiB past the size the
    registry's manifest declares. The deploy's fetcher reads one byte past the size, cuts
    the file back to it and refuses the mirror in one line naming the host and the model;
    with no peer holding the model and the registry cut off, the host fails and lists
    nothing of it. With the mirror honest again the cut file verifies and the model comes."""
    public = urllib.parse.urlsplit(fleet.endpoint("model_registry")).netloc
    zone = f"{NAME}.test"
    mirror = ("--data", f"ollama_registry_mirror=http://registry.{zone}:8081")
    forget(fleet, *[h["name"] for h in fleet.hosts()])  # no peer to copy from
    layer, size = max(blob_digests(fleet).items(), key=lambda item: item[1])
    hex_ = layer[7:]
    registry(fleet, "/_lab/reset", {})
    try:
        registry(fleet, "/_lab/unreachable", {"hosts": [public]})  # Ollama's pull: no answer
        registry(fleet, "/_lab/fault", {"oversize_bytes": 64 << 20, "times": -1,
                                        "digest": layer})
        proc = fleet.pyinfra("deploy.py", "--data", MODELS, *mirror, limit="gpu-4")
    finally:
        registry(fleet, "/_lab/fault", {"times": 0})
        registry(fleet, "/_lab/unreachable", {"hosts": []})
    assert proc.returncode != 0
    assert re.search(
        rf"\[gpu-4\] +{re.escape(MODEL)} from the mirror failed \(sha256-{hex_} from "
        rf"http://registry\.{re.escape(zone)}:8081/v2/library/llama3\.2/blobs/sha256:{hex_}: "
        rf"the source sent more than its declared {size} bytes \(cut there\)\); trying the "
        r"next source$", proc.output, re.M), proc.output[-4000:]
    assert f"{MODEL}: not received from any peer, mirror nor the registry" in proc.output
    assert re.search(r'^--> gpu-4: failed at step "Models received \(fan-out wave \d+\)"',
                     proc.output, re.M), proc.output[-3000:]
    assert registry(fleet, "/_lab/stats")["faults_injected"] >= 1
    assert MODEL not in listed(fleet, "gpu-4")
    _, out, _ = fleet.ssh("gpu-4", f"stat -c %s {STORE}/.fanout/sha256-{hex_}.partial")
    assert int(out) == size  # cut at the declared size: never more of it on the host
    status, _, _ = fleet.ssh("gpu-4", f"test ! -e {STORE}/blobs/sha256-{hex_}", check=False)
    assert status == 0
    proc = fleet.pyinfra("deploy.py", "--data", MODELS, *mirror, limit="gpu-4")
    assert proc.returncode == 0, proc.output[-3000:]
    assert re.search(rf"\[gpu-4\] +models received: {re.escape(MODEL)} [\d.]+ MiB from the "
                     r"mirror", proc.output), proc.output[-3000:]
    assert_verified(fleet, "gpu-4")


def test_an_air_gapped_fleet_gets_its_models_from_the_mirror(fleet):
    """The registry Ollama pulls from cut off; the operator's mirror (another name of the
    lab registry, `registry.<lab>.test`) reachable: the seed gets the model from the
    mirror through the deploy's own fetcher, the others from peers. With neither: one
    clear line per host, nothing downloaded."""
    public = urllib.parse.urlsplit(fleet.endpoint("model_registry")).netloc
    zone = f"{NAME}.test"
    mirror = ("--data", f"ollama_registry_mirror=http://registry.{zone}:8081")
    hosts = [h["name"] for h in fleet.hosts()]
    forget(fleet, *hosts)
    registry(fleet, "/_lab/reset", {})
    try:
        registry(fleet, "/_lab/unreachable",
                 {"hosts": [public, f"registry.{zone}:8081", f"blobs.{zone}:8081"]})
        proc = fleet.pyinfra("deploy.py", "--data", MODELS, *mirror)
        assert proc.returncode != 0
        for host in hosts:
            said = {line.split(f"[{host}]", 1)[1].strip() for line in proc.output.splitlines()
                    if f"[{host}]" in line and "the registry does not answer" in line}
            assert said == {f"ollama_models: {MODEL}: the registry does not answer (http://"
                            f"registry.{zone}:8081/v2/library/llama3.2/manifests/1b)"}, \
                proc.output[-3000:]
        assert registry(fleet, "/_lab/stats")["blob_bytes_sent"] == 0

        registry(fleet, "/_lab/unreachable", {"hosts": [public]})
        proc = fleet.pyinfra("deploy.py", "--data", MODELS, *mirror)
        assert proc.returncode == 0, proc.output[-4000:]
    finally:
        registry(fleet, "/_lab/unreachable", {"hosts": []})
    assert re.search(rf"\[gpu-1\] +models received: {re.escape(MODEL)} [\d.]+ MiB from the "
                     r"mirror", proc.output), proc.output[-3000:]
    for host in hosts[1:]:
        assert re.search(rf"\[{host}\] +models received: {re.escape(MODEL)} [\d.]+ MiB from "
                         r"gpu-\d \(LAN\)", proc.output), proc.output[-3000:]
    assert registry(fleet, "/_lab/stats")["by_blob"] == blob_digests(fleet)  # once, in all
    for host in hosts:
        assert_verified(fleet, host)
    assert_one_id(fleet)


def test_the_seed_dying_mid_fanout_leaves_every_survivor_verified(fleet):
    survivors = ("gpu-2", "gpu-3", "gpu-4")
    forget(fleet, *survivors)
    # 10 MB/s per peer download: the copy from the seed takes ~30 s, time to kill it
    cmd = [PYINFRA, "-y", fleet.inventory, "deploy.py", "--data", MODELS,
           "--data", "ollama_fanout_rate=10m"]  # no _timeout: the lost seed is noticed
    run = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, stdin=subprocess.DEVNULL)
    try:
        def copying() -> bool:
            _, out, _ = fleet.ssh("gpu-2", f"stat -c %s {STORE}/.fanout/*.partial 2>/dev/null",
                                  check=False)
            return run.poll() is not None or any(int(n) > 20 << 20 for n in out.split())

        poll(copying, timeout=300, interval=0.5, what="gpu-2 copying from the seed")
        assert run.poll() is None, "the deploy ended before the seed could be killed"
        lab_cli("kill", "gpu-1", name=NAME)
        output, _ = run.communicate(timeout=900)
    finally:
        if run.poll() is None:
            run.kill()
    try:
        assert run.returncode != 0  # the seed is gone, and the run says so
        assert "llama3.2:1b from gpu-1 failed" in output, output[-4000:]
        # progress while a model moves: host, model, source, bytes and percent
        assert re.search(r"\[gpu-\d\] +llama3\.2:1b from gpu-\d: [\d.]+ MiB of 300\.0 MiB "
                         r"\(\d+%\)", output), output[-4000:]
        assert re.search(r"\[gpu-2\] +models received: llama3\.2:1b 300\.0 MiB from (the "
                         r"registry|gpu-[34] \(LAN\))", output), output[-4000:]
        for host in survivors:
            assert_verified(fleet, host)
    finally:
        lab_cli("restore", "gpu-1", name=NAME)
