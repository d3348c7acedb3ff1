"""The stand-in Ollama's pull rules that need no server: how it re-encodes a manifest
(server/images.go PullModel: json.Marshal of its Manifest struct) and how it cuts a blob
in parts (server/download.go Prepare), read at v0.6.8 / v0.7.1."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import pytest

from lab.ollama.standin import download, pull, registry

MT = "application/vnd.docker.distribution.manifest.v2+json"


@pytest.fixture(scope="module")
def ollama():
    """The stand-in's pieces these rules live in (lab/ollama/standin): the manifest's
    re-encoding (pull), the pull's error (registry), the parts of a blob (download)."""
    return SimpleNamespace(go_manifest=pull.go_manifest, PullError=registry.PullError,
                           part_sizes=download.part_sizes, BlobPart=download.BlobPart)


def _layer(n: int) -> dict:
    return {"mediaType": "application/vnd.ollama.image.model",
            "digest": "sha256:" + hashlib.sha256(str(n).encode()).hexdigest(), "size": n}


def test_the_manifest_is_re_encoded_in_the_structs_order_compact(ollama):
    config = {"size": 7, "digest": _layer(7)["digest"],
              "mediaType": "application/vnd.docker.container.image.v1+json"}
    served = json.dumps({"layers": [{"size": 9, "digest": _layer(9)["digest"],
                                     "mediaType": _layer(9)["mediaType"],
                                     "annotations": {"x": "y"}}],
                         "config": config, "mediaType": MT, "schemaVersion": 2,
                         "signatures": []}, indent=3).encode()
    _, raw = ollama.go_manifest(served)
    assert raw == (
        b'{"schemaVersion":2,"mediaType":"' + MT.encode() + b'","config":{"mediaType":'
        b'"application/vnd.docker.container.image.v1+json","digest":"'
        + config["digest"].encode() + b'","size":7},"layers":[{"mediaType":'
        b'"application/vnd.ollama.image.model","digest":"' + _layer(9)["digest"].encode()
        + b'","size":9}]}')
    assert hashlib.sha256(raw).hexdigest() != hashlib.sha256(served).hexdigest()


def test_the_re_encoding_escapes_html_and_keeps_from(ollama):
    served = json.dumps({"schemaVersion": 2, "mediaType": "a<b>&c",
                         "config": {"mediaType": "x", "digest": "", "size": 0},
                         "layers": [dict(_layer(1), **{"from": "<base>"})]}).encode()
    _, raw = ollama.go_manifest(served)
    assert b'"mediaType":"a\\u003cb\\u003e\\u0026c"' in raw
    assert raw.endswith(b',"size":1,"from":"\\u003cbase\\u003e"}]}')


def test_keys_match_case_insensitively_and_zero_values_are_written(ollama):
    _, raw = ollama.go_manifest(b'{"SchemaVersion": 2, "LAYERS": null}')
    assert raw == (b'{"schemaVersion":2,"mediaType":"","config":{"mediaType":"","digest":'
                   b'"","size":0},"layers":null}')


@pytest.mark.parametrize(("served", "error"), [
    (b'{"schemaVersion": "2"}', "json: cannot unmarshal string into Go struct field "
                                "Manifest.schemaVersion of type int"),
    (b'{"schemaVersion": 2.5}', "json: cannot unmarshal number 2.5 into Go struct field "
                                "Manifest.schemaVersion of type int"),
    (b'{"layers": [{"size": "1$(touch x)"}]}', "json: cannot unmarshal string into Go "
                                               "struct field Layer.layers.size of type int64"),
    (b'{"config": {"digest": 5}}', "json: cannot unmarshal number into Go struct field "
                                   "Layer.config.digest of type string"),
    (b'[]', "json: cannot unmarshal array into Go value of type server.Manifest"),
])
def test_a_manifest_go_cannot_decode_fails_the_pull(ollama, served, error):
    with pytest.raises(ollama.PullError) as exc:
        ollama.go_manifest(served)
    assert str(exc.value) == error


@pytest.mark.parametrize(("total", "scale", "parts"), [
    (8_388_608, 1.0, [(0, 8_388_608)]),  # the lab's tinyllama: one part
    (314_572_800, 1.0, [(0, 100_000_000), (100_000_000, 100_000_000),
                        (200_000_000, 100_000_000), (300_000_000, 14_572_800)]),  # llama3.2:1b
    (3_000_000_000, 1.0, [(i * 187_500_000, 187_500_000) for i in range(16)]),
    (40_000_000_000, 1.0, [(i * 1_000_000_000, 1_000_000_000) for i in range(40)]),
    (3_000_000, 0.005, [(i * 500_000, 500_000) for i in range(6)]),
    (0, 1.0, []),
])
def test_parts_are_a_sixteenth_between_100_and_1000_mb(ollama, total, scale, parts):
    assert ollama.part_sizes(total, scale) == parts


def test_a_part_file_is_upstreams_json(ollama, tmp_path):
    part = ollama.BlobPart(3, 300, 100, 42)
    assert part.to_json() == b'{"N":3,"Offset":300,"Size":100,"Completed":42}\n'
    path = tmp_path / "sha256-x-partial-3"
    path.write_bytes(part.to_json())
    back = ollama.BlobPart.read(str(path))
    assert (back.n, back.offset, back.size, back.completed) == (3, 300, 100, 42)
