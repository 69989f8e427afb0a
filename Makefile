# The two commands: `make run` and `make test`. Everything else is a helper for them.
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= config/postwarden.toml
# The development install receives mail for this local test domain.
DEV_ADDRESS ?= admin@postwarden.localhost
PYTHON ?= python3

export POSTWARDEN_CONFIG := $(CONFIG)

.PHONY: run test install lint bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

$(CONFIG): | $(BIN)/.installed
	$(BIN)/postwarden --config $(CONFIG) quickstart $(DEV_ADDRESS) --dev

run: install $(CONFIG)
	$(BIN)/alembic upgrade head
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start

lint: install
	$(BIN)/ruff check app tasks tests migrations

test: install lint
	$(BIN)/pytest

bench: install
	for b in tests/bench/*.py; do $(BIN)/python $$b || exit 1; done
