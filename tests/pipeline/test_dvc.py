"""`dvc repro` of the real dvc.yaml in a fresh copy of the repository, as a user's clean clone would run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import FAST_TRAINING, REPO

BIN = Path(sys.executable).parent
STAGES = ("generate", "validate", "sids", "prompts", "sft", "dpo", "evaluate", "gate", "promote")


def _run(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def copy_repository(root: Path, overrides: dict) -> dict:
    """The repository's tracked and new files (what a commit would hold) in a fresh git repo, at the tiny scale with
    `overrides` (dotted keys); no dvc.lock, so every stage runs. Returns the params written."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split()
    for name in listed:
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for dotted, value in {"world.scale": "tiny", **overrides}.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "dvc.lock").unlink(missing_ok=True)
    _run(root, "git", "init", "-q")
    return params


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A fresh clone at the tiny scale, with a model and data small enough for the real stages to take seconds."""
    root = tmp_path_factory.mktemp("clone")
    params = copy_repository(root, FAST_TRAINING)
    for f in (params[s]["metrics_file"] for s in ("validation", "sft", "dpo", "evaluate")):
        (root / f).unlink(missing_ok=True)  # a clean run, whatever the last committed one produced
    _run(root, "git", "add", "-A")
    _run(root, "git", "-c", "user.email=ci@leadre", "-c", "user.name=ci", "commit", "-qm", "clone")
    return root


def test_repro_runs_generate_and_validate_then_is_up_to_date(clone: Path):
    out = _run(clone, "dvc", "repro")
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
    assert (clone / "data/validated/events.parquet").exists()
    assert (clone / "artifacts/sids/ad_sids.parquet").exists() and (clone / "data/prompts/sft/train/part-00000.parquet").exists()
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    docs = (clone / "reports/validation/data_docs/index.html").read_text()
    assert "events" in docs and "ads" in docs  # the GX data docs site lists every suite's run
    metrics = json.loads((clone / "reports/validation_metrics.json").read_text())
    assert metrics["passed"] and metrics["rows"]["users"] == 400
    decision = json.loads((clone / "reports/gate.json").read_text())
    assert decision["challenger_version"] == "1" and decision["reasons"]  # registered whatever the verdict
    assert ("champion is now version 1" in out) == decision["passed"]
    assert "didn't change" in _run(clone, "dvc", "repro") or "up to date" in _run(clone, "dvc", "status")
    assert "Data and pipelines are up to date" in _run(clone, "dvc", "status")


def test_changing_a_param_reruns_only_what_depends_on_it(clone: Path):
    _run(clone, "dvc", "repro")
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["validation"]["examples_per_rule"] = 3
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(clone, "dvc", "repro")
    assert "Stage 'generate' didn't change" in out and "Running stage 'validate'" in out
    # validate rewrote identical data, so DVC skips everything downstream of it
    assert "Stage 'sids' didn't change" in out and "Stage 'prompts' didn't change" in out


def test_an_sft_rerun_with_the_same_weights_reruns_nothing_after_it(clone: Path):
    # before: the model folder named its MLflow run and wall time, so its hash changed on every rerun and DVC re-ran
    # DPO, evaluation, the gate and promotion for a model it already had
    _run(clone, "dvc", "repro")
    assert "Running stage 'sft'" in _run(clone, "dvc", "repro", "--force", "--single-item", "sft")
    out = _run(clone, "dvc", "repro")
    assert "Stage 'dpo' didn't change" in out and "Running stage" not in out


def test_a_clone_of_a_committed_run_records_it_in_its_own_registry(clone: Path, tmp_path: Path):
    # before: a clone trained the same weights, so DVC skipped evaluate, gate and promote (their outputs are committed
    # files): the clone's empty MLflow store got no evaluation and its registry no champion, and `make run` served the
    # fallback
    _run(clone, "dvc", "repro")
    _run(clone, "git", "add", "-A")
    _run(clone, "git", "-c", "user.email=ci@leadre", "-c", "user.name=ci", "commit", "-qm", "a run")
    second = tmp_path / "second"
    _run(tmp_path, "git", "clone", "-q", str(clone), str(second))
    out = _run(second, "dvc", "repro")
    for stage in ("sft", "evaluate", "gate", "promote"):  # no DVC cache in a clone: the models are trained again
        assert f"Running stage '{stage}'" in out, stage
    versions, aliases = _registry(second)
    assert versions == ["1"] and aliases["challenger"] == "1"
    assert "Data and pipelines are up to date" in _run(second, "dvc", "status")
    assert not _run(second, "git", "status", "--porcelain")  # the same dvc.lock and reports: nothing to commit


def test_push_to_the_default_local_remote_and_track_imported_data(clone: Path):
    _run(clone, "dvc", "repro")
    _run(clone, "dvc", "push")
    assert any((clone / ".dvc-storage").rglob("*")), "the default remote received no data"
    imported = clone / "data" / "imported"
    shutil.copytree(clone / "data" / "generated", imported)
    _run(clone, "dvc", "add", "data/imported")
    assert (clone / "data" / "imported.dvc").exists()


# -- experiments: previews, the ablation recipe, and a real ablation that must leave the registry alone -----------
# These run last: `dvc exp run` in the workspace leaves the experiment's params and outputs there.

def _registry(root: Path) -> tuple[list[str], dict[str, str]]:
    """The clone's registered versions and where each alias points."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = yaml.safe_load((root / "params.yaml").read_text())["registry"]["model_name"]
    return (sorted(str(v.version) for v in client.search_model_versions(f"name='{name}'")),
            {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()})


