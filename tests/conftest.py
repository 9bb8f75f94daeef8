"""Shared fixtures: a tiny generated world (made once per session) and per-test workspaces with their own params."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from leadre.config import Params, load_params
from leadre.data.generate import run_generate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri(monkeypatch):
    """MLflow exports the last tracking URI set in this process to the environment; child processes a test starts
    (dvc, airflow, the CLI) must resolve their own params' store, as they would from a user's shell."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def file_digests(folder: Path) -> dict[str, str]:
    """Every file under `folder` by relative path: what DVC hashes a directory output from. A failing comparison
    names the files that differ, not just the folder."""
    return {str(path.relative_to(folder)): hashlib.md5(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def write_params(root: Path, overrides: dict | None = None) -> Params:
    """A params.yaml in `root`, from the repository's, at the tiny scale; paths resolve inside `root`."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["world"]["scale"] = "tiny"
    raw["validation"]["data_docs"] = False
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return load_params(root / "params.yaml")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """The tiny world, generated once; tests copy it rather than change it."""
    params = write_params(tmp_path_factory.mktemp("tiny_world"))
    run_generate(params)
    return params.path(params.data.generated_dir)


@pytest.fixture(scope="session")
def validated(tmp_path_factory, tiny_world) -> Path:
    """data/validated of the tiny world, validated once per session; tests copy it rather than change it."""
    from leadre.data.validate import run_validate

    params = write_params(tmp_path_factory.mktemp("validated_world"))
    shutil.copytree(tiny_world, params.path(params.data.generated_dir))
    run_validate(params)
    return params.path(params.data.validated_dir)


@pytest.fixture
def workspace(tmp_path, tiny_world) -> Params:
    """Params rooted in tmp_path, with the tiny world already in data.generated_dir."""
    params = write_params(tmp_path)
    shutil.copytree(tiny_world, params.path(params.data.generated_dir))
    return params


# A model and data small enough that SFT + DPO take seconds on 2 cores, yet big enough to learn something.
FAST_TRAINING = {
    "model.tiny": {"vocab_size": 600, "hidden_size": 32, "layers": 2, "heads": 2, "kv_heads": 1,
                   "intermediate_size": 64, "max_position_embeddings": 1024, "tokenizer_corpus_rows": 2000},
    "sft.max_train_examples": 400, "sft.max_eval_examples": 48, "sft.epochs": 2, "sft.learning_rate": 0.01,
    "sft.batch_size": 16, "sft.logging_steps": 5,
    "dpo.max_train_examples": 192, "dpo.max_eval_examples": 64, "dpo.epochs": 2, "dpo.learning_rate": 0.003,
    "dpo.batch_size": 16, "dpo.logging_steps": 5,
    "tracking.system_metrics_seconds": 1,
    # the test models are far too small to split across threads, and a second thread on a shared CI box can only
    # contend (torch slows ~20x when another process holds the other core)
    "model.cpu_threads": 1,
    # the tiny world has ~400 users: hold every valid-week user out, or DPO's held-out comparison gets a handful of
    # pairs and ties (0.625 vs 0.625 on 8 pairs at the default 0.25)
    "prompts.valid_user_share": 1.0,
    # DPO's held-out gain needs the user's recent events: at the default 100 tokens (~1 event) it fell or tied in
    # every DPO setting tried on this world (0.70 -> 0.64..0.70), at 160 tokens it rises. A known limit of the
    # default, recorded in docs/training.md; the test keeps checking that DPO works where the prompt has the history.
    "prompts.max_prompt_tokens": 160,
    "evaluate.max_users": 60, "decode.beam_width": 20, "evaluate.baselines.sasrec.epochs": 5,
}


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory, tiny_world) -> Path:
    """The tiny world validated, with S-IDs and prompts built once: the inputs of every model step."""
    from leadre.data.validate import run_validate
    from leadre.prompts.build import run_build_prompts
    from leadre.sids.build import run_build_sids

    params = write_params(tmp_path_factory.mktemp("prepared"), FAST_TRAINING)
    shutil.copytree(tiny_world, params.path(params.data.generated_dir))
    run_validate(params)
    run_build_sids(params)
    run_build_prompts(params)
    return params.root


def prepared_workspace(root: Path, prepared: Path, overrides: dict | None = None) -> Params:
    """Params rooted in `root` with a copy of the prepared data (validated tables, S-IDs, prompts)."""
    params = write_params(root, {**FAST_TRAINING, **(overrides or {})})
    for folder in ("data", "artifacts"):
        shutil.copytree(prepared / folder, root / folder, dirs_exist_ok=True)
    return params


RETRAIN = "test-retrain"


@pytest.fixture(scope="session")
def trained(tmp_path_factory, prepared_data) -> tuple[Params, dict, dict]:
    """SFT then DPO on the prepared tiny world, once per session, under one retrain id (one MLflow parent run)."""
    import os

    from leadre.tracking import RETRAIN_ENV
    from leadre.train.dpo import run_dpo
    from leadre.train.sft import run_sft

    params = prepared_workspace(tmp_path_factory.mktemp("trained"), prepared_data)
    previous = os.environ.get(RETRAIN_ENV)
    os.environ[RETRAIN_ENV] = RETRAIN
    try:
        sft, dpo = run_sft(params), run_dpo(params)
    finally:
        os.environ.pop(RETRAIN_ENV)
        if previous is not None:
            os.environ[RETRAIN_ENV] = previous
    return params, sft, dpo
