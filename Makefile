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

config/tls/dev-ca.pem:  # development certificates of the example channels (secure mail)
	scripts/make-dev-certs.sh

run: $(INSTALLED) config/tls/dev-ca.pem
	$(BIN)/passerelle check --config config/engine.yaml
	$(BIN)/passerelle run --config config/engine.yaml

test: $(INSTALLED) config/tls/dev-ca.pem
	scripts/install-debian-packages.sh
	$(BIN)/passerelle check --config config/engine.yaml
	$(BIN)/passerelle test --config config/engine.yaml
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

# Coverage-guided fuzzing of every parser (RUNS inputs each; see RELIABILITY.md).
RUNS ?= 1000000
FUZZ_TARGETS := mllp_framing hl7_parser hl7_ack cda_xml dicom_manifest sftp_batch channel_yaml
fuzz: $(INSTALLED)
	$(BIN)/python -m pip install -q -e '.[fuzz]'
	for t in $(FUZZ_TARGETS); do $(BIN)/python -m tests.fuzz.run $$t --runs $(RUNS) || exit 1; done

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache
