"""Merged retrieval: the LLM's lists fused with an ID channel's, as a mixture of distributions or by reciprocal rank."""

import numpy as np
import pytest

from leadre.config import FusionParams
from leadre.decode.fusion import fuse, softmax_shares
from leadre.units import PAD

MIXTURE = FusionParams(method="mixture", channel="itemknn", llm_weight=1.0, channel_weight=1.0, temperature=1.0,
                       rank_constant=10, depth=50)
RRF = FusionParams(**{**MIXTURE.model_dump(), "method": "rrf"})
NO_SCORES = np.zeros((1, 4))  # what RRF does not read


def settings(base: FusionParams, **changes) -> FusionParams:
    return FusionParams(**{**base.model_dump(), **changes})


def test_rrf_an_ad_both_channels_rank_beats_ads_only_one_ranks():
    llm = np.array([[1, 2, 3, PAD]])
    knn = np.array([[4, 3, 5, 6]])
    ids, scores = fuse(llm, NO_SCORES, knn, NO_SCORES, 4, RRF)
    assert ids[0, 0] == 3  # 1/13 + 1/12 beats 1/11 alone
    assert ids[0].tolist() == [3, 1, 4, 2]  # ties (1 and 4 both 1/11) keep the LLM's first
    assert np.all(np.diff(scores[0]) <= 0)


def test_mixture_follows_the_confident_channel():
    """RRF hears rank only; the mixture hears how sure each channel is of its list."""
    llm, knn = np.array([[1, 2, 3]]), np.array([[2, 4, 5]])
    sure_of_1 = np.array([[0.0, -5.0, -6.0]])  # log-probs: ad 1 holds nearly all the LLM's mass
    hesitant = np.array([[0.0, -0.1, -0.2]])
    flat_knn = np.array([[0.4, 0.3, 0.3]])
    assert fuse(llm, sure_of_1, knn, flat_knn, 3, MIXTURE)[0][0, 0] == 1
    assert fuse(llm, hesitant, knn, flat_knn, 3, MIXTURE)[0][0, 0] == 2  # both channels hold 2
    assert fuse(llm, sure_of_1, knn, flat_knn, 3, RRF)[0][0, 0] == 2  # 1/12 + 1/11 whatever the LLM's confidence


def test_mixture_temperature_flattens_the_llm_and_weights_trade_the_channels():
    llm, knn = np.array([[1, 2]]), np.array([[3, 2]])
    scores, shares = np.array([[0.0, -1.0]]), np.array([[0.6, 0.4]])
    # T = 1: ad 1 holds e/(e+1) = 0.73 of the LLM's half, more than ad 2's 0.27 + 0.4
    assert fuse(llm, scores, knn, shares, 3, MIXTURE)[0][0].tolist() == [1, 2, 3]
    # T = 10: the LLM's two ads are nearly tied, so ad 2, held by both, leads
    assert fuse(llm, scores, knn, shares, 3, settings(MIXTURE, temperature=10.0))[0][0, 0] == 2
    # channel weight 0: the LLM's order alone
    ids, fused = fuse(llm, scores, knn, shares, 3, settings(MIXTURE, channel_weight=0.0))
    assert ids[0, :2].tolist() == [1, 2] and fused[0, 2] == 0.0
    np.testing.assert_allclose(softmax_shares(np.array([[0.0, -np.inf], [-np.inf, -np.inf]]), 1.0, 2),
                               [[1.0, 0.0], [0.0, 0.0]])


def test_mixture_scores_are_a_distribution_over_the_read_depth():
    llm, knn = np.array([[1, 2, 3, 4]]), np.array([[5, 6, 7, 8]])
    scores, shares = np.array([[0.0, -1.0, -2.0, -3.0]]), np.array([[0.25, 0.25, 0.25, 0.25]])
    ids, fused = fuse(llm, scores, knn, shares, 8, settings(MIXTURE, depth=2))
    assert sorted(ids[0][ids[0] != PAD].tolist()) == [1, 2, 5, 6]  # depth: only the first two of each list
    np.testing.assert_allclose(fused[0][np.isfinite(fused[0])].sum(), 1.0)  # each channel renormalised to its depth


@pytest.mark.parametrize("base", [MIXTURE, RRF], ids=["mixture", "rrf"])
def test_lists_stay_distinct_and_padded(base):
    llm = np.array([[1, 2], [PAD, PAD]])
    knn = np.array([[2, 1], [7, PAD]])
    scores, shares = np.array([[0.0, -1.0], [-np.inf, -np.inf]]), np.array([[0.5, 0.5], [1.0, 0.0]])
    ids, fused = fuse(llm, scores, knn, shares, 3, base)
    assert ids[0, 2] == PAD and fused[0, 2] == -np.inf
    assert ids[1].tolist() == [7, PAD, PAD]  # a user the LLM had nothing for still gets the channel's ads
    assert sorted(ids[0][:2].tolist()) == [1, 2]


def test_channels_must_cover_the_same_users():
    with pytest.raises(ValueError, match="one list per user"):
        fuse(np.zeros((2, 3), dtype=np.int64), np.zeros((2, 3)), np.zeros((3, 3), dtype=np.int64), np.zeros((3, 3)),
             3, MIXTURE)
