"""tasks/engine: the patches apply only to the pyinfra they were read against, and only
while the switch is on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ollama_fleet.tasks import engine

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("target", sorted(engine.PATCHED))
def test_pyinfras_patched_internals_are_the_ones_read(target):
    """A new pyinfra that changed a function the patches replace fails here, naming it:
    read the new one, then record its digest in engine.PATCHED."""
    assert engine.source_digest(target) == engine.PATCHED[target], target


def test_pyinfra_is_pinned_to_the_checked_minor_version():
    pyproject = (REPO / "pyproject.toml").read_text()
    major, minor = engine.CHECKED.split(".")
    assert f'"pyinfra>={engine.CHECKED},<{major}.{int(minor) + 1}"' in pyproject
    assert engine.pyinfra_version().startswith(engine.CHECKED + ".")


@pytest.mark.parametrize("value", ["off", "OFF", "0", "no"])
def test_the_switch_turns_every_patch_off(monkeypatch, value):
    monkeypatch.setenv(engine.SWITCH_ENV, value)
    assert not engine.enabled()
    assert engine.install() is False


@pytest.mark.parametrize("version, patched", [("3.10.0", True), ("3.10", True),
                                              ("3.10.7", True), ("3.11.0", False),
                                              ("3.1", False), ("4.10.0", False)])
def test_another_pyinfra_is_left_unpatched(monkeypatch, version, patched):
    monkeypatch.delenv(engine.SWITCH_ENV, raising=False)
    monkeypatch.setattr(engine, "pyinfra_version", lambda: version)
    assert engine.enabled() is patched


def test_a_changed_definition_leaves_every_patch_out(monkeypatch):
    """A pyinfra of the checked minor version whose patched function changed anyway."""
    monkeypatch.delenv(engine.SWITCH_ENV, raising=False)
    assert engine.unchanged() == []
    target = "pyinfra.api.host:Host.get_fact"
    monkeypatch.setitem(engine.PATCHED, target, "0" * 16)
    assert engine.unchanged() == [target]
    assert engine.install() is False


def test_a_definition_gone_is_named():
    with pytest.raises(LookupError, match=re.escape("pyinfra.api.host:Host.nothing_here")):
        engine.source_digest("pyinfra.api.host:Host.nothing_here")
