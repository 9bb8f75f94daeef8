"""ID-based baselines: the full-ranking protocol (candidates only, no exclusions, padding), what each model learns
on hand-built data, and SASRec learning a deterministic sequence pattern, seeded.

The tiny generated world checks the protocol on realistic data; behaviour is checked on frames small enough to
reason about by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from leadre.evaluate.baselines import (
    ItemKNN,
    ItemKNNParams,
    Popularity,
    PopularityParams,
    Recommender,
    SASRec,
    SASRecParams,
    ad_engagements,
    engaged_ads,
)
from leadre.evaluate.metrics import ranking_metrics
from leadre.units import PAD

AD = 1_000_000_000
A, B, C, D, E = (AD + i for i in range(5))
DAY = pd.Timedelta(days=1)
T0 = pd.Timestamp("2026-10-01T00:00Z")
# Small enough to fit in about a second on the tiny world; the protocol does not depend on model quality.
QUICK_SASREC = SASRecParams(hidden=16, layers=1, heads=1, max_len=10, epochs=2, batch_size=64)


def engagements(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    """(user, ad, day) triples as an engagements frame."""
    user, ad, day = zip(*rows)
    return pd.DataFrame({"user_id": np.array(user, dtype=np.int64), "ad_id": np.array(ad, dtype=np.int64),
                         "ts": T0 + pd.to_timedelta(np.array(day), unit="D")})


@pytest.fixture(scope="module")
def world(tiny_world: Path) -> dict:
    events = pd.read_parquet(tiny_world / "events.parquet")
    ads = pd.read_parquet(tiny_world / "ads.parquet")
    cutoff = events["ts"].max() - 7 * DAY
    train = ad_engagements(events, cutoff)
    users = np.sort(train["user_id"].unique())[:50]
    return {"events": events, "train": train, "cutoff": cutoff, "users": np.r_[users, 10**9],  # + one unseen
            "candidates": ads.loc[ads["status"] == "active", "ad_id"].to_numpy()}


def test_ad_engagements_keep_ad_clicks_and_conversions_before_the_cutoff(world):
    events, train, cutoff = world["events"], world["train"], world["cutoff"]
    expected = events[(events["domain"] == "ad") & (events["ts"] < cutoff)]
    assert len(train) == len(expected) > 0
    assert list(train.columns) == ["user_id", "ad_id", "ts"]
    assert set(events.loc[events["domain"] == "ad", "action"].unique()) <= {"click_ad", "convert_ad"}
    assert (train["ts"] < cutoff).all()
    assert train.equals(train.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True))
    assert [len(ads) for ads in engaged_ads(train, np.array([10**9]))] == [0]  # a user with no engagements


@pytest.mark.parametrize("make", [Popularity, ItemKNN, lambda: SASRec(QUICK_SASREC)],
                         ids=["popularity", "itemknn", "sasrec"])
def test_full_ranking_protocol_on_the_tiny_world(world, make):
    model: Recommender = make().fit(world["train"])
    assert isinstance(model, Recommender)
    users, candidates, k = world["users"], world["candidates"], 10
    exclude = engaged_ads(world["train"], users)
    recommended = model.recommend(users, k, candidates, exclude)
    assert recommended.shape == (len(users), k) and recommended.dtype == np.int64
    for row, excluded in zip(recommended, exclude):
        listed = row[row != PAD]
        assert np.isin(listed, candidates).all()
        assert not np.isin(listed, excluded).any()
        assert len(np.unique(listed)) == len(listed)
        # candidates are plentiful: a list is only short when exclusions leave fewer than k
        assert len(listed) == min(k, len(np.setdiff1d(candidates, excluded)))


def test_popularity_ranks_the_most_engaged_ad_first():
    data = engagements([(1, A, 0), (2, A, 0), (3, A, 1), (1, B, 1), (2, B, 2), (3, C, 2)])
    model = Popularity().fit(data)
    assert model.recommend(np.array([9]), 3, np.array([C, B, A])).tolist() == [[A, B, C]]
    # exclusions and padding: user 1 engaged with A and B; only C is left of three candidates
    assert model.recommend(np.array([1]), 3, np.array([A, B, C]), [np.array([A, B])]).tolist() == [[C, PAD, PAD]]
    # candidate restriction: A is not live; D was never engaged with and comes last
    assert model.recommend(np.array([9]), 3, np.array([D, B, C])).tolist() == [[B, C, D]]


def test_popularity_recency_decay_favours_recent_engagements():
    # A: three engagements 30 days before the last one; B: two on the last day.
    data = engagements([(1, A, 0), (2, A, 0), (3, A, 0), (1, B, 30), (2, B, 30)])
    plain = Popularity(PopularityParams(half_life_days=None)).fit(data)
    assert plain.recommend(np.array([9]), 1, np.array([A, B])).tolist() == [[A]]
    # half-life 7 days: A weighs 3 * 2^(-30/7) ~ 0.15 < B's 2
    decayed = Popularity(PopularityParams(half_life_days=7)).fit(data)
    assert decayed.recommend(np.array([9]), 1, np.array([A, B])).tolist() == [[B]]


def test_itemknn_recommends_the_co_engaged_ad():
    # A and B go together (users 1, 2), C and D go together (users 3, 4); E is the most popular (4 users vs 3).
    data = engagements([(1, A, 0), (1, B, 1), (2, A, 0), (2, B, 1), (3, C, 0), (3, D, 1), (4, C, 0), (4, D, 1),
                        (5, E, 0), (6, E, 0), (7, E, 0), (10, E, 0), (8, A, 0), (9, C, 0)])
    model = ItemKNN(ItemKNNParams(neighbours=2)).fit(data)
    candidates = np.array([A, B, C, D, E])
    recommended = model.recommend(np.array([8, 9]), 1, candidates, engaged_ads(data, np.array([8, 9])))
    assert recommended.tolist() == [[B], [D]]
    # after the co-engaged ad, the rest follows popularity; an unseen user gets popularity alone
    assert model.recommend(np.array([8]), 3, candidates, [np.array([A])]).tolist() == [[B, E, C]]
    popular = Popularity().fit(data).recommend(np.array([42]), 5, candidates)
    assert (model.recommend(np.array([42]), 5, candidates) == popular).all()


def test_itemknn_shares_read_its_list_as_a_distribution():
    """What the mixture fusion reads: evidence shares for a user with history, popularity shares without."""
    data = engagements([(1, A, 0), (1, B, 1), (2, A, 0), (2, B, 1), (2, C, 1), (3, C, 0), (3, D, 1),
                        (5, E, 0), (6, E, 0), (7, E, 0), (8, A, 0)])
    model = ItemKNN(ItemKNNParams(neighbours=3)).fit(data)
    candidates = np.array([A, B, C, D, E])
    ids, shares = model.recommend(np.array([8, 42]), 5, candidates, [np.array([A]), np.array([], np.int64)],
                                  return_shares=True)
    assert (ids == model.recommend(np.array([8, 42]), 5, candidates, [np.array([A]), np.array([], np.int64)])).all()
    assert ids[0, -1] == PAD and shares[0, -1] == 0  # A is excluded: four ads, padding holds no mass
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    assert ids[0, 0] == B and shares[0, 0] > shares[0, 1] > 0  # B co-engaged with A by two users, C by one
    assert (shares[0, 2:] == 0).all()  # popularity fills the list but carries no evidence
    popularity = model.popularity.reindex(ids[1]).to_numpy()
    np.testing.assert_allclose(shares[1], popularity / popularity.sum())  # an unseen user: popularity's shares


def cyclic_sequences(n_items: int, n_users: int, seed: int) -> pd.DataFrame:
    """Each user walks ad i, i+1, i+2, ... (mod n_items) from a random start: the next ad is fully determined."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        start, length = rng.integers(n_items), rng.integers(4, 9)
        rows += [(user, AD + (start + step) % n_items, step) for step in range(length)]
    return engagements(rows)


