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


def test_push_to_the_default_local_remote_and_track_imported_data(clone: Path):
    _run(clone, "dvc", "repro")
    _run(clone, "dvc", "push")
    assert any((clone / ".dvc-storage").rglob("*")), "the default remote received no data"
    imported = clone / "data" / "imported"
    shutil.copytree(clone / "data" / "generated", imported)
    _run(clone, "dvc", "add", "data/imported")
    assert (clone / "data" / "imported.dvc").exists()
