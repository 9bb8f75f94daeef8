"""Merged retrieval: reciprocal-rank fusion of the LLM's lists with an ID channel's."""

import numpy as np
import pytest

from leadre.config import FusionParams
from leadre.units import PAD
from leadre.decode.fusion import fuse

SETTINGS = FusionParams(channel="itemknn", llm_weight=1.0, channel_weight=1.0, rank_constant=10, depth=50)


def test_an_ad_both_channels_rank_beats_ads_only_one_ranks():
    llm = np.array([[1, 2, 3, PAD]])
    knn = np.array([[4, 3, 5, 6]])
    ids, scores = fuse(llm, knn, 4, SETTINGS)
    assert ids[0, 0] == 3  # 1/13 + 1/12 beats 1/11 alone
    assert ids[0].tolist() == [3, 1, 4, 2]  # ties (1 and 4 both 1/11) keep the LLM's first
    assert np.all(np.diff(scores[0]) <= 0)


def test_lists_stay_distinct_padded_and_weighted():
    llm = np.array([[1, 2], [PAD, PAD]])
    knn = np.array([[2, 1], [7, PAD]])
    ids, scores = fuse(llm, knn, 3, FusionParams(**{**SETTINGS.model_dump(), "channel_weight": 0.0}))
    assert ids[0].tolist() == [1, 2, PAD] and scores[0, 2] == -np.inf  # weight 0: the LLM's order alone
    assert ids[1].tolist() == [7, PAD, PAD]  # a user the LLM had nothing for still gets the channel's ads
    assert len(set(ids[0][ids[0] != PAD].tolist())) == 2


def test_depth_limits_what_each_channel_contributes():
    llm = np.array([[1, 2, 3]])
    knn = np.array([[4, 5, 6]])
    ids, _ = fuse(llm, knn, 6, FusionParams(**{**SETTINGS.model_dump(), "depth": 1}))
    assert sorted(ids[0][ids[0] != PAD].tolist()) == [1, 4]


def test_channels_must_cover_the_same_users():
    with pytest.raises(ValueError, match="one list per user"):
        fuse(np.zeros((2, 3), dtype=np.int64), np.zeros((3, 3), dtype=np.int64), 3, SETTINGS)
