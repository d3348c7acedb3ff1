"""Many facts, one round trip: the deploy's facts read together, once per host.

pyinfra 3 runs every `host.get_fact` as its own remote command, and a no-op deploy of a
GPU host asked about forty: most of a no-op run was waiting on them. `prefetch(host,
wanted)` runs the commands of all the WANTED facts (each pyinfra fact class with its
arguments) in one shell program, splits the output and processes each part with the
fact's own `process()`, exactly as pyinfra would have; `fact(cls, **kwargs)` then answers
from what was prefetched and falls back to `host.get_fact` for anything else.

What stays pyinfra's:
- a fact whose command exits non-zero is not cached: `fact()` asks pyinfra, which fails
  the host or returns the default as it always does;
- a fact whose `requires_command` is missing on the host gets its `default()`, as in
  pyinfra's prepare stage;
- only the prepare stage answers from the cache (facts are the state before the run
  there anyway); at execute time `fact()` always asks the host.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any

from pyinfra import host as current_host
from pyinfra.api import FactBase, StringCommand
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_state

from tasks.scripts import script_command

Wanted = tuple[type[FactBase], dict[str, Any]]

_cache: dict[tuple[int, str], dict[tuple, Any]] = {}  # (state, host) -> fact key -> value


def _key(cls: type[FactBase], kwargs: dict[str, Any]) -> tuple:
    return (cls, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))


def _host_cache(host: Any) -> dict[tuple, Any]:
    return _cache.setdefault((id(ctx_state.get()), host.name), {})


def _command(fact: FactBase, kwargs: dict[str, Any]) -> tuple[str, str | None]:
    command = fact.command(**kwargs)
    required = fact.requires_command(**kwargs)
    return (command.get_raw_value() if isinstance(command, StringCommand) else str(command),
            str(required) if required else None)


class FactBatch(FactBase):
    """Stdout of a batch program, as lines (see `batch_program`)."""

    def command(self, program: str) -> str:
        return program

    def process(self, output: list[str]) -> list[str]:
        return output


def batch_program(commands: list[tuple[str, str | None]], mark: str) -> str:
    """One command that runs COMMANDS (command, required binary or None) through
    templates/probe/batch.sh, each framed by MARK lines that carry its exit status."""
    args = [mark]
    for command, required in commands:
        args += [required or "", command]
    return script_command("probe/batch.sh", *args)


def split_batch(lines: list[str], mark: str, count: int) -> list[tuple[str, list[str]]]:
    """(status, stdout lines) per command of a batch program's output: status `ok`, `failed`
    or `missing` (its required binary is absent)."""
    results: list[tuple[str, list[str]]] = [("failed", [])] * count
    current: int | None = None
    body: list[str] = []
    missing: set[int] = set()
    for line in lines:
        if line.startswith(f"{mark}:"):
            _, number, what, *rest = line.split(":")
            index = int(number)
            if what == "begin":
                current, body = index, []
            elif what == "missing":
                missing.add(index)
            elif what == "end" and current == index:
                if body and body[-1] == "":
                    body = body[:-1]  # the `echo` that ends a part without a newline
                status = "missing" if index in missing else \
                    "ok" if rest and rest[0] == "0" else "failed"
                results[index] = (status, body)
                current = None
            continue
        if current is not None:
            body.append(line)
    return results


def prefetch(wanted: Iterable[Wanted], host: Any = None) -> int:
    """Read the WANTED facts of HOST (default: the current host) in one round trip;
    return how many are now answered without asking the host again."""
    host = host or current_host
    cache = _host_cache(host)
    todo = [(cls, kwargs) for cls, kwargs in wanted if _key(cls, kwargs) not in cache]
    if not todo:
        return len(cache)
    facts = [(cls(), kwargs) for cls, kwargs in todo]
    mark = f"__fleet_fact_{secrets.token_hex(6)}"
    program = batch_program([_command(fact, kwargs) for fact, kwargs in facts], mark)
    lines = host.get_fact(FactBatch, program=program)
    for (fact, kwargs), (cls, _), (status, body) in zip(
            facts, todo, split_batch(lines or [], mark, len(facts)), strict=True):
        if status == "missing":
            cache[_key(cls, kwargs)] = fact.default()
        elif status == "ok":
            cache[_key(cls, kwargs)] = fact.process(body) if body else fact.default()
    return len(cache)


def fact(cls: type[FactBase], **kwargs: Any) -> Any:
    """The current host's fact CLS(KWARGS): prefetched if it was, else `host.get_fact`."""
    state = ctx_state.get()
    if state is not None and getattr(state, "current_stage", None) != StateStage.Execute:
        cache = _host_cache(current_host)
        key = _key(cls, kwargs)
        if key in cache:
            return cache[key]
    return current_host.get_fact(cls, **kwargs)
