# The two commands: `make run` and `make test`. Everything else is a helper for them.
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= config/postwarden.toml
# The development install receives mail for this local test domain.
DEV_ADDRESS ?= admin@postwarden.localhost
PYTHON ?= python3

export POSTWARDEN_CONFIG := $(CONFIG)

# Quickstart's output (mode 0600), read for the ready block's password and then removed (app/firstrun.py).
FIRST_RUN := $(CONFIG).first-run

.PHONY: run test install install-test lint typecheck bench

# `make run` installs Postwarden alone; the test tools (pytest, playwright, parsedmarc...) only for
# `make test`, `make lint` and `make bench`.
# PYTHONWARNINGS: the build backend's notes on editable installs are not the user's concern.
PIP := PYTHONWARNINGS=ignore $(BIN)/pip install -q --disable-pip-version-check

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e .
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed
	$(PIP) -e '.[test]'
	touch $@

install: $(BIN)/.installed

install-test: $(BIN)/.installed-test

$(CONFIG): | $(BIN)/.installed
	umask 077 && $(BIN)/postwarden --config $(CONFIG) quickstart $(DEV_ADDRESS) --dev > $(FIRST_RUN)
	cat $(FIRST_RUN)

# The ready block (app/firstrun.py) waits in the background for the processes to answer.
run: install $(CONFIG)
	$(BIN)/alembic upgrade head
	$(BIN)/python -m app.firstrun $(FIRST_RUN) & PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start

lint: install-test
	$(BIN)/ruff check app tasks tests migrations

# Checks app/ and tasks/ as configured in pyproject.toml's [tool.mypy].
typecheck: install-test
	$(BIN)/mypy

test: install-test lint typecheck
	$(BIN)/pytest

bench: install-test
	for b in dmarc_reports imap incoming_reports inbound metrics outbound reputation scale tls_reports; do $(BIN)/python tests/bench/$$b.py || exit 1; done
