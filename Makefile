# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: machine have-shellcheck venv test test-unit test-lab lint versions demo demo-down lab-down clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

## This machine ready for the lab (Debian or Ubuntu): installs with apt what is missing
## (docker.io, debootstrap, dpkg-dev, gnupg, openssh-client, shellcheck, ...) and starts
## the Docker engine when none answers. Quick, and installs nothing, when all is there.
machine:
	@PYTHON=$(PYTHON) lab/setup-machine.sh

have-shellcheck:
	@command -v shellcheck >/dev/null || lab/setup-machine.sh --lint

## Everything: lint, unit tests, then the lab tests against real lab hosts (on a Docker engine),
## three labs at a time (pytest-xdist: each lab's tests in the worker that set it up, the
## longest first; tests/conftest.py), each named as it ends; the 20 slowest are listed.
test: machine venv lint
	$(BIN)/pytest -q -n 2 -m "not lab" tests
	$(BIN)/pytest -v -n 3 --dist loadgroup --no-loadscope-reorder --durations=20 -m lab tests

## The quick inner loop: no Docker needed.
test-unit: venv
	$(BIN)/pytest -q -m "not lab and not install" tests

test-lab: machine venv
	$(BIN)/pytest -v -n 3 --dist loadgroup --no-loadscope-reorder --durations=20 -m lab tests

## ruff, and shellcheck on every shell script of the templates and the lab: no Docker needed.
lint: venv have-shellcheck
	$(BIN)/ruff check .
	find templates lab -name '*.sh' -exec shellcheck {} +

## Every pinned default beside the newest upstream release the lab's table knows (stale ones: BEHIND).
versions: venv
	@$(BIN)/python -m lab.upstream_versions

## A lab fleet (2 GPU hosts with 2 GPUs, 1 CPU host, 1 front door), deployed, answering a request.
demo: machine venv
	$(BIN)/python -m lab up --gpu-hosts 2 --gpus-per-host 2 --cpu-hosts 1 --lb-hosts 1
	$(BIN)/pyinfra -y inventory/lab.py deploy.py
	$(BIN)/python -m lab ask "Why is the sky blue?"
	@echo
	@echo "(asked by name: llm.fleetlab.test, the front door, in the lab's own DNS zone)"
	@echo "Next: .venv/bin/ollama-fleet inventory/lab.py status (the fleet view);"
	@echo "      .venv/bin/pyinfra -y inventory/lab.py deploy.py (changes nothing);"
	@echo "      .venv/bin/ollama-fleet inventory/lab.py roll --data ollama_image=ollama/ollama:0.6.8 (and back);"
	@echo "      .venv/bin/python -m lab run -- curl -s http://llm.fleetlab.test/api/tags (by name);"
	@echo "      .venv/bin/python -m lab cut gpu-2 (then deploy again); make lab-down when done."

demo-down lab-down: venv
	$(BIN)/python -m lab down

clean: lab-down
	rm -rf $(VENV) .lab
