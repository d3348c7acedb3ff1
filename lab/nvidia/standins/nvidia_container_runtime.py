#!/usr/bin/python3
# Fleet lab stand-in for nvidia-container-runtime (package nvidia-container-toolkit-base).
# Like the real runtime it is a shim in front of runc: it logs its arguments to
# /var/log/nvidia-container-runtime.log, modifies the bundle's config.json for `create`,
# then execs runc with the same arguments. What `create` does depends on its mode
# (nvidia-container-runtime.mode in /etc/nvidia-container-runtime/config.toml, "auto" by
# default), resolved as upstream's internal/info/auto.go does on an NVML platform:
# - "auto" is "legacy" up to toolkit 1.17 and "jit-cdi" from 1.18.0;
# - legacy: adds nvidia-container-runtime-hook as an OCI prestart hook (unless one is
#   there already); the hook injects the devices behind runc's back;
# - jit-cdi / cdi: removes any nvidia-container-runtime-hook (dockerd adds one for
#   `--gpus`) and makes the container's modifications itself, before runc runs, as CDI
#   edits that runc knows about (the lab's: the same files the hook writes, recorded as
#   injected by "jit-cdi"/"cdi").
import datetime
import json
import os
import shutil
import sys

# fleetlab:common-begin
from fleetlab_common import (
    BAKED_TOOLKIT_VERSION,
    InjectError,
    baked,
    host_path,
    inject_gpus,
    runtime_mode,
)

# fleetlab:common-end

LOG_FILE = "/var/log/nvidia-container-runtime.log"
HOOK_PATH = "/usr/bin/nvidia-container-runtime-hook"
HOOK_NAMES = ("nvidia-container-runtime-hook", "nvidia-container-toolkit")
RUNC_CANDIDATES = ("docker-runc", "runc", "crun")
RUNC_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def log(entry):
    entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(), **entry}
    try:
        path = host_path(LOG_FILE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
    except OSError:
        pass


def is_bundle_flag(arg):
    return arg.startswith("-") and arg.lstrip("-") in ("b", "bundle")


def has_create_subcommand(args):
    previous_was_bundle = False
    for arg in args:
        if not previous_was_bundle and is_bundle_flag(arg):
            previous_was_bundle = True
            continue
        if not previous_was_bundle and arg == "create":
            return True
        previous_was_bundle = False
    return False


def bundle_dir(args):
    bundle = ""
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if is_bundle_flag(name):
            if eq:
                bundle = value
            elif i + 1 < len(args):
                bundle = args[i + 1]
                i += 1
            else:
                raise ValueError("bundle option requires an argument")
        i += 1
    return bundle or os.getcwd()


def _write_spec(path, spec):
    tmp = path + ".nvidia-tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(spec, f, separators=(",", ":"))
    os.chmod(tmp, os.stat(path).st_mode & 0o7777)
    os.replace(tmp, path)


def add_hook(bundle):
    path = os.path.join(bundle, "config.json")
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    hooks = spec.get("hooks") or {}
    for hook in hooks.get("prestart") or []:
        if os.path.basename(hook.get("path", "")) in HOOK_NAMES:
            return False
    hooks.setdefault("prestart", []).append(
        {"path": HOOK_PATH, "args": [os.path.basename(HOOK_PATH), "prestart"]})
    spec["hooks"] = hooks
    _write_spec(path, spec)
    return True


def resolved_mode(version):
    """The runtime mode (internal/info/auto.go): "auto" is legacy before 1.18.0 (resolveMode
    returns "legacy" on NVML platforms) and jit-cdi from 1.18.0 (defaultMode JitCDIRuntimeMode)."""
    mode = runtime_mode()
    if mode != "auto":
        return mode
    try:
        parts = tuple(int(x) for x in version.split("-")[0].split(".")[:2])
    except ValueError:
        parts = (0, 0)
    return "jit-cdi" if parts >= (1, 18) else "legacy"


def cdi_edits(bundle, container_id, mode):
    """The jit-cdi/cdi modes (modifier.NewNvidiaContainerRuntimeHookRemover, then the CDI
    modifier): drop the NVIDIA hooks, then inject the requested devices. Returns
    (hooks removed, the injection record or None)."""
    path = os.path.join(bundle, "config.json")
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    hooks = spec.get("hooks") or {}
    prestart = hooks.get("prestart") or []
    kept = [h for h in prestart if os.path.basename(h.get("path", "")) not in HOOK_NAMES]
    removed = len(prestart) - len(kept)
    if removed:
        hooks["prestart"] = kept
        spec["hooks"] = hooks
        _write_spec(path, spec)
    return removed, inject_gpus(spec, bundle, container_id, mode)


def find_runc():
    for name in RUNC_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    for directory in RUNC_DIRS:
        for name in RUNC_CANDIDATES:
            candidate = os.path.join(directory, name)
            if os.access(candidate, os.X_OK):
                return candidate
    return None


def main(argv):
    version = baked(BAKED_TOOLKIT_VERSION) or "0.0.0-source"
    entry = {"argv": argv}
    if "--version" in argv or "-v" in argv:
        sys.stdout.write(f"NVIDIA Container Runtime version {version}\n"
                         f"commit: fleetlab-standin-{version}\nspec: 1.2.0\n\n")
        sys.stdout.flush()
    elif has_create_subcommand(argv):
        mode = resolved_mode(version)
        entry["mode"] = mode
        try:
            bundle = bundle_dir(argv)
            entry["bundle"] = bundle
            if mode == "legacy":
                entry["hook_added"] = add_hook(bundle)
            elif mode in ("jit-cdi", "cdi"):
                removed, record = cdi_edits(bundle, argv[-1] if argv else "", mode)
                entry["hooks_removed"] = removed
                entry["injected"] = record is not None
            else:
                raise InjectError(f"invalid runtime mode: {mode}")
        except InjectError as exc:
            entry["error"] = str(exc)
            log(entry)
            sys.stderr.write("nvidia-container-runtime: error running create: failed to "
                             f"construct OCI spec modifier: {exc}\n")
            return 1
        except (OSError, ValueError) as exc:
            entry["error"] = str(exc)
            log(entry)
            sys.stderr.write(f"nvidia-container-runtime: error running create: "
                             f"failed to load OCI spec: {exc}\n")
            return 1
    runc = find_runc()
    entry["runtime"] = runc
    log(entry)
    if runc is None:
        sys.stderr.write("nvidia-container-runtime: error: failed to find a low-level "
                         f"runtime ({', '.join(RUNC_CANDIDATES)}) in PATH\n")
        return 1
    os.execv(runc, [os.path.basename(runc), *argv])  # noqa: S606 (runc, as upstream execs it)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
