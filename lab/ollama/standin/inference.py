"""Fake inference: deterministic words derived from the prompt, JSON that fits a
requested format or schema, embeddings that are unit vectors derived from a hash of the
input; and what ``/api/show`` answers for a model."""

from __future__ import annotations

import hashlib
import json
import math
import re

from .envconfig import env_uint
from .goformat import go_time
from .store import ModelInfo, Store

EMBED_DIM = 384
FILLER = (
    "the fleet lab replies with synthetic words so that every test stays quick and "
    "repeatable while each token still arrives on its own line"
).split()


def _words(prompt: str):
    words = ["lab", "answer", "to:"] + prompt.split()
    seed = hashlib.sha256(prompt.encode("utf-8", "replace")).digest()
    i = 0
    while True:
        w = words[i] if i < len(words) else FILLER[(seed[i % 32] + i) % len(FILLER)]
        yield w if i == 0 else " " + w
        i += 1


def _schema_value(schema, depth: int = 0):
    if not isinstance(schema, dict) or depth > 6:
        return "lab"
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "string")
    if t == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {k: _schema_value(v, depth + 1) for k, v in props.items()}
    if t == "array":
        n = int(schema.get("minItems") or 0)
        return [_schema_value(schema.get("items"), depth + 1) for _ in range(n)]
    if t == "integer":
        return int(schema.get("minimum") or 0)
    if t == "number":
        return schema.get("minimum") or 0
    if t == "boolean":
        return True
    if t == "null":
        return None
    return "lab"


def plan_tokens(prompt: str, fmt, num_predict) -> tuple[list[str], str]:
    """Return (tokens, done_reason)."""
    natural = max(1, env_uint("OLLAMA_LAB_TOKENS", 16))
    # Lab only: a prompt saying `lab:tokens=N` gets an N-token answer (long streams for tests).
    asked = re.search(r"lab:tokens=(\d+)", prompt or "")
    if asked:
        natural = max(1, min(int(asked.group(1)), 100000))
    if fmt not in (None, "", "null"):
        if fmt == "json":
            text = json.dumps({"response": "lab answer to: " + prompt})
        else:
            text = json.dumps(_schema_value(fmt))
        tokens = [text[i:i + 4] for i in range(0, len(text), 4)] or [""]
    else:
        gen = _words(prompt)
        tokens = [next(gen) for _ in range(natural)]
    limit = num_predict if isinstance(num_predict, int) and num_predict > 0 else None
    if limit is not None and limit <= len(tokens):
        return tokens[:limit], "length"
    return tokens, "stop"


def fake_context(text: str) -> list[int]:
    return [int.from_bytes(hashlib.sha256(w.encode()).digest()[:2], "big") for w in text.split()]


def embed_vector(text: str, dim: int = EMBED_DIM) -> list[float]:
    vals: list[float] = []
    counter = 0
    while len(vals) < dim:
        h = hashlib.sha256(f"{counter}\0{text}".encode("utf-8", "replace")).digest()
        for i in range(0, 32, 4):
            vals.append(int.from_bytes(h[i:i + 4], "big") / 2**31 - 1.0)
        counter += 1
    vals = vals[:dim]
    norm = math.sqrt(sum(v * v for v in vals)) or 1.0
    return [round(v / norm, 8) for v in vals]


def _normalize(vec: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [round(v / norm, 8) for v in vec]


def _param_count(model_type: str) -> int:
    m = re.match(r"^\s*([\d.]+)\s*([KMBT]?)", model_type or "", re.I)
    if not m:
        return 0
    mult = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[m.group(2).upper()]
    try:
        return int(float(m.group(1)) * mult)
    except ValueError:
        return 0


def _go_quote_arg(s: str) -> str:
    if "\n" in s or s.startswith(" ") or s.endswith(" "):
        return '"""' + s + '"""'
    if '"' in s:
        return json.dumps(s, ensure_ascii=False)
    return s


def _go_sharp_v(v) -> str:
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return json.dumps(v)


def _param_items(params: dict):
    for k in sorted(params):
        v = params[k]
        for item in (v if isinstance(v, list) else [v]):
            yield k, item


def show_payload(store: Store, info: ModelInfo) -> dict:
    params = "\n".join(f"{k:<30} {_go_sharp_v(v)}" for k, v in _param_items(info.params))
    lines = [f"FROM {info.model_path}"]
    if info.template:
        lines.append(f"TEMPLATE {_go_quote_arg(info.template)}")
    if info.system:
        lines.append(f"SYSTEM {_go_quote_arg(info.system)}")
    for k, v in _param_items(info.params):
        lines.append(f"PARAMETER {k} {_go_quote_arg(v if isinstance(v, str) else _go_sharp_v(v))}")
    for lic in info.license:
        lines.append(f"LICENSE {_go_quote_arg(lic)}")
    modelfile = (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        f"# FROM {info.short}\n\n" + "\n".join(lines) + "\n"
    )
    arch = info.family or "llama"
    model_info = {
        "general.architecture": arch,
        "general.basename": info.name.model,
        "general.file_type": 2,
        "general.parameter_count": _param_count(str(info.config.get("model_type") or "")),
        "general.quantization_version": 2,
        f"{arch}.context_length": 2048 if info.is_embedding() else 4096,
        f"{arch}.embedding_length": EMBED_DIM if info.is_embedding() else 2048,
        f"{arch}.block_count": 12 if info.is_embedding() else 16,
        "tokenizer.ggml.model": "bert" if info.is_embedding() else "gpt2",
    }
    out: dict = {}
    if info.license:
        out["license"] = "\n".join(info.license)
    out["modelfile"] = modelfile
    if params:
        out["parameters"] = params
    if info.template:
        out["template"] = info.template
    if info.system:
        out["system"] = info.system
    out["details"] = info.details()
    out["model_info"] = model_info
    out["capabilities"] = info.capabilities()
    out["modified_at"] = go_time(info.manifest.mtime_ns)
    return out
