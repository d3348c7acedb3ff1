"""Request validation (gin ShouldBindJSON + api types): the native request types,
their decode errors, and the checks the handlers make before they run."""

from __future__ import annotations

import base64
import json
import re

from . import state
from .apierror import ApiError
from .goformat import FOREVER_NS, DurationError, _json_kind, go_json_decode_error, parse_go_duration
from .store import ModelInfo

_GO_TYPES = {
    "str": ("string", str), "bool": ("bool", bool), "int": ("int", int),
    "map": ("map[string]interface {}", dict), "ints": ("[]int", list),
    "list": ("[]", list),
    # openai/openai.go request types
    "f64": ("float64", (int, float)), "f32": ("float32", (int, float)),
    "oai_messages": ("[]openai.Message", list), "api_tools": ("[]api.Tool", list),
    "oai_stream_options": ("openai.StreamOptions", dict),
    "oai_response_format": ("openai.ResponseFormat", dict),
}
SPEC_GENERATE = ("api.GenerateRequest", {
    "model": "str", "prompt": "str", "suffix": "str", "system": "str", "template": "str",
    "context": "ints", "stream": "bool", "raw": "bool", "options": "map", "images": "list",
    "keep_alive": "duration", "think": "any",
})
SPEC_CHAT = ("api.ChatRequest", {
    "model": "str", "messages": "list", "stream": "bool", "options": "map", "tools": "list",
    "keep_alive": "duration", "think": "any",
})
SPEC_EMBED = ("api.EmbedRequest", {
    "model": "str", "truncate": "bool", "options": "map", "dimensions": "int",
    "keep_alive": "duration",
})
SPEC_EMBEDDINGS = ("api.EmbeddingRequest", {
    "model": "str", "prompt": "str", "options": "map", "keep_alive": "duration",
})
SPEC_PULL = ("api.PullRequest", {
    "model": "str", "name": "str", "insecure": "bool", "stream": "bool", "username": "str",
    "password": "str",
})
SPEC_SHOW = ("api.ShowRequest", {
    "model": "str", "name": "str", "system": "str", "template": "str", "verbose": "bool",
    "options": "map",
})
SPEC_DELETE = ("api.DeleteRequest", {"model": "str", "name": "str"})
SPEC_COPY = ("api.CopyRequest", {"source": "str", "destination": "str"})


def parse_body(raw: bytes, spec) -> dict:
    type_name, fields = spec
    if not raw.strip():
        raise ApiError(400, "missing request body")
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ApiError(400, go_json_decode_error(raw, e)) from None
    except ValueError as e:
        raise ApiError(400, str(e)) from None
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ApiError(400, f"json: cannot unmarshal {_json_kind(obj)} into Go value of type "
                            f"{type_name}")
    short = type_name.split(".")[-1]
    for key, kind in fields.items():
        v = obj.get(key)
        if v is None or kind == "any":
            continue
        if kind == "duration":
            parse_keep_alive(obj)
            continue
        go_name, py_t = _GO_TYPES[kind]
        ok = isinstance(v, py_t) and not (py_t is not bool and isinstance(v, bool))
        if kind == "int" and isinstance(v, float) and v.is_integer():
            ok = True
        if kind == "ints" and ok:
            ok = all(isinstance(x, int) and not isinstance(x, bool) for x in v)
        if not ok:
            raise ApiError(400, f"json: cannot unmarshal {_json_kind(v)} into Go struct field "
                                f"{short}.{key} of type {go_name}")
    return obj


def parse_keep_alive(req: dict) -> int | None:
    if "keep_alive" not in req or req["keep_alive"] is None:
        return None
    v = req["keep_alive"]
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        kind = {bool: "bool", dict: "map[string]interface {}", list: "[]interface {}"}.get(
            type(v), type(v).__name__)
        raise ApiError(400, f"Unsupported type: '{kind}'")
    if isinstance(v, str):
        try:
            ns = parse_go_duration(v)
        except DurationError as e:
            raise ApiError(400, str(e)) from None
    else:
        if v < 0:
            return FOREVER_NS
        ns = int(v * 1e9)
    return FOREVER_NS if ns < 0 else ns


def version_at_least(version: str, want: tuple[int, ...]) -> bool:
    nums = [int(x) for x in re.findall(r"\d+", version.split("-")[0])[:3]]
    return tuple(nums + [0] * (3 - len(nums))) >= want


def check_think(req: dict, info: ModelInfo, model_raw: str) -> None:
    """0.9+ rejects think=true for models without the thinking capability."""
    think = req.get("think")
    if think in (None, False, "") or not version_at_least(state.STATE.version, (0, 9, 0)):
        return
    if "thinking" not in info.capabilities():
        raise ApiError(400, f'"{model_raw}" does not support thinking')


def parse_num_predict(req: dict):
    opts = req.get("options") or {}
    if "num_predict" not in opts or opts["num_predict"] is None:
        return None
    v = opts["num_predict"]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (
            isinstance(v, float) and not v.is_integer()):
        raise ApiError(500, 'option "num_predict" must be of type integer')
    return int(v)


def check_format(req: dict):
    fmt = req.get("format")
    if fmt is None or fmt == "":
        return None
    if fmt == "json" or isinstance(fmt, dict):
        return fmt
    raise ApiError(500, f"invalid format: {json.dumps(json.dumps(fmt))}; expected \"json\" or "
                        "a valid JSON Schema object")


def check_images(images) -> None:
    for img in images or []:
        if not isinstance(img, str):
            raise ApiError(400, f"json: cannot unmarshal {_json_kind(img)} into Go struct field "
                                "GenerateRequest.images of type api.ImageData")
        try:
            base64.b64decode(img, validate=True)
        except ValueError:
            raise ApiError(400, "illegal base64 data at input byte 0") from None
