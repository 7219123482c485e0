# Every set-up step lives here: `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
INDEX := index_data/sample
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install browser run test lint format sample clean

install: $(STAMP)

# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build; 2.13.0 is the CPU wheel served here.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,bench,ray]'
	touch $(STAMP)

# tests/test_browser.py drives Debian's Chromium and chromedriver. Installed with apt-get when missing and apt-get can
# run (as root, or through sudo without a password); otherwise this says so and the browser test skips.
browser:
	@if [ -x /usr/bin/chromium ] && command -v chromedriver >/dev/null 2>&1; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then echo "no apt-get: tests/test_browser.py will skip"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "not root and no sudo: cannot install chromium; tests/test_browser.py will skip"; exit 0; fi; \
	echo "installing chromium and chromium-driver for tests/test_browser.py"; \
	if $$SUDO apt-get update -qq >/dev/null && $$SUDO env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium chromium-driver >/dev/null; \
	then echo "installed $$(/usr/bin/chromium --version 2>/dev/null)"; \
	else echo "could not install chromium: tests/test_browser.py will skip"; fi

$(INDEX)/manifest.json: index_data/sample.jsonl | $(STAMP)
	$(BIN)/newsdesk index index_data/sample.jsonl --index $(INDEX) --quiet

sample: $(INDEX)/manifest.json

run: install sample
	$(BIN)/newsdesk serve --index $(INDEX) --host 127.0.0.1 --port $(PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The tests run in one pytest-xdist worker per CPU this process may use (`logical`: without psutil, `auto` counts the
# same; with it, `auto` would count physical cores; TEST_WORKERS=0 runs them in this process), each test file whole
# on one worker (--dist loadfile: module-scoped fixtures, such as test_distributed's Ray instance or
# test_crash's base index, are made once). lint (mypy is most of it, ~50 s on one core) runs beside them rather than
# before, so a fresh clone's `make test` stays well under 10 minutes on 2 cores; its output follows the tests', and
# either failing fails.
TEST_WORKERS ?= logical
test: install browser
	@$(MAKE) --no-print-directory lint > $(VENV)/lint.log 2>&1 & lint=$$!; \
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --durations=20; status=$$?; \
	wait $$lint || { status=1; echo "make lint failed:"; }; cat $(VENV)/lint.log; exit $$status

clean:
	rm -rf $(VENV) $(INDEX) index_data/.sample.* .pytest_cache .mypy_cache .ruff_cache .hypothesis tests/artifacts
