# Two commands for a fresh clone: `make test` and `make demo`.
# Each creates a project-local virtual environment (.venv) with the PyPI
# dependencies the first time it runs.

# The interpreter .venv is made with (only when .venv is created): CPython 3.12, else 3.13
# (on PATH or under pyenv), else python3; `make test PYTHON=python3.11` overrides.
PYTHON ?= $(shell sh tools/find-python.sh)
VENV ?= .venv
PY := $(VENV)/bin/python
# Extra arguments of the demo driver, e.g. `make demo DEMO_ARGS=--quick`
# (see `$(PY) examples/demo.py --help`).
DEMO_ARGS ?=
DEMO_OUTPUT ?= demo_output

.PHONY: test lint format demo venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@echo "make: creating $(VENV) with $(PYTHON) ($$($(PYTHON) --version 2>&1))"
	$(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]" --config-settings editable_mode=compat
	touch $@

test: venv
	$(PY) -m pytest -q

# The formatter and linter configured in pyproject.toml (ruff; CI runs this too).
lint: venv
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

# Format the tree in place (what `lint` checks).
format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Simulated crowded visit -> local butler repo -> `pipetask run` (photometry,
# then forced photometry) -> summary and PNG figures in $(DEMO_OUTPUT)/.
# $(DEMO_OUTPUT)/repo is deleted and re-created on every run.
demo: venv
	$(PY) examples/demo.py --output $(DEMO_OUTPUT) $(DEMO_ARGS)

clean:
	rm -rf $(VENV) demo_output .pytest_cache
