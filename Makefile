# One entry point for people and CI. `make demo` and `make test` install what they need on first use.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(CURDIR)/node_modules/.bin:$(PATH)

# Where the demo and the real-data tests find images and weights: set them in the environment.
#   FRUITS_DATA=/path/to/fruits360 (Training/ and Test/)   FRUITS_WEIGHTS=/path/to/keras-weights.h5
DEMO_OUT ?= out/demo
NOTEBOOK_OUT ?= out/notebook
DOCS_OUT ?= out/docs

.PHONY: help venv java demo notebook docs test lint unit synth rehearse jars wheelhouse bench package clean

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

demo: $(STAMP) java  ## featurize + PCA a Fruits-360 sample into out/demo
	$(PY) scripts/demo.py --output $(DEMO_OUT)

notebook: $(STAMP) java  ## run notebooks/fruits_chain.ipynb on FRUITS_DATA: executed copy and its run in out/notebook
	@test -n "$${FRUITS_DATA:-}" || { echo "make notebook: set FRUITS_DATA to a Fruits-360 folder (Training/, Test/) and FRUITS_WEIGHTS to a Keras weights file"; exit 1; }
	mkdir -p $(NOTEBOOK_OUT)
	$(PY) -m papermill --log-level WARNING notebooks/fruits_chain.ipynb $(NOTEBOOK_OUT)/fruits_chain.ipynb \
		-p OUTPUT $(NOTEBOOK_OUT)/run
	@echo "notebook: $(NOTEBOOK_OUT)/fruits_chain.ipynb (open it in Jupyter); the job's run: $(NOTEBOOK_OUT)/run/"

docs: $(STAMP)  ## docs/img/architecture.png from the synthesized stacks, and the deck as HTML in out/docs
	@command -v dot >/dev/null || { echo "the picture needs Graphviz's dot: apt-get install graphviz (brew install graphviz)"; exit 1; }
	$(PY) scripts/architecture.py docs/img/architecture.png
	@[[ -x node_modules/.bin/marp ]] || npm ci
	mkdir -p $(DOCS_OUT)/img
	cp docs/img/*.png $(DOCS_OUT)/img/
	marp docs/architecture.md -o $(DOCS_OUT)/architecture.html
	@echo "deck: $(DOCS_OUT)/architecture.html"

lint: $(STAMP)  ## ruff, shellcheck on the bootstrap scripts, and no outputs in committed notebooks
	ruff check .
	ruff format --check .
	$(PY) scripts/notebooks.py check
	@command -v shellcheck >/dev/null || { echo "shellcheck is missing: apt-get install shellcheck"; exit 1; }
	shellcheck bootstrap/*.sh scripts/*.sh .ci/run

unit: $(STAMP) java  ## every pytest test but the cloud rehearsal
	@# The autorun tests run the state machine in aws-local-stepfunctions (package.json).
	@[[ -d node_modules/aws-local-stepfunctions ]] || npm ci --no-audit --no-fund
	$(PY) -m pytest -m "not rehearsal"

jars: $(STAMP)  ## the rehearsal's YARN and Hadoop 3.4.2 jars (emr-7.13.0's line), from Maven, into a cache outside git
	scripts/fetch-jars.sh

rehearse: $(STAMP) java  ## the deployed steps as EMR runs them: YARN cluster mode, S3 with IAM (moto), no network; as root
	scripts/rehearse.sh

wheelhouse: $(STAMP)  ## build/wheelhouse: the cluster's pinned wheels, for a cluster without internet egress (-c wheelhouse=true)
	$(PY) scripts/cluster_requirements.py wheelhouse build/wheelhouse
	@echo "upload before the cluster starts: aws s3 sync build/wheelhouse/ <WheelhouseUri output of FruitsEmrStack>"

synth: $(STAMP)  ## cdk synth of every stack with the pinned CLI and cdk-nag (fails on any finding)
	scripts/synth.sh

test: lint unit synth rehearse  ## everything CI runs

package: $(STAMP)  ## build/job-bundle/: featurize_pca.py, fruits.zip (for --py-files), bootstrap, requirements
	$(PY) -c "import sys; sys.path.insert(0, 'cdk'); from pathlib import Path; \
	from fruits_infra.artifacts import build_bundle; print(*build_bundle(Path('build/job-bundle')), sep='\n')"

bench: $(STAMP) java  ## the featurization benchmark (prints a table, writes out/bench/bench.json)
	$(PY) -m benchmarks

clean:  ## remove build outputs (keeps .venv)
	rm -rf build out cdk.out .pytest_cache