def _ablate_recipe(root: Path) -> list[str]:
    """The `dvc` command lines `make ablate` runs, as make prints them (the facet loop expanded by its shell)."""
    printed = _run(root, "make", "-n", "ablate")
    return [line.strip() for line in printed.splitlines() if line.strip().startswith(("dvc", "for facet"))]


def test_an_experiment_previews_from_the_queue_and_the_ablation_recipe_parses(clone: Path):
    # `dvc exp run --dry` cannot work in DVC 3.67 here (docs/experiments.md); a queued experiment is the preview
    recipe = _ablate_recipe(clone)
    assert recipe[0].startswith("for facet in profile long_term short_term content; do")
    assert recipe[-2] == "dvc exp run --run-all --jobs 1" and recipe[-1].startswith("dvc exp show --md")
    _run(clone, "dvc", "exp", "run", "--queue", "-n", "no-profile", "-S", "prompts.features.profile=false")
    assert "no-profile" in _run(clone, "dvc", "queue", "status")
    preview = _run(clone, "dvc", "exp", "show", "--md", "--no-pager", "--only-changed")
    row = next(line for line in preview.splitlines() if "no-profile" in line)
    assert "Queued" in row and "False" in row
    _run(clone, "dvc", "queue", "remove", "--queued")


def test_a_feature_ablation_experiment_leaves_the_registry_alone(clone: Path):
    # before: `dvc exp run -S prompts.features.content=false` registered its model and promoted it to champion
    _run(clone, "dvc", "repro")
    before = _registry(clone)
    assert before[0] and before[1]["challenger"] == before[0][-1]
    out = _run(clone, "dvc", "exp", "run", "-n", "no-content", "-S", "prompts.features.content=false")
    for stage in ("prompts", "sft", "dpo", "evaluate", "gate", "promote"):
        assert f"Running stage '{stage}'" in out
    assert "not promoted: a DVC experiment (no-content)" in out
    decision = json.loads((clone / "reports/gate.json").read_text())
    assert decision["challenger_version"] is None and decision["reasons"]  # decided, as any candidate
    assert decision["registry_skipped"].startswith("a DVC experiment (no-content)")
    assert _registry(clone) == before

    # the experiment is a retrain of its own in MLflow, and each of its runs says which facet was off
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{clone / 'mlruns.db'}")
    experiment = client.get_experiment_by_name(yaml.safe_load((clone / "params.yaml").read_text())["tracking"]
                                               ["experiment"])
    runs = [r for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get("leadre.retrain_id", "").endswith(":no-content")]
    assert {r.data.tags["leadre.step"] for r in runs} == {"retrain", "sft", "dpo", "evaluate", "gate"}
    assert all(r.data.params["prompts.features.content"] == "False" for r in runs)

    # `make ablate`'s comparison table: the experiment beside the baseline, headline metrics and facets only
    table = _run(clone, "bash", "-c", _ablate_recipe(clone)[-1])
    header = table.splitlines()[0]
    assert "no-content" in table and "candidate.ndcg@10" in header and "prompts.features.content" in header
    assert "sft.epochs" not in header and header.count("|") < 20
