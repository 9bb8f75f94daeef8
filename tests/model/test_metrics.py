"""Ranking and catalogue metrics against hand-computed values; edge cases: no hits, padding, repeats, short lists."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from leadre.evaluate.metrics import (
    PAD,
    coverage,
    industry_diversity,
    mean_ecpm,
    per_row_metrics,
    ranking_metrics,
    validity,
)

A, B, C, D, E = (1_000_000_000 + i for i in range(5))


def test_single_hit_at_rank_three():
    m = ranking_metrics(np.array([[A, B, C, D]]), [np.array([C])], ks=(1, 2, 3, 4))
    assert m["hr@1"] == m["hr@2"] == 0 and m["hr@3"] == m["hr@4"] == 1
    # DCG = 1/log2(3 + 1) = 0.5; ideal with one relevant id = 1/log2(2) = 1 -> NDCG = 0.5
    assert m["ndcg@3"] == pytest.approx(0.5)
    assert m["ndcg@4"] == pytest.approx(0.5)
    assert m["ndcg@2"] == 0
    assert m["mrr"] == pytest.approx(1 / 3)


def test_multiple_relevant():
    # Relevant A, C, E: hits at ranks 1 (A) and 3 (C); E is never recommended.
    m = ranking_metrics(np.array([[A, B, C, D]]), [np.array([A, C, E])], ks=(1, 3, 4))
    assert m["ndcg@1"] == pytest.approx(1.0)  # hit at rank 1; ideal over min(3, 1) = 1 slot
    # @3: DCG = 1/log2(2) + 1/log2(4) = 1 + 0.5 = 1.5; IDCG over min(3, 3) = 3 slots = 1 + 1/log2(3) + 0.5
    assert m["ndcg@3"] == pytest.approx(1.5 / (1 + 1 / math.log2(3) + 0.5))
    # @4: same DCG (D is a miss); IDCG still over 3 relevant ids
    assert m["ndcg@4"] == pytest.approx(1.5 / (1 + 1 / math.log2(3) + 0.5))
    assert m["mrr"] == 1.0


def test_no_hits_scores_zero():
    m = ranking_metrics(np.array([[A, B]]), [np.array([E])])
    assert all(v == 0 for v in m.values())


def test_no_relevant_ids_scores_zero_not_nan():
    rows = per_row_metrics(np.array([[A, B]]), [np.array([], dtype=np.int64)])
    assert (rows.to_numpy() == 0).all()


def test_padding_is_never_a_hit_even_if_relevant_lists_contain_it():
    m = ranking_metrics(np.array([[PAD, PAD]]), [np.array([PAD])])
    assert all(v == 0 for v in m.values())


def test_k_larger_than_list_penalises_short_lists():
    # A list of 2 with a hit at rank 2, two relevant ids, k = 10:
    # DCG = 1/log2(3); IDCG over min(2, 10) = 2 slots = 1 + 1/log2(3)
    m = ranking_metrics(np.array([[A, B]]), [np.array([B, C])], ks=(10,))
    assert m["hr@10"] == 1
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))


def test_padded_list_equals_unpadded_list():
    padded = ranking_metrics(np.array([[A, B, PAD, PAD]]), [np.array([B])], ks=(1, 5))
    short = ranking_metrics(np.array([[A, B]]), [np.array([B])], ks=(1, 5))
    assert padded == short


def test_repeated_id_counts_once():
    # [C, C, D] with C relevant: the second C is not a second hit, so NDCG@3 = 1 (not > 1).
    m = ranking_metrics(np.array([[C, C, D]]), [np.array([C, C])], ks=(3,))
    assert m["ndcg@3"] == pytest.approx(1.0)


def test_ranking_metrics_is_the_mean_of_rows_and_rows_split_by_group():
    recommended = np.array([[A, B, C], [C, A, B], [D, E, A]])
    relevant = [np.array([A]), np.array([B]), np.array([C])]
    rows = per_row_metrics(recommended, relevant, ks=(1, 3))
    # row 0: hit at 1 -> mrr 1; row 1: hit at 3 -> mrr 1/3; row 2: no hit -> 0
    assert rows["mrr"].tolist() == pytest.approx([1, 1 / 3, 0])
    assert rows["hr@1"].tolist() == [1, 0, 0]
    mean = ranking_metrics(recommended, relevant, ks=(1, 3))
    assert mean["mrr"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert list(mean) == ["hr@1", "hr@3", "ndcg@1", "ndcg@3", "mrr"]
    warm = rows[np.array([True, True, False])].mean()
    assert warm["hr@3"] == 1.0


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="2-D"):
        ranking_metrics(np.array([A, B]), [np.array([A])])
    with pytest.raises(ValueError, match="rows"):
        ranking_metrics(np.array([[A, B]]), [np.array([A]), np.array([B])])


def test_validity_and_coverage():
    recommended = np.array([[A, B, PAD], [A, 42, PAD]])
    # 4 non-padding outputs, 3 of them live (A, B, A) -> 0.75
    assert validity(recommended, np.array([A, B, C])) == pytest.approx(0.75)
    # distinct outputs {A, B, 42} over a catalogue of 6 -> 0.5
    assert coverage(recommended, catalogue_size=6) == pytest.approx(0.5)
    assert validity(np.full((2, 3), PAD), np.array([A])) == 0.0


def test_industry_diversity():
    industry = {A: "ecommerce/apparel", B: "ecommerce/apparel", C: "finance/loan", D: "games/rpg"}
    recommended = np.array([[A, B, C, D], [A, B, PAD, PAD], [C, 42, PAD, PAD], [PAD] * 4])
    # row 0: 3 industries / 4 ads = 0.75; row 1: 1 / 2 = 0.5; row 2: 1 known industry / 2 outputs = 0.5;
    # row 3 is empty and left out -> (0.75 + 0.5 + 0.5) / 3
    expected = (0.75 + 0.5 + 0.5) / 3
    assert industry_diversity(recommended, industry) == pytest.approx(expected)
    as_series = pd.Series(industry).astype("category")
    assert industry_diversity(recommended, as_series) == pytest.approx(expected)


def test_mean_ecpm():
    ecpm = pd.Series({A: 10.0, B: 20.0, C: 60.0})
    # outputs A, B, C, A known (42 unknown, left out): (10 + 20 + 60 + 10) / 4 = 25
    assert mean_ecpm(np.array([[A, B, C], [A, 42, PAD]]), ecpm) == pytest.approx(25.0)
    assert mean_ecpm(np.array([[A, B, C], [A, 42, PAD]]), ecpm.to_dict()) == pytest.approx(25.0)
    assert mean_ecpm(np.full((1, 2), PAD), ecpm) == 0.0
