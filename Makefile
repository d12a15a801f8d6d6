# Two commands for a fresh clone:  `make demo`  and  `make test`.  Both create .venv and work offline.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
HERE := $(abspath .)
export FIFTYONE_DATABASE_DIR ?= $(HERE)/.fiftyone/db
export FIFTYONE_PLUGINS_DIR ?= $(HERE)/.fiftyone/plugins
export FIFTYONE_DATABASE_VALIDATION := false
export FIFTYONE_DO_NOT_TRACK := true
export HF_HUB_OFFLINE := 1
export FO_SSL_CACHE_DIR ?= $(HERE)/.cache/fo-ssl

.PHONY: venv install app-deps demo test test-all bench app lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[db,test,bench]" ruff
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP) install

# register the plugin with FiftyOne: a link to this folder inside FIFTYONE_PLUGINS_DIR
install: $(STAMP)
	mkdir -p $(FIFTYONE_PLUGINS_DIR)
	ln -sfn $(HERE) $(FIFTYONE_PLUGINS_DIR)/ssl-curation

demo: venv
	$(BIN)/python -m fo_plugin.demo $(ARGS)

# the App test drives Debian's chromium with playwright-core (tests/app); without them it is skipped
app-deps:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium >/dev/null; } || echo "chromium could not be installed: the App test will be skipped"
	@test -d tests/app/node_modules || (cd tests/app && npm ci --no-audit --no-fund --silent) \
		|| echo "playwright-core could not be installed: the App test will be skipped"

test: venv app-deps
	$(BIN)/python -m pytest -q $(ARGS)

test-all: venv app-deps
	$(BIN)/python -m pytest -q -m "slow or not slow" $(ARGS)

bench: install
	$(BIN)/python bench/run_all.py $(ARGS)

app: venv
	$(BIN)/fiftyone app launch $(or $(DATASET),ssl-curation-demo) --address 127.0.0.1 --port 5151 --remote

lint: venv
	$(BIN)/ruff check fo_plugin operators tests bench __init__.py

clean:
	rm -rf $(VENV) .fiftyone .cache
