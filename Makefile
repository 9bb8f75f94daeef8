# The two commands a newcomer needs: `make run` (full retrain on the embedded default) and `make test`.
# Both create .venv on first use. torch goes first, alone and pinned: a torch range lets pip pull a CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1
# one MLflow parent run per `make run`: every step's run nests under it (see leadre/tracking.py)
export LEADRE_RETRAIN_ID ?= make-$(shell date -u +%Y%m%dT%H%M%S)

.PHONY: install system-packages run test bench airflow lock clean ablate

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

# The report's test drives a real headless Chromium: Debian's package, the one system package the suite needs.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-packages:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)

install: $(STAMP) system-packages

# `leadre nearline` is no DVC stage (it writes the candidate store, outside the repository), yet a run must end with
# something served: the champion's lists, or the labelled fallback when no gate has passed yet. `leadre status`
# closes with the gate's decision, the report, the MLflow run and the next command, not DVC's hints.
run: install  ## the main job: `dvc repro` of the whole pipeline on the embedded default, then the near-line refresh
	dvc repro
	leadre nearline
	@echo
	@leadre status

# the paper's feature ablation: one DVC experiment per prompt facet switched off, queued, run one at a time (each in a
# temporary copy of the repository), then one table of their headline metrics. Experiments never register or promote
# (leadre/registry/models.py registry_hold); docs/experiments.md
PROMPT_FACETS := profile long_term short_term content
ablate: install  ## the four prompt-feature ablations as DVC experiments, then one comparison table (hours at default)
	for facet in $(PROMPT_FACETS); do \
	  dvc exp run --queue -n no-$$facet -S prompts.features.$$facet=false || exit 1; \
	done
	dvc exp run --run-all --jobs 1
	dvc exp show --md --no-pager --hide-queued --drop '.*' --keep 'Experiment|State|candidate\.|lift\.|prompts\.features\.'

# One pytest worker per core (at most 4), each test file whole on one worker: the files' module fixtures (a DVC
# clone, an Airflow home) are built once, and test_dvc.py's tests keep their order. Most of the suite's time is one
# process busy on one core (real Airflow, DVC and training runs at one torch thread), so 2 workers on 2 cores took
# it from 18.4 to 10.9 min (2026-12-02). `pytest path/to/test_x.py` alone stays one process.
PYTEST_WORKERS ?= -n auto --maxprocesses 4 --dist loadfile
test: install  ## the whole suite (CI calls exactly this)
	pytest $(PYTEST_WORKERS)

bench: install  ## speed and memory at default, 100k and 1M users (minutes; see bench/README.md)
	python -m bench

# The UI listens on this machine only (Airflow's own default is every interface, 0.0.0.0): its admin password sits
# in a file and the DAG runs code. `make airflow AIRFLOW_HOST=0.0.0.0` opens it to the network on purpose.
AIRFLOW_HOST ?= 127.0.0.1
AIRFLOW_PORT ?= 8080
airflow: install  ## the Airflow UI on 127.0.0.1:8080 with this repo's DAG (SQLite metadata in .airflow/; Ctrl-C stops it)
	AIRFLOW_HOME=$(CURDIR)/.airflow AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__CORE__PARALLELISM=2 AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG=2 LEADRE_PARAMS=$(CURDIR)/params.yaml \
	AIRFLOW__API__HOST=$(AIRFLOW_HOST) AIRFLOW__API__PORT=$(AIRFLOW_PORT) \
	airflow standalone

lock: install  ## refresh requirements.lock after changing pyproject.toml
	( head -n 2 requirements.lock; $(BIN)/pip freeze --exclude-editable ) > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) data/generated data/validated reports
