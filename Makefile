# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# torch==2.13.0 is installed first because a plain `torch` requirement would
# pull a multi-GB CUDA build; with it present, the project's `torch>=2.1` is met.
# The gdcm and codecs extras are installed too, so the tests and `make fuzz` run
# with every pixel decoder present, as users of `torchdicom[gdcm,codecs]` do (issues 11, 14).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint format fuzz bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,gdcm,codecs]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m torchdicom demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check torchdicom tests benchmarks
	$(PY) -m ruff format --check torchdicom tests benchmarks

format: $(STAMP)
	$(PY) -m ruff format torchdicom tests benchmarks
	$(PY) -m ruff check --fix torchdicom tests benchmarks

fuzz: $(STAMP)
	TORCHDICOM_FUZZ_EXAMPLES=10000 $(PY) -m pytest -q tests/fuzz -p no:cacheprovider

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
