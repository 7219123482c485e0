# Every set-up step lives here: `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
INDEX := index_data/sample
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test lint format sample clean

install: $(STAMP)

# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build; 2.13.0 is the CPU wheel served here.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

$(INDEX)/manifest.json: index_data/sample.jsonl | $(STAMP)
	$(BIN)/newsdesk index index_data/sample.jsonl --index $(INDEX) --quiet

sample: $(INDEX)/manifest.json

run: install sample
	$(BIN)/newsdesk serve --index $(INDEX) --host 127.0.0.1 --port $(PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) $(INDEX) index_data/.sample.* .pytest_cache .mypy_cache .ruff_cache
