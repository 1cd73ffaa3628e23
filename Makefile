# Two commands for a newcomer: `make demo` (install, start, ingest the sample corpus, ask) and
# `make test` (install, lint, type-check, run every test). Nothing needs to be pre-installed
# but Python 3.11 and Go (the store tests run a Weaviate built from its Go module).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test install lint weaviate bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned (from PyPI that is the multi-GB CUDA build; it runs on the CPU).
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[all,dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/ragstream demo

lint: install
	$(PY) -m ruff check shared services ragstream bench tests
	$(PY) -m mypy

# The real Weaviate server the store tests run against, built from its Go module once per pinned
# tag into ~/.cache/ragstream (minutes the first time, then cached; needs Go).
weaviate: install
	$(VENV)/bin/ragstream weaviate build

test: lint weaviate
	HF_HUB_OFFLINE=1 OPENBLAS_NUM_THREADS=1 $(PY) -m pytest

clean:
	rm -rf $(VENV) .ragstream
