# Each target creates .venv itself. torch is pinned to the CPU build (2.13.0): an unpinned
# torch pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.leanify-installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "leanify needs Python 3.11+"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[all,test]"
	touch $@

demo: $(STAMP)
	mkdir -p out
	$(BIN)/leanify optimize minilm --task embedding-similarity \
		--data examples/data/stsb/sts-test.csv --calibration-data examples/data/stsb/sts-dev.csv \
		--out out/minilm $$(test -f out/minilm/trials.db && echo --resume)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) out test-artifacts .pytest_cache
