"""pyinfra engine patches, behind one switch.

Three patches make a run faster or safer than pyinfra alone does it:
- `connection`: a host lost mid-run is noticed within about a minute (paramiko's socket);
- `probe`: facts the last run asked are read in one round trip (`Host.get_fact`, and the
  five command classes' `execute` that drop them once a host changes);
- `ordering`: pyinfra's operation order without reading every frame's source file.

They replace pyinfra internals, so they are applied only to the pyinfra minor version
they were read against (CHECKED; pyproject.toml pins the same), only while the
definitions they replace are the ones read (PATCHED: checked at every start, a fraction
of a second), and only while `OLLAMA_FLEET_ENGINE` is not `off`. Without them a run is
slower, never different.
tests/unit/test_engine.py fails when pyinfra's patched functions change.
"""

from __future__ import annotations

import ast
import hashlib
import os
from importlib import metadata, util
from pathlib import Path

CHECKED = "3.10"
SWITCH_ENV = "OLLAMA_FLEET_ENGINE"

# What the patches replace or wrap: "module:qualified name" -> sha256 (16 hex digits) of
# that definition's source in pyinfra CHECKED, as tests/unit/test_engine.py reads it.
PATCHED = {
    "pyinfra.api.host:Host.get_fact": "fbbcd43b1c00aa46",
    "pyinfra.api.command:StringCommand.execute": "85c06142a4c55ceb",
    "pyinfra.api.command:FileUploadCommand.execute": "61bfea8042c123ac",
    "pyinfra.api.command:FileDownloadCommand.execute": "dd1a095970d34177",
    "pyinfra.api.command:FunctionCommand.execute": "d66a4386db586d1d",
    "pyinfra.api.command:RsyncCommand.execute": "c9dea8e62eed3072",
    "pyinfra.api.util:get_operation_order_from_stack": "af13fe995eb540e3",
}


def enabled() -> bool:
    """Whether the patches apply here: the switch is not `off` and pyinfra is CHECKED."""
    if os.environ.get(SWITCH_ENV, "").strip().lower() in ("off", "0", "no", "false"):
        return False
    return minor(pyinfra_version()) == minor(CHECKED)


def minor(version: str) -> tuple[str, ...]:
    """"3.10.2" and "3.10" -> ("3", "10")."""
    return tuple(version.split(".")[:2])


def unchanged() -> list[str]:
    """The patched definitions whose source differs from the one read (empty: none)."""
    changed = []
    for target, digest in PATCHED.items():
        try:
            if source_digest(target) != digest:
                changed.append(target)
        except (LookupError, OSError, SyntaxError):
            changed.append(target)
    return changed


def pyinfra_version() -> str:
    try:
        return metadata.version("pyinfra")
    except metadata.PackageNotFoundError:
        return "unknown"


def source_digest(target: str) -> str:
    """The digest of TARGET's definition ("module:Class.function") as pyinfra's own source
    file has it, whatever has been patched in memory since."""
    module, _, qualname = target.partition(":")
    spec = util.find_spec(module)
    if spec is None or spec.origin is None:
        raise LookupError(f"{module}: not found")
    text = Path(spec.origin).read_text()
    node: ast.AST = ast.parse(text)
    for part in qualname.split("."):
        node = next((n for n in ast.iter_child_nodes(node)
                     if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == part),
                    None)
        if node is None:
            raise LookupError(f"{target}: no longer defined")
    segment = ast.get_source_segment(text, node) or ""
    return hashlib.sha256(segment.encode()).hexdigest()[:16]


def install() -> bool:
    """Apply the three patches (once; again is a no-op) where `enabled()` and pyinfra's
    patched definitions are still the ones read; say whether."""
    if not enabled():
        return False
    changed = unchanged()
    if changed:
        from pyinfra import logger

        logger.warning(f"ollama-fleet: pyinfra {pyinfra_version()} changed "
                       f"{', '.join(changed)}: running without the engine patches")
        return False
    from ollama_fleet.tasks.engine import connection, ordering, probe

    connection.install()
    probe.install()
    ordering.install()
    return True
