# mailsync: `make demo` tries it on the embedded defaults, `make test` runs the whole suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install test demo bench bench-gmail dovecot clean down

$(STAMP): pyproject.toml
	@$(PY) -c 'import ensurepip, venv' 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv; \
	  else echo "Python's venv module is missing: run 'sudo apt-get install -y python3-venv'"; exit 1; fi; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Tests, the demo and the benchmark run a private Dovecot (Debian's dovecot-imapd) on a loopback port.
dovecot:
	@command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y dovecot-imapd; \
	  else echo "Dovecot is missing: run 'sudo apt-get install -y dovecot-imapd' (tests and demo run it on a private port)"; exit 1; fi; }

test: install dovecot
	$(BIN)/python -m pytest

demo: install dovecot
	$(BIN)/python -m devkit.demo

bench: install dovecot
	$(BIN)/python bench/initial_sync.py

# Gmail initial sync against the local Gmail API fake at Google's 250 units/s (a 20k mailbox: ~10-15 min).
bench-gmail: install
	$(BIN)/python bench/gmail_sync.py

# Stops what `make demo` / `mailsync dev up` left running: the demo's worker and Dovecot, Temporal, PostgreSQL.
down:
	@if [ -x $(BIN)/mailsync ]; then $(BIN)/mailsync dev down; \
	else echo "no $(VENV) here, so nothing was started from this checkout"; fi

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
