"""`make versions`: every pinned default beside the newest upstream release in the lab's
table (lab/upstream_versions.py), so staleness is visible."""

from __future__ import annotations

from lab import upstream_versions
from ollama_fleet.tasks.kit.settings import Settings


def test_every_pinned_image_and_version_has_a_row():
    pinned = {name for name, f in Settings.model_fields.items()
              if name.endswith(("_image", "_version", "_branch")) and f.default is not None}
    assert pinned <= {row.knob for row in upstream_versions.TABLE}


def test_a_default_behind_its_row_says_so(monkeypatch):
    old = upstream_versions.Upstream("ollama_image", "0.33.0", "a newer release", "2026-12")
    monkeypatch.setattr(upstream_versions, "TABLE", (old,))
    [(knob, default, newest, state, _)] = upstream_versions.rows()
    assert (knob, default, newest, state) == ("ollama_image", "ollama/ollama:0.32.15",
                                              "0.33.0", "BEHIND")


def test_the_ollama_and_nginx_defaults_are_current():
    states = {row[0]: row[3] for row in upstream_versions.rows()}
    assert states["ollama_image"] == states["nginx_image"] == "current"
