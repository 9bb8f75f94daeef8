"""The gate and promotion cannot be fooled: on the tiny trained model, its real evaluation and a real MLflow SQLite
registry, a NaN never passes, the editable reports/gate.json decides nothing, a rollback sticks, and the gate asks
for a lift beyond the bootstrap interval's noise."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest

from leadre.config import Params, load_params
from leadre.evaluate.gate import run_gate
from leadre.evaluate.run import run_evaluate
from leadre.io import read_json, write_json
from leadre.registry import models
from leadre.registry.promote import run_promote, run_rollback

PASS = {"gate.min_relative_lift": -1.0, "gate.guardrails": {}}  # any valid candidate whose lift is defined passes
FAIL = {"gate.min_relative_lift": 100.0}  # no candidate passes


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory) -> Path:
    """The trained workspace, evaluated once (no champion yet: the reference is the best baseline)."""
    params, _, _ = trained
    root = tmp_path_factory.mktemp("registry-evaluated")
    shutil.copytree(params.root, root, dirs_exist_ok=True)
    (root / "mlruns.db").unlink(missing_ok=True)
    run_evaluate(load_params(root / "params.yaml"))
    return root


@pytest.fixture
def params(evaluated, tmp_path) -> Params:
    """A copy of the evaluated workspace with an empty registry of its own."""
    root = tmp_path / "workspace"
    shutil.copytree(evaluated, root, ignore=shutil.ignore_patterns("mlruns.db", "mlartifacts"))
    return load_params(root / "params.yaml")


def gate(params: Params, overrides: dict | None = None) -> dict:
    return run_gate(load_params(params.root / "params.yaml", overrides or {}))


def champion(params: Params) -> str | None:
    found = models.alias_version(params, models.CHAMPION)
    return str(found.version) if found else None


def summary_file(params: Params) -> Path:
    return params.path(params.evaluate.reports_dir) / "summary.json"


def test_the_gate_decides_on_the_evaluations_interval_and_records_it_on_the_version(params):
    summary = read_json(summary_file(params))
    decision = gate(params)  # the defaults: min_relative_lift 0.0 and the guardrails of params.yaml
    interval = summary["lifts"]["candidate"][decision["reference"]][params.gate.primary_metric]
    assert (decision["relative_lift"], decision["lift_low"], decision["lift_high"], decision["confidence"]) == \
        pytest.approx((interval["lift"], interval["low"], interval["high"], interval["confidence"]))
    assert not decision["passed"] or interval["low"] > 0
    tags = models.model_version(params, decision["challenger_version"]).tags
    assert tags[models.GATE_PASSED_TAG] == str(decision["passed"])
    assert json.loads(tags[models.GATE_REASONS_TAG]) == decision["reasons"]
    assert float(tags["leadre.gate_lift_low"]) == pytest.approx(interval["low"])
    assert float(tags["leadre.gate_lift_high"]) == pytest.approx(interval["high"])
    assert tags["leadre.gate_lift_confidence"] == str(interval["confidence"])

    # a bar between the interval's low end and the point lift: the point clears it (the old rule passed), the
    # interval does not, so the lift may be noise
    assert interval["low"] < interval["lift"]
    between = (interval["low"] + interval["lift"]) / 2
    noisy = gate(params, {"gate.min_relative_lift": between, "gate.guardrails": {}})
    assert not noisy["passed"] and any("the lift may be noise" in r for r in noisy["reasons"])
    assert models.model_version(params, noisy["challenger_version"]).tags[models.GATE_PASSED_TAG] == "False"

    # an evaluation that reports no interval cannot pass, whatever the bar
    write_json(summary_file(params), {k: v for k, v in summary.items() if k != "lifts"})
    blind = gate(params, PASS)
    assert not blind["passed"] and blind["lift_low"] is None
    assert any("no bootstrap interval" in r for r in blind["reasons"])


def test_a_nan_metric_fails_the_gate_and_the_champion_stays(params):
    assert gate(params, PASS)["passed"], "the tiny candidate's lift over the best baseline must be defined"
    run_promote(params)
    assert champion(params) == "1"

    summary = read_json(summary_file(params))
    summary["methods"]["candidate"][params.gate.primary_metric] = math.nan  # e.g. an evaluation over no users
    write_json(summary_file(params), summary)
    decision = gate(params, PASS)
    assert not decision["passed"] and decision["challenger_version"] == "2"
    assert any("nan" in r and "is not a number" in r for r in decision["reasons"]), decision["reasons"]
    assert read_json(params.path(params.gate.decision_file))["passed"] is False
    result = run_promote(params)
    assert not result["promoted"] and champion(params) == "1"


def test_promotion_reads_the_gates_verdict_from_the_registry_not_from_gate_json(params):
    failed = gate(params, FAIL)
    assert not failed["passed"] and failed["challenger_version"] == "1"
    decision_file = params.path(params.gate.decision_file)
    for tamper in ({**failed, "passed": True}, {**failed, "passed": "false"},
                   {k: v for k, v in failed.items() if k != "passed"}, None):
        if tamper is None:
            decision_file.unlink()
        else:
            write_json(decision_file, tamper)
        result = run_promote(params)
        assert not result["promoted"] and result["challenger"] == "1" and champion(params) is None
        assert result["reasons"] == failed["reasons"]
    with pytest.raises(models.RegistryError, match="version 1 did not pass the gate"):
        models.promote(params, "1")
    assert champion(params) is None

    # the verdict counts only exactly as the gate wrote it
    client = models._client(params)
    for forged in ("true", "yes", "1", ""):
        client.set_model_version_tag(params.registry.model_name, "1", models.GATE_PASSED_TAG, forged)
        with pytest.raises(models.RegistryError, match=f"version 1 has leadre.gate_passed='{forged}', not the"):
            run_promote(params)
    assert champion(params) is None

    passed = gate(params, PASS)
    decision_file.unlink()  # promotion needs only the registry
    assert run_promote(params)["champion"] == passed["challenger_version"] == champion(params) == "2"


def test_a_rollback_sticks_until_a_forced_promotion(params, caplog):
    gate(params, PASS)
    run_promote(params)
    gate(params, PASS)
    assert run_promote(params)["previous"] == "1"
    assert run_rollback(params) == {"rolled_back_from": "2", "champion": "1"}
    for _retry in range(2):  # a retried pipeline's promote: version 2 is still the challenger, and passed its gate
        with pytest.raises(models.RegistryError, match=r"version 2 was rolled back .*--force"):
            run_promote(params)
        assert champion(params) == "1"
    rolled_back = models.model_version(params, "2").tags
    assert rolled_back[models.ROLLED_BACK_TAG] == "true" and models.ROLLED_BACK_AT_TAG in rolled_back

    with caplog.at_level(logging.WARNING, logger="leadre.registry.models"):
        forced = run_promote(params, force=True)
    assert forced["promoted"] and (forced["champion"], forced["previous"]) == ("2", "1") and champion(params) == "2"
    assert models.FORCED_PROMOTION_TAG in models.model_version(params, "2").tags
    assert "promoting version 2 although it was rolled back" in caplog.text

    run_rollback(params)
    gate(params, PASS)  # a new version is promoted as usual
    assert run_promote(params)["champion"] == champion(params) == "3"


# -- runs that must leave the registry alone: ablations, DVC experiments, --no-register, --dry-run -----------------

def registry_state(params: Params) -> tuple[list[str], dict[str, str]]:
    """Every version of the model and where each alias points."""
    client = models._client(params)
    name = params.registry.model_name
    versions = sorted(str(v.version) for v in client.search_model_versions(f"name='{name}'"))
    return versions, {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}


@pytest.mark.parametrize("case", ["ablation", "dvc experiment", "--no-register"])
def test_an_ablation_or_experiment_is_gated_but_never_registered_or_promoted(params, monkeypatch, case):
    # before: `dvc exp run -S prompts.features.content=false` registered its model and promoted it to champion
    assert gate(params, PASS)["passed"]
    run_promote(params)
    before = registry_state(params)
    assert before == (["1"], {"challenger": "1", "champion": "1"})

    overrides, register = dict(PASS), True
    if case == "ablation":
        overrides["prompts.features.content"] = False
    elif case == "dvc experiment":
        monkeypatch.setenv(models.DVC_EXPERIMENT_ENV, "tidy-hobo")  # what `dvc exp run` sets for its stages
    else:
        register = False
    ablation = load_params(params.root / "params.yaml", overrides)
    decision = run_gate(ablation, register=register)
    assert decision["passed"] and decision["challenger_version"] is None  # decided as any candidate
    expected = {"ablation": "prompts.features.content=false", "dvc experiment": "a DVC experiment (tidy-hobo)",
                "--no-register": "--no-register"}[case]
    assert expected in decision["registry_skipped"]
    assert read_json(params.path(params.gate.decision_file)) == decision  # the decision is still written
    result = run_promote(ablation, register=register)
    assert not result["promoted"] and expected in result["skipped"] and result["champion"] == "1"
    assert registry_state(params) == before


def test_a_dry_run_gate_decides_and_writes_nothing(params):
    from typer.testing import CliRunner

    from leadre.cli import app

    decision_file = params.path(params.gate.decision_file)
    decision_file.unlink(missing_ok=True)
    result = CliRunner().invoke(app, ["--params", str(params.root / "params.yaml"), "-S", "gate.guardrails={}",
                                      "-S", "gate.min_relative_lift=-1.0", "gate", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("gate PASSED against ") and "not registered: --dry-run" in result.output
    assert not decision_file.exists() and models.alias_version(params, models.CHALLENGER) is None
    assert not (params.root / "mlruns.db").exists() or not models._client(params).search_registered_models()


# -- what MLflow shows: the parent run, each step's params, the experiment's kind, an honest git.dirty -------------

def test_the_parent_run_carries_the_headline_and_the_gate_decision_and_each_run_its_params(evaluated, params):
    from mlflow.tracking import MlflowClient

    from leadre.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, configure

    decision = gate(params)
    experiment = configure(params)
    client = MlflowClient()
    assert client.get_experiment(experiment).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND  # opens on runs
    runs = {r.data.tags["leadre.step"]: r for r in client.search_runs([experiment])}
    parent, gate_run = runs["retrain"], runs["gate"]
    assert gate_run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.data.metrics["gate.passed"] == float(decision["passed"])
    assert parent.data.tags[models.GATE_PASSED_TAG] == str(decision["passed"])
    assert parent.data.tags["leadre.challenger_version"] == decision["challenger_version"]
    headline = read_json(params.path(params.evaluate.metrics_file))  # what `dvc metrics show` prints
    assert parent.data.metrics["candidate.ndcg_at_10"] == pytest.approx(headline["candidate"]["ndcg@10"], abs=1e-6)
    assert {"lift.ndcg_at_10.low", "lift.ndcg_at_10.high"} <= set(parent.data.metrics)
    assert 6 <= sum(len(v) for v in headline.values()) <= 12  # a headline, not 170 columns
    assert parent.data.params["prompts.features.content"] == "True"
    assert gate_run.data.params["gate.primary_metric"] == params.gate.primary_metric
    assert gate_run.data.params["gate.guardrails.hr_at_10"] == str(params.gate.guardrails["hr@10"])
    assert gate_run.data.params["prompts.features.profile"] == "True"

    # the evaluation's own run (in the evaluated workspace's store) has the sections it reads, and no others
    evaluated_params = load_params(evaluated / "params.yaml")
    evaluate_run = next(r for r in MlflowClient(evaluated_params.url(evaluated_params.tracking.tracking_uri))
                        .search_runs([configure(evaluated_params)]) if r.data.tags.get("leadre.step") == "evaluate")
    logged = evaluate_run.data.params
    assert logged["decode.beam_width"] == str(evaluated_params.decode.beam_width)
    assert logged["evaluate.bootstrap.resamples"] == str(evaluated_params.evaluate.bootstrap.resamples)
    assert logged["prompts.features.content"] == "True"
    assert not any(key.startswith(("sft.", "dpo.", "gate.")) for key in logged)


def test_git_dirty_ignores_what_the_pipeline_writes_itself(tmp_path, monkeypatch):
    import subprocess

    from leadre.tracking import git_tags

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.email=ci@leadre", "-c", "user.name=ci", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "metrics.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  evaluate:\n    outs:\n"
                                       "    - path: reports/metrics.json\n      md5: 0\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "clone")
    monkeypatch.chdir(tmp_path / "reports")  # a step may run from anywhere inside the repository
    (tmp_path / "reports" / "metrics.json").write_text('{"ndcg@10": 0.1}')
    (tmp_path / "dvc.lock").write_text((tmp_path / "dvc.lock").read_text() + "# rewritten by dvc repro\n")
    assert git_tags()["git.dirty"] == "false"  # before: "true" on every run of a fresh clone
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_tags()["git.dirty"] == "true"
