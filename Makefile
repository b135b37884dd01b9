# The two commands: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: run test check schema docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

run: $(INSTALLED)
	$(BIN)/passerelle check --config config/engine.yaml
	$(BIN)/passerelle run --config config/engine.yaml

test: $(INSTALLED)
	scripts/install-debian-packages.sh
	$(BIN)/passerelle check --config config/engine.yaml
	$(BIN)/ruff check .
	$(BIN)/mypy engine transforms tests bench run_engine.py
	$(BIN)/python -m pytest

check: $(INSTALLED)
	$(BIN)/passerelle check --config config/engine.yaml

docs: $(INSTALLED)
	$(BIN)/passerelle docs --config config/engine.yaml

schema: $(INSTALLED)
	$(BIN)/passerelle schema --config config/engine.yaml

bench: $(INSTALLED)
	$(BIN)/python bench/mllp_ingest.py

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache
