# cloudmesh-emr: `make demo` runs the whole lifecycle on the local emulator,
# `make test` runs the tests. Both install what they need into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= test,local,server

.PHONY: install test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

test: install
	$(BIN)/python -m pytest

demo: install
	$(BIN)/python examples/demo.py

bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
