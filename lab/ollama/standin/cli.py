"""The CLI client (cmd/cmd.go): ``ollama list``, ``ps``, ``pull``, ``rm``, ``cp``,
``show``, ``stop``, ``run``, ``--version``, talking to the server on $OLLAMA_HOST."""

from __future__ import annotations

import http.client
import json
import ssl
import sys
import time

from .envconfig import lab_version, parse_ollama_host
from .goformat import go_json, human_bytes, human_time, parse_rfc3339
from .registry import go_net_error
from .releases import is_current
from .server import serve

CONNECT_ERROR = "could not connect to ollama app, is it running?"


class CLIError(Exception):
    pass


class StatusError(CLIError):
    """api.StatusError."""

    def __init__(self, code: int, status: str, message: str):
        if status and message:
            text = f"{status}: {message}"
        elif status:
            text = status
        elif message:
            text = message
        else:
            text = "something went wrong, please see the ollama server logs for details"
        super().__init__(text)
        self.code = code


class Client:
    def __init__(self):
        self.scheme, host, self.port = parse_ollama_host()
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        self.host = host

    def base(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{h}:{self.port}"

    def _conn(self, timeout=None):
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, int(self.port), timeout=timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self.host, int(self.port), timeout=timeout)

    def _open(self, method: str, path: str, body=None, timeout=None):
        conn = self._conn(timeout)
        data = go_json(body) if body is not None else None
        headers = {"User-Agent": f"ollama/{lab_version()} (amd64 linux) Go/go1.24.0",
                   "Accept": "application/x-ndjson" if method == "POST" else "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            verb = method.capitalize() if method != "DELETE" else "DELETE"
            raise CLIError(go_net_error(verb, self.base() + path, e)) from None

    def heartbeat(self) -> None:
        conn = self._conn(timeout=30)
        try:
            conn.request("HEAD", "/")
            resp = conn.getresponse()
            resp.read()
        except ConnectionRefusedError:
            raise CLIError(CONNECT_ERROR) from None
        except (OSError, http.client.HTTPException) as e:
            raise CLIError(go_net_error("Head", self.base() + "/", e)) from None
        finally:
            conn.close()
        if resp.status >= 400:
            raise StatusError(resp.status, "", "")

    def do(self, method: str, path: str, body=None):
        conn, resp = self._open(method, path, body)
        try:
            data = resp.read()
        finally:
            conn.close()
        if resp.status >= 400:
            try:
                msg = json.loads(data).get("error", "")
            except (ValueError, AttributeError):
                msg = data.decode("utf-8", "replace")
            raise StatusError(resp.status, "", msg)
        return json.loads(data) if data.strip() else None

    def stream(self, method: str, path: str, body):
        conn, resp = self._open(method, path, body)
        try:
            while True:
                line = resp.readline()
                if not line:
                    break
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise CLIError(f"unmarshal: {e}") from None
                if resp.status >= 400:
                    raise StatusError(resp.status, f"{resp.status} {resp.reason}",
                                      obj.get("error", "") if isinstance(obj, dict) else "")
                if isinstance(obj, dict) and obj.get("error"):
                    raise CLIError(obj["error"])
                yield obj
        finally:
            conn.close()


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers] + rows) for i in range(len(headers))]
    lines = []
    for r in [headers] + rows:
        lines.append("".join(c.ljust(w) + "    " for c, w in zip(r, widths, strict=True)))
    return "\n".join(lines) + "\n"


def cmd_list(args: list[str]) -> int:
    c = Client()
    c.heartbeat()
    models = (c.do("GET", "/api/tags") or {}).get("models") or []
    rows = []
    for m in models:
        name = m.get("name", "")
        if args and not name.lower().startswith(args[0].lower()):
            continue
        rows.append([name, (m.get("digest") or "")[:12], human_bytes(int(m.get("size") or 0)),
                     human_time(parse_rfc3339(m.get("modified_at", "")), "Never")])
    sys.stdout.write(_table(["NAME", "ID", "SIZE", "MODIFIED"], rows))
    return 0


