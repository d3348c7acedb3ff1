"""The Anthropic Messages API of v0.32 images (`POST /v1/messages`).

As middleware/anthropic.go AnthropicMessagesMiddleware and anthropic/anthropic.go
(v0.32.15) do it: the request is checked (`model`, positive `max_tokens`, `messages`),
becomes a native chat (`system` as the system message, string or text-block contents,
`max_tokens` as num_predict), the native chat handler runs, and its answer becomes a
`message`, or with `stream: true` the events `message_start`, `content_block_start`,
`content_block_delta` (`text_delta`)..., `content_block_stop`, `message_delta`,
`message_stop`, each `event: NAME\\ndata: JSON\\n\\n`. Errors are
`{"type":"error","error":{"type","message"},"request_id"}`, typed by status. The
stand-in's models neither think nor call tools.
"""

from __future__ import annotations

import json
import secrets

from .apierror import ApiError
from .goformat import _json_kind, go_json
from .openai_compat import _status_error_text

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 429: "rate_limit_error",
                503: "overloaded_error", 529: "overloaded_error"}


def generate_id(prefix: str) -> str:
    """generateID: the prefix and 12 random bytes in hex."""
    return f"{prefix}_{secrets.token_hex(12)}"


def anthropic_error(status: int, message: str) -> dict:
    """anthropic.NewError."""
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"),
                                       "message": message},
            "request_id": generate_id("req")}


