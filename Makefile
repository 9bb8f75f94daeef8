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

.PHONY: install run test bench airflow lock clean ablate

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install  ## the main job: `dvc repro` of the whole pipeline on the embedded default
	dvc repro

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

test: install  ## the whole suite (CI calls exactly this)
	pytest

bench: install  ## speed and memory at default, 100k and 1M users (minutes; see bench/README.md)
	python -m bench

airflow: install  ## the Airflow UI on :8080 with this repo's DAG (SQLite metadata in .airflow/; Ctrl-C stops it)
	AIRFLOW_HOME=$(CURDIR)/.airflow AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__CORE__PARALLELISM=2 AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG=2 LEADRE_PARAMS=$(CURDIR)/params.yaml \
	airflow standalone

lock: install  ## refresh requirements.lock after changing pyproject.toml
	( head -n 2 requirements.lock; $(BIN)/pip freeze --exclude-editable ) > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) data/generated data/validated reports
