# One-command set-up. TORCH picks the PyTorch build: the pinned CPU-friendly release by default.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
CHROMIUM ?= /usr/bin/chromium
PEERLEARN_DATA ?= $(abspath ../shared/data)
export PEERLEARN_DATA

.PHONY: install install-test browser postgres demo test test-slow clean

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

# Headless Chromium for the test that renders the HTML report (Debian's `chromium` package). Never fails:
# without root or password-less sudo it only warns, and that test is skipped with its reason.
browser:
	@if [ -x $(CHROMIUM) ]; then \
		echo "chromium: $(CHROMIUM) is installed"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "warning: no apt-get here; install chromium yourself, or the HTML rendering test is skipped"; \
	else \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; \
		elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
		else echo "warning: installing chromium needs root or sudo; the HTML rendering test is skipped"; exit 0; fi; \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
		|| { $$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
		|| echo "warning: chromium could not be installed; the HTML rendering test is skipped"; \
	fi

# PostgreSQL's server programs for the tests of the SQL interface on a real server (Debian's `postgresql`
# package; the tests start a throw-away server themselves, as the postgres user when run as root). Never
# fails: without root or sudo it only warns, and those tests are skipped with their reason.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then \
		echo "postgresql: the server programs are installed"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "warning: no apt-get here; install PostgreSQL yourself, or the PostgreSQL tests are skipped"; \
	else \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; \
		elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
		else echo "warning: installing postgresql needs root or sudo; the PostgreSQL tests are skipped"; exit 0; fi; \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql \
		|| { $$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; } \
		|| echo "warning: postgresql could not be installed; the PostgreSQL tests are skipped"; \
	fi

test: install-test browser postgres
	$(VENV)/bin/python -m pytest -q

test-slow: install-test browser postgres
	$(VENV)/bin/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
