"""A model's manifest, as a registry, a fleet peer, a host's store or a backup gives it,
read within fixed bounds before anything of it is used.

What a manifest says reaches file names, the hosts' commands and their arithmetic, so
nothing passes unchecked: the text is at most MANIFEST_MAX_BYTES and nests at most
MANIFEST_MAX_DEPTH deep (both checked before the JSON is parsed); it references at most
MANIFEST_MAX_BLOBS blobs, each named `sha256:<64 lowercase hex>` and sized by a whole
number of bytes from 0 to BLOB_MAX_BYTES. The scripts that download a manifest stop
reading at MANIFEST_MAX_BYTES + 1 bytes, and the one that downloads blobs one byte past
a blob's declared size (cutting it back, and refusing the source).
"""

from __future__ import annotations

import json
import re
from itertools import accumulate

# Ollama's manifests are 1-2 KB (a handful of layers); container registries commonly stop
# at 4 MiB. 1 MiB is what a download or a backup of one is allowed to weigh.
MANIFEST_MAX_BYTES = 1 << 20
# A manifest is 3 deep ({"layers": [{...}]}), 4 with annotations; past this no manifest.
MANIFEST_MAX_DEPTH = 32
# Ollama's models have under 10 blobs (model, projector, adapters, template, system,
# params, license); 256 keeps a host command of their HEX:SIZE words near 21 KB, far
# below the kernel's 128 KiB for one argument.
MANIFEST_MAX_BLOBS = 256
# 2**49 bytes (512 TiB, 15 decimal digits): the largest models are about 1.3 TB; 256
# blobs of this size add up to 2**57, which the hosts' 64-bit shell arithmetic holds.
BLOB_MAX_BYTES = 1 << 49

DIGEST = re.compile(r"sha256:([0-9a-f]{64})", re.ASCII)
# A JSON string, or a bracket. A string always matches from its quote, to its end or to
# the text's (a lone backslash last included), so nothing is scanned twice: linear time.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)|[\[\]{}]', re.DOTALL)
_OPEN, _CLOSE = frozenset("[{"), frozenset("]}")


class ManifestError(ValueError):
    """A manifest that is not one, or not one this deploy takes; the message says what is
    wrong in one line."""


def shown(value: object, limit: int = 60) -> str:
    """VALUE as a message shows it: its repr, on one line, cut at LIMIT characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"


def depth(text: str) -> int:
    """How deep JSON TEXT nests its arrays and objects (strings skipped), counted without
    parsing it, so no parser recurses into a hostile document."""
    tokens = _TOKEN.findall(text)
    return max(accumulate(1 if t in _OPEN else -1 for t in tokens if t in _OPEN or t in _CLOSE),
               default=0)


def parse(raw: bytes | str) -> dict:
    """RAW as a JSON object, once its length and nesting are within bounds."""
    length = len(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
    if length > MANIFEST_MAX_BYTES:
        raise ManifestError(f"not a manifest (more than the {MANIFEST_MAX_BYTES} bytes a "
                            "manifest may have)")
    try:
        text = raw if isinstance(raw, str) else raw.decode()
    except UnicodeDecodeError:
        raise ManifestError("not a manifest (not UTF-8 text)") from None
    nested = depth(text)
    if nested > MANIFEST_MAX_DEPTH:
        raise ManifestError(f"not a manifest (nested {nested} deep, over the "
                            f"{MANIFEST_MAX_DEPTH} a manifest may be)")
    try:
        manifest = json.loads(text)
    except RecursionError:  # depth() stops this first; a parser's stack is no bound to lean on
        raise ManifestError("not a manifest (nested too deep)") from None
    except ValueError as exc:
        raise ManifestError(f"not a manifest ({str(exc)[:80]})") from None
    if not isinstance(manifest, dict):
        raise ManifestError("not a manifest (not a JSON object)")
    return manifest


def blob_size(digest: str, entry: dict) -> int:
    """The size ENTRY gives its blob: a whole number of bytes up to BLOB_MAX_BYTES (JSON's
    true, 1.0, 1e3 and "1" are not); none given is 0, an empty blob, as distribution
    leaves it out."""
    size = entry.get("size", 0)
    if size is None:
        size = 0
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= BLOB_MAX_BYTES:
        raise ManifestError(f"{digest}: size {shown(size)} is not a number of bytes "
                            f"from 0 to {BLOB_MAX_BYTES}")
    return size


def manifest_layers(raw: bytes | str) -> list[tuple[str, int]]:
    """(sha256 hex, size) of every blob a manifest references, each once: its config, then
    its layers. A digest must be `sha256:<64 lowercase hex>` (what comes from a registry or
    a backup reaches file names and hosts' commands: nothing else passes), a size a whole
    number within BLOB_MAX_BYTES (none: 0); one blob listed twice has one size. The text
    is bounded in length and nesting before it is parsed (module docstring).
    ManifestError says what is wrong, in one line."""
    manifest = parse(raw)
    listed = manifest.get("layers") or []
    if not isinstance(listed, list):
        raise ManifestError("not a manifest (its layers are not a list)")
    if len(listed) + 1 > MANIFEST_MAX_BLOBS:
        raise ManifestError(f"{len(listed)} layers, over the {MANIFEST_MAX_BLOBS - 1} "
                            "a manifest may list")
    blobs: dict[str, int] = {}
    config = manifest.get("config") or {}
    if isinstance(config, dict) and not config.get("digest"):
        config = {}  # a model without a config: Ollama stores `"digest": ""` for it
    for entry in [config, *listed]:
        if not entry:
            continue
        digest = entry.get("digest", "") if isinstance(entry, dict) else ""
        match = DIGEST.fullmatch(digest) if isinstance(digest, str) else None
        if not match:
            raise ManifestError(f"{shown(digest)} is not a sha256 digest")
        size = blob_size(digest, entry)
        if blobs.setdefault(match.group(1), size) != size:
            raise ManifestError(f"{digest}: listed with sizes {blobs[match.group(1)]} "
                                f"and {size}")
    if not blobs:
        raise ManifestError("references no blob")
    return list(blobs.items())
