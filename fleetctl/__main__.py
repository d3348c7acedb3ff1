"""`ollama-fleet` / `python -m ollama_fleet.fleetctl`: see fleetctl/cli.py.

pyinfra's API (the fleet view's parallel SSH) runs on gevent, which must patch the
standard library before anything imports socket or threading: so here, first, and
only when this is the program (importing fleetctl elsewhere patches nothing).
"""

# ruff: noqa: E402
from gevent import monkey

monkey.patch_all()

import sys

from ollama_fleet.fleetctl.cli import main


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
