"""Run a shell command here as it runs on a host, with stand-in commands on a bare PATH."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

# What every Debian or Ubuntu host has (coreutils, grep, sed, util-linux's setsid).
BASE_TOOLS = ("cat", "cut", "tr", "sort", "tail", "head", "stat", "mkdir", "rm", "mv", "cp",
              "grep", "sed", "printf", "sleep", "timeout", "base64", "setsid", "sh")


def run_with_stubs(command: str, tmp_path: Path, stubs: dict[str, str] | None = None,
                   tools: tuple[str, ...] = BASE_TOOLS, timeout: int = 60
                   ) -> subprocess.CompletedProcess:
    """COMMAND under /bin/sh with only TOOLS (the real ones) and STUBS (name -> shell body)
    on PATH, so a host's missing or failing commands can be played."""
    bin_dir = tmp_path / "stub-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in tools:
        real = shutil.which(tool)
        if real and tool not in (stubs or {}):
            (bin_dir / tool).unlink(missing_ok=True)
            (bin_dir / tool).symlink_to(real)
    for name, body in (stubs or {}).items():
        path = bin_dir / name
        path.unlink(missing_ok=True)
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
    return subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True,
                          env={"PATH": str(bin_dir)}, timeout=timeout)
