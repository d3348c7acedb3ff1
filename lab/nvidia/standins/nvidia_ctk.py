#!/usr/bin/python3
# Fleet lab stand-in for nvidia-ctk (package nvidia-container-toolkit-base).
# `runtime configure --runtime=docker` edits daemon.json the way upstream does
# (pkg/config/engine/docker: decode into a map, add runtimes.nvidia, optionally
# default-runtime and features.cdi, json.MarshalIndent with 4 spaces and sorted keys,
# file rewritten on every run, no trailing newline). `cdi generate` / `cdi list` work on
# the simulated GPUs. Every absolute path is prefixed with $FLEETLAB_ROOT (default /).
import decimal
import json
import math
import os
import sys

# fleetlab:common-begin
from fleetlab_common import (
    BAKED_TOOLKIT_VERSION,
    GoLogger,
    baked,
    host_path,
    installed_library_version,
    load_gpus,
    loaded_driver_version,
)

# fleetlab:common-end

NAME = "NVIDIA Container Toolkit CLI"


class CliError(Exception):
    """An error main() logs as ERRO and exits 1 with (like urfave/cli + logrus)."""


class GoPanic(Exception):
    """A Go runtime panic in the real binary (exit status 2)."""


def version():
    return baked(BAKED_TOOLKIT_VERSION) or "0.0.0-source"


# ---------------------------------------------------------------- Go JSON emulation

def go_number(value):
    """Format a float64 the way encoding/json does."""
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise CliError(f"unable to convert to JSON: json: unsupported value: {value}")
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    if abs(value) < 1e-6 or abs(value) >= 1e21:
        mantissa, exp = repr(value).split("e")
        sign, digits = exp[0], exp[1:]
        if sign == "-" and len(digits) == 2 and digits[0] == "0":
            digits = digits[1]  # Go cleans up e-09 to e-9
        return f"{mantissa}e{sign}{digits}"
    return format(decimal.Decimal(repr(value)).normalize(), "f")


def go_string(value):
    text = json.dumps(value, ensure_ascii=False)
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text


def go_marshal_indent(value, level=0, indent="    "):
    """encoding/json.MarshalIndent(value, "", indent) for decoded JSON values."""
    if isinstance(value, dict):
        if not value:
            return "{}"
        pad = indent * (level + 1)
        items = [f"{pad}{go_string(k)}: {go_marshal_indent(value[k], level + 1, indent)}"
                 for k in sorted(value)]
        return "{\n" + ",\n".join(items) + "\n" + indent * level + "}"
    if isinstance(value, list):
        if not value:
            return "[]"
        pad = indent * (level + 1)
        items = [pad + go_marshal_indent(v, level + 1, indent) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + indent * level + "]"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return go_number(value)
    return go_string(str(value))


def go_type(value):
    if isinstance(value, dict):
        return "map[string]interface {}"
    if isinstance(value, list):
        return "[]interface {}"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "float64"
    if isinstance(value, str):
        return "string"
    return "nil"


def _reject_constant(name):
    raise ValueError(name)  # NaN / Infinity are not JSON for Go


def go_decode_config(text):
    """json.NewDecoder(...).Decode(&map[string]interface{}) of the first JSON value."""
    stripped = text.lstrip(" \t\r\n")
    if not stripped:
        raise CliError("EOF")
    decoder = json.JSONDecoder(parse_int=float, parse_float=float,
                               parse_constant=_reject_constant)
    try:
        value, _ = decoder.raw_decode(stripped)
    except json.JSONDecodeError as exc:
        pos = exc.pos
        if pos >= len(stripped.rstrip()):
            raise CliError("unexpected EOF") from None
        ch = stripped[pos]
        context = {
            "Expecting value": "looking for beginning of value",
            "Expecting property name enclosed in double quotes":
                "looking for beginning of object key string",
            "Expecting ':' delimiter": "after object key",
            "Expecting ',' delimiter": "after object key:value pair",
        }.get(exc.msg, "in string literal" if "control character" in exc.msg
              else "looking for beginning of value")
        raise CliError(f"invalid character {go_char(ch)} {context}") from None
    except ValueError as exc:
        raise CliError(f"invalid character {go_char(str(exc)[:1])} looking for beginning "
                       "of value") from None
    if value is None:
        return None
    if not isinstance(value, dict):
        kind = {"map[string]interface {}": "object", "[]interface {}": "array",
                "float64": "number", "string": "string", "bool": "bool"}[go_type(value)]
        raise CliError(f"json: cannot unmarshal {kind} into Go value of type docker.Config")
    return value


def go_char(ch):
    if ch == "'":
        return "'\\''"
    if ch == '"':
        return "'\"'"
    return "'" + ch + "'"


# ---------------------------------------------------------------- flag parsing (urfave/cli)

def parse_flags(args, strings, bools, aliases=None):
    """Parse Go-style flags; returns (values, positional)."""
    aliases = aliases or {}
    values = dict(strings)
    values.update({b: False for b in bools})
    rest = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i + 1:])
            break
        if not arg.startswith("-") or arg == "-":
            rest.extend(args[i:])
            break
        body = arg.lstrip("-")
        name, eq, val = body.partition("=")
        name = aliases.get(name, name)
        if name in bools:
            if eq:
                if val.lower() not in ("true", "false", "1", "0", "t", "f"):
                    raise CliError(f'invalid boolean value "{val}" for -{name}: '
                                   "parse error")
                values[name] = val.lower() in ("true", "1", "t")
            else:
                values[name] = True
        elif name in strings:
            if not eq:
                i += 1
                if i >= len(args):
                    raise CliError(f"flag needs an argument: -{name}")
                val = args[i]
            values[name] = val
        else:
            raise CliError(f"flag provided but not defined: -{name}")
        i += 1
    return values, rest


