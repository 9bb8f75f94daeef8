"""Offline evaluation of the trained tiny model beside the ID baselines, and `leadre recommend`, on real outputs."""

from __future__ import annotations

import json
import logging
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from leadre.evaluate.run import CANDIDATE, FUSION, load_eval_set, run_evaluate
from leadre.decode.recommender import LlmRecommender, top_k
from leadre.sids.build import load_sid_table


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    params, _, _ = trained
    root = tmp_path_factory.mktemp("evaluated")
    shutil.copytree(params.root, root, dirs_exist_ok=True)
    from leadre.config import load_params

    params = load_params(root / "params.yaml")
    phases = _Lines()
    logger = logging.getLogger("leadre.evaluate.run")
    logger.addHandler(phases)
    level, logger.level = logger.level, logging.INFO
    try:
        return params, run_evaluate(params)
    finally:
        logger.removeHandler(phases)
        logger.setLevel(level)
        EVALUATE_LOG[:] = phases.lines


EVALUATE_LOG: list[str] = []  # what `leadre evaluate` said while the `evaluated` fixture ran


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_evaluate_says_what_it_is_doing_phase_by_phase(evaluated):
    """It ran for minutes without a word: one line per phase, each LLM's with its speed."""
    params, summary = evaluated
    said = "\n".join(EVALUATE_LOG)
    assert f"{summary['users']} users of the test split loaded" in said
    for name in ("candidate", "sft"):
        assert re.search(rf"{name} generated {summary['users']} users' lists in [0-9.]+ s \([0-9.]+ users/s\)", said)
    for name in summary["baselines"]:
        assert re.search(rf"baseline {name} fitted and ranked in [0-9.]+ s", said)
    assert f"bootstrap lift intervals ({params.evaluate.bootstrap.resamples} resamples)" in said
    assert "report.html" in said


def test_every_method_is_scored_on_the_same_users(evaluated):
    params, summary = evaluated
    methods = summary["methods"]
    assert set(methods) == {CANDIDATE, "sft", "popularity", "itemknn", "sasrec", FUSION}
    for name, values in methods.items():
        for k in params.evaluate.ks:
            assert 0.0 <= values[f"hr@{k}"] <= 1.0 and 0.0 <= values[f"ndcg@{k}"] <= values[f"hr@{k}"] + 1e-9
        assert values["hr@1"] <= values["hr@5"] <= values["hr@10"] <= values["hr@20"], name
        assert values["validity"] == 1.0, f"{name} recommended an ad that is not live"
        assert values["warm_users.share"] + values["cold_users.share"] == pytest.approx(1.0)
    assert summary["users"] == params.evaluate.max_users
    saved = json.loads(params.path(params.evaluate.metrics_file).read_text())
    assert saved[CANDIDATE]["ndcg@10"] == pytest.approx(methods[CANDIDATE]["ndcg@10"], abs=1e-6)


def test_every_llm_row_carries_paired_lift_intervals_over_every_baseline(evaluated):
    params, summary = evaluated
    methods, lifts = summary["methods"], summary["lifts"]
    assert set(lifts) == {CANDIDATE, "sft", FUSION}
    for name, by_reference in lifts.items():
        assert set(by_reference) == {"popularity", "itemknn", "sasrec"}
        for reference, by_metric in by_reference.items():
            lift = by_metric["ndcg@10"]
            assert lift["confidence"] == params.evaluate.bootstrap.confidence
            if methods[reference]["ndcg@10"] > 0:
                assert lift["low"] <= lift["lift"] <= lift["high"]
                expected = methods[name]["ndcg@10"] / methods[reference]["ndcg@10"] - 1
                assert lift["lift"] == pytest.approx(expected, rel=1e-6)


def test_report_files_are_written_and_name_where_baselines_lead(evaluated):
    params, summary = evaluated
    out = params.path(params.evaluate.reports_dir)
    curve = pd.read_csv(out / "hr_at_k.csv")
    assert len(curve) == len(summary["methods"]) * len(params.evaluate.ks)
    page = (out / "report.html").read_text()
    assert "<img" in page and "Findings" in page
    assert "paired bootstrap interval" in page and "ndcg@10 vs itemknn" in page
    methods = summary["methods"]
    for name in methods:
        if name != CANDIDATE and methods[name]["ndcg@10"] > methods[CANDIDATE]["ndcg@10"]:
            assert f"{name} is ahead of the candidate on ndcg@10" in page


def test_value_weight_trades_relevance_for_ecpm_and_penalty_adds_diversity(evaluated):
    _, summary = evaluated
    curve = pd.DataFrame(summary["tradeoff"])
    plain = curve[curve["diversity_penalty"] == 0].sort_values("value_weight")
    assert plain["mean_ecpm"].iloc[-1] > plain["mean_ecpm"].iloc[0]
    at_zero = curve[curve["value_weight"] == 0].sort_values("diversity_penalty")
    assert at_zero["industry_diversity"].iloc[-1] >= at_zero["industry_diversity"].iloc[0]


