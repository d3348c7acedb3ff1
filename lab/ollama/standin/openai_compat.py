"""OpenAI compatibility (openai/openai.go: request and answer translation).

The OpenAI request is translated into the native one, the native handler runs unchanged,
and its answer is translated back (OpenAIWriter), streamed as Server-Sent Events when
asked, errors as ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import base64
import json
import random
import time

from . import state
from .apierror import ApiError
from .goformat import _json_kind, go_json, parse_rfc3339
from .names import parse_name
from .validation import parse_body, version_at_least

SPEC_OAI_CHAT = ("openai.ChatCompletionRequest", {
    "model": "str", "messages": "oai_messages", "stream": "bool",
    "stream_options": "oai_stream_options", "max_tokens": "int", "seed": "int", "stop": "any",
    "temperature": "f64", "frequency_penalty": "f64", "presence_penalty": "f64", "top_p": "f64",
    "response_format": "oai_response_format", "tools": "api_tools",
})
SPEC_OAI_COMPLETION = ("openai.CompletionRequest", {
    "model": "str", "prompt": "str", "frequency_penalty": "f32", "max_tokens": "int",
    "presence_penalty": "f32", "seed": "int", "stop": "any", "stream": "bool",
    "stream_options": "oai_stream_options", "temperature": "f32", "top_p": "f32",
    "suffix": "str",
})
SPEC_OAI_EMBED = ("openai.EmbedRequest", {"input": "any", "model": "str"})
GO_ZERO_TIME_UNIX = -62135596800  # time.Time{}.Unix()


def oai_error(status: int, message: str) -> dict:
    """openai.NewError."""
    etype = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": etype, "param": None, "code": None}}


def oai_handler_error_status(status: int) -> int:
    """The status whose error type BaseWriter.writeError gives a native handler's error.

    Until 0.18 it always built the error with http.StatusInternalServerError ("api_error",
    whatever the HTTP status); from 0.18 it uses the response's status."""
    return status if version_at_least(state.STATE.version, (0, 18, 0)) else 500


def _go_any_type(v) -> str:
    """%T of a value encoding/json decoded into an ``any``."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "[]interface {}"
    return "map[string]interface {}"


def _status_error_text(obj) -> str:
    """api.StatusError.Error() of a native handler's error body."""
    obj = obj if isinstance(obj, dict) else {}
    status, message = str(obj.get("status") or ""), str(obj.get("error") or "")
    if status and message:
        return f"{status}: {message}"
    return status or message or ("something went wrong, please see the ollama server logs "
                                  "for details")


def _unix(created_at) -> int:
    ts = parse_rfc3339(created_at) if isinstance(created_at, str) else None
    return int(ts) if ts is not None else GO_ZERO_TIME_UNIX


def oai_parse(raw: bytes, spec) -> dict:
    """gin ShouldBindJSON into an openai request type (an empty body is io.EOF)."""
    if not raw.strip():
        raise ApiError(400, "EOF")
    req = parse_body(raw, spec)
    opts = req.get("stream_options")
    if isinstance(opts, dict) and opts.get("include_usage") is not None and not isinstance(
            opts["include_usage"], bool):
        raise ApiError(400, f"json: cannot unmarshal {_json_kind(opts['include_usage'])} into Go "
                            "struct field StreamOptions.stream_options.include_usage of type bool")
    fmt = req.get("response_format")
    if isinstance(fmt, dict):
        if fmt.get("type") is not None and not isinstance(fmt["type"], str):
            raise ApiError(400, f"json: cannot unmarshal {_json_kind(fmt['type'])} into Go "
                                "struct field ResponseFormat.response_format.type of type string")
        js = fmt.get("json_schema")
        if js is not None and not isinstance(js, dict):
            raise ApiError(400, f"json: cannot unmarshal {_json_kind(js)} into Go struct field "
                                "ResponseFormat.response_format.json_schema of type "
                                "openai.JsonSchema")
    for msg in req.get("messages") or []:
        if msg is None:
            continue
        if not isinstance(msg, dict):
            raise ApiError(400, f"json: cannot unmarshal {_json_kind(msg)} into Go struct field "
                                "ChatCompletionRequest.messages of type openai.Message")
        if msg.get("role") is not None and not isinstance(msg["role"], str):
            raise ApiError(400, f"json: cannot unmarshal {_json_kind(msg['role'])} into Go "
                                "struct field Message.messages.role of type string")
        _check_oai_tool_calls(msg.get("tool_calls"))
    return req


