# Driftline: `make demo` to see the loop work, `make test` to check it, `make up` for the UIs.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test unit up bench lint clean

install: $(STAMP)

# uv when it can be had (much faster), plain pip otherwise; both install the same pins. Both write
# bytecode at install (pip does by default): with PYTHONDONTWRITEBYTECODE set, as on CI machines,
# nothing else would, and every process (each Airflow task among them) would compile MLflow,
# Airflow and pandas from source again: 2x the import time.
# The install is quiet (its full output is hundreds of package lines) and long: say what is
# happening, how long it usually takes, and how long it took.
$(STAMP): pyproject.toml
	@echo "make install: one-time setup of $(VENV): Airflow, MLflow, Evidently, scikit-learn and the test tools"
	@echo "  (about 1 min where the packages are cached, a few minutes where they must be downloaded;"
	@echo "   quiet while it works, then it says how long it took)"
	@start=$$(date +%s); \
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || exit 1; \
	$(BIN)/python -m pip install -q uv || true; \
	if [ -x $(BIN)/uv ]; then $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e '.[test]'; \
	else $(BIN)/python -m pip install -q -e '.[test]'; fi || exit 1; \
	echo "make install: done in $$(( $$(date +%s) - start )) s"
	touch $(STAMP)

demo: install
	$(BIN)/driftline demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The unit tier: no live Airflow runs, browser, production stack or PostgreSQL (a few minutes).
unit: install
	$(BIN)/python -m pytest -m "not integration and not browser and not production and not postgres" $(PYTEST_ARGS)

# CELERY=1 (make up CELERY=1, or in the environment): the production stack instead of the embedded one.
up: install
	$(BIN)/driftline up $(if $(CELERY),--celery)

# Regenerates docs/benchmarks.md (P1 drift cost, P2 trigger-to-champion latency, P3 replay on real
# drifting data, read from ../shared/data, the label-free estimate, ingest memory, P4 online scoring).
# Takes a while; `make test` runs only their --smoke versions.
bench: install
	$(BIN)/python -m bench.drift_cost
	$(BIN)/python -m bench.latency
	$(BIN)/python -m bench.replay
	$(BIN)/python -m bench.cbpe
	$(BIN)/python -m bench.ingest_memory
	$(BIN)/python -m bench.serve
	$(BIN)/python -m bench.report

lint: install
	$(BIN)/ruff check ml dags plugins driftline tests bench

clean:
	rm -rf .driftline
