# Two commands for a newcomer: `make demo` (install, start, ingest the sample corpus, ask) and
# `make test` (install, lint, type-check, run every test). Nothing needs to be pre-installed
# but Python 3.11 and Go (the store tests run a Weaviate built from its Go module).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test install llm lint weaviate redis70 bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned (from PyPI that is the multi-GB CUDA build; it runs on the CPU).
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[all,dev]"
	# The packaged model for the ONNX Runtime backend (the default): fp32 and int8 graphs in
	# ~/.cache/ragstream/onnx/all-MiniLM-L6-v2, exported once by the project's own command.
	HF_HUB_OFFLINE=1 $(VENV)/bin/ragstream export-onnx --int8 > /dev/null
	touch $@

install: $(VENV)/.installed

# llama-cpp-python (the generator's tests serve SmolLM2 with it), built from source once: minutes
# the first time, then pip's wheel cache. Portable flags: a -march=native build crashed (general
# protection fault in libggml-cpu) on this machine kind's CPU.
$(VENV)/.llm: $(VENV)/.installed
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF" \
	  $(PIP) install -q -c constraints.txt -e ".[llm]"
	touch $@

llm: $(VENV)/.llm

demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/ragstream demo

lint: install
	$(PY) -m ruff check shared services ragstream bench tests
	$(PY) -m mypy

# The real Weaviate server the store tests run against, built from its Go module once per pinned
# tag into ~/.cache/ragstream (minutes the first time, then cached; needs Go).
weaviate: install
	$(VENV)/bin/ragstream weaviate build

# Debian 12's Redis 7.0, for the second leg of the tests (the first runs on Valkey 9). Installed
# with apt-get when missing and we are root (as on CI); otherwise install it yourself.
REDIS70 ?= /usr/bin/redis-server
redis70:
	@$(REDIS70) --version 2>/dev/null | grep -q 'v=7\.0\.' || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; \
	  else echo "the Redis 7.0 test leg needs Debian's redis-server 7.0 at $(REDIS70)" >&2; exit 1; fi; }
	@$(REDIS70) --version | grep -q 'v=7\.0\.' || { echo "$(REDIS70) is not Redis 7.0" >&2; exit 1; }

test: lint weaviate redis70 llm
	HF_HUB_OFFLINE=1 OPENBLAS_NUM_THREADS=1 $(PY) -m pytest
	# The integration, fault, gateway and CLI suites again, on Redis 7.0 instead of Valkey.
	RAGSTREAM_REDIS_SERVER=$(REDIS70) HF_HUB_OFFLINE=1 OPENBLAS_NUM_THREADS=1 \
	  $(PY) -m pytest tests/integration tests/faults tests/gateway tests/cli

clean:
	rm -rf $(VENV) .ragstream