# ---------------------------------------------------------------- runtime configure

def runtime_configure(args, log):
    opts, _ = parse_flags(
        args,
        strings={"runtime": "docker", "config": "", "config-mode": "", "oci-hook-path": "",
                 "nvidia-runtime-name": "nvidia", "nvidia-runtime-path": "nvidia-container-runtime",
                 "nvidia-runtime-hook-path": "/usr/bin/nvidia-container-runtime-hook",
                 "config-source": "file", "drop-in-config": "RUNTIME_SPECIFIC_DEFAULT",
                 "executable-path": ""},
        bools={"dry-run", "nvidia-set-as-default", "cdi.enabled"},
        aliases={"set-as-default": "nvidia-set-as-default", "runtime-path": "nvidia-runtime-path",
                 "cdi.enable": "cdi.enabled", "enable-cdi": "cdi.enabled"},
    )
    runtime = opts["runtime"]
    if runtime not in ("containerd", "crio", "docker"):
        raise CliError(f"unrecognized runtime '{runtime}'")
    if runtime != "docker":
        raise CliError(f"fleet lab stand-in: configuring {runtime} is not simulated "
                       "(only --runtime=docker)")
    if opts["config-mode"] not in ("", "config-file", "config"):
        raise CliError(f"fleet lab stand-in: config-mode {opts['config-mode']!r} is not "
                       "simulated")
    if opts["drop-in-config"] not in ("RUNTIME_SPECIFIC_DEFAULT", ""):
        raise CliError(f"runtime {runtime} does not support drop-in configs")
    config_path = opts["config"] or "/etc/docker/daemon.json"
    on_disk = host_path(config_path) if os.path.isabs(config_path) else config_path

    # docker.New(docker.WithPath(...)) -> loadConfig
    if not os.path.lexists(on_disk):
        log.info("Config file does not exist; using empty config")
        cfg = {}
    else:
        log.info(f"Loading config from {config_path}")
        try:
            with open(on_disk, "rb") as f:
                raw = f.read()
        except IsADirectoryError:
            raise CliError(f"unable to load config for runtime {runtime}: unable to read "
                           f"config: read {config_path}: is a directory") from None
        except OSError as exc:
            raise CliError(f"unable to load config for runtime {runtime}: unable to read "
                           f"config: open {config_path}: {exc.strerror.lower()}") from None
        try:
            cfg = go_decode_config(raw.decode("utf-8", errors="replace"))
        except CliError as exc:
            raise CliError(f"unable to load config for runtime {runtime}: {exc}") from None

    # Config.AddRuntime
    if cfg is None:
        raise GoPanic("assignment to entry in nil map")
    if "runtimes" in cfg:
        runtimes = cfg["runtimes"]
        if not isinstance(runtimes, dict):
            what = "nil" if runtimes is None else go_type(runtimes)
            raise GoPanic(f"interface conversion: interface {{}} is {what}, not "
                          "map[string]interface {}")
    else:
        runtimes = {}
    runtimes[opts["nvidia-runtime-name"]] = {"path": opts["nvidia-runtime-path"], "args": []}
    cfg["runtimes"] = runtimes
    if opts["nvidia-set-as-default"]:
        cfg["default-runtime"] = opts["nvidia-runtime-name"]
    # Config.EnableCDI: config["features"].(map[string]bool) never matches a decoded
    # map, so upstream replaces "features" with {"cdi": true} (other features are lost).
    if opts["cdi.enabled"]:
        cfg["features"] = {"cdi": True}

    output = go_marshal_indent(cfg)
    if opts["dry-run"]:
        sys.stdout.write(output + "\n")
        return 0
    parent = os.path.dirname(on_disk)
    if parent:
        os.makedirs(parent, mode=0o755, exist_ok=True)
    with open(on_disk, "w", encoding="utf-8") as f:
        f.write(output)
    log.info(f"Wrote updated config to {config_path}")
    log.info(f"It is recommended that {runtime} daemon be restarted.")
    return 0


