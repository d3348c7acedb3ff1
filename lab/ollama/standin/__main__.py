"""``python3 -m standin ARGS`` (``-m lab.ollama.standin`` in a checkout): ``ollama ARGS``."""

import sys

from .cli import main

sys.exit(main())
