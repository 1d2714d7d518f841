# The two commands: `make demo` and `make test`. Each installs what is missing first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install system-deps up down status lint bench clean

demo: install
	$(BIN)/reco demo

test: install
	$(BIN)/pytest

install: system-deps $(STAMP)

system-deps:
	@scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

up: install
	$(BIN)/reco up

down:
	$(BIN)/reco down

status:
	$(BIN)/reco status

lint: install
	$(BIN)/ruff check .

bench: install
	for b in benchmarks/*_bench.py; do $(BIN)/python $$b || exit 1; done

clean: down
	rm -rf .reco
