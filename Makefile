# Every user-facing target bootstraps .venv from pyproject.toml first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
MYPY := $(VENV)/bin/mypy flare_protocol provisioning flare_server flare_site flare_admin \
	flare_cli flare_job flare_local

.PHONY: demo test coverage fuzz bench proto proto-check lint typecheck clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

# Stale stubs, lint errors, unformatted code and type errors fail the suite too;
# pytest exits non-zero (5) on no tests.
# The suite runs in random order (pytest-randomly: the seed is in pytest's header and is
# repeated after a failure; `pytest --randomly-seed=N` replays that order).
test: $(STAMP)
	$(PY) scripts/gen_protos.py --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(MYPY)
	$(PY) -m pytest

# Branch coverage of the suite and of every Python process it starts (servers, sites,
# CLIs: pyproject.toml [tool.coverage.run]); the total is printed last, per file in
# .coverage-data/report.txt, and the target fails when a test fails. Not part of
# `make test`: on this shared 2-core VM it makes the suite 15 to 30 % slower (3.9 to 4.4
# minutes became 5.0 in the same hour, 6.8 to 7.1 when other work loaded the box), and
# the `flare admin`-in-a-terminal test does not pass under it yet (its pty child prints
# nothing in time): a suite must not fail because it is measured.
COV := FLARE_COVERAGE_DIR=$(CURDIR)/.coverage-data $(VENV)/bin/coverage
coverage: $(STAMP)
	rm -rf .coverage-data && mkdir -p .coverage-data
	$(COV) run -m pytest; status=$$?; \
	$(COV) combine -q && $(COV) report > .coverage-data/report.txt && \
	echo "Branch coverage, server and site processes included: $$($(COV) report --format=total) % (per file: .coverage-data/report.txt)"; \
	exit $$status

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
