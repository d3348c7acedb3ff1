#!/usr/bin/python3
# Fleet lab stand-in for nvidia-container-runtime (package nvidia-container-toolkit-base).
# Like the real runtime in its "legacy" mode it is a shim in front of runc: it logs its
# arguments to /var/log/nvidia-container-runtime.log, and for `create` it adds
# nvidia-container-runtime-hook as an OCI prestart hook to the bundle's config.json
# (unless one is there already), then execs runc with the same arguments.
import datetime
import json
import os
import shutil
import sys

# fleetlab:common-begin
from fleetlab_common import BAKED_TOOLKIT_VERSION, baked, host_path

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
    tmp = path + ".nvidia-tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(spec, f, separators=(",", ":"))
    os.chmod(tmp, os.stat(path).st_mode & 0o7777)
    os.replace(tmp, path)
    return True


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
        try:
            bundle = bundle_dir(argv)
            entry["bundle"] = bundle
            entry["hook_added"] = add_hook(bundle)
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
