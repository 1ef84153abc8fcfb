# Every user-facing target bootstraps .venv from pyproject.toml first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
MYPY := $(VENV)/bin/mypy flare_protocol provisioning flare_server flare_site flare_admin \
	flare_cli flare_job flare_local

.PHONY: demo test check coverage test-soak soak fuzz bench proto proto-check lint typecheck \
	clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

# Stale stubs, lint errors, unformatted code and type errors fail the suite too;
# pytest exits non-zero (5) on no tests. The suite runs in random order (pytest-randomly:
# the seed is in pytest's header and is repeated after a failure; `pytest
# --randomly-seed=N` replays that order) and under branch coverage of every Python process
# it starts (servers, sites, CLIs: pyproject.toml [tool.coverage.run]); the total is
# printed last, per file in .coverage-data/report.txt. Coverage costs the suite about a
# fifth of its time; `.venv/bin/python -m pytest` runs it without.
COV := FLARE_COVERAGE_DIR=$(CURDIR)/.coverage-data $(VENV)/bin/coverage
test: check coverage

# Everything but the suite: stale stubs, lint, format, types.
check: $(STAMP)
	$(PY) scripts/gen_protos.py --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(MYPY)

# The suite alone, under coverage.
coverage: $(STAMP)
	rm -rf .coverage-data && mkdir -p .coverage-data
	$(COV) run -m pytest; status=$$?; \
	$(COV) combine -q && $(COV) report > .coverage-data/report.txt && \
	echo "Branch coverage, server and site processes included: $$($(COV) report --format=total) % (per file: .coverage-data/report.txt)"; \
	exit $$status

# The soak tests only (full-size floods, flapping links over many rounds; minutes), which
# `make test` and a plain pytest leave out (pyproject.toml addopts: -m 'not soak').
test-soak: $(STAMP)
	$(PY) -m pytest -m soak -p no:randomly -s

# The property-based tests (tests/*/test_fuzz_*.py, docs/security.md "Fuzzing") with many
# more examples than `make test` runs (FUZZ_EXAMPLES per property, default 1000); no
# per-test timeout, since a property may take minutes at that size. A failure prints the
# input and a @reproduce_failure line; .hypothesis/ keeps it for the next run.
FUZZ_EXAMPLES ?= 1000
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -p no:randomly \
		--timeout=0 $$(find tests -name 'test_fuzz_*.py' | sort)

bench: $(STAMP)
	$(PY) bench/run.py

# A real cluster (4 sites, 8 admin Sessions) under load with kill -9 and network cuts for
# SOAK_MINUTES (default 10), then every acknowledged job accounted for and the workspace
# checked; report in bench/results/soak-<date>.md (docs/benchmarks.md). Not part of test.
SOAK_MINUTES ?= 10
soak: $(STAMP)
	SOAK_MINUTES=$(SOAK_MINUTES) $(PY) -m bench.soak

# Regenerate the committed gRPC stubs from flare_protocol/proto/*.proto.
proto: $(STAMP)
	$(PY) scripts/gen_protos.py

# Fails when the committed stubs differ from what the .proto files generate.
proto-check: $(STAMP)
	$(PY) scripts/gen_protos.py --check

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(MYPY)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .coverage-data