PATTERN_SASREC = SASRecParams(hidden=32, layers=1, heads=1, max_len=8, epochs=15, lr=5e-3, batch_size=64,
                              dropout=0.0, seed=3)


def test_sasrec_learns_a_deterministic_sequence_pattern():
    n_items = 30
    data = cyclic_sequences(n_items, n_users=300, seed=0)
    model = SASRec(PATTERN_SASREC).fit(data)
    users = np.arange(300)
    last = data.groupby("user_id")["ad_id"].last().to_numpy()
    expected = AD + (last - AD + 1) % n_items
    recommended = model.recommend(users, 1, np.arange(AD, AD + n_items))
    hr1 = ranking_metrics(recommended, [np.array([e]) for e in expected], ks=(1,))["hr@1"]
    assert hr1 >= 0.95, model.loss_history
    assert model.loss_history[-1] < model.loss_history[0]


def test_sasrec_is_seeded_and_leaves_torch_state_alone():
    data = cyclic_sequences(20, n_users=60, seed=1)
    params = SASRecParams(hidden=16, layers=1, heads=1, max_len=8, epochs=3, batch_size=16, seed=7)
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    first = SASRec(params).fit(data)
    assert torch.equal(torch.rand(1), expected_draw)  # the caller's RNG stream is untouched
    assert torch.get_num_threads() == threads
    second = SASRec(params).fit(data)
    assert first.loss_history == second.loss_history
    users, candidates = np.arange(60), np.arange(AD, AD + 20)
    assert (first.recommend(users, 5, candidates) == second.recommend(users, 5, candidates)).all()
    other = SASRec(SASRecParams(**{**params.__dict__, "seed": 8})).fit(data)
    assert other.loss_history != first.loss_history


