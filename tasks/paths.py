"""Where the deploy's own files are: a checkout, or an installed copy."""

from __future__ import annotations

import sys
from pathlib import Path


def project_root() -> Path:
    """The directory holding deploy.py, config.py and templates/: the checkout this
    package lives in, else the copy `pip install` put under <prefix>/share/ollama-fleet."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "deploy.py").is_file():
        return checkout
    return Path(sys.prefix) / "share" / "ollama-fleet"


TEMPLATES = project_root() / "templates"
