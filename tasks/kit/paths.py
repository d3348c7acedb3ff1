"""Where the product's own files are, the same in a checkout and in an installed wheel:
everything lives inside the one package, `ollama_fleet` (in a checkout, its folder links
to the top-level deploy.py, config.py, tasks/, fleetctl/ and templates/)."""

from __future__ import annotations

from pathlib import Path

import ollama_fleet

PACKAGE = Path(ollama_fleet.__file__).parent
"""The package's folder: deploy.py, config.py, tasks/, fleetctl/, templates/."""

TEMPLATES = PACKAGE / "templates"
DEPLOYS = PACKAGE / "tasks" / "deploys"
CONFIG = PACKAGE / "config.py"