def cmd_ps(args: list[str]) -> int:
    c = Client()
    c.heartbeat()
    models = (c.do("GET", "/api/ps") or {}).get("models") or []
    current = is_current(lab_version())
    rows = []
    for m in models:
        name = m.get("name", "")
        if args and not name.startswith(args[0]):
            continue
        size, vram = int(m.get("size") or 0), int(m.get("size_vram") or 0)
        if vram == 0:
            proc = "100% CPU"
        elif vram == size:
            proc = "100% GPU"
        elif vram > size or size == 0:
            proc = "Unknown"
        else:
            cpu = round((size - vram) / size * 100)
            proc = f"{cpu}%/{100 - cpu}% CPU/GPU"
        exp = parse_rfc3339(m.get("expires_at", ""))
        until = "Stopping..." if exp is not None and exp < time.time() else human_time(exp, "Never")
        row = [name, (m.get("digest") or "")[:12], human_bytes(size), proc, until]
        if current:  # v0.32.15 cmd.go ListRunningHandler: a CONTEXT column
            row.insert(4, str(int(m.get("context_length") or 0)))
        rows.append(row)
    header = ["NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"]
    if current:
        header.insert(4, "CONTEXT")
    sys.stdout.write(_table(header, rows))
    return 0


def _pull(c: Client, name: str, insecure: bool) -> None:
    status = ""
    shown: set[str] = set()
    err = sys.stderr
    for resp in c.stream("POST", "/api/pull", {"name": name, "insecure": insecure}):
        digest = resp.get("digest")
        if digest:
            total, done = int(resp.get("total") or 0), int(resp.get("completed") or 0)
            if total and done >= total and digest not in shown:
                shown.add(digest)
                bar = "\u2595" + "\u2588" * 16 + "\u258f"
                err.write(f"pulling {digest[7:19]}: 100% {bar} {human_bytes(total)}\n")
                err.flush()
        elif resp.get("status") and resp["status"] != status:
            status = resp["status"]
            err.write(status + "\n")
            err.flush()


def _flags(args: list[str], known: dict[str, bool]) -> tuple[list[str], dict[str, str | bool]]:
    """Split cobra-style flags; known maps flag name -> takes a value."""
    pos: list[str] = []
    vals: dict[str, str | bool] = {}
    it = iter(range(len(args)))
    for i in it:
        a = args[i]
        if a.startswith("--") and len(a) > 2:
            key, eq, val = a[2:].partition("=")
            if key not in known:
                raise CLIError(f"unknown flag: --{key}")
            if known[key]:
                if not eq:
                    try:
                        val = args[next(it)]
                    except StopIteration:
                        raise CLIError(f"flag needs an argument: --{key}") from None
                vals[key] = val
            else:
                vals[key] = val.lower() not in ("false", "0") if eq else True
        else:
            pos.append(a)
    return pos, vals


def _nargs(args: list[str], exact: int | None = None, minimum: int | None = None) -> None:
    if exact is not None and len(args) != exact:
        raise CLIError(f"accepts {exact} arg(s), received {len(args)}")
    if minimum is not None and len(args) < minimum:
        raise CLIError(f"requires at least {minimum} arg(s), only received {len(args)}")


def cmd_pull(args: list[str]) -> int:
    pos, flags = _flags(args, {"insecure": False})
    _nargs(pos, exact=1)
    c = Client()
    c.heartbeat()
    _pull(c, pos[0], bool(flags.get("insecure")))
    return 0


def _unload(c: Client, model: str) -> None:
    for _ in c.stream("POST", "/api/generate", {"model": model, "keep_alive": 0}):
        pass


def cmd_rm(args: list[str]) -> int:
    _nargs(args, minimum=1)
    c = Client()
    c.heartbeat()
    try:
        _unload(c, args[0])
    except CLIError as e:
        if "not found" not in str(e):
            raise CLIError(f'unable to stop existing running model "{args[0]}": {e}') from None
    for name in args:
        c.do("DELETE", "/api/delete", {"name": name})
        sys.stdout.write(f"deleted '{name}'\n")
    return 0


def cmd_cp(args: list[str]) -> int:
    _nargs(args, exact=2)
    c = Client()
    c.heartbeat()
    c.do("POST", "/api/copy", {"source": args[0], "destination": args[1]})
    sys.stdout.write(f"copied '{args[0]}' to '{args[1]}'\n")
    return 0


def cmd_stop(args: list[str]) -> int:
    _nargs(args, exact=1)
    c = Client()
    c.heartbeat()
    try:
        _unload(c, args[0])
    except CLIError as e:
        if "not found" in str(e):
            raise CLIError(f'couldn\'t find model "{args[0]}" to stop') from None
        raise
    return 0


