# make demo: install, start the service on its embedded default and run the example job.
# make test: install, start Redis/PostgreSQL if needed, lint (ruff, the import layers) and run
# every test.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test lint bench

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[service,dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/spartan demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

test: install lint
	bash scripts/services.sh
	$(VENV)/bin/pytest -q
