# Two commands for a fresh clone: `make test` and `make demo`.
# Each creates a project-local virtual environment (.venv) with the PyPI
# dependencies the first time it runs.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test demo venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]" --config-settings editable_mode=compat
	touch $@

test: venv
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo_output .pytest_cache
