"""One run at a time on a host: the run lock every changing command takes first.

`take(what)` is called from a deploy file (deploy.py, and the deploy files `ollama-fleet`
runs: pull, backup, restore) while pyinfra prepares, before any operation runs. On each
host it starts, over the run's own SSH connection, a holder that keeps an flock on
LOCK_PATH until that connection is gone (templates/lock/hold.sh): the lock lasts exactly
as long as the run, is let go when the run ends however it ends (done, failed, killed,
its machine or network lost), and a reboot clears it (/run is a tmpfs). A second run on
the same host stops there, before anything changed, naming who holds it. It is asked
like a fact (not an operation): it changes nothing the run reports or the facts read.
A host not reached over SSH (pyinfra's @local, @docker) runs without the lock, said so.

A run that is gone while the host has not noticed its connection is gone (a network cut:
sshd learns of a dead client only when it next sends) still holds the lock. When that
run was started from this machine and its process is no more, the next run from here
ends the old holder and takes the lock; a run from elsewhere is named and waited for. A
reboot (the driver step) ends the holder too: the rest of that run goes without it.

What it does not do: `ollama-fleet roll` is several pyinfra runs one after the other;
between two of them the host is free, so a plain deploy can run then (what the roll
holds out of the front door is kept on the front door, so such a deploy keeps it out).
"""

from __future__ import annotations

import getpass
import os
import re
import socket
import time

from pyinfra import host, logger, state
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS, pop_global_arguments
from pyinfra.api.exceptions import PyinfraError

from ollama_fleet.tasks.kit.scripts import script_command

# In a directory of root's alone (mode 0700, made by hold.sh under /run): /run/lock is
# world-writable, and a lock there could be planted, held or linked by any local user.
LOCK_PATH = "/run/ollama-fleet-lock/run.lock"


class HostBusy(PyinfraError):
    """Another run holds the host: pyinfra prints this and exits 1, nothing changed."""


def owner(what: str) -> str:
    """Who takes the lock, as another run will be told: user@machine, pid, what, since."""
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()}: {what} since {since}"


def _gone_from_here(owner_line: str) -> str | None:
    """The holder's pid when OWNER_LINE names a run from this machine that is no more."""
    found = re.search(r"@(\S+) pid (\d+): .* \(holder (\d+), connection \d+\)$", owner_line)
    if not found or found[1] != socket.gethostname() or int(found[2]) == os.getpid():
        return None
    try:
        os.kill(int(found[2]), 0)
    except ProcessLookupError:
        return found[3]
    except PermissionError:
        return None  # another user's live process
    return None


def held_answer(said: str) -> bool:
    """Whether SAID is hold.sh's answer for a lock another run holds: its owner line (a
    run's, or the health agent's while it heals), or that it recorded none. Anything else
    is a failure to ask (sudo refused, no shell)."""
    return said.startswith("another run") or bool(
        re.search(r" \((holder \d+, connection \d+|agent pid \d+)\)$", said))


def take(what: str) -> None:
    """Hold this host's run lock for the rest of the run; HostBusy when another run has
    it (the whole run stops before any operation, as for bad inventory data)."""
    me = owner(what)
    # as root: the lock's directory is root's alone. The inventory's own way to root
    # (_sudo, _sudo_password, _su_user, _doas, config.SUDO), as pyinfra's operations get it
    # (run_shell_command alone fills in none of the host's defaults).
    arguments, _ = pop_global_arguments(state, host, {})
    sudo = {k: v for k, v in arguments.items() if k in CONNECTOR_ARGUMENT_KEYS}
    for _ in range(2):
        ok, output = host.run_shell_command(script_command("lock/hold.sh", "take", LOCK_PATH,
                                                           me), **sudo)
        said = " ".join(output.stdout_lines).strip() or " ".join(output.stderr_lines).strip()
        if ok:
            return
        if "no SSH connection" in said:
            logger.warning(f"[{host.name}] {said}: this run goes without it")
            return
        if "the run lock" in said and ("refused" in said or "needs root" in said):
            raise HostBusy(f"{host.name}: {said}; nothing was changed")
        if not held_answer(said):  # sudo refused, the script did not run, ...
            raise HostBusy(f"{host.name}: the run lock could not be taken: "
                           f"{said or 'no output'}; nothing was changed")
        holder = _gone_from_here(said)
        if holder is None:
            break
        logger.warning(f"[{host.name}] the run lock is held by a run of this machine that "
                       f"is gone ({said}): ending its holder")
        # hold.sh ends it only when /proc shows it is this lock's holder for that connection
        host.run_shell_command(script_command("lock/hold.sh", "break", LOCK_PATH, holder),
                               **sudo)
    raise HostBusy(f"{host.name}: another run holds this host ({said}); nothing was "
                   "changed. Wait for it, or stop it: the lock goes with its connection")
