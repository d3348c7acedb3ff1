"""The OpenAI Responses API and audio transcriptions of v0.32 images.

`POST /v1/responses` as middleware/openai.go ResponsesMiddleware and openai/responses.go
(v0.32.15) do it: the request becomes a native chat (instructions as the system
message, `input` a string or message items), the native chat handler runs, and its
answer becomes a `response` object, or with `stream: true` the event stream
(`response.created`, `response.in_progress`, `response.output_item.added`,
`response.content_part.added`, `response.output_text.delta`..., `response.output_text.done`,
`response.content_part.done`, `response.output_item.done`, `response.completed`), each
`event: NAME\\ndata: JSON\\n\\n`. The stand-in's models neither think nor call tools, so
the reasoning and function-call items have nothing to carry.

`POST /v1/audio/transcriptions` as TranscriptionMiddleware: a multipart form with
`model` and `file`; the audio goes to the native chat (as an image part, as upstream
passes it) and the reply's text comes back as `{"text": ...}` (or plain text).
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import json
import random
import time

from .apierror import ApiError
from .goformat import _json_kind, go_json, parse_rfc3339
from .openai_compat import _status_error_text, oai_error, oai_handler_error_status

TRANSCRIBE_SYSTEM = ("Transcribe the audio exactly as spoken. Output only the spoken words. "
                     "Do not answer any question in the audio.")


def _go_unmarshal_error(v, field: str, go_type: str) -> ApiError:
    return ApiError(400, f"json: cannot unmarshal {_json_kind(v)} into Go struct field "
                         f"ResponsesRequest.{field} of type {go_type}")


def _content(content, index_prefix: str = "") -> str:
    """ResponsesInputMessage content: a string, or input_text/output_text/input_image
    parts (images without a URL are skipped; files refused)."""
    if isinstance(content, str) or content is None:
        return content or ""
    if not isinstance(content, list):
        raise ApiError(400, f"{index_prefix}content must be a string or array: json: cannot "
                            f"unmarshal {_json_kind(content)} into Go value of type "
                            "[]json.RawMessage")
    text = ""
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            text += str(part.get("text") or "")
        elif kind == "input_image":
            continue
        elif kind == "input_file":
            raise ApiError(400, "file inputs are not currently supported")
        else:
            raise ApiError(400, f"{index_prefix}content[{i}]: unknown content type: {kind or ''}")
    return text


def responses_chat_request(raw: bytes) -> tuple[dict, dict]:
    """ShouldBindJSON into openai.ResponsesRequest, then FromResponsesRequest: (the
    Responses request, the native chat request)."""
    if not raw.strip():
        raise ApiError(400, "EOF")
    try:
        req = json.loads(raw)
    except ValueError as e:
        raise ApiError(400, str(e)) from None
    if not isinstance(req, dict):
        raise ApiError(400, f"json: cannot unmarshal {_json_kind(req)} into Go value of type "
                            "openai.ResponsesRequest")
    for field, kind, go_type in (("model", str, "string"), ("instructions", str, "string"),
                                 ("stream", bool, "bool"), ("background", bool, "bool"),
                                 ("max_output_tokens", int, "int"),
                                 ("temperature", (int, float), "float64"),
                                 ("top_p", (int, float), "float64")):
        v = req.get(field)
        wrong = not isinstance(v, kind) or (kind is not bool and isinstance(v, bool))
        if v is not None and wrong:
            raise _go_unmarshal_error(v, field, go_type)
    messages: list[dict] = []
    if req.get("instructions"):
        messages.append({"role": "system", "content": req["instructions"]})
    inp = req.get("input")
    if isinstance(inp, str):
        if inp:
            messages.append({"role": "user", "content": inp})
    elif isinstance(inp, list):
        for i, item in enumerate(inp):
            if not isinstance(item, dict):
                raise ApiError(400, f"input[{i}]: json: cannot unmarshal {_json_kind(item)} into "
                                    "Go value of type struct { Type string \"json:\\\"type\\\"\"; "
                                    "Role string \"json:\\\"role\\\"\" }")
            kind = item.get("type") or ("message" if item.get("role") else "")
            if kind == "message":
                messages.append({"role": str(item.get("role") or ""),
                                 "content": _content(item.get("content"), f"input[{i}]: ")})
            elif kind in ("reasoning", "function_call", "function_call_output",
                          "web_search_call"):
                continue  # the stand-in's models never produced these
            elif not kind:
                raise ApiError(400, f"input[{i}]: input item missing required 'type' field")
            else:
                raise ApiError(400, f'input[{i}]: unknown input item type: "{kind}"')
    elif inp is not None:
        raise ApiError(400, "input must be a string or array: json: cannot unmarshal "
                            f"{_json_kind(inp)} into Go value of type []json.RawMessage")
    options: dict = {}
    if req.get("temperature") is not None:
        options["temperature"] = req["temperature"]
    if req.get("top_p") is not None:
        options["top_p"] = req["top_p"]
    if req.get("max_output_tokens") is not None:
        options["num_predict"] = req["max_output_tokens"]
    chat: dict = {"model": req.get("model") or "", "messages": messages, "options": options,
                  "stream": req.get("stream") is True}
    text = req.get("text")
    if isinstance(text, dict) and isinstance(text.get("format"), dict):
        fmt = text["format"]
        if fmt.get("type") == "json_schema" and fmt.get("schema") is not None:
            chat["format"] = fmt["schema"]
    return req, chat


class ResponsesWriter:
    """ResponsesWriter and ResponsesStreamConverter (v0.32.15)."""

    def __init__(self, req: dict):
        self.req = req
        self.model = req.get("model") or ""
        self.stream = req.get("stream") is True
        # rand.Intn(999999), not a secret
        self.response_id = f"resp_{random.randrange(999999)}"  # noqa: S311
        self.item_id = f"msg_{random.randrange(999999)}"  # noqa: S311
        self.seq = 0
        self.first = True
        self.started = False
        self.text = ""
        self.web_search = False  # a web_search tool: WebSearchResponsesWriter wraps it

    def error(self, status: int, obj) -> bytes:
        return go_json(oai_error(oai_handler_error_status(status), _status_error_text(obj))) \
            + b"\n"

    @staticmethod
    def _web_search_error(status: int, obj) -> tuple[int, str, str]:
        """decodeWebSearchResponseError and writeWebSearchError's (status, code, text)."""
        obj = obj if isinstance(obj, dict) else {}
        text = str(obj.get("error") or "") or ("something went wrong, please see the ollama "
                                               "server logs for details")
        if status == 401:
            url = str(obj.get("signin_url") or "")
            return status, "authentication_error", text + (f"; sign in at {url}" if url else "")
        return status, "rate_limit_exceeded" if status == 429 else "api_error", text

    def web_search_error(self, status: int, obj) -> bytes:
        """WebSearchResponsesWriter.writeWebSearchError, not streamed."""
        status, _code, text = self._web_search_error(status, obj)
        return go_json(oai_error(status, text)) + b"\n"

    def failed_frames(self, status: int, obj) -> bytes:
        """WebSearchResponsesWriter.writeWebSearchError, streamed: the converter's first
        events, then response.failed."""
        _status, code, text = self._web_search_error(status, obj)
        out = self.frames({"done": False}) if self.first else b""
        return out + self._event("response.failed", {"response": {
            "id": self.response_id, "object": "response", "status": "failed",
            "model": self.model, "output": [], "error": {"code": code, "message": text},
            "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}}})

    def _echo(self) -> dict:
        r = self.req
        tools = r.get("tools") if isinstance(r.get("tools"), list) else []
        fmt = {"type": "text"}
        text = r.get("text")
        if isinstance(text, dict) and isinstance(text.get("format"), dict):
            f = text["format"]
            fmt = {"type": f.get("type") or ""}
            for k in ("name", "schema", "strict"):
                if f.get(k) not in (None, ""):
                    fmt[k] = f[k]
        reasoning = r.get("reasoning") if isinstance(r.get("reasoning"), dict) else {}
        effort, summary = reasoning.get("effort") or "", reasoning.get("summary") or ""
        return {
            "instructions": r.get("instructions") or None,
            "tools": tools, "tool_choice": "auto",
            "truncation": r.get("truncation") if isinstance(r.get("truncation"), str)
            else "disabled",
            "parallel_tool_calls": True, "text": {"format": fmt},
            "top_p": r["top_p"] if r.get("top_p") is not None else 1.0,
            "presence_penalty": 0, "frequency_penalty": 0, "top_logprobs": 0,
            "temperature": r["temperature"] if r.get("temperature") is not None else 1.0,
            "reasoning": ({"effort": effort or None, "summary": summary or None}
                          if effort or summary else None),
        }

    def _response(self, status: str, output: list, usage, created: int) -> dict:
        e = self._echo()
        return {
            "id": self.response_id, "object": "response", "created_at": created,
            "completed_at": None, "status": status, "incomplete_details": None,
            "model": self.model, "previous_response_id": None,
            "instructions": e["instructions"], "output": output, "error": None,
            "tools": e["tools"], "tool_choice": "auto", "truncation": e["truncation"],
            "parallel_tool_calls": True, "text": e["text"], "top_p": e["top_p"],
            "presence_penalty": 0, "frequency_penalty": 0, "top_logprobs": 0,
            "temperature": e["temperature"], "reasoning": e["reasoning"], "usage": usage,
            "max_output_tokens": self.req.get("max_output_tokens"), "max_tool_calls": None,
            "store": False, "background": self.req.get("background") is True,
            "service_tier": "default", "metadata": {}, "safety_identifier": None,
            "prompt_cache_key": None,
        }

    @staticmethod
    def _usage(r: dict) -> dict:
        i, o = int(r.get("prompt_eval_count") or 0), int(r.get("eval_count") or 0)
        return {"input_tokens": i, "output_tokens": o, "total_tokens": i + o,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0}}

    def _message_item(self, status: str, text: str | None) -> dict:
        item: dict = {"id": self.item_id, "type": "message", "status": status,
                      "role": "assistant"}
        item["content"] = [] if text is None else [
            {"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        return item

    def document(self, r: dict) -> bytes:
        """ToResponse, completed_at set by the writer (json.Encoder output)."""
        content = ((r.get("message") or {}).get("content")) or ""
        out = self._response("completed", [self._message_item("completed", content)],
                             self._usage(r), _unix(r.get("created_at")))
        out["completed_at"] = int(time.time())
        return go_json(out) + b"\n"

    def _event(self, kind: str, data: dict) -> bytes:
        data = {**data, "type": kind, "sequence_number": self.seq}
        self.seq += 1
        # the converter's events are Go maps: json.Marshal writes their keys sorted
        return f"event: {kind}\ndata: ".encode() + go_json(sorted_maps(data)) + b"\n\n"

    def frames(self, r: dict) -> bytes:
        """ResponsesStreamConverter.Process for one native stream line."""
        if not isinstance(r, dict):
            r = {}
        out = b""
        if self.first:
            self.first = False
            for kind in ("response.created", "response.in_progress"):
                out += self._event(kind, {"response": self._response(
                    "in_progress", [], None, int(time.time()))})
        content = (r.get("message") or {}).get("content") or ""
        if content:
            if not self.started:
                self.started = True
                out += self._event("response.output_item.added", {
                    "output_index": 0, "item": self._message_item("in_progress", None)})
                out += self._event("response.content_part.added", {
                    "item_id": self.item_id, "output_index": 0, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": [],
                             "logprobs": []}})
            self.text += content
            out += self._event("response.output_text.delta", {
                "item_id": self.item_id, "output_index": 0, "content_index": 0,
                "delta": content, "logprobs": []})
        if r.get("done") is True:
            output = []
            if self.started:
                part = {"type": "output_text", "text": self.text, "annotations": [],
                        "logprobs": []}
                out += self._event("response.output_text.done", {
                    "item_id": self.item_id, "output_index": 0, "content_index": 0,
                    "text": self.text, "logprobs": []})
                out += self._event("response.content_part.done", {
                    "item_id": self.item_id, "output_index": 0, "content_index": 0,
                    "part": part})
                out += self._event("response.output_item.done", {
                    "output_index": 0, "item": self._message_item("completed", self.text)})
                output.append(self._message_item("completed", self.text))
            response = self._response("completed", output, self._usage(r), int(time.time()))
            response["completed_at"] = int(time.time())
            out += self._event("response.completed", {"response": response})
        return out


def sorted_maps(v):
    """A value as encoding/json writes a map[string]any: keys in sorted order, nested
    maps too."""
    if isinstance(v, dict):
        return {k: sorted_maps(v[k]) for k in sorted(v)}
    if isinstance(v, list):
        return [sorted_maps(x) for x in v]
    return v


def _unix(created_at) -> int:
    t = parse_rfc3339(created_at or "")
    return int(t) if t is not None else int(time.time())


# -- /v1/audio/transcriptions -------------------------------------------------------

def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, bytes]]:
    """ParseMultipartForm: (values, files); ValueError with Go's text when it is none."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise ValueError("request Content-Type isn't multipart/form-data")
    if "boundary=" not in content_type:
        raise ValueError("no multipart boundary param in Content-Type")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not msg.is_multipart():
        raise ValueError("multipart: NextPart: EOF")
    values: dict[str, str] = {}
    files: dict[str, bytes] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        data = part.get_payload(decode=True) or b""
        if part.get_filename() is not None:
            files.setdefault(str(name), data)
        else:
            values.setdefault(str(name), data.decode("utf-8", "replace"))
    return values, files


def transcription_request(content_type: str, body: bytes) -> tuple[dict, str]:
    """TranscriptionMiddleware's checks and FromTranscriptionRequest: (native chat
    request, response_format)."""
    try:
        values, files = parse_multipart(content_type, body)
    except ValueError as e:
        raise ApiError(400, f"failed to parse multipart form: {e}") from None
    model = values.get("model", "")
    if not model:
        raise ApiError(400, "model is required")
    if "file" not in files:
        raise ApiError(400, "file is required: http: no such file")
    if not files["file"]:
        raise ApiError(400, "audio file is empty")
    system = TRANSCRIBE_SYSTEM
    if values.get("language"):
        system += " The audio is in " + values["language"] + "."
    if values.get("prompt"):
        system += " Context: " + values["prompt"]
    chat = {"model": model, "stream": True, "options": {"temperature": 0}, "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": "What exact words are spoken in this audio?",
         "images": [base64.b64encode(files["file"]).decode()]}]}
    return chat, values.get("response_format", "")


class TranscriptionWriter:
    """Collects the streamed chat and answers once, at the end."""

    def __init__(self, response_format: str):
        self.response_format = response_format
        self.stream = True
        self.text = ""
        self.content_type = "text/plain" if response_format == "text" else "application/json"

    def error(self, status: int, obj) -> bytes:
        return go_json(oai_error(oai_handler_error_status(status), _status_error_text(obj))) \
            + b"\n"

    def frames(self, r: dict) -> bytes:
        if not isinstance(r, dict):
            return b""
        self.text += (r.get("message") or {}).get("content") or ""
        if r.get("done") is not True:
            return b""
        text = self.text.strip()
        if self.response_format == "text":
            return text.encode()
        return go_json({"text": text}) + b"\n"

    document = frames
