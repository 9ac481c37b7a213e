# One entry point for people and CI. `make demo` and `make test` install what they need on first use.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(CURDIR)/node_modules/.bin:$(PATH)

# Where the demo and the real-data tests find images and weights (override on the command line or environment).
FRUITS_DATA ?= $(abspath ../shared/data/fruits360-sample)
FRUITS_WEIGHTS ?=
DEMO_OUT ?= out/demo

.PHONY: help venv java demo test lint unit synth bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required (the cluster runs 3.11): install python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

venv: $(STAMP)  ## create .venv with the pinned versions

java:
	@command -v java >/dev/null || { echo "Spark needs Java 17: install it (Debian/Ubuntu: apt-get install openjdk-17-jre-headless; macOS: brew install openjdk@17)"; exit 1; }

demo: $(STAMP) java  ## featurize + PCA the sample images into $(DEMO_OUT)
	$(PY) scripts/demo.py --output $(DEMO_OUT)

lint: $(STAMP)  ## ruff (and shellcheck on the bootstrap scripts)
	ruff check .
	ruff format --check .

unit: $(STAMP) java  ## pytest, every test
	$(PY) -m pytest -q

test: lint unit  ## everything CI runs

clean:  ## remove build outputs (keeps .venv)
	rm -rf build out cdk.out .pytest_cache
