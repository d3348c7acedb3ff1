"""tasks.engine.ordering: the operation order pyinfra would compute, without reading sources."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pyinfra
import pytest

from ollama_fleet.tasks.engine import ordering

OPERATION = importlib.import_module("pyinfra.api.operation")
PYINFRAS = OPERATION.get_operation_order_from_stack  # before any install()

DEPLOY = """\
def inner():
    return both(state)


def outer():
    x = 1
    return inner()


result = outer()
"""


def both(state):
    """Ours and pyinfra's, asked from the same frame (as solve_operation_consistency does)."""
    return ordering.order(state), PYINFRAS(state)


@pytest.mark.parametrize("cli", [True, False])
@pytest.mark.parametrize("deploy_named", ["here", "elsewhere", None])
def test_the_order_is_pyinfras(tmp_path, monkeypatch, cli, deploy_named):
    deploy = tmp_path / "deploy.py"
    deploy.write_text(DEPLOY)
    monkeypatch.setattr(pyinfra, "is_cli", cli)
    named = {"here": str(deploy), "elsewhere": str(tmp_path / "other.py"), None: None}
    state = SimpleNamespace(current_deploy_filename=named[deploy_named],
                            current_op_file_number=3)
    scope = {"both": both, "state": state}
    exec(compile(DEPLOY, str(deploy), "exec"), scope)  # noqa: S102 as pyinfra runs deploy.py
    ours, theirs = scope["result"]
    assert ours == theirs
    if deploy_named == "here":  # from the deploy file down: outer() called, inner() called, both()
        expected = ([3] if cli else []) + [10, 7, 2]
        assert ours[:len(expected)] == expected


def test_install_makes_pyinfra_use_it(monkeypatch):
    monkeypatch.setattr(OPERATION, "get_operation_order_from_stack", PYINFRAS)
    ordering.install()
    assert OPERATION.get_operation_order_from_stack is ordering.order
    ordering.install()  # twice: still ours
    assert OPERATION.get_operation_order_from_stack is ordering.order
