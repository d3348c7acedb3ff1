"""Every pinned default beside the newest upstream release the lab knows of.

    python -m lab.upstream_versions        (make versions)

The table below is where the lab records, when someone reads upstream, the newest
release of each thing the product pins, and where that was read. A default behind its
row is stale: bump it (with the stand-in made faithful to the new release and a
CHANGELOG line), or say in the row why it stays. The lab cannot look upstream up
itself (no network here but package registries), so the table is only as new as its
`read` column.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

from ollama_fleet.tasks.kit.distributions import DISTRIBUTIONS
from ollama_fleet.tasks.kit.settings import Settings


@dataclass(frozen=True)
class Upstream:
    knob: str  # the Settings field whose default this is
    newest: str  # the newest upstream release known (a version, as the knob spells it)
    source: str  # where it was read
    read: str  # when (month)
    note: str = ""  # why the default differs, where it does on purpose


TABLE: tuple[Upstream, ...] = (
    Upstream("ollama_image", "0.32.15", "ollama/ollama tags (v0.33.0-rc2 is a release "
             "candidate)", "2026-08"),
    Upstream("nginx_image", "1.30", "nginx.org: 1.30.x stable branch (1.30.3, June 2026; "
             "1.31.x mainline)", "2026-11"),
    Upstream("nvidia_toolkit_version", "1.20.0", "NVIDIA/nvidia-container-toolkit "
             "releases", "2026-11", "1.20.0's changes are not yet read into the lab's "
             "stand-ins; 1.19.1 is the newest they follow"),
    Upstream("nvidia_driver_branch", "595", "NVIDIA CUDA repositories and Canonical's "
             "-server packages (590-server is transitional to 595)", "2026-11",
             "per distribution: 580 is the long-term branch, Debian 13's repository starts "
             "at 590; 595 is not yet read into the lab's stand-ins"),
    Upstream("nvidia_exporter_image", "4.6.0-4.8.3", "NVIDIA DCGM exporter release notes "
             "(July 2026)", "2026-11",
             "optional (off by default), and the lab has no stand-in to check a new release"),
    Upstream("app_cache_image", "8.10", "docker-library/official-images library/redis",
             "2026-11", "an app's cache beside the fleet, not the fleet itself"),
)


def _version(text: str) -> tuple[int, ...]:
    """The leading dotted number of a default or a tag: `ollama/ollama:0.32.15` -> (0, 32,
    15); `dcgm-exporter:4.4.2-4.7.1-ubuntu22.04` -> (4, 4, 2, 4, 7, 1)."""
    tag = str(text).rpartition(":")[2]
    return tuple(int(n) for n in re.findall(r"\d+", tag.split("-ubuntu")[0])) or (0,)


def rows() -> list[tuple[str, str, str, str, str]]:
    """(knob, default, newest, state, source) for every row of TABLE."""
    out = []
    for row in TABLE:
        default = Settings.model_fields[row.knob].default
        if default is None and row.knob == "nvidia_driver_branch":  # each distribution's own
            branches = sorted({d.default_branch for d in DISTRIBUTIONS.values()})
            default = "/".join(map(str, branches))
            ahead = all(b >= int(row.newest) for b in branches)
        else:
            ahead = _version(default) >= _version(row.newest)
        state = "current" if ahead else "BEHIND"
        source = f"{row.source}, read {row.read}" + (f"; {row.note}" if row.note else "")
        out.append((row.knob, str(default), row.newest, state, source))
    return out


def main() -> int:
    table = [("knob", "default", "newest upstream", "state", "source"), *rows()]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    return 0


if __name__ == "__main__":
    sys.exit(main())
