"""pyinfra's operation order, read from the call stack without reading source files.

In CLI mode pyinfra orders every operation by the line numbers of its call stack from
the deploy file down (pyinfra/api/util.py `get_operation_order_from_stack`, pyinfra 3).
It gets them with `inspect.stack()`, which also looks up each frame's module and reads
lines of its source file: on a no-op run of eight hosts that was about a fifth of the
controller's CPU, spent on text nobody reads. `order()` walks the frames themselves and
returns the same numbers (a frame's file is its code's file, as `inspect.getframeinfo`
gives it for a file that exists); tests/unit/test_ordering.py compares the two.

`install()` is called from config.py, before the deploy file runs. Where pyinfra no
longer has the function (another major version), nothing is replaced.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import pyinfra
from pyinfra.api import util

_OPERATION = "pyinfra.api.operation"
_NAME = "get_operation_order_from_stack"


def order(state: Any, _skip: int = 1) -> list[int]:
    """The line numbers that order the operation being added, as pyinfra's own function
    returns them when called from where this is called (SKIP frames up: the caller)."""
    frames = []
    frame = sys._getframe(_skip)
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()

    # from the first frame of the deploy file; none when it is not on the stack (pyinfra's
    # loop then stops at its own frame, which it skips)
    first = 0
    if state.current_deploy_filename:
        files = [f.f_code.co_filename for f in frames]
        first = files.index(state.current_deploy_filename) \
            if state.current_deploy_filename in files else len(frames)
    numbers = [state.current_op_file_number] if pyinfra.is_cli else []
    numbers += [f.f_lineno for f in frames[first:]
                if not f.f_code.co_filename.startswith(util.PYINFRA_INSTALL_DIR)]
    return numbers


def install() -> None:
    """Make pyinfra's operations take their order from `order`."""
    module = importlib.import_module(_OPERATION)
    if getattr(module, _NAME, None) is None or getattr(module, _NAME) is order:
        return
    setattr(module, _NAME, order)
