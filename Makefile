# One-command entry points (see README). `make test` is what CI runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install app test test-slow lint bench e2e-deps

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

app: install
	$(PY) app.py $(ARGS)

test: install
	$(PY) -m pytest $(ARGS)

# the end-to-end tests (a real server, a browser, launcher processes): CI runs them as their own step
test-slow: install
	$(PY) -m pytest -m slow $(ARGS)

lint: install
	$(VENV)/bin/ruff check .

# issue 28's figures in one run (about 35 minutes on 2 cores): ours vs transformers natively and as without AVX-512,
# int8 vs bf16 vs fp32, several users at once, time to first audio; then the renderers
bench: install
	$(PY) -m bench.engine --repeats 3 $(ARGS)
	$(PY) -m bench.engine --repeats 3 --isa avx2 $(ARGS)
	$(PY) -m bench.dtypes
	$(PY) -m bench.batching --repeats 3
	$(PY) -m bench.first_audio
	$(PY) -m bench.render

# Chromium for the end-to-end browser test (tests/test_e2e.py skips without it) and ffmpeg, with which Gradio encodes
# the take heard while it is made (the test of it skips without). Needs root or sudo.
e2e-deps:
	@command -v chromium >/dev/null && command -v ffmpeg >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium ffmpeg; }
