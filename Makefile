# Two commands for a newcomer (README): `make run` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint snapshot bench clean stack stack-down soak

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,test,lint]'
	touch $(STAMP)

## Everything on this machine: embedded PostgreSQL, OpenBao, demo data, API on :8000.
run: $(STAMP)
	$(BIN)/vault-service dev $(ARGS)

## Every test, against a real PostgreSQL and a real OpenBao started by the tests.
test: $(STAMP)
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
	rm -rf $(VENV) .dev .stack

## The docker-compose.yml stack without containers (README, "Reliability"): state in .stack/.
stack: $(STAMP)
	$(BIN)/python -m vault_service.stack up $(ARGS)

stack-down: $(STAMP)
	$(BIN)/python -m vault_service.stack down $(ARGS)

## Mixed load on a stack of its own for MINUTES (default 30), then the checks.
soak: $(STAMP)
	$(BIN)/python -m vault_service.stack.soak --minutes $(or $(MINUTES),30) $(ARGS)