def _check_oai_tool_calls(calls) -> None:
    def bad(v, where: str, go_type: str) -> ApiError:
        return ApiError(400, f"json: cannot unmarshal {_json_kind(v)} into Go struct field "
                             f"{where} of type {go_type}")

    if calls is None:
        return
    if not isinstance(calls, list):
        raise bad(calls, "Message.messages.tool_calls", "[]openai.ToolCall")
    for c in calls:
        if c is None:
            continue
        if not isinstance(c, dict):
            raise bad(c, "Message.messages.tool_calls", "openai.ToolCall")
        fn = c.get("function")
        if fn is None:
            continue
        if not isinstance(fn, dict):
            raise bad(fn, "ToolCall.messages.tool_calls.function", 'struct { Name string '
                      '"json:\\"name\\""; Arguments string "json:\\"arguments\\"" }')
        for k in ("name", "arguments"):
            if fn.get(k) is not None and not isinstance(fn[k], str):
                raise bad(fn[k], f".messages.tool_calls.function.{k}", "string")


def _oai_stop(stop, strict: bool):
    """The options["stop"] fromChatRequest / fromCompleteRequest set (None: not set)."""
    if isinstance(stop, str):
        return [stop]
    if not isinstance(stop, list):
        return None
    stops = []
    for s in stop:
        if isinstance(s, str):
            stops.append(s)
        elif strict:
            raise ApiError(400, f"invalid type for 'stop' field: {_go_any_type(s)}")
    return stops


def _oai_image(part: dict) -> str:
    url = part.get("image_url")
    if isinstance(url, dict):
        url = url.get("url")
    if not isinstance(url, str):
        raise ApiError(400, "invalid message format")
    for t in ("jpeg", "jpg", "png"):
        prefix = f"data:image/{t};base64,"
        if url.startswith(prefix):
            url = url[len(prefix):]
            break
    else:
        raise ApiError(400, "invalid image input")
    try:
        img = base64.b64decode(url, validate=True)
    except ValueError:
        raise ApiError(400, "invalid message format") from None
    return base64.b64encode(img).decode()


def oai_chat_request(req: dict) -> dict:
    """fromChatRequest: openai.ChatCompletionRequest -> api.ChatRequest."""
    messages = []
    for msg in req.get("messages") or []:
        msg = msg or {}
        role = msg.get("role") or ""
        content = msg.get("content")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise ApiError(400, "invalid message format")
                if part.get("type") == "text":
                    if not isinstance(part.get("text"), str):
                        raise ApiError(400, "invalid message format")
                    messages.append({"role": role, "content": part["text"]})
                elif part.get("type") == "image_url":
                    messages.append({"role": role, "content": "", "images": [_oai_image(part)]})
                else:
                    raise ApiError(400, "invalid message format")
        else:
            if msg.get("tool_calls") is None:
                raise ApiError(400, f"invalid message content type: {_go_any_type(content)}")
            calls = []
            for tc in msg["tool_calls"]:
                fn = (tc or {}).get("function") or {}
                try:
                    args = json.loads(fn.get("arguments") or "")
                except ValueError:
                    raise ApiError(400, "invalid tool call arguments") from None
                if args is not None and not isinstance(args, dict):
                    raise ApiError(400, "invalid tool call arguments")
                calls.append({"function": {"name": fn.get("name") or "", "arguments": args}})
            messages.append({"role": role, "content": "", "tool_calls": calls})
    options = _oai_options(req, strict_stop=False)
    for key in ("frequency_penalty", "presence_penalty"):
        if req.get(key) is not None:
            options[key] = req[key]
    options["top_p"] = req["top_p"] if req.get("top_p") is not None else 1.0
    out: dict = {"model": req.get("model") or "", "messages": messages or None}
    fmt = req.get("response_format")
    if isinstance(fmt, dict):
        kind = str(fmt.get("type") or "").strip().lower()
        if kind == "json_object":
            out["format"] = "json"
        elif kind == "json_schema" and isinstance(fmt.get("json_schema"), dict) and \
                fmt["json_schema"].get("schema") is not None:
            out["format"] = fmt["json_schema"]["schema"]
    out["options"] = options
    out["stream"] = bool(req.get("stream"))
    if req.get("tools"):
        out["tools"] = req["tools"]
    return out


def _oai_options(req: dict, strict_stop: bool) -> dict:
    """The options fromChatRequest and fromCompleteRequest both set the same way: stop,
    max_tokens (num_predict), temperature (1.0 when absent) and seed."""
    options: dict = {}
    if "stop" in req:
        stop = _oai_stop(req["stop"], strict=strict_stop)
        if stop is not None:
            options["stop"] = stop or None
    if req.get("max_tokens") is not None:
        options["num_predict"] = int(req["max_tokens"])
    options["temperature"] = req["temperature"] if req.get("temperature") is not None else 1.0
    if req.get("seed") is not None:
        options["seed"] = int(req["seed"])
    return options


def oai_completion_request(req: dict) -> dict:
    """fromCompleteRequest: openai.CompletionRequest -> api.GenerateRequest."""
    options = _oai_options(req, strict_stop=True)
    options["frequency_penalty"] = req.get("frequency_penalty") or 0
    options["presence_penalty"] = req.get("presence_penalty") or 0
    options["top_p"] = req.get("top_p") or 1.0
    return {"model": req.get("model") or "", "prompt": req.get("prompt") or "",
            "suffix": req.get("suffix") or "", "options": options,
            "stream": bool(req.get("stream"))}


