"""An application on the operator's side, calling the fleet by name with the official
`ollama` and `openai` Python clients: list, a streamed generate, a chat and an embedding
through `ollama`; a streamed chat completion and the model list through `openai`. With
`--also responses messages` (Ollama 0.13 and later), a streamed Responses API call through
`openai` and a streamed Messages API call through `anthropic`, its key sent as Anthropic's
clients send it (`x-api-key`).

    python -m lab --name LAB run -- python -m tests.lab.clients URL --model M [--ca CA]
                                             [--key KEY] [--also responses messages]

URL names a host by DNS (`http://gpu-1.LAB.test`, `https://llm.LAB.test`): run it under
the lab's resolver. Prints one JSON object: `address` (what the name resolved to) and,
per call, "ok" or the error; exit 0 when every call is ok, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import urllib.parse

import anthropic
import httpx
import ollama
import openai

from ollama_fleet.tasks.kit.modelname import canonical

TIMEOUT_S = 60


ALSO = ("responses", "messages")


def calls(url: str, model: str, ca: str | None, key: str | None,
          also: tuple[str, ...] = ()) -> dict[str, str]:
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca) if ca else True
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    # no proxy from the environment: the lab's names are reached directly
    native = ollama.Client(host=url, verify=verify, headers=headers, timeout=TIMEOUT_S,
                           trust_env=False)
    compatible = openai.OpenAI(base_url=f"{url}/v1", api_key=key or "unused", max_retries=0,
                               http_client=httpx.Client(verify=verify, timeout=TIMEOUT_S,
                                                        trust_env=False))

    def listed() -> bool:  # as Ollama lists it: `tinyllama:latest`
        return canonical(model) in [m.model for m in native.list().models]

    def generated() -> bool:
        parts = list(native.generate(model=model, prompt="Why is the sky blue?", stream=True,
                                     options={"num_predict": 8}))
        return bool(parts) and parts[-1].done and bool("".join(p.response for p in parts))

    def chatted() -> bool:
        answer = native.chat(model=model, messages=[{"role": "user", "content": "Hello"}],
                             options={"num_predict": 8})
        return bool(answer.message.content)

    def embedded() -> bool:
        return bool(native.embed(model=model, input="a fleet by name").embeddings[0])

    def completed() -> bool:
        stream = compatible.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hello"}], stream=True,
            max_tokens=8)
        return bool("".join(c.choices[0].delta.content or "" for c in stream if c.choices))

    def models() -> bool:
        return canonical(model) in [m.id for m in compatible.models.list()]

    def responded() -> bool:
        text, completed = "", False
        for event in compatible.responses.create(model=model, input="Hello", stream=True,
                                                 max_output_tokens=16):
            if event.type == "response.output_text.delta":
                text += event.delta
            completed = completed or event.type == "response.completed"
        return completed and bool(text)

    def messaged() -> bool:
        # the SDK's own HTTP client class (newer releases use another package than httpx)
        client = anthropic.Anthropic(base_url=url, api_key=key or "unused", max_retries=0,
                                     http_client=anthropic.DefaultHttpxClient(
                                         verify=verify, timeout=TIMEOUT_S, trust_env=False))
        with client.messages.stream(model=model, max_tokens=8,
                                    messages=[{"role": "user", "content": "Hello"}]) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        return bool(text) and final.stop_reason is not None

    chosen = [("ollama list", listed), ("ollama generate (streamed)", generated),
              ("ollama chat", chatted), ("ollama embed", embedded),
              ("openai chat completion (streamed)", completed), ("openai models", models)]
    if "responses" in also:
        chosen.append(("openai responses (streamed)", responded))
    if "messages" in also:
        chosen.append(("anthropic messages (streamed)", messaged))
    results = {}
    for name, call in chosen:
        try:
            results[name] = "ok" if call() else "answered, but not as expected"
        except Exception as exc:  # noqa: BLE001 - every failure is reported, by call
            results[name] = f"{type(exc).__name__}: {exc}"
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab.clients")
    parser.add_argument("url")
    parser.add_argument("--model", required=True)
    parser.add_argument("--ca", help="the CA certificate that signed the gate's")
    parser.add_argument("--key", help="an API key of the gate")
    parser.add_argument("--also", nargs="*", choices=ALSO, default=[],
                        help="the newer APIs to call too (Ollama 0.13 and later)")
    args = parser.parse_args(argv)
    name = urllib.parse.urlsplit(args.url).hostname or ""
    try:
        address = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)[0][4][0]
    except OSError as exc:
        print(json.dumps({"address": None, "error": f"{name}: {exc}"}))
        return 1
    results = calls(args.url, args.model, args.ca, args.key, tuple(args.also))
    print(json.dumps({"address": address, **results}))
    return 0 if all(v == "ok" for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