def test_recommendations_are_k_live_distinct_ads_never_already_engaged(trained):
    """Exclusion happens inside the search: every list is full (K fresh live ads) whenever that many exist."""
    params, _, _ = trained
    data = load_eval_set(params)
    recommender = LlmRecommender(params.path(params.evaluate.candidate_dir), params.decode)
    k = params.decode.beam_width
    generated = recommender.generate(data.prompts[:20], exclude=data.exclude[:20])
    ids, scores = top_k(generated, k, data.exclude[:20], data.ads["ecpm"], data.ads["industry"], 0.0, 0.0)
    live = set(load_sid_table(params.path(params.sids.out_dir)).query("live")["ad_id"])
    assert any(len(e) for e in data.exclude[:20]), "no user with history: the test would prove nothing"
    for row, excluded in zip(ids, data.exclude[:20]):
        shown = row[row >= 0]
        assert set(shown) <= live and len(set(shown)) == len(shown)
        assert not set(shown) & set(excluded)
        assert len(shown) == min(k, len(live - set(excluded)))
    assert np.all(np.diff(scores, axis=1)[np.isfinite(scores[:, 1:])] <= 1e-9), "lists are not sorted by score"


def test_a_registered_baseline_is_evaluated_and_can_be_the_gates_reference(trained, tmp_path_factory, monkeypatch):
    """Adding a baseline = one class with its params model + one `evaluate.baselines` entry: evaluation runs it,
    fuses with it when it is the fusion channel, and the gate compares with it when there is no champion."""
    from leadre.config import load_params
    from leadre.evaluate import baselines
    from leadre.evaluate.gate import decide

    class NewestFirstParams(baselines.BaselineParams):
        fallback_half_life_days: float | None = None
        newest: bool = True

    class NewestFirst(baselines.ScoringRecommender):
        """Higher ad ids first (the generator numbers ads in launch order)."""

        name = "newest_first"
        Params = NewestFirstParams

        def _fit(self, engagements: pd.DataFrame) -> None:
            pass

        def _score(self, user_ids: np.ndarray, candidates: np.ndarray) -> np.ndarray:
            order = candidates.astype(float) if self.params.newest else -candidates.astype(float)
            return np.broadcast_to(order, (len(user_ids), len(candidates)))

    monkeypatch.setitem(baselines.BASELINES, NewestFirst.name, NewestFirst)
    params, _, _ = trained
    root = tmp_path_factory.mktemp("evaluated_with_a_new_baseline")
    shutil.copytree(params.root, root, dirs_exist_ok=True)
    with pytest.raises(ValueError, match=r"evaluate\.baselines\.newest_first\.newest"):
        load_params(root / "params.yaml", {"evaluate.baselines": {"newest_first": {"newest": "sometimes"}}})
    params = load_params(root / "params.yaml", {
        "evaluate.baselines": {"newest_first": {}}, "fusion.channel": "newest_first", "evaluate.compare_dirs": {},
        "evaluate.max_users": 20, "evaluate.value_weights": [0.0], "evaluate.diversity_penalties": [0.0]})
    summary = run_evaluate(params)
    assert summary["baselines"] == ["newest_first"]
    assert {"newest_first", FUSION} <= set(summary["methods"]) and "itemknn" not in summary["methods"]
    assert "newest_first" in summary["lifts"][CANDIDATE]
    if "champion" not in summary["methods"]:
        decision = decide(summary["methods"], summary["lifts"], params.gate, summary["baselines"])
        assert (decision.reference, decision.reference_kind) == ("newest_first", "baseline")


def test_the_same_models_and_data_give_the_same_evaluation_and_decision_files(trained, tmp_path_factory):
    """DVC hashes summary.json, the metrics file, the plot data and gate.json: a rerun on the same inputs must write
    the same bytes, or every rerun looks like a new result and re-runs the steps after it. What differs between runs
    (the MLflow run, seconds, when the gate decided) goes to MLflow and to the untracked run.json beside the report."""
    from leadre.config import load_params
    from leadre.evaluate.gate import run_gate
    from leadre.evaluate import RUN_RECORD, evaluation_run
    from leadre.io import read_json
    from leadre.registry.models import model_version

    params, _, _ = trained
    root = tmp_path_factory.mktemp("evaluated_twice")
    shutil.copytree(params.root, root, dirs_exist_ok=True)
    params = load_params(root / "params.yaml", {
        "evaluate.compare_dirs": {}, "evaluate.max_users": 20, "evaluate.value_weights": [0.0],
        "evaluate.diversity_penalties": [0.0]})
    reports = params.path(params.evaluate.reports_dir)
    tracked = [reports / "summary.json", params.path(params.evaluate.metrics_file), reports / "hr_at_k.csv",
               reports / "tradeoff.csv", params.path(params.gate.decision_file)]
    written, run_ids = [], []
    for _ in range(2):
        run_evaluate(params)
        run_gate(params, register=False)
        written.append([path.read_bytes() for path in tracked])
        run_ids.append(evaluation_run(reports)["run_id"])
    assert [path.name for path, first, second in zip(tracked, *written) if first != second] == []
    assert run_ids[0] != run_ids[1] and (reports / RUN_RECORD).is_file()  # each run still says which it was
    record = read_json(reports / RUN_RECORD)
    assert record["provenance"]["run_id"] == run_ids[1] and set(record["seconds"]) >= {CANDIDATE, "itemknn"}
    assert run_ids[1] in (reports / "report.html").read_text(encoding="utf-8")
    version = run_gate(params)["challenger_version"]  # the registered challenger names the evaluation it was judged by
    assert model_version(params, version).tags["leadre.evaluate_run_id"] == run_ids[1]
