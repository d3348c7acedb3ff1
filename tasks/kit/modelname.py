"""Ollama model names, read as Ollama reads them (types/model/name.go: ParseName,
isValidPart, DisplayShortest).

    [host/][namespace/]model[:tag]

A tag is cut at the last `:` after the last `/`, then the model, namespace and host at
`/` from the right (a `scheme://` before the host is dropped). Every part starts with a
letter, digit or `_` and goes on with those, `-` and `.`; a namespace has no `.`, only a
host may hold `:` (a port); parts are 1 to 80 characters (a host up to 350). Missing
parts are filled as Ollama fills them: `registry.ollama.ai/library/<model>:latest`.
`/api/tags` and `ollama list` show a name in its shortest form: the host and namespace
left out when they are the defaults (the namespace alone when only the host is),
model and tag always: `llama3.2:1b`, `tinyllama:latest`, `user/model:latest`,
`hf.co/user/model:Q4_K_M`. Ollama compares names case-insensitively.
"""

from __future__ import annotations

import re
from typing import NamedTuple

DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"

_PARTS = {  # what isValidPart accepts, per kind
    "host": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}", re.ASCII),
    "namespace": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}", re.ASCII),
    "model": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}", re.ASCII),
    "tag": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}", re.ASCII),
}


class ModelName(NamedTuple):
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def full(self) -> str:
        """host/namespace/model:tag."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def shortest(self) -> str:
        """The name as `/api/tags` and `ollama list` show it (DisplayShortest)."""
        if self.host.lower() != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace.lower() != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        else:
            prefix = ""
        return f"{prefix}{self.model}:{self.tag}"

    @property
    def key(self) -> str:
        """What makes two spellings the same model (Ollama's EqualFold)."""
        return self.full.lower()

    @property
    def manifest_path(self) -> str:
        """The manifest's path under the store's `manifests/` (Name.Filepath)."""
        return f"{self.host}/{self.namespace}/{self.model}/{self.tag}"


def parse(text: str) -> ModelName:
    """TEXT as Ollama reads it, defaults filled in; ValueError naming the bad part."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"{text!r} is not a model name")
    rest, tag = text, ""
    if rest.rfind(":") > rest.rfind("/"):
        rest, tag = rest.rsplit(":", 1)
        if not tag:
            raise ValueError(f"{text!r} is not a model name: empty tag after ':'")
    parts = rest.split("/")
    if len(parts) > 2:  # the host is everything before the namespace, scheme dropped
        host = "/".join(parts[:-2])
        host = host.split("://", 1)[1] if "://" in host else host
        parts = [host, *parts[-2:]]
    host, namespace, model = [""] * (3 - len(parts)) + parts
    given = [("model", model), ("namespace", namespace), ("host", host), ("tag", tag)]
    given = given[:len(parts)] + ([("tag", tag)] if tag else [])
    for kind, value in given:
        if not _PARTS[kind].fullmatch(value):
            raise ValueError(f"{text!r} is not a model name: bad {kind} {value!r}")
    return ModelName(host or DEFAULT_HOST, namespace or DEFAULT_NAMESPACE, model,
                     tag or DEFAULT_TAG)


def is_cloud(text: str) -> bool:
    """Whether Ollama runs TEXT on ollama.com, not here: a `:cloud` tag, or a tag ending in
    `-cloud` (any case, spaces around it ignored), as `parseSourceSuffix` reads it
    (internal/modelref/modelref.go, v0.32.15). `gpt-oss-cloud` with no tag is local."""
    text = text.strip()
    idx = text.rfind(":")
    if idx < 0:
        return False
    suffix = text[idx + 1:].strip()
    return suffix.lower() == "cloud" or ("/" not in suffix
                                         and suffix.lower().endswith("-cloud"))


def canonical(text: str) -> str:
    """The one spelling the deploy uses for TEXT: as Ollama lists it."""
    return parse(text).shortest


def spellings_pattern(text: str) -> str:
    """A regular expression (PCRE, to be matched case-insensitively: nginx's `~*`) that
    matches exactly the names Ollama reads as the model TEXT: the defaults left out or
    spelt out, a `scheme://` before the host, any case. The front door's map from a
    request's model to the hosts that serve it is built from these."""
    name = parse(text)
    esc = re.escape
    tag = f"(:{esc(name.tag)})?" if name.tag.lower() == DEFAULT_TAG else f":{esc(name.tag)}"
    host = f"([^/]*://)?{esc(name.host)}/"
    model = f"{esc(name.model)}{tag}"
    if name.host.lower() != DEFAULT_HOST:
        return f"^{host}{esc(name.namespace)}/{model}$"
    if name.namespace.lower() != DEFAULT_NAMESPACE:
        return f"^({host})?{esc(name.namespace)}/{model}$"
    return f"^(({host})?{esc(name.namespace)}/)?{model}$"
