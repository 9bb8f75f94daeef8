"""Gate decisions on hand-made evaluation results: pass, fail, guardrail breach, no champion, noise, NaN, bad config."""

from __future__ import annotations

import math

import pytest

from leadre.config import ConfigError, GateParams, load_params, parse_overrides
from leadre.evaluate.gate import decide, headline_metrics
from tests.conftest import REPO

GATE = GateParams(primary_metric="ndcg@10", min_relative_lift=0.02, guardrails={"hr@10": 0.05, "coverage": 0.25},
                  decision_file="reports/gate.json")
NAN = math.nan
BASELINES = ("popularity", "itemknn", "sasrec")  # what the evaluation summary lists as its baselines


def method(ndcg: float, hr: float = 0.3, coverage: float = 0.5, validity: float = 1.0) -> dict[str, float]:
    return {"ndcg@10": ndcg, "hr@10": hr, "coverage": coverage, "validity": validity}


def lifts(low: float, high: float, lift: float | None = None, reference: str = "champion",
          metric: str = "ndcg@10") -> dict:
    """summary.json's `lifts` with one interval: the candidate's lift over `reference` on `metric`."""
    lift = (low + high) / 2 if lift is None else lift
    return {"candidate": {reference: {metric: {"lift": lift, "low": low, "high": high, "confidence": 0.95,
                                               "resamples": 1000}}}}


def test_passes_when_the_whole_interval_clears_the_required_lift():
    # 0.21 vs 0.20 is +5%; the interval's low end 3% is above the 2% required
    d = decide({"candidate": method(0.21), "champion": method(0.20), "popularity": method(0.5)},
               lifts(0.03, 0.07, 0.05), GATE)
    assert d.passed and d.reference == "champion" and d.reference_kind == "champion"
    assert d.relative_lift == pytest.approx(0.05)
    assert (d.lift_low, d.lift_high, d.confidence, d.min_relative_lift) == (0.03, 0.07, 0.95, 0.02)
    assert "95% interval [+3.00%, +7.00%]; its low end is above the +2.00% required" in d.reasons[0]


def test_a_point_lift_that_clears_the_bar_fails_when_the_interval_could_be_noise():
    # +5% point lift ≥ 2% (the old rule passed it), but the interval reaches down to +1%
    d = decide({"candidate": method(0.21), "champion": method(0.20)}, lifts(0.01, 0.09, 0.05), GATE)
    assert not d.passed
    assert "its low end is not above the +2.00% required: the lift may be noise" in d.reasons[0]


def test_the_default_zero_lift_means_the_interval_lies_above_zero():
    zero = GATE.model_copy(update={"min_relative_lift": 0.0})
    assert load_params(REPO / "params.yaml").gate.min_relative_lift == 0.0
    methods = {"candidate": method(0.22), "champion": method(0.20)}
    assert not decide(methods, lifts(-0.03, 0.2, 0.1), zero).passed  # any lift at all passed before
    assert not decide(methods, lifts(0.0, 0.2, 0.1), zero).passed  # a low end at 0 is not above 0
    assert decide(methods, lifts(0.001, 0.2, 0.1), zero).passed


def test_fails_closed_when_the_summary_has_no_interval_for_the_primary_metric():
    methods = {"candidate": method(0.3), "champion": method(0.2)}
    for missing in ({}, lifts(0.2, 0.8, metric="hr@10"), lifts(0.2, 0.8, reference="popularity"),
                    {"candidate": {"champion": {"ndcg@10": {"lift": 0.5}}}}):
        d = decide(methods, missing, GATE)
        assert not d.passed and d.lift_low is None
        assert "no bootstrap interval of the candidate's ndcg@10 lift over the champion" in d.reasons[0]


def test_fails_when_the_lift_is_too_small_and_says_why():
    d = decide({"candidate": method(0.203), "champion": method(0.20)}, lifts(-0.01, 0.04, 0.015), GATE)
    assert not d.passed
    assert d.reasons[0] == ("ndcg@10 0.2030 vs the champion's 0.2000: lift +1.50%, 95% interval [-1.00%, +4.00%]; "
                            "not above the +2.00% required")


def test_a_guardrail_breach_fails_even_with_a_better_primary_metric():
    # coverage 0.30 vs 0.50 is a 40% drop, 25% allowed; hr@10 drop 0.295 vs 0.3 = 1.7%, allowed
    d = decide({"candidate": method(0.3, hr=0.295, coverage=0.30), "champion": method(0.2)}, lifts(0.3, 0.7), GATE)
    assert not d.passed
    assert [r for r in d.reasons if r.startswith("guardrail")] == [
        "guardrail coverage: 0.3000 is 40.0% below the champion's 0.5000 (at most 25% allowed)"]
    assert d.guardrails["hr@10"]["relative_change"] == pytest.approx(-0.05 / 3)


