"""pyinfra settings for every run of the deploy: `pyinfra INVENTORY deploy.py` from a
checkout reads this file as ./config.py; `ollama-fleet` passes the installed copy with
`--config`. Only what is set on `pyinfra.config` counts (plain module variables are
dropped).

FAIL_PERCENT stays unset on purpose: a host that fails (or disappears) is dropped
from the run, the others go on converging, and the run exits non-zero naming it.
Set it in your own config.py (read after this one) to stop a whole fleet early instead.
"""

import runpy
from pathlib import Path

from pyinfra import config

from ollama_fleet.tasks import engine

# Seconds to wait for SSH to a host before counting it as unreachable.
config.CONNECT_TIMEOUT = 15

# A host lost mid-run noticed within a minute, facts read in one round trip, operations
# ordered without reading sources: tasks/engine/ (OLLAMA_FLEET_ENGINE=off: pyinfra alone).
engine.install()

# The operator's own ./config.py, when `ollama-fleet` runs from a folder that has one.
_own = Path.cwd() / "config.py"
if _own.is_file() and _own.resolve() != Path(__file__).resolve():
    runpy.run_path(str(_own))
