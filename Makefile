# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# The virtual environment is keyed by the hash of the lock, so a changed lock builds a new one.
SHELL := /bin/bash
PY ?= python3
LOCK_HASH := $(shell cat requirements.txt constraints.txt | sha256sum | cut -c1-12)
VENV := .venv/$(LOCK_HASH)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8501
export MMDERM_HOME ?= $(CURDIR)/var
# pip here prints a warning for every registry folder it skips; they say nothing about our install.
PIP_QUIET := 2>&1 | { grep -v "^WARNING: Location" || true; }

.PHONY: setup run demo test lint format system-deps chromium env-check screenshots clean-home

setup: $(STAMP) system-deps

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@echo "== creating $(VENV) (torch + torchvision from the registry: ~5 GB, a few minutes the first time)"
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	set -o pipefail; $(BIN)/pip install -q --disable-pip-version-check -r requirements.txt -c constraints.txt $(PIP_QUIET)
	set -o pipefail; $(BIN)/pip install -q --disable-pip-version-check --no-deps -e . $(PIP_QUIET)
	$(MAKE) --no-print-directory env-check
	ln -sfn $(LOCK_HASH) .venv/current
	touch $(STAMP)

env-check:
	$(BIN)/pip check
	$(BIN)/python -c "import torch, torchvision, mmcore; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"

# Debian packages the tests need: chromium drives the browser test (never `playwright install`: it downloads a
# browser); poppler-utils (pdftotext, pdftoppm) reads the consult PDFs back. Skipped when both are already there.
SYSTEM_PACKAGES := chromium:chromium poppler-utils:pdftotext
system-deps:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
		command -v "$${pair#*:}" >/dev/null 2>&1 || missing="$$missing $${pair%%:*}"; done; \
	if [ -z "$$missing" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		echo "== installing Debian$$missing for the tests"; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	else echo "== no apt-get: install$$missing yourself (the browser test and the consult PDF tests need them)"; fi
chromium: system-deps

demo: $(STAMP)
	$(BIN)/python -m mmcore demo

run: setup
	$(BIN)/python -m mmcore demo
	$(BIN)/streamlit run app.py --server.port $(PORT) --server.address localhost

test: setup
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean-home:
	rm -rf var

# Screenshots for the README, taken by the browser test on a scratch copy of the demo home (after `make demo`): the
# test starts a training job, whose version must never land in your own data home.
SCREENS_HOME := $(CURDIR)/.screens-home
screenshots: setup
	rm -rf $(SCREENS_HOME) && cp -a $(MMDERM_HOME) $(SCREENS_HOME) && rm -f $(SCREENS_HOME)/index/owner.lock
	MMDERM_BROWSER_HOME=$(SCREENS_HOME) MMDERM_SCREENSHOTS=$(CURDIR)/docs/screenshots MMDERM_CONFIG=demo MMDERM_BROWSER_PHOTO=6 \
		$(BIN)/python -m pytest tests/browser -m browser -q; status=$$?; rm -rf $(SCREENS_HOME); exit $$status
