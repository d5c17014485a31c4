# Two commands for a newcomer (README.md): `make run` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

LOCK   := requirements.lock
# What `make lock` resolves: every extra, for the Python and the platform of CI and the image.
LOCK_ARGS := --generate-hashes --python-version 3.11 --python-platform linux --quiet

.PHONY: run test lint snapshot bench clean chromium caddy lock audit fuzz stack stack-down soak

# Every dependency from the committed lock, each checked against its hashes; then the
# project itself, without letting pip resolve anything more.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

## Everything on this machine: embedded PostgreSQL, OpenBao, demo data, API on :8000.
run: $(STAMP)
	$(BIN)/vault-service dev $(ARGS)

## Debian's Chromium for the console's browser test (never Playwright's own download).
chromium:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

## Debian's Caddy for the stack's fault campaign (tests/stack/), as in `make stack`.
caddy:
	command -v caddy >/dev/null || (apt-get update && apt-get install -y caddy)

## Every test, against a real PostgreSQL and a real OpenBao started by the tests.
test: $(STAMP) chromium caddy
	$(BIN)/pytest -p no:cacheprovider -q $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check vault_service tests bench
	$(BIN)/ruff format --check vault_service tests bench
	$(BIN)/mypy
	$(BIN)/bandit --quiet --configfile pyproject.toml --recursive vault_service
	$(BIN)/lint-imports --no-cache
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir build/site

## Regenerate requirements.lock after a change of pyproject.toml's dependencies (needs PyPI).
## (requirements-runtime.lock: the image's, without the extras; see Dockerfile.)
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra test --extra lint $(LOCK_ARGS) \
		--output-file $(LOCK)
	$(BIN)/uv pip compile pyproject.toml $(LOCK_ARGS) --output-file requirements-runtime.lock

## Known vulnerabilities of the locked dependencies (needs the PyPI/OSV vulnerability service).
audit: $(STAMP)
	$(BIN)/pip-audit --strict --requirement $(LOCK) --require-hashes --disable-pip --progress-spinner off

## The long fuzzing campaign: many more hypothesis examples and schemathesis cases.
fuzz: $(STAMP)
	VAULT_SERVICE_FUZZ_EXAMPLES=$${VAULT_SERVICE_FUZZ_EXAMPLES:-3000} \
	VAULT_SERVICE_SCHEMATHESIS_EXAMPLES=$${VAULT_SERVICE_SCHEMATHESIS_EXAMPLES:-200} \
		$(BIN)/pytest -p no:cacheprovider -q tests/unit/test_fuzz.py tests/integration/test_schemathesis.py

## Regenerate the committed schema snapshot and OpenAPI document after a deliberate change.
snapshot: $(STAMP)
	VAULT_SERVICE_UPDATE_SNAPSHOT=1 $(BIN)/pytest -q -p no:cacheprovider \
		tests/integration/test_migrations.py::test_schema_matches_snapshot \
		tests/integration/test_openapi.py::test_openapi_document_has_not_drifted

bench: $(STAMP)
	$(BIN)/python -m bench.records $(ARGS)

clean:
	rm -rf $(VENV) .dev .stack

## The docker-compose.yml stack without containers (docs/reliability.md): state in .stack/.
stack: $(STAMP)
	$(BIN)/python -m vault_service.stack up $(ARGS)

stack-down: $(STAMP)
	$(BIN)/python -m vault_service.stack down $(ARGS)

## Mixed load on a stack of its own for MINUTES (default 30), then the checks.
soak: $(STAMP)
	$(BIN)/python -m vault_service.stack.soak --minutes $(or $(MINUTES),30) $(ARGS)
