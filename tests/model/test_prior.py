"""The popularity-shift correction: the model's scores re-weighted by p_now(ad) / p_train(ad) before the lists are cut."""

import logging

import numpy as np
import pandas as pd
import pytest

from leadre.bundle import read_response_counts
from leadre.config import PriorParams
from leadre.decode.prior import popularity_shift
from leadre.decode.recommender import Generated, top_k
from leadre.prompts import MAIN_TASK
from leadre.units import PAD

EXACT = PriorParams(now_weight=1.0, train_weight=1.0, half_life_days=7.0)
OFF = PriorParams(now_weight=0.0, train_weight=0.0, half_life_days=7.0)
FREQUENT, NEW, OTHER = 10, 20, 30
LIVE = np.array([FREQUENT, NEW, OTHER])
# the model learned FREQUENT from 500 training answers and has never been asked for NEW, launched since
TRAINED_ON = pd.Series({FREQUENT: 500, OTHER: 100})


def _engagements(ads: list[int], day: str = "2026-09-20") -> pd.DataFrame:
    ts = pd.Timestamp(day, tz="UTC") + pd.to_timedelta(np.arange(len(ads)), unit="min")
    return pd.DataFrame({"user_id": np.arange(len(ads)), "ad_id": ads, "ts": ts})


def _rank(prior: pd.Series | None) -> list[int]:
    # the beam search put the frequent ad first, the new one a little below it
    generated = Generated(ad_ids=[np.array([FREQUENT, NEW, OTHER])], logprobs=[np.array([-1.0, -2.5, -4.0])])
    flat = pd.Series(1.0, index=LIVE)
    ids, scores = top_k(generated, 3, None, flat, pd.Series("x", index=LIVE), 0.0, 0.0, prior)
    assert np.all(np.diff(scores[0]) <= 0)
    return ids[0].tolist()


def test_a_new_ad_in_demand_now_outranks_one_the_model_saw_often_only_through_the_prior():
    now = _engagements([NEW] * 30 + [FREQUENT] * 30 + [OTHER] * 5)  # NEW is as popular as FREQUENT today
    assert _rank(None) == [FREQUENT, NEW, OTHER]
    assert _rank(popularity_shift(LIVE, TRAINED_ON, now, OFF)) == [FREQUENT, NEW, OTHER]
    assert _rank(popularity_shift(LIVE, TRAINED_ON, now, EXACT)) == [NEW, FREQUENT, OTHER]


def test_popularity_that_matches_training_leaves_the_models_order():
    """p_now = p_train: the exact correction cancels, whatever the counts."""
    now = _engagements([FREQUENT] * 500 + [OTHER] * 100)
    shift = popularity_shift(LIVE, TRAINED_ON, now, PriorParams(now_weight=1.0, train_weight=1.0,
                                                                half_life_days=1e6))
    assert shift[FREQUENT] == pytest.approx(shift[OTHER], abs=1e-3)
    assert _rank(shift) == [FREQUENT, NEW, OTHER]


def test_older_engagements_count_less_now():
    faded = _engagements([FREQUENT] * 40, day="2026-08-01")  # seven half-lives before the others
    recent = _engagements([NEW] * 10)
    shift = popularity_shift(LIVE, pd.Series({FREQUENT: 1, NEW: 1, OTHER: 1}), pd.concat([faded, recent]), EXACT)
    assert shift[NEW] > shift[FREQUENT]


def test_a_model_without_response_counts_ranks_by_its_own_scores(caplog):
    """A foreign causal-LM folder or a bundle from before the counts were written: the correction is off, said once."""
    with caplog.at_level(logging.WARNING, logger="leadre"):
        assert popularity_shift(LIVE, None, _engagements([NEW]), EXACT) is None
    assert "no response counts" in caplog.text
    assert _rank(None) == [FREQUENT, NEW, OTHER]


def test_lists_stay_padded_when_the_beams_are_short():
    generated = Generated(ad_ids=[np.array([NEW])], logprobs=[np.array([-1.0])])
    shift = popularity_shift(LIVE, TRAINED_ON, _engagements([NEW]), EXACT)
    ids, scores = top_k(generated, 3, None, pd.Series(1.0, index=LIVE), pd.Series("x", index=LIVE), 0.0, 0.0, shift)
    assert ids[0].tolist() == [NEW, PAD, PAD] and np.isfinite(scores[0, 0]) and scores[0, 1] == -np.inf


def test_sft_writes_the_main_task_answers_it_learned_from_and_dpo_carries_them(trained):
    from leadre.train.data import load_split

    params, _, _ = trained
    sft = read_response_counts(params.path(params.sft.out_dir))
    dpo = read_response_counts(params.path(params.dpo.out_dir))
    # the rows SFT trained on: sft.max_train_examples of the shuffled split
    rows = load_split(params, "sft", "train", ["task", "target_ad_id"], params.sft.max_train_examples,
                      params.sft.seed).to_pandas()
    main = rows.loc[rows["task"] == MAIN_TASK, "target_ad_id"]
    assert 0 < len(main) < len(rows), "the sample must mix main and auxiliary rows for the test to mean anything"
    expected = main.value_counts()
    assert sft.sum() == len(main) and sft.to_dict() == expected.to_dict()
    pd.testing.assert_series_equal(dpo, sft)