# ---------------------------------------------------------------- cdi

def nvml_error():
    """The NVML init failure nvidia-ctk would report, or None."""
    library = installed_library_version()
    if library is None:
        return "ERROR_LIBRARY_NOT_FOUND"
    loaded = loaded_driver_version()
    if loaded is None:
        return "Driver Not Loaded"
    if loaded != library:
        return "Driver/library version mismatch"
    return None


def yaml_scalar(text):
    if text.isdigit() or text in ("true", "false", "null", "yes", "no", "on", "off", "") or \
            any(c in text for c in ":#{}[],&*!|>'\"%@`"):
        return json.dumps(text)
    return text


def cdi_spec(gpus, names, vendor, klass):
    common_nodes = ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools",
                    "/dev/nvidia-modeset"]
    devices = []
    for gpu in gpus:
        node = f"/dev/nvidia{gpu['index']}"
        for strategy in names:
            name = str(gpu["index"]) if strategy == "index" else gpu["uuid"]
            devices.append({"containerEdits": {"deviceNodes": [{"path": node}]}, "name": name})
    devices.append({"containerEdits": {"deviceNodes": [
        {"path": f"/dev/nvidia{g['index']}"} for g in gpus]}, "name": "all"})
    return {
        "cdiVersion": "0.5.0",
        "containerEdits": {
            "deviceNodes": [{"path": p} for p in common_nodes],
            "env": ["NVIDIA_VISIBLE_DEVICES=void"],
        },
        "devices": devices,
        "kind": f"{vendor}/{klass}",
    }