def cmd_show(args: list[str]) -> int:
    pos, flags = _flags(args, {"modelfile": False, "template": False, "parameters": False,
                               "license": False, "system": False, "verbose": False})
    _nargs(pos, exact=1)
    c = Client()
    c.heartbeat()
    info = c.do("POST", "/api/show", {"name": pos[0]}) or {}
    for key in ("modelfile", "template", "parameters", "license", "system"):
        if flags.get(key):
            sys.stdout.write((info.get(key) or "") + "\n")
            return 0
    d = info.get("details") or {}
    mi = info.get("model_info") or {}
    arch = d.get("family", "")
    rows = [("architecture", arch), ("parameters", d.get("parameter_size", "")),
            ("context length", str(mi.get(f"{arch}.context_length", ""))),
            ("embedding length", str(mi.get(f"{arch}.embedding_length", ""))),
            ("quantization", d.get("quantization_level", ""))]
    out = ["  Model"] + [f"    {k:<20}{v}" for k, v in rows] + [""]
    out += ["  Capabilities"] + [f"    {x}" for x in info.get("capabilities") or []] + [""]
    if info.get("parameters"):
        out += ["  Parameters"] + [f"    {line}" for line in info["parameters"].splitlines()]
        out += [""]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def _generate_print(c: Client, model: str, prompt: str, flags: dict) -> None:
    body: dict = {"model": model, "prompt": prompt}
    if flags.get("keepalive"):
        body["keep_alive"] = flags["keepalive"]
    if flags.get("format"):
        body["format"] = flags["format"]
    for resp in c.stream("POST", "/api/generate", body):
        sys.stdout.write(resp.get("response", ""))
        sys.stdout.flush()
    sys.stdout.write("\n\n" if sys.stdout.isatty() else "\n")


def cmd_run(args: list[str]) -> int:
    pos, flags = _flags(args, {"insecure": False, "keepalive": True, "format": True,
                               "verbose": False, "nowordwrap": False, "think": False,
                               "hidethinking": False})
    _nargs(pos, minimum=1)
    c = Client()
    c.heartbeat()
    model = pos[0]
    try:
        c.do("POST", "/api/show", {"name": model})
    except StatusError as e:
        if e.code != 404:
            raise
        _pull(c, model, bool(flags.get("insecure")))
        c.do("POST", "/api/show", {"name": model})
    prompts = pos[1:]
    interactive = not prompts
    if not sys.stdin.isatty():
        prompts = [sys.stdin.read()] + prompts
        interactive = False
    if not interactive:
        _generate_print(c, model, " ".join(prompts), flags)
        return 0
    for _ in c.stream("POST", "/api/generate", {"model": model}):
        pass
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            return 0
        if line.strip() in ("/bye", "/exit"):
            return 0
        if line.strip():
            _generate_print(c, model, line, flags)


def cmd_version(args: list[str]) -> int:
    version = lab_version()
    c = Client()
    server = ""
    try:
        server = (c.do("GET", "/api/version") or {}).get("version", "")
    except CLIError:
        sys.stdout.write("Warning: could not connect to a running Ollama instance\n")
    if server:
        sys.stdout.write(f"ollama version is {server}\n")
    if server != version:
        sys.stdout.write(f"Warning: client version is {version}\n")
    return 0


USAGE = """Large language model runner

Usage:
  ollama [flags]
  ollama [command]

Available Commands:
  serve       Start ollama
  create      Create a model from a Modelfile
  show        Show information for a model
  run         Run a model
  stop        Stop a running model
  pull        Pull a model from a registry
  push        Push a model to a registry
  list        List models
  ps          List running models
  cp          Copy a model
  rm          Remove a model
  help        Help about any command

Flags:
  -h, --help      help for ollama
  -v, --version   Show version information

Use "ollama [command] --help" for more information about a command.
"""


def cmd_unsupported(args: list[str]) -> int:
    raise CLIError("lab: this command is not implemented by the lab stand-in")


COMMANDS = {
    "serve": lambda a: serve(), "start": lambda a: serve(),
    "list": cmd_list, "ls": cmd_list, "ps": cmd_ps, "pull": cmd_pull,
    "rm": cmd_rm, "cp": cmd_cp, "show": cmd_show, "stop": cmd_stop, "run": cmd_run,
    "push": cmd_unsupported, "create": cmd_unsupported,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0
    if argv[0] in ("-v", "--version"):
        return cmd_version(argv[1:])
    cmd = COMMANDS.get(argv[0])
    if cmd is None:
        sys.stderr.write(f'Error: unknown command "{argv[0]}" for "ollama"\n')
        return 1
    if "-h" in argv[1:] or "--help" in argv[1:]:
        sys.stdout.write(USAGE)
        return 0
    try:
        return cmd(argv[1:])
    except CLIError as e:
        sys.stderr.write(f"Error: {e}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
