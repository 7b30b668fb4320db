# cloudmesh-emr: `make demo` runs the whole lifecycle on the local emulator,
# `make test` runs the tests. Both install what they need into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= test,local,server
# the AWS CLI v1 from PyPI, in a venv of its own: it pins its own botocore
AWSCLI_VENV ?= .venv-awscli

.PHONY: install awscli test demo bench conformance clean

# our modules compiled ahead (only what changed), as pip compiles what it installs into
# site-packages: a command does not compile them again at each start, even where
# PYTHONDONTWRITEBYTECODE is set
install: $(VENV)/.installed
	$(BIN)/python -m compileall -q cloudmesh

$(VENV)/.installed: setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

test: install awscli
	$(BIN)/python -m pytest

demo: install
	$(BIN)/python examples/demo.py

bench: install $(AWSCLI_VENV)/bin/aws
	$(BIN)/python bench/run.py

# moto's own EMR tests and an AWS CLI lifecycle against a fresh emulator, and the long
# runs of tests/ (pytest -m conformance; `test` leaves them out, see pytest.ini)
conformance: install $(AWSCLI_VENV)/bin/aws
	AWSCLI_VENV=$(AWSCLI_VENV) $(BIN)/python conformance/run.py

$(AWSCLI_VENV)/bin/aws:
	test -x $(AWSCLI_VENV)/bin/python || $(PYTHON) -m venv $(AWSCLI_VENV)
	$(AWSCLI_VENV)/bin/python -m pip install --quiet awscli

awscli: $(AWSCLI_VENV)/bin/aws

.venv-awscli: $(AWSCLI_VENV)/bin/aws

clean:
	rm -rf $(VENV) $(AWSCLI_VENV) build *.egg-info .pytest_cache .conformance