def to_yaml(value, indent=0):
    """sigs.k8s.io/yaml style: keys sorted, lists not indented under their key."""
    pad = " " * indent
    lines = []
    if isinstance(value, dict):
        for key in sorted(value):
            item = value[key]
            if isinstance(item, dict):
                lines.append(f"{pad}{key}:")
                lines.extend(to_yaml(item, indent + 2))
            elif isinstance(item, list):
                lines.append(f"{pad}{key}:")
                lines.extend(to_yaml(item, indent))
            else:
                lines.append(f"{pad}{key}: {yaml_scalar(str(item))}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                sub = to_yaml(item, indent + 2)
                sub[0] = pad + "- " + sub[0][indent + 2:]
                lines.extend(sub)
            else:
                lines.append(f"{pad}- {yaml_scalar(str(item))}")
    return lines


def cdi_generate(args, log):
    opts, _ = parse_flags(
        args,
        strings={"output": "", "format": "", "mode": "auto", "dev-root": "", "driver-root": "",
                 "nvidia-ctk-path": "", "vendor": "nvidia.com", "class": "gpu",
                 "device-name-strategy": ""},
        bools=set(),
        aliases={"discovery-mode": "mode", "cdi-vendor": "vendor", "cdi-class": "class"},
    )
    strategies = [s.strip() for s in (opts["device-name-strategy"] or "index,uuid").split(",")]
    for strategy in strategies:
        if strategy not in ("index", "uuid"):
            raise CliError(f"invalid device name strategy: {strategy}")
    fmt = (opts["format"] or "").lower()
    ext = os.path.splitext(opts["output"])[1].lower()
    if not fmt:
        fmt = "json" if ext == ".json" else "yaml"
    if fmt not in ("json", "yaml"):
        raise CliError(f"invalid output format: {fmt}")
    if opts["mode"] not in ("auto", "nvml"):
        raise CliError(f"fleet lab stand-in: discovery mode {opts['mode']!r} is not simulated")
    error = nvml_error()
    if error:
        raise CliError("failed to generate CDI spec: failed to create device CDI specs: "
                       f"failed to initialize NVML: {error}")
    log.info("Auto-detected mode as 'nvml'")
    gpus = load_gpus()
    spec = cdi_spec(gpus, strategies, opts["vendor"], opts["class"])
    log.info(f"Generated CDI spec with version {spec['cdiVersion']}")
    if fmt == "json":
        text = json.dumps(spec, separators=(",", ":"), sort_keys=True) + "\n"
    else:
        text = "---\n" + "\n".join(to_yaml(spec)) + "\n"
    if not opts["output"]:
        sys.stdout.write(text)
        return 0
    out = host_path(opts["output"]) if os.path.isabs(opts["output"]) else opts["output"]
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    return 0


def parse_cdi_file(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):
        data = json.loads(text)
        return data.get("kind", ""), [d.get("name", "") for d in data.get("devices", [])]
    kind, names, in_devices = "", [], False
    for line in text.splitlines():
        if line.startswith("kind:"):
            kind = line.split(":", 1)[1].strip().strip('"')
        if line and not line.startswith((" ", "-")):
            in_devices = line.startswith("devices:")
            continue
        if in_devices and (line.startswith("  name:") or line.startswith("- name:")):
            names.append(line.split(":", 1)[1].strip().strip('"'))
    return kind, names


def cdi_list(args, log):
    parse_flags(args, strings={"spec-dir": ""}, bools=set())
    found = []
    for directory in ("/etc/cdi", "/var/run/cdi"):
        full = host_path(directory)
        if not os.path.isdir(full):
            continue
        for entry in sorted(os.listdir(full)):
            if not entry.endswith((".yaml", ".yml", ".json")):
                continue
            try:
                kind, names = parse_cdi_file(os.path.join(full, entry))
            except (OSError, ValueError):
                continue
            found.extend(f"{kind}={name}" for name in names if kind and name)
    found = sorted(set(found))
    log.info(f"Found {len(found)} CDI devices")
    for name in found:
        sys.stdout.write(name + "\n")
    return 0


# ---------------------------------------------------------------- main

USAGE = f"""NAME:
   {NAME} - Tools to configure the NVIDIA Container Toolkit (fleet lab stand-in)

USAGE:
   nvidia-ctk [global options] command [command options]

COMMANDS:
   runtime  A collection of runtime-related utilities for the NVIDIA Container Toolkit
   cdi      Provide tools for interacting with Container Device Interface specifications
"""


def main(argv):
    log = GoLogger()
    try:
        opts, rest = parse_flags(argv, strings={}, bools={"debug", "quiet", "version", "help"},
                                 aliases={"d": "debug", "v": "version", "h": "help"})
    except CliError as exc:
        sys.stderr.write(f"Incorrect Usage: {exc}\n\n")
        log.error(str(exc))
        return 1
    if opts["quiet"]:
        log.level = "error"
    elif opts["debug"]:
        log.level = "debug"
    if opts["version"]:
        sys.stdout.write(f"{NAME} version {version()}\ncommit: fleetlab-standin-{version()}\n")
        return 0
    if opts["help"] or not rest:
        sys.stdout.write(USAGE)
        return 0
    commands = {
        ("runtime", "configure"): runtime_configure,
        ("cdi", "generate"): cdi_generate,
        ("cdi", "list"): cdi_list,
    }
    key = tuple(rest[:2])
    try:
        if key not in commands:
            if rest[0] in ("runtime", "cdi") and len(rest) == 1:
                sys.stdout.write(USAGE)
                return 0
            raise CliError(f"fleet lab stand-in: command {' '.join(rest[:2])!r} is not "
                           "simulated")
        return commands[key](rest[2:], log)
    except CliError as exc:
        log.error(str(exc))
        return 1
    except GoPanic as exc:
        sys.stderr.write(f"panic: {exc}\n\ngoroutine 1 [running]:\n"
                         "(fleet lab stand-in: the real nvidia-ctk panics here)\n")
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