def oai_embed_request(req: dict) -> dict:
    """EmbeddingsMiddleware: openai.EmbedRequest -> api.EmbedRequest."""
    inp = req.get("input")
    if inp == "":
        inp = [""]
    if inp is None or inp == []:
        raise ApiError(400, "invalid input")
    return {"model": req.get("model") or "", "input": inp}


def _oai_usage(r: dict) -> dict:
    prompt, completion = int(r.get("prompt_eval_count") or 0), int(r.get("eval_count") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _oai_message(r: dict) -> dict:
    m = r.get("message") if isinstance(r.get("message"), dict) else {}
    return {"role": m.get("role") or "", "content": m.get("content") or ""}


class OpenAIWriter:
    """ChatWriter, CompleteWriter, EmbedWriter and RetrieveWriter of openai/openai.go.

    The native handler runs unchanged; what it answers (one object, or stream lines) is
    turned into the OpenAI shape here. The stand-in's models never call tools, so the
    tool-call parts of upstream's writers have nothing to translate."""

    def __init__(self, kind: str, model: str = "", stream: bool = False, stream_options=None):
        self.kind = kind  # "chat", "completion", "embed" or "retrieve"
        self.model = model
        self.stream = stream and kind in ("chat", "completion")
        self.include_usage = isinstance(stream_options, dict) and \
            stream_options.get("include_usage") is True
        n = random.randrange(999)  # noqa: S311 - upstream's rand.Intn(999), not a secret
        self.id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{n}"

    def error(self, status: int, obj) -> bytes:
        """BaseWriter.writeError (json.Encoder output: a trailing newline)."""
        return go_json(oai_error(oai_handler_error_status(status), _status_error_text(obj))) \
            + b"\n"

    def document(self, r: dict) -> bytes:
        """The non-streamed answer (json.Encoder output)."""
        if self.kind == "chat":  # toChatCompletion
            reason = r.get("done_reason") or None
            out = {"id": self.id, "object": "chat.completion",
                   "created": _unix(r.get("created_at")), "model": r.get("model") or "",
                   "system_fingerprint": "fp_ollama",
                   "choices": [{"index": 0, "message": _oai_message(r), "finish_reason": reason}],
                   "usage": _oai_usage(r)}
        elif self.kind == "completion":  # toCompletion
            out = {"id": self.id, "object": "text_completion",
                   "created": _unix(r.get("created_at")), "model": r.get("model") or "",
                   "system_fingerprint": "fp_ollama",
                   "choices": [{"text": r.get("response") or "", "index": 0,
                                "finish_reason": r.get("done_reason") or None}],
                   "usage": _oai_usage(r)}
        elif self.kind == "embed":  # toEmbeddingList
            if r.get("embeddings") is None:
                out = {"object": "", "data": None, "model": "",
                       "usage": {"prompt_tokens": 0, "total_tokens": 0}}
            else:
                data = [{"object": "embedding", "embedding": e, "index": i}
                        for i, e in enumerate(r["embeddings"])]
                count = int(r.get("prompt_eval_count") or 0)
                out = {"object": "list", "data": data or None, "model": self.model,
                       "usage": {"prompt_tokens": count, "total_tokens": count}}
        else:  # toModel
            out = {"id": self.model, "object": "model", "created": _unix(r.get("modified_at")),
                   "owned_by": parse_name(self.model).namespace}
        return go_json(out) + b"\n"

    def frames(self, r: dict) -> bytes:
        """Server-Sent Events for one native stream line (toChunk / toCompleteChunk)."""
        if not isinstance(r, dict):
            r = {}
        reason = r.get("done_reason") or None
        if self.kind == "chat":
            c: dict = {"id": self.id, "object": "chat.completion.chunk",
                       "created": int(time.time()), "model": r.get("model") or "",
                       "system_fingerprint": "fp_ollama",
                       "choices": [{"index": 0, "delta": {
                           "role": "assistant", "content": _oai_message(r)["content"]},
                           "finish_reason": reason}]}
        else:
            c = {"id": self.id, "object": "text_completion", "created": int(time.time()),
                 "choices": [{"text": r.get("response") or "", "index": 0,
                              "finish_reason": reason}],
                 "model": r.get("model") or "", "system_fingerprint": "fp_ollama"}
            if self.include_usage:
                c["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        out = b"data: " + go_json(c) + b"\n\n"
        if r.get("done") is True:
            if self.include_usage:
                c["usage"] = _oai_usage(r)
                c["choices"] = []
                out += b"data: " + go_json(c) + b"\n\n"
            out += b"data: [DONE]\n\n"
        return out
