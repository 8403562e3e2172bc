# One-command set-up. TORCH picks the PyTorch build: the pinned CPU-friendly release by default.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
CHROMIUM ?= /usr/bin/chromium
PEERLEARN_DATA ?= $(abspath ../shared/data)
export PEERLEARN_DATA

.PHONY: install install-test browser postgres mlflow-server demo test test-slow bench-gpu clean

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

# Headless Chromium for the test that renders the HTML report (Debian's `chromium` package).
browser:
	@if [ -x $(CHROMIUM) ]; then echo "chromium: $(CHROMIUM) is installed"; \
	else bash tools/apt-install.sh chromium "the HTML rendering test is skipped"; fi

# PostgreSQL's server programs for the tests of the SQL interface on a real server (Debian's `postgresql`
# package; the tests start a throw-away server themselves, as the postgres user when run as root).
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then \
		echo "postgresql: the server programs are installed"; \
	else bash tools/apt-install.sh postgresql "the PostgreSQL tests are skipped"; fi

# A real MLflow tracking server for the test of tracking.mlflow = http://...: the full mlflow package (its
# server is not in mlflow-skinny), pinned, in its own environment .venv-mlflow, so that it cannot change the
# test environment (its torch). Fails unless the package registry is unreachable (then the test skips, saying so).
mlflow-server:
	@bash tools/mlflow-server.sh $(PYTHON)

test: install-test browser postgres mlflow-server
	$(VENV)/bin/python -m pytest -q

test-slow: install-test browser postgres mlflow-server
	$(VENV)/bin/python -m pytest -q -m slow

# The GPU check (benchmarks/bench_gpu.py, under 5 minutes): bf16, channels-last, pinned memory, compile, packed
# fusion and NCCL, then loop / fused / compiled throughput and peak memory into docs/results.md. Exit code 4 and
# one line when there is no CUDA device.
bench-gpu: install
	$(VENV)/bin/python benchmarks/bench_gpu.py

clean:
	rm -rf $(VENV) .venv-mlflow .venv-mlflow.unavailable build dist src/*.egg-info .pytest_cache
