"""pyinfra settings for every run from this directory (pyinfra reads ./config.py).

FAIL_PERCENT stays unset on purpose: a host that fails (or disappears) is dropped
from the run, the others go on converging, and the run exits non-zero naming it.
Set it here (not in deploy.py, where pyinfra ignores it) to stop a whole fleet
early instead.
"""

# Seconds to wait for SSH to a host before counting it as unreachable.
CONNECT_TIMEOUT = 15

