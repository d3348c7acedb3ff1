#!/usr/bin/env python3
"""The lab stand-in's ``ollama`` executable: runs ``standin.cli.main`` (server and CLI).

The stand-in itself is the package ``standin`` (lab/ollama/standin). In a checkout it
sits beside this file; in the lab's ``ollama/ollama`` image this file is
``/usr/bin/ollama`` and the package is ``/usr/lib/ollama/standin``.
"""

import os
import sys

LIB_DIR = "/usr/lib/ollama"  # where the image carries the package


def _main() -> int:
    here = os.path.dirname(os.path.realpath(__file__))
    sys.path.insert(0, here if os.path.isdir(os.path.join(here, "standin")) else LIB_DIR)
    from standin.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(_main())