def test_without_a_champion_the_best_baseline_is_the_reference():
    d = decide({"candidate": method(0.16), "popularity": method(0.03), "itemknn": method(0.154),
                "sasrec": method(0.150)}, lifts(0.025, 0.06, reference="itemknn"), GATE, BASELINES)
    assert d.reference == "itemknn" and d.reference_kind == "baseline"
    assert d.passed  # the interval over itemknn starts at +2.5% > 2%


def test_an_invalid_output_fails_whatever_the_metrics():
    for validity in (0.999, NAN):
        d = decide({"candidate": method(0.9, validity=validity), "champion": method(0.1)}, lifts(5, 9), GATE)
        assert not d.passed and "not live ads" in d.reasons[0]


@pytest.mark.parametrize("case, methods, intervals, reason", [
    ("candidate primary", {"candidate": method(NAN), "champion": method(0.2)}, lifts(NAN, NAN),
     "ndcg@10: candidate nan vs champion 0.2 is not a number"),
    ("reference primary", {"candidate": method(0.3), "champion": method(NAN)}, lifts(NAN, NAN),
     "ndcg@10: candidate 0.3 vs champion nan is not a number"),
    ("interval", {"candidate": method(0.3), "champion": method(0.2)}, lifts(NAN, NAN, 0.5),
     "ndcg@10 lift over the champion is undefined (interval nan..nan)"),
    ("interval's low end only", {"candidate": method(0.3), "champion": method(0.2)}, lifts(NAN, 0.9, 0.5),
     "ndcg@10 lift over the champion is undefined"),
    ("guardrail", {"candidate": method(0.3, coverage=NAN), "champion": method(0.2)}, lifts(0.3, 0.7),
     "guardrail coverage: candidate nan vs champion 0.5 is not a number"),
    ("guardrail reference", {"candidate": method(0.3), "champion": method(0.2, hr=NAN)}, lifts(0.3, 0.7),
     "guardrail hr@10: candidate 0.3 vs champion nan is not a number"),
    ("baseline", {"candidate": method(0.3), "popularity": method(NAN), "itemknn": method(0.2)},
     lifts(0.3, 0.7, reference="itemknn"), "the popularity baseline's ndcg@10 is nan"),
])
def test_a_nan_anywhere_in_the_decision_fails_it_with_a_reason(case, methods, intervals, reason):
    # before: `nan < needed` is False, so a NaN metric read as "gate PASSED … nan ≥ 0.1343"
    d = decide(methods, intervals, GATE, BASELINES)
    assert not d.passed, case
    assert any(reason in r for r in d.reasons), d.reasons


def test_unknown_metrics_are_errors_not_passes():
    with pytest.raises(ValueError, match="primary_metric"):
        decide({"candidate": method(0.2), "champion": method(0.1)}, lifts(0.5, 1.5),
               GATE.model_copy(update={"primary_metric": "ndcg@11"}))
    with pytest.raises(ValueError, match="guardrails names 'mrr'"):
        decide({"candidate": method(0.2), "champion": method(0.1)}, lifts(0.5, 1.5),
               GATE.model_copy(update={"guardrails": {"mrr": 0.1}}))
    with pytest.raises(ValueError, match="no champion and no baseline"):
        decide({"candidate": method(0.2)}, {}, GATE, BASELINES)


@pytest.mark.parametrize("value", ["nan", ".nan", "inf", "-.inf"])
def test_a_non_number_lift_or_guardrail_is_a_config_error(value):
    for key in ("gate.min_relative_lift", "gate.guardrails.hr@10"):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_params(REPO / "params.yaml", parse_overrides([f"{key}={value}"]))


def test_the_headline_is_a_few_numbers_with_the_lift_over_the_gates_reference():
    # before: `dvc metrics show` printed every metric of every method (~170 columns)
    methods = {"candidate": {**method(0.16), "mean_ecpm": 30.0, "industry_diversity": 0.2, "mrr": 0.1,
                             "new_ads.hr@10": 0.05},
               "popularity": method(0.03), "itemknn": method(0.154), "sasrec": method(0.15)}
    headline = headline_metrics(methods, lifts(0.025, 0.06, reference="itemknn"), GATE, BASELINES)
    assert headline == {"candidate": {"ndcg@10": 0.16, "hr@10": 0.3, "coverage": 0.5, "industry_diversity": 0.2,
                                      "mean_ecpm": 30.0, "validity": 1.0},
                        "lift.ndcg@10": {"lift": pytest.approx(0.0425), "low": 0.025, "high": 0.06}}
    with_champion = headline_metrics({**methods, "champion": method(0.1)}, lifts(0.5, 0.7), GATE, BASELINES)
    assert with_champion["lift.ndcg@10"] == {"lift": pytest.approx(0.6), "low": 0.5, "high": 0.7}
    assert set(headline_metrics({"candidate": method(0.2)}, {}, GATE, ())) == {"candidate"}  # nothing to compare
