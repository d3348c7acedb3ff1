# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv test test-unit test-lab lint demo demo-down lab-down clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

## Everything: lint, unit tests, then the lab tests against real lab hosts (needs a Docker engine).
test: venv lint
	$(BIN)/pytest -q tests

## The quick inner loop: no Docker needed.
test-unit: venv
	$(BIN)/pytest -q -m "not lab" tests

test-lab: venv
	$(BIN)/pytest -q -m lab tests

lint: venv
	$(BIN)/ruff check .

## A lab fleet (2 GPU hosts with 2 GPUs, 1 CPU host, 1 front door), deployed, answering a request.
demo: venv
	$(BIN)/python -m lab up --gpu-hosts 2 --gpus-per-host 2 --cpu-hosts 1 --lb-hosts 1
	$(BIN)/pyinfra -y inventory/lab.py deploy.py
	$(BIN)/python -m lab ask "Why is the sky blue?"
	@echo
	@echo "Next: .venv/bin/python -m lab status; .venv/bin/pyinfra -y inventory/lab.py deploy.py (changes nothing);"
	@echo "      .venv/bin/python -m lab cut gpu-2 (then deploy again); make lab-down when done."

demo-down lab-down: venv
	$(BIN)/python -m lab down

clean: lab-down
	rm -rf $(VENV) .lab
