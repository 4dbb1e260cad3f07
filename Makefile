# One entry point each for set-up, run, test and lint. Every target creates .venv and
# installs what it needs when missing, so a fresh clone needs nothing installed by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint soak bench bench-quick schema-doc install-service clean browser screenshots \
	ccusage postgres

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint,team]'
	touch $(STAMP)

## run: start the daemon in the foreground on the default (XDG) directories and paths.
run: $(STAMP)
	$(BIN)/jobvault run

## test: set up and run the whole test suite, then the record-building tests again with every
## session's state spilled to its scratch file from the first entry, and once more with every
## cold session read by the worker processes (spilled there too): the records must not change.
SPILL_TESTS := tests/test_claude_fixtures.py tests/test_codex.py tests/test_rebuild.py \
	tests/test_model.py tests/test_samples.py tests/test_stats.py tests/test_tracking.py \
	tests/test_fidelity.py tests/test_pricing.py tests/test_compressed.py
test: $(STAMP) browser ccusage postgres
	$(BIN)/python -m pytest
	JOBVAULT_TEST_SPILL=1 $(BIN)/python -m pytest -q $(SPILL_TESTS)
	JOBVAULT_TEST_SPILL=1 JOBVAULT_TEST_WORKERS=1 JOBVAULT_ORDER_EXAMPLES=8 $(BIN)/python -m pytest \
		-q $(SPILL_TESTS) tests/test_bad_input.py tests/test_crash.py tests/test_order.py \
		tests/test_unterminated.py

## browser: Debian's chromium for the browser tests (tests/test_browser.py, driven by Playwright
## with executable_path; Playwright's own browser download is never used). Installed with apt
## when run as root; elsewhere the tests skip and say why.
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ ! -x $(CHROMIUM) ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "test: installing Debian's chromium for the browser tests"; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				--no-install-recommends chromium fonts-dejavu-core) >/dev/null \
				|| echo "test: could not install chromium; the browser tests will skip"; \
		else \
			echo "test: $(CHROMIUM) not found (sudo apt-get install chromium); the browser tests will skip"; \
		fi; \
	fi

## postgres: the team-vault tests (and `make bench`) start their own PostgreSQL server with
## Debian's initdb/pg_ctl; install the package when it is missing and we are root (as CI is),
## without the cluster Debian would otherwise create and start. Elsewhere those tests skip,
## saying why.
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian's postgresql for the team-vault tests"; \
			mkdir -p /etc/postgresql-common; \
			[ -e /etc/postgresql-common/createcluster.conf ] || \
				echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				--no-install-recommends postgresql) >/dev/null \
				|| echo "note: could not install postgresql; the team-vault tests will skip"; \
		else \
			echo "note: no PostgreSQL server binaries (apt-get install postgresql); the team-vault tests will skip"; \
		fi; \
	fi

## lint: ruff (lint + format check) and mypy strict on the package, the tests and the benchmarks.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy --strict tests benchmarks

## install-service: run jobvault as a systemd user service (Linux) or launchd agent (macOS).
install-service: $(STAMP)
	$(BIN)/jobvault service install

## bench: the full benchmark (~7 min on 2 cores, and ~10 more for the team vault at 50 machines ×
## 100,000 jobs); prints the table, rewrites docs/benchmarks.md.
## bench-quick: the one-minute version; prints the table, writes no document.
BENCH_DIR := .bench
BENCH_STAMP := $(BENCH_DIR)/.installed
CCUSAGE := ccusage@20.0.24 @ccusage/ccusage-linux-x64@20.0.24

$(BENCH_STAMP): $(STAMP) ccusage
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	mkdir -p $(BENCH_DIR)
	touch $(BENCH_STAMP)

## ccusage: the reference for token totals, for the tests that compare with it and the bench
## (npm, into .bench/ccusage; without npm or the registry those tests skip and say why).
CCUSAGE_BIN := $(BENCH_DIR)/ccusage/node_modules/.bin/ccusage
ccusage:
	@if [ ! -e $(CCUSAGE_BIN) ]; then \
		if command -v npm >/dev/null 2>&1; then \
			npm install --silent --no-audit --no-fund --prefix $(BENCH_DIR)/ccusage $(CCUSAGE) \
				|| echo "ccusage: npm could not install it; the comparisons with it are skipped"; \
		else \
			echo "ccusage: npm not found; the comparisons with ccusage are skipped"; \
		fi; \
	fi

bench: $(STAMP) $(BENCH_STAMP) postgres
	$(BIN)/python -m benchmarks.run --work $(BENCH_DIR) --doc docs/benchmarks.md

bench-quick: $(STAMP) $(BENCH_STAMP) postgres
	$(BIN)/python -m benchmarks.run --work $(BENCH_DIR) --quick

## soak: the long reliability run (60 kill -9 cycles over 300 sessions, the model test with
## 2000 examples, a 1 GB file, a 2 GB compressed rollout, 300 histories read in any order);
## prints the soak table. Figures go in docs/reliability.md.
soak: $(STAMP)
	JOBVAULT_SOAK_CYCLES=60 JOBVAULT_SOAK_SESSIONS=300 JOBVAULT_MODEL_EXAMPLES=2000 \
	JOBVAULT_MODEL_STEPS=60 JOBVAULT_BIG_FILE_MB=1024 JOBVAULT_BIG_ROLLOUT_MB=2048 \
	JOBVAULT_ORDER_EXAMPLES=300 \
	$(BIN)/python -m pytest -p no:cacheprovider -s -q --durations=5 \
		tests/test_crash.py tests/test_model.py tests/test_faults.py::test_large_file_memory_stays_bounded \
		tests/test_faults.py::test_large_compressed_rollout_memory_stays_bounded tests/test_order.py

## screenshots: the dashboard's pictures in docs/screenshots/ (the test fixtures, light and dark).
screenshots: $(STAMP) browser
	$(BIN)/python -m tests.make_screenshots --out docs/screenshots

## schema-doc: regenerate docs/schema.md from the migrated schema.
schema-doc: $(STAMP)
	$(BIN)/python -m jobvault.store.schema_doc > docs/schema.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .bench
