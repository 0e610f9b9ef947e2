# Two commands for a new user: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean proto openfhe-env

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first: an open range would otherwise pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fedcare demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP) typecheck
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(PY) scripts/import_graph.py --quiet

# mypy (strict) on the core layer: the files are listed in pyproject.toml [tool.mypy].
typecheck: $(STAMP)
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) benchmarks/overhead.py

# Threshold CKKS runs OpenFHE in a side interpreter: PyPI's openfhe wheels hold a CPython 3.10
# extension (Ubuntu 22.04 build), none for fedcare's 3.11. `fedcare` finds .venv-openfhe/bin/python
# in the working directory, or the interpreter named by FEDCARE_OPENFHE_PYTHON (docs/he.md).
OPENFHE_BASE ?= $(shell for p in $$(ls -d $$(pyenv root 2>/dev/null || echo $$HOME/.pyenv)/versions/3.10*/bin/python 2>/dev/null) python3.10; do \
	$$p -c '' 2>/dev/null && { command -v $$p || echo $$p; } && break; done)
openfhe-env: .venv-openfhe/.installed

.venv-openfhe/.installed:
	@test -n "$(OPENFHE_BASE)" || { echo "openfhe-env: no CPython 3.10 found (set OPENFHE_BASE)"; exit 1; }
	$(OPENFHE_BASE) -m venv .venv-openfhe
	.venv-openfhe/bin/python -m pip install -q 'openfhe==1.6.1.0.22.4' 'numpy<3'
	.venv-openfhe/bin/python -c "import openfhe"
	touch $@

# Regenerate the committed protobuf/gRPC modules from src/fedcare/transport/proto/fedcare.proto.
proto: $(STAMP)
	PYTHON=$(PY) scripts/gen_proto.sh

clean:
	rm -rf $(VENV) .venv-openfhe fedcare-out .pytest_cache
