# Quick start: `make run` (demo server) and `make test` (the whole suite, as CI runs it).
# Both create the virtualenv and install the hash-pinned dependencies themselves (pip only;
# requirements.lock, including the build backend, is written by scripts/lock).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= var/demo

.PHONY: run test lint typecheck pytest models tools bench soak nightly clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

venv: $(STAMP)

run: $(STAMP)
	@echo "Try:  curl -s -H 'Metadata: true' 'http://127.0.0.1:8080/metadata/instance?api-version=2021-02-01'"
	$(BIN)/imds-server serve --demo --data-dir $(DATA) --listen 127.0.0.1:8080 --admin-listen 127.0.0.1:8081

tools:
	@scripts/install-tools

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/mypy bench

pytest: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -p no:cacheprovider $(PYTEST_ARGS)

models: $(STAMP)
	models/check

test: $(STAMP) tools lint pytest models

bench: $(STAMP) tools
	$(BIN)/python -m bench

soak: $(STAMP)
	$(BIN)/python -m pytest -m slow -p no:cacheprovider $(PYTEST_ARGS)

nightly: $(STAMP)
	HYPOTHESIS_PROFILE=nightly $(BIN)/python -m pytest -p no:cacheprovider tests/replica $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .venv-lock var .mypy_cache .ruff_cache .pytest_cache .hypothesis
