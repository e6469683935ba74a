# One-command entry points (see README). `make test` is what CI runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install app test bench

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

app: install
	$(PY) app.py $(ARGS)

test: install
	$(PY) -m pytest $(ARGS)

bench: install
	$(PY) -m bench.engine $(ARGS)
