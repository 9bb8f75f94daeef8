# The two commands a newcomer needs: `make run` (full retrain on the embedded default) and `make test`.
# Both create .venv on first use. torch goes first, alone and pinned: a torch range lets pip pull a CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1

.PHONY: install run test bench lock clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install  ## the main job: `dvc repro` of the whole pipeline on the embedded default
	dvc repro

test: install  ## the whole suite (CI calls exactly this)
	pytest

bench: install  ## speed and memory at default, 100k and 1M users (minutes; see bench/README.md)
	python -m bench

lock: install  ## refresh requirements.lock after changing pyproject.toml
	( head -n 2 requirements.lock; $(BIN)/pip freeze --exclude-editable ) > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) data/generated data/validated reports
