"""The paired bootstrap that evaluation reports and the gate decides on."""

import math

import numpy as np
import pytest

from leadre.evaluate.bootstrap import paired_lift


def test_interval_brackets_the_lift_and_narrows_with_more_users():
    rng = np.random.default_rng(0)
    small_ref = rng.binomial(1, 0.3, 300).astype(float)
    small = np.maximum(small_ref, rng.binomial(1, 0.05, 300))  # a method that adds some hits to the same users
    big_ref = rng.binomial(1, 0.3, 3000).astype(float)
    big = np.maximum(big_ref, rng.binomial(1, 0.05, 3000))
    few, many = paired_lift(small, small_ref, 500), paired_lift(big, big_ref, 500)
    for lift in (few, many):
        assert lift.low <= lift.lift <= lift.high
        assert lift.low > 0  # adding hits to the same users is a real lift, paired resampling sees it
    assert many.high - many.low < few.high - few.low


def test_identical_methods_tie_and_noise_straddles_zero():
    rng = np.random.default_rng(1)
    ref = rng.random(500)
    same = paired_lift(ref, ref, 200)
    assert same.lift == 0 and same.low == 0 and same.high == 0
    noisy = paired_lift(rng.permutation(ref), ref, 500)  # same distribution, unpaired by chance: a tie
    assert noisy.low < 0 < noisy.high


def test_undefined_inputs_fail_closed():
    ones = np.ones(10)
    for method, reference in ((ones, np.zeros(10)), (np.r_[ones[:9], math.nan], ones), (ones, np.r_[math.nan, ones[1:]])):
        lift = paired_lift(method, reference, 100)
        assert not lift.defined and math.isnan(lift.low)
    with pytest.raises(ValueError, match="one length"):
        paired_lift(ones, np.ones(9))


def test_same_seed_same_interval():
    rng = np.random.default_rng(2)
    a, b = rng.random(200), rng.random(200)
    assert paired_lift(a, b, 300, seed=4) == paired_lift(a, b, 300, seed=4)


def test_verdict_calls_an_interval_holding_zero_a_tie():
    from leadre.evaluate.report import lift_verdict

    assert lift_verdict({"lift": 0.02, "low": -0.01, "high": 0.05}) == "tie"
    assert lift_verdict({"lift": 0.12, "low": 0.03, "high": 0.2}) == "ahead"
    assert lift_verdict({"lift": -0.1, "low": -0.2, "high": -0.01}) == "behind"
    assert lift_verdict({"lift": math.nan, "low": math.nan, "high": math.nan}) == "undefined"
