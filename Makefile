# Driftline: `make demo` to see the loop work, `make test` to check it, `make up` for the UIs.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test up bench lint clean

install: $(STAMP)

# uv when it can be had (much faster), plain pip otherwise; both install the same pins.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv || true
	if [ -x $(BIN)/uv ]; then $(BIN)/uv pip install -q --python $(BIN)/python -e '.[test]'; \
	else $(BIN)/python -m pip install -q -e '.[test]'; fi
	touch $(STAMP)

demo: install
	$(BIN)/driftline demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

up: install
	$(BIN)/driftline up

lint: install
	$(BIN)/ruff check ml dags plugins driftline tests

clean:
	rm -rf .driftline
