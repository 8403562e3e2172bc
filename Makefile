# One-command set-up. TORCH picks the PyTorch build: the pinned CPU-friendly release by default.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
PEERLEARN_DATA ?= $(abspath ../shared/data)
export PEERLEARN_DATA

.PHONY: install install-test demo test test-slow clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip

install: $(VENV)/bin/python
	$(VENV)/bin/pip install -q "$(TORCH)"
	$(VENV)/bin/pip install -q -e .

install-test: $(VENV)/bin/python
	$(VENV)/bin/pip install -q "$(TORCH)"
	$(VENV)/bin/pip install -q -e ".[test]"

demo: install
	$(VENV)/bin/peerlearn demo

test: install-test
	$(VENV)/bin/python -m pytest -q

test-slow: install-test
	$(VENV)/bin/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
