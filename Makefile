# Every user-facing target bootstraps .venv from pyproject.toml first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench proto proto-check lint typecheck clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

# Stale stubs and lint errors fail the suite too; pytest exits non-zero (5) on no tests.
test: $(STAMP)
	$(PY) scripts/gen_protos.py --check
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/run.py

# Regenerate the committed gRPC stubs from flare_protocol/proto/*.proto.
proto: $(STAMP)
	$(PY) scripts/gen_protos.py

# Fails when the committed stubs differ from what the .proto files generate.
proto-check: $(STAMP)
	$(PY) scripts/gen_protos.py --check

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy flare_protocol provisioning flare_server flare_site flare_admin flare_cli flare_job

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache
