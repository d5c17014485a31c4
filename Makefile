# Two commands for a newcomer (README): `make run` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint snapshot bench clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,test,lint]'
	touch $(STAMP)

## Everything on this machine: embedded PostgreSQL, OpenBao, demo data, API on :8000.
run: $(STAMP)
	$(BIN)/vault-service dev $(ARGS)

## Debian's Chromium for the console's browser test (never Playwright's own download).
chromium:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

## Every test, against a real PostgreSQL and a real OpenBao started by the tests.
test: $(STAMP) chromium
	$(BIN)/pytest -p no:cacheprovider -q $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check vault_service tests bench
	$(BIN)/ruff format --check vault_service tests bench
	$(BIN)/mypy

## Regenerate the committed schema snapshot and OpenAPI document after a deliberate change.
snapshot: $(STAMP)
	VAULT_SERVICE_UPDATE_SNAPSHOT=1 $(BIN)/pytest -q -p no:cacheprovider \
		tests/integration/test_migrations.py::test_schema_matches_snapshot \
		tests/integration/test_openapi.py::test_openapi_document_has_not_drifted

bench: $(STAMP)
	$(BIN)/python -m bench.records $(ARGS)

clean:
	rm -rf $(VENV) .dev
