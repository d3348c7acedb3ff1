"""pyinfra settings for every run from this directory (pyinfra runs ./config.py before
the inventory; only what is set on `pyinfra.config` counts, plain module variables are
dropped).

FAIL_PERCENT stays unset on purpose: a host that fails (or disappears) is dropped
from the run, the others go on converging, and the run exits non-zero naming it.
Set it here (not in deploy.py, where pyinfra ignores it) to stop a whole fleet
early instead.
"""

from pyinfra import config

from tasks import connection, ordering, probe

# Seconds to wait for SSH to a host before counting it as unreachable.
config.CONNECT_TIMEOUT = 15

# A host lost mid-run (power, network) is noticed within about a minute, not when
# TCP gives up a quarter of an hour later: see tasks/connection.py.
connection.install()

# Facts the deploy prefetched in one round trip are answered without asking again
# (tasks/probe.py); every other fact is pyinfra's as always.
probe.install()

# Operations are ordered as pyinfra orders them, from the call stack's line numbers, read
# without reading every frame's source file (tasks/ordering.py).
ordering.install()
