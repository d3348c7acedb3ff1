"""Defaults for the whole fleet. Each knob is declared (type, default, meaning) in
tasks/kit/settings.py and listed in the README; set here only what your fleet changes."""

# How pyinfra reaches the servers.
ssh_user = "root"

# Models every Ollama instance should have.
ollama_models = ["tinyllama"]

# pyinfra's per-command timeout (seconds): a host that disappears mid-run fails
# within this bound instead of hanging the run. Model pulls set their own, longer one.
_timeout = 900
