# Two entry points: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned: a bare `torch` requirement could pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
MODEL ?= rtmo-s-coco

.PHONY: install demo test lint bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,torch]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m rtmo demo --model $(MODEL) --output outputs/demo

test: install
	$(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check rtmo tests bench

bench: install
	$(PY) bench/bench_infer.py

clean:
	rm -rf $(VENV) outputs
