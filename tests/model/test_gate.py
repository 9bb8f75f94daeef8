"""Gate decisions on hand-made evaluation results: pass, fail, guardrail breach, no champion, and bad config."""

from __future__ import annotations

import pytest

from leadre.config import GateParams
from leadre.evaluate.gate import decide

GATE = GateParams(primary_metric="ndcg@10", min_relative_lift=0.02, guardrails={"hr@10": 0.05, "coverage": 0.25},
                  decision_file="reports/gate.json")


def method(ndcg: float, hr: float = 0.3, coverage: float = 0.5, validity: float = 1.0) -> dict[str, float]:
    return {"ndcg@10": ndcg, "hr@10": hr, "coverage": coverage, "validity": validity}


def test_passes_when_the_lift_over_the_champion_is_enough():
    # 0.21 ≥ 0.20 × 1.02 = 0.204
    d = decide({"candidate": method(0.21), "champion": method(0.20), "popularity": method(0.5)}, GATE)
    assert d.passed and d.reference == "champion" and d.reference_kind == "champion"
    assert d.relative_lift == pytest.approx(0.05)


def test_fails_when_the_lift_is_too_small_and_says_why():
    # 0.203 < 0.204 needed
    d = decide({"candidate": method(0.203), "champion": method(0.20)}, GATE)
    assert not d.passed
    assert any("0.2030 < 0.2040" in reason for reason in d.reasons)


def test_a_guardrail_breach_fails_even_with_a_better_primary_metric():
    # coverage 0.30 vs 0.50 is a 40% drop, 25% allowed; hr@10 drop 0.295 vs 0.3 = 1.7%, allowed
    d = decide({"candidate": method(0.3, hr=0.295, coverage=0.30), "champion": method(0.2)}, GATE)
    assert not d.passed
    assert [r for r in d.reasons if r.startswith("guardrail")] == [
        "guardrail coverage: 0.3000 is 40.0% below the champion's 0.5000 (at most 25% allowed)"]
    assert d.guardrails["hr@10"]["relative_change"] == pytest.approx(-0.05 / 3)


def test_without_a_champion_the_best_baseline_is_the_reference():
    d = decide({"candidate": method(0.16), "popularity": method(0.03), "itemknn": method(0.154),
                "sasrec": method(0.150)}, GATE)
    assert d.reference == "itemknn" and d.reference_kind == "baseline"
    assert d.passed  # 0.16 ≥ 0.154 × 1.02 = 0.157


def test_an_invalid_output_fails_whatever_the_metrics():
    d = decide({"candidate": method(0.9, validity=0.999), "champion": method(0.1)}, GATE)
    assert not d.passed and "not live ads" in d.reasons[0]


def test_unknown_metrics_are_errors_not_passes():
    with pytest.raises(ValueError, match="primary_metric"):
        decide({"candidate": method(0.2), "champion": method(0.1)},
               GATE.model_copy(update={"primary_metric": "ndcg@11"}))
    with pytest.raises(ValueError, match="guardrails names 'mrr'"):
        decide({"candidate": method(0.2), "champion": method(0.1)},
               GATE.model_copy(update={"guardrails": {"mrr": 0.1}}))
    with pytest.raises(ValueError, match="no champion and no baseline"):
        decide({"candidate": method(0.2)}, GATE)