@pytest.mark.parametrize("threads", [0, 1])
def test_sasrec_threads_follow_the_step_unless_set(threads):
    """threads 0 (the default) runs on the step's own torch threads (model.cpu_threads); a number overrides it
    for the call only."""
    data = cyclic_sequences(10, n_users=20, seed=1)
    model = SASRec(SASRecParams(hidden=16, layers=1, heads=1, max_len=8, epochs=1, threads=threads)).fit(data)
    seen = []
    model.network.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    step_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model.recommend(np.arange(20), 5, np.arange(AD, AD + 10))
        assert seen == [threads or 2]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(step_threads)


def test_sasrec_falls_back_to_popularity_for_unseen_users_and_unknown_ads():
    data = cyclic_sequences(10, n_users=40, seed=2)
    model = SASRec(SASRecParams(hidden=16, layers=1, heads=1, max_len=8, epochs=1)).fit(data)
    candidates = np.r_[np.arange(AD, AD + 10), AD + 99]  # AD + 99: live, but nobody engaged with it yet
    popular = Popularity().fit(data).recommend(np.array([777]), 11, candidates)
    assert (model.recommend(np.array([777]), 11, candidates) == popular).all()
    # a known user gets every known ad first and the never-seen one last
    assert model.recommend(np.array([0]), 11, candidates)[0, -1] == AD + 99


def test_sasrec_shares_are_a_softmax_of_its_logits():
    data = cyclic_sequences(10, n_users=40, seed=2)
    model = SASRec(SASRecParams(hidden=16, layers=1, heads=1, max_len=8, epochs=1)).fit(data)
    candidates = np.r_[np.arange(AD, AD + 10), AD + 99]
    ids, shares = model.recommend(np.array([0, 777]), 11, candidates, return_shares=True)
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    logits = model._score(np.array([0]), ids[0])[0]
    known = np.isfinite(logits)
    assert shares[0, ~known].tolist() == [0.0]  # the ad nobody engaged with: no logit, no mass
    # float32 logits: scoring 1 user and 2 users runs matrix products of other shapes, and on some CPUs (an AVX2
    # EPYC) their last bits differ, ~1e-7 relative; a softmax of the same logits agrees far closer than 1e-6
    np.testing.assert_allclose(shares[0, known], np.exp(logits[known]) / np.exp(logits[known]).sum(), rtol=1e-6)
    assert np.all(np.diff(shares[0]) <= 1e-12)
    popularity = model.popularity.reindex(ids[1], fill_value=0.0).to_numpy()
    np.testing.assert_allclose(shares[1], popularity / popularity.sum())  # an unseen user: popularity's shares


def test_misuse_is_reported():
    with pytest.raises(RuntimeError, match="fit"):
        Popularity().recommend(np.array([1]), 3, np.array([A]))
    model = Popularity().fit(engagements([(1, A, 0)]))
    with pytest.raises(ValueError, match="exclude"):
        model.recommend(np.array([1, 2]), 3, np.array([A]), [np.array([A])])
    with pytest.raises(ValueError, match="columns"):
        Popularity().fit(pd.DataFrame({"user_id": [1], "object_id": [A]}))
