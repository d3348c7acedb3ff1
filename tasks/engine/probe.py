"""Many facts, one round trip: the deploy's facts read together, once per host.

pyinfra 3 runs every `host.get_fact` as its own remote command, and a no-op deploy of a
GPU host asked about forty: most of a no-op run was waiting on them. `prefetch(wanted)`
runs the commands of all the WANTED facts (each pyinfra fact class with its arguments)
in one shell program, splits the output and processes each part with the fact's own
`process()`, exactly as pyinfra would have. `install()` (config.py) makes
`Host.get_fact` answer from what was prefetched, for our tasks and pyinfra's own
operations (files.put, systemd.service) alike, and ask the host for anything else.

Which facts: the ones the deploy asked of this host on its last run from this machine,
remembered under ~/.cache/ollama-fleet/facts/ (`prefetch_remembered`): no second list of
what every step and every pyinfra operation reads to keep in step with the code. A
first run, or a step that reads something new, asks pyinfra as always, and the next run
has it. A forgotten or stale list costs speed, never correctness.

What stays pyinfra's:
- prefetched facts are the host's state before the run; they answer only until the
  first command of an operation runs on that host (pyinfra 3 reads facts while the
  operations run, after earlier ones changed things): from then on every fact is asked
  of the host again. A no-op run, which changes nothing, asks almost nothing twice;
- they answer for at most MAX_AGE_S after they were read: a long run (model pulls,
  reboots of other hosts) sees a host that changed by itself as it is now;
- a fact asked as another user or with another environment than the host's own
  (_sudo_user, _su_user, _env...) is asked of the host;
- a remembered list names only facts of the REMEMBERABLE classes, by exact name (each
  quotes its arguments; FactBatch, which runs its text, is never one), and is read only
  from a regular file of the operator's own, mode 0600: the file is on the operator's
  machine and must not be a way to run commands on every host. `OLLAMA_FLEET_CACHE=off`
  turns the memory off (nothing read, nothing written);
- a fact whose command exits non-zero is not cached: pyinfra is asked, and fails the
  host or returns the default as it always does;
- a fact whose `requires_command` is missing on the host gets its `default()`, as in
  pyinfra's prepare stage.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib
import inspect
import json
import os
import secrets
import stat
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pyinfra import host as current_host
from pyinfra.api import FactBase, StringCommand

from ollama_fleet.tasks.kit.scripts import script_command

Wanted = tuple[type[FactBase], dict[str, Any]]
TRACE_ENV = "FLEET_FACT_TRACE"  # a file: every fact asked of a host while preparing, a line each

_cache: dict[tuple[int, str], dict[tuple, Any]] = {}  # (state, host) -> fact key -> value
_taken: dict[tuple[int, str], float] = {}  # (state, host) -> when its facts were prefetched
MAX_AGE_S = 60.0  # older prefetched facts are asked again: a long run sees the host as it is
# Global arguments that change what a fact's command sees; a fact asked with other values
# of them than the host's own is asked of the host.
WHO = ("_sudo", "_sudo_user", "_su_user", "_doas", "_doas_user", "_env", "_chdir",
       "_shell_executable")
# The only facts a remembered list may name, by exact name, each with the only arguments
# it may carry: ours, whose commands quote every argument, and pyinfra's that quote what
# they are given here (paths, service names). pyinfra's systemd facts put `machine` and
# `user_name` into the command unquoted, so a list naming them is not read. A list is a
# file on the operator's machine; it must not be a way to run a command on every host.
_FACTS = "ollama_fleet.tasks.kit.facts."
REMEMBERABLE: dict[str, frozenset[str]] = {
    f"{_FACTS}NvidiaGpus": frozenset(), f"{_FACTS}NvidiaHost": frozenset(),
    f"{_FACTS}MissingArchiveComponents": frozenset({"codename", "components"}),
    f"{_FACTS}JsonFile": frozenset({"path"}),
    f"{_FACTS}ComposeContainers": frozenset({"project"}),
    f"{_FACTS}ContainerGpus": frozenset({"container"}), f"{_FACTS}Lines": frozenset({"path"}),
    f"{_FACTS}OllamaModels": frozenset({"address", "port"}),
    f"{_FACTS}StoredManifests": frozenset({"store", "manifests"}),
    f"{_FACTS}LoadedModels": frozenset({"address", "port"}),
    f"{_FACTS}ProvenPlacement": frozenset({"url", "timeout", "keep_alive", "model"}),
    f"{_FACTS}SmokeAnswer": frozenset({"url", "model"}),
    f"{_FACTS}DockerSwarmState": frozenset(), f"{_FACTS}DockerRuntimes": frozenset(),
    f"{_FACTS}DockerImages": frozenset({"images"}),
    f"{_FACTS}ComposeStale": frozenset({"root", "project"}),
    f"{_FACTS}DockerNetwork": frozenset({"network"}),
    "ollama_fleet.tasks.steps.backup.ModelStore": frozenset({"models_path"}),
    "ollama_fleet.tasks.steps.backup.PathsPresent": frozenset({"paths"}),
    "pyinfra.facts.files.File": frozenset({"path"}),
    "pyinfra.facts.files.Sha1File": frozenset({"path"}),
    "pyinfra.facts.files.Directory": frozenset({"path"}),
    "pyinfra.facts.files.Link": frozenset({"path"}),
    "pyinfra.facts.deb.DebPackages": frozenset(),
    "pyinfra.facts.server.LinuxDistribution": frozenset(),
    "pyinfra.facts.systemd.SystemdStatus": frozenset({"services", "user_mode"}),
    "pyinfra.facts.systemd.SystemdEnabled": frozenset({"services", "user_mode"}),
}


def replayable(name: str, kwargs: Any) -> bool:
    """Whether a fact NAME asked with KWARGS may be remembered and asked again: an allowed
    class, only its allowed arguments, each plain data (text, a number, a yes/no, or a
    list of text)."""
    allowed = REMEMBERABLE.get(name)
    if allowed is None or not isinstance(kwargs, dict) or not set(kwargs) <= allowed:
        return False
    return all(isinstance(v, (str, int, bool)) or
               (isinstance(v, list) and all(isinstance(i, str) for i in v))
               for v in kwargs.values())


_asked: dict[str, dict[str, tuple[str, dict]]] = {}  # memory file -> signature -> fact
CACHE_ENV = "OLLAMA_FLEET_CACHE"  # where fact lists are remembered (default ~/.cache/...);
# `off`: no memory at all


def _key(cls: type[FactBase], kwargs: dict[str, Any]) -> tuple:
    """The fact as pyinfra identifies it: its class and its command's arguments, defaults
    filled in (global arguments such as _sudo are not the fact's)."""
    plain = {k: v for k, v in kwargs.items() if not k.startswith("_")}
    try:
        called = inspect.getcallargs(cls().command, **plain)
    except TypeError:
        called = plain
    called.pop("self", None)
    return (cls, tuple(sorted((k, repr(v)) for k, v in called.items())))


def _host_cache(host: Any) -> dict[tuple, Any]:
    return _cache.setdefault((id(host.state), host.name), {})


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
    _taken.setdefault((id(host.state), host.name), time.monotonic())
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
    """The current host's fact CLS(KWARGS) (prefetched if it was, once `install()`ed)."""
    return current_host.get_fact(cls, **kwargs)


def _cached(host: Any, cls: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[bool, Any]:
    state = getattr(host, "state", None)
    if args or not _plain_fact(cls) or state is None:
        return False, None
    cache = _cache.get((id(state), host.name))
    if not cache:
        return False, None
    if time.monotonic() - _taken.get((id(state), host.name), 0.0) > MAX_AGE_S:
        forget(host)
        return False, None
    current = getattr(host, "current_op_global_arguments", None) or {}
    data = getattr(host, "data", None)
    # what the batch ran with: the host's own values, else pyinfra's defaults (every
    # operation carries them, the shell `sh` among them)
    default_shell = getattr(getattr(state, "config", None), "SHELL", None) or "sh"
    for name in WHO:
        if name in kwargs or name in current:
            own = data.get(name) if data is not None else None
            default = default_shell if name == "_shell_executable" else None
            if kwargs.get(name, current.get(name)) not in (own, default, None, False, {}):
                return False, None  # asked as someone else, or elsewhere: not what we read
    key = _key(cls, kwargs)
    if key in cache:
        return True, cache[key]
    return False, None


def _plain_fact(cls: Any) -> bool:
    """A FactBase with a command of its own (not a ShortFactBase, which pyinfra derives)."""
    return isinstance(cls, type) and issubclass(cls, FactBase) and \
        callable(getattr(cls, "command", None))


def install() -> None:
    """Make `Host.get_fact` answer from the prefetched facts while the deploy prepares."""
    from pyinfra.api.host import Host

    original = Host.get_fact
    if getattr(original, "fleet_probe", False):
        return

    trace = os.environ.get(TRACE_ENV)

    def get_fact(self: Any, name_or_cls: Any, *args: Any, **kwargs: Any) -> Any:
        _remember(self, name_or_cls, args, kwargs)
        hit, value = _cached(self, name_or_cls, args, kwargs)
        if hit:
            return value
        if trace:
            with open(trace, "a") as f:  # a fact asked of the host: prefetch it next time?
                f.write(f"{self.name}\t{getattr(name_or_cls, '__module__', '')}."
                        f"{getattr(name_or_cls, '__name__', name_or_cls)}\t{kwargs!r}\n")
        return original(self, name_or_cls, *args, **kwargs)

    get_fact.fleet_probe = True  # type: ignore[attr-defined]
    Host.get_fact = get_fact  # type: ignore[method-assign]

    # An operation's command may change what any fact says: the host's prefetched facts
    # are dropped before it runs (fact commands do not go through `execute`).
    from pyinfra.api import command as commands

    for cls in (commands.StringCommand, commands.FileUploadCommand,
                commands.FileDownloadCommand, commands.FunctionCommand,
                commands.RsyncCommand):
        cls.execute = _forgetting(cls.execute)  # type: ignore[method-assign]


def forget(host: Any) -> None:
    """Drop HOST's prefetched facts: from now on pyinfra asks the host."""
    _cache.pop((id(host.state), host.name), None)
    _taken.pop((id(host.state), host.name), None)


def _forgetting(execute: Any) -> Any:
    def run(self: Any, state: Any, host: Any, connector_arguments: Any) -> Any:
        forget(host)
        return execute(self, state, host, connector_arguments)

    return run


# -- which facts: the ones asked on the last run, remembered on this machine --------------


def memory_file(host: Any) -> Path:
    """Where HOST's fact list is remembered: per host (name and address: one machine may
    deploy several fleets whose hosts share names) and per run of which files (the
    inventory and deploy file on pyinfra's command line: a backup reads other facts)."""
    base = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ollama-fleet")
    address = host.data.get("ssh_hostname") or host.name
    files = sorted(str(Path(a).resolve()) for a in sys.argv[1:] if a.endswith(".py"))
    digest = hashlib.sha256("|".join([host.name, str(address), *files]).encode()).hexdigest()
    return base / "facts" / f"{digest[:20]}.json"


def _signature(cls: Any, kwargs: dict[str, Any]) -> tuple[str, dict] | None:
    plain = {k: v for k, v in kwargs.items() if not k.startswith("_")}
    try:
        json.dumps(plain)
    except TypeError:
        return None  # arguments that are not plain data are not remembered
    return f"{cls.__module__}.{cls.__qualname__}", plain


def _remember(host: Any, cls: Any, args: tuple, kwargs: dict[str, Any]) -> None:
    if args or not _plain_fact(cls) or cls is FactBatch or not hasattr(host, "data"):
        return
    if not memory_on():
        return
    signature = _signature(cls, kwargs)
    if signature is None or not replayable(*signature):
        return
    path = str(memory_file(host))
    if path not in _asked:
        _asked[path] = {}
        if not _asked_written:
            atexit.register(_write_asked)
            _asked_written.append(True)
    _asked[path][json.dumps(signature, sort_keys=True)] = signature


_asked_written: list[bool] = []


def memory_on() -> bool:
    return os.environ.get(CACHE_ENV, "").strip().lower() != "off"


def _write_asked() -> None:
    """At the end of the run: each host's facts asked, for the next run to prefetch. The
    folder is the operator's alone (0700), the file too (0600), replaced in one rename."""
    for path, asked in _asked.items():
        try:
            target = Path(path)
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            text = json.dumps(sorted(asked.values(), key=json.dumps), indent=1) + "\n"
            if own_file(target) and target.read_text() == text:
                continue
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            tmp.replace(target)
        except OSError:
            pass  # a cache: the next run is slower, not wrong


def own_file(path: Path) -> bool:
    """Whether PATH is a regular file (not a link) of this user's, readable by no one else:
    the only kind of fact list that is read."""
    try:
        return own_stat(os.lstat(path))
    except OSError:
        return False


def own_stat(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def remembered(host: Any) -> list[Wanted]:
    """The facts the last run asked of HOST (from this machine), as prefetch wants them;
    nothing from a file that is not the operator's own (see `own_file`)."""
    if not memory_on():
        return []
    try:
        fd = os.open(memory_file(host), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return []
    with os.fdopen(fd) as f:
        if not own_stat(os.fstat(f.fileno())):
            return []
        try:
            listed = json.loads(f.read())
        except (OSError, ValueError):
            return []
    wanted: list[Wanted] = []
    for item in listed if isinstance(listed, list) else []:
        try:
            name, kwargs = item
            if not replayable(name, kwargs):
                continue  # not a fact this deploy remembers: never run it
            module, _, cls_name = name.rpartition(".")
            cls = getattr(importlib.import_module(module), cls_name)
        except (ValueError, TypeError, ImportError, AttributeError):
            continue  # a fact that no longer exists: forgotten
        if isinstance(cls, type) and issubclass(cls, FactBase) and isinstance(kwargs, dict):
            wanted.append((cls, kwargs))
    return wanted


_fleet_prefetched: dict[int, list] = {}  # state -> the prefetch greenlets of the run


def prefetch_remembered() -> None:
    """Once per run, for every host of the run at once (in parallel, as pyinfra runs
    operations): prefetch the facts the last run asked of it."""
    import gevent
    from pyinfra.context import ctx_host

    state = current_host.state
    if id(state) in _fleet_prefetched:  # begun for another host: wait until it is done
        gevent.joinall(_fleet_prefetched[id(state)])
        return
    _fleet_prefetched[id(state)] = []

    def one(host: Any) -> None:
        wanted = remembered(host)
        if wanted:
            with ctx_host.use(host):
                prefetch(wanted, host)

    hosts = list(state.inventory.iter_activated_hosts()) or [current_host]
    # gevent.spawn, not pyinfra's pool: the pool is busy running deploy.py for the hosts,
    # and a spawn that waited for a slot would let them past an empty list here
    _fleet_prefetched[id(state)] = [gevent.spawn(one, host) for host in hosts]
    gevent.joinall(_fleet_prefetched[id(state)])
