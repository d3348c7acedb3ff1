"""Model names (types/model/name.go): parts, defaults, validity, the shortest form."""

from __future__ import annotations

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
_MISSING = "!MISSING!"


class Name:
    __slots__ = ("host", "namespace", "model", "tag")

    def __init__(self, host: str = "", namespace: str = "", model: str = "", tag: str = ""):
        self.host, self.namespace, self.model, self.tag = host, namespace, model, tag

    def parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)

    def is_valid(self) -> bool:
        return all(_is_valid_part(i, p) for i, p in enumerate(self.parts()))

    def display_shortest(self) -> str:
        if self.host.lower() != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace.lower() != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        else:
            prefix = ""
        return f"{prefix}{self.model}:{self.tag}"

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def fold(self) -> tuple[str, ...]:
        return tuple(p.lower() for p in self.parts())


def _cut_promised(s: str, sep: str) -> tuple[str, str, bool]:
    i = s.rfind(sep)
    if i < 0:
        return s, "", False
    return (s[:i] or _MISSING), (s[i + len(sep):] or _MISSING), True


def parse_name(s: str) -> Name:
    """model.ParseName: parse, then fill host/namespace/tag defaults."""
    n = Name()
    if s.rfind(":") > s.rfind("/"):
        s, n.tag, _ = _cut_promised(s, ":")
    s, n.model, promised = _cut_promised(s, "/")
    if not promised:
        n.model = s
    else:
        s, n.namespace, promised = _cut_promised(s, "/")
        if not promised:
            n.namespace = s
        else:
            scheme, sep, rest = s.partition("://")
            n.host = rest if sep else scheme
    n.host = n.host or DEFAULT_HOST
    n.namespace = n.namespace or DEFAULT_NAMESPACE
    n.tag = n.tag or DEFAULT_TAG
    return n


def _alnum_(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c == "_"


def _is_valid_part(kind: int, s: str) -> bool:
    limit = 350 if kind == 0 else 80
    if not 1 <= len(s) <= limit:
        return False
    for i, c in enumerate(s):
        if i == 0:
            if not _alnum_(c):
                return False
            continue
        if c in "_-":
            continue
        if c == ".":
            if kind == 1:
                return False
            continue
        if c == ":":
            if kind != 0:
                return False
            continue
        if not _alnum_(c):
            return False
    return True