def _text_of(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise ApiError(400, f"json: cannot unmarshal {_json_kind(content)} into Go value of "
                            "type []anthropic.ContentBlock")
    text = ""
    for block in content:
        if not isinstance(block, dict):
            raise ApiError(400, f"json: cannot unmarshal {_json_kind(block)} into Go value of "
                                "type anthropic.ContentBlock")
        if block.get("type") == "text":
            text += str(block.get("text") or "")
        elif block.get("type") == "image":
            src = block.get("source")
            if not isinstance(src, dict):
                raise ApiError(400, "invalid image source")
        elif block.get("type") == "tool_use":
            if not block.get("id"):
                raise ApiError(400, "tool_use block missing required 'id' field")
            if not block.get("name"):
                raise ApiError(400, "tool_use block missing required 'name' field")
    return text


def _estimate_tokens(req: dict) -> int:
    """EstimateInputTokens: len/4 of the system, roles and texts (at least 1)."""
    total = 0
    system = req.get("system")
    if isinstance(system, str):
        total += len(system)
    elif system is not None:
        total += len(json.dumps(system))
    for m in req.get("messages") or []:
        if isinstance(m, dict):
            total += len(str(m.get("role") or ""))
            c = m.get("content")
            total += len(c) if isinstance(c, str) else len(_text_of(c, "")) if c else 0
    tokens = total // 4
    return tokens or (1 if req.get("messages") or system is not None else 0)


def messages_chat_request(raw: bytes) -> tuple[dict, dict]:
    """ShouldBindJSON into anthropic.MessagesRequest, the middleware's checks and
    FromMessagesRequest: (the Messages request, the native chat request)."""
    if not raw.strip():
        raise ApiError(400, "EOF")
    try:
        req = json.loads(raw)
    except ValueError as e:
        raise ApiError(400, str(e)) from None
    if not isinstance(req, dict):
        raise ApiError(400, f"json: cannot unmarshal {_json_kind(req)} into Go value of type "
                            "anthropic.MessagesRequest")
    for field, kind, go_type in (("model", str, "string"), ("max_tokens", int, "int"),
                                 ("stream", bool, "bool"), ("messages", list,
                                                            "[]anthropic.MessageParam"),
                                 ("temperature", (int, float), "float64"),
                                 ("top_p", (int, float), "float64"), ("top_k", int, "int")):
        v = req.get(field)
        wrong = not isinstance(v, kind) or (kind is not bool and isinstance(v, bool))
        if v is not None and wrong:
            raise ApiError(400, f"json: cannot unmarshal {_json_kind(v)} into Go struct field "
                                f"MessagesRequest.{field} of type {go_type}")
    if not req.get("model"):
        raise ApiError(400, "model is required")
    if (req.get("max_tokens") or 0) <= 0:
        raise ApiError(400, "max_tokens is required and must be positive")
    if not req.get("messages"):
        raise ApiError(400, "messages is required")
    messages: list[dict] = []
    system = req.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    elif isinstance(system, list):
        text = "".join(str(b.get("text") or "") for b in system
                       if isinstance(b, dict) and b.get("type") == "text"
                       and isinstance(b.get("text"), str))
        if text:
            messages.append({"role": "system", "content": text})
    for m in req["messages"]:
        if not isinstance(m, dict):
            raise ApiError(400, f"json: cannot unmarshal {_json_kind(m)} into Go value of type "
                                "struct { Role string \"json:\\\"role\\\"\"; Content "
                                "json.RawMessage \"json:\\\"content\\\"\" }")
        messages.append({"role": str(m.get("role") or "").lower(),
                         "content": _text_of(m.get("content"), "")})
    options: dict = {"num_predict": req["max_tokens"]}
    for src, dst in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k")):
        if req.get(src) is not None:
            options[dst] = req[src]
    if req.get("stop_sequences"):
        options["stop"] = req["stop_sequences"]
    chat = {"model": req["model"], "messages": messages, "options": options,
            "stream": req.get("stream") is True}
    return req, chat


class AnthropicWriter:
    """AnthropicWriter and StreamConverter (v0.32.15)."""

    def __init__(self, req: dict):
        self.model = req.get("model") or ""
        self.stream = req.get("stream") is True
        self.id = generate_id("msg")
        self.estimated = _estimate_tokens(req)
        self.first = True
        self.text_started = False
        self.index = 0

    def error(self, status: int, obj) -> bytes:
        """writeError: the native error text, typed by the status."""
        return go_json(anthropic_error(status, _status_error_text(obj))) + b"\n"

    @staticmethod
    def _stop_reason(reason: str) -> str:
        """mapStopReason."""
        return {"stop": "end_turn", "length": "max_tokens"}.get(
            reason, "stop_sequence" if reason else "")

    def document(self, r: dict) -> bytes:
        """ToMessagesResponse (json.Encoder output); empty fields omitted as the struct's
        omitempty tags say."""
        text = (r.get("message") or {}).get("content") or ""
        out: dict = {"id": self.id, "type": "message", "role": "assistant",
                     "model": r.get("model") or "",
                     "content": [{"type": "text", "text": text}] if text else None}
        reason = self._stop_reason(r.get("done_reason") or "")
        if reason:
            out["stop_reason"] = reason
        out["usage"] = {"input_tokens": int(r.get("prompt_eval_count") or 0),
                        "output_tokens": int(r.get("eval_count") or 0)}
        return go_json(out) + b"\n"

    @staticmethod
    def _event(kind: str, data: dict) -> bytes:
        return f"event: {kind}\ndata: ".encode() + go_json(data) + b"\n\n"

    def frames(self, r: dict) -> bytes:
        """StreamConverter.Process for one native stream line."""
        if not isinstance(r, dict):
            r = {}
        out = b""
        if self.first:
            self.first = False
            inp = int(r.get("prompt_eval_count") or 0) or self.estimated
            out += self._event("message_start", {"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "usage": {"input_tokens": inp, "output_tokens": 0}}})
        content = (r.get("message") or {}).get("content") or ""
        if content:
            if not self.text_started:
                self.text_started = True
                out += self._event("content_block_start", {
                    "type": "content_block_start", "index": self.index,
                    "content_block": {"type": "text", "text": ""}})
            out += self._event("content_block_delta", {
                "type": "content_block_delta", "index": self.index,
                "delta": {"type": "text_delta", "text": content}})
        if r.get("done") is True:
            if self.text_started:
                out += self._event("content_block_stop", {"type": "content_block_stop",
                                                          "index": self.index})
                self.text_started = False
            delta: dict = {}
            reason = self._stop_reason(r.get("done_reason") or "")
            if reason:
                delta["stop_reason"] = reason
            out += self._event("message_delta", {
                "type": "message_delta", "delta": delta,
                "usage": {"input_tokens": int(r.get("prompt_eval_count") or 0),
                          "output_tokens": int(r.get("eval_count") or 0)}})
            out += self._event("message_stop", {"type": "message_stop"})
        return out
