"""How a failing host is reported: it fails alone, and the run says where it stopped.

pyinfra aborts the whole run when an operation raises while it executes, so a
check that finds a host broken does not raise: it yields `fail_command(message)`,
which fails that host only (the message is its error output). When a host fails,
`FailureReport` prints one line naming it and the step; the run goes on for the
other hosts and exits non-zero at the end.
"""

from __future__ import annotations

import logging
import shlex

from pyinfra.api.state import BaseStateCallback

logger = logging.getLogger("pyinfra")

# Starts the one line a failing on-host script or check says about why it failed; the
# operator commands (fleetctl.runner.failure_line) look for it in pyinfra's output.
ERROR_MARK = "store-error: "


def fail_command(message: str) -> str:
    """A command that fails the host with MESSAGE as its error output."""
    return f"echo {shlex.quote(message)} >&2; exit 1"


class FailureReport(BaseStateCallback):
    """One line per failed host: which step it stopped at and what to do next."""

    reported: set[str] = set()

    @staticmethod
    def operation_host_error(state, host, op_hash, retry_count=0, max_retries=0) -> None:
        if host.name in FailureReport.reported:
            return
        FailureReport.reported.add(host.name)
        step = ", ".join(state.get_op_meta(op_hash).names) or "an operation"
        logger.error(f"--> {host.name}: failed at step \"{step}\"; the other hosts carry on. "
                     f"Fix it, then re-run the deploy (--limit {host.name}).")


def report_failures() -> None:
    """Register the report once per run (deploy files are executed once per host).

    Unreachable hosts are reported by pyinfra itself when it connects."""
    from pyinfra import state

    if not any(isinstance(h, FailureReport) for h in state.callback_handlers):
        state.add_callback_handler(FailureReport())
