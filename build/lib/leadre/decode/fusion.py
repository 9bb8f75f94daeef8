"""Merged retrieval: the LLM's candidates fused with another retrieval channel's, as the paper's online service does.

Two ways to merge, `fusion.method` in params.yaml:

- `mixture` (the default): each channel's list read as a distribution over its ads, mixed by the channels' weights.
  The LLM's is the softmax of its final beam scores at `temperature` over its top `depth`; an ID baseline's is its
  own list's shares (`ScoringRecommender.recommend(..., return_shares=True)`: item-KNN's similarity sums
  normalised, SASRec's logits soft-maxed). A confident channel outweighs a hesitant one, and an ad the ID channel
  cannot know (a new ad, nobody engaged with it yet) loses only that channel's weight of its mass.
- `rrf`: weighted reciprocal-rank fusion, Σ_channels weight / (rank_constant + rank), ranks from 1. Ranks need no
  calibration, but a user's tenth beam counts the same whether the model was sure of it or not.

An ad missing from a channel's list gets nothing from that channel. Ties keep the LLM's order first, then the
other channel's. bench.fusion compares the two and chose the weights on the valid split (docs/evaluation.md).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from leadre.config import FusionParams
from leadre.units import PAD


def fuse(llm: np.ndarray, llm_scores: np.ndarray, channel: np.ndarray, channel_shares: np.ndarray, k: int,
         settings: FusionParams) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) fused ad ids padded with PAD, and their fused scores (-inf where padded).

    `llm` / `llm_scores`: the LLM's ranked ad ids (PAD-padded) and their final scores (`top_k`'s); `channel` /
    `channel_shares`: the ID channel's ranked ids and their shares (`recommend(..., return_shares=True)`). Only the
    first `settings.depth` of each list count.
    """
    if settings.method == "rrf":
        return reciprocal_rank_fusion([(llm, settings.llm_weight), (channel, settings.channel_weight)], k,
                                      settings.rank_constant, settings.depth)
    return mixture_fusion([(llm, softmax_shares(llm_scores, settings.temperature, settings.depth), settings.llm_weight),
                           (channel, channel_shares, settings.channel_weight)], k, settings.depth)


def softmax_shares(scores: np.ndarray, temperature: float, depth: int) -> np.ndarray:
    """Each row's first `depth` scores as a distribution: softmax(score / temperature); 0 where a score is -inf."""
    scores = np.asarray(scores, dtype=np.float64)[:, :depth] / temperature
    finite = np.isfinite(scores)
    top = np.where(finite, scores, -np.inf).max(axis=1, initial=-np.inf, keepdims=True)
    weights = np.where(finite, np.exp(scores - np.where(np.isfinite(top), top, 0.0)), 0.0)
    total = weights.sum(axis=1, keepdims=True)
    return np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)


def mixture_fusion(channels: list[tuple[np.ndarray, np.ndarray, float]], k: int,
                   depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Σ_channels weight_c / Σ weights × share_c(ad) over any number of (lists, shares, weight); as `fuse`. Each
    channel's shares are renormalised over the first `depth` of its list, the part that is read."""
    total = sum(weight for _, _, weight in channels) or 1.0
    parts = []
    for lists, shares, weight in channels:
        shares = np.where(np.asarray(lists)[:, :depth] != PAD, np.asarray(shares, dtype=np.float64)[:, :depth], 0.0)
        mass = shares.sum(axis=1, keepdims=True)
        shares = np.divide(shares, mass, out=np.zeros_like(shares), where=mass > 0)
        parts.append((lists, shares * (weight / total)))
    return _merge(parts, k, depth)


def reciprocal_rank_fusion(channels: list[tuple[np.ndarray, float]], k: int, rank_constant: float,
                           depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted RRF over any number of (lists, weight) channels; as `fuse`."""
    return _merge([(lists, np.broadcast_to(weight / (rank_constant + np.arange(1, depth + 1)), (len(lists), depth)))
                   for lists, weight in channels], k, depth)


def _merge(channels: list[tuple[np.ndarray, np.ndarray]], k: int, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum each ad's (lists, scores) contributions over the channels; the top k per row, ties to the earlier
    channel, then the better rank."""
    lists_by_channel = [np.asarray(lists, dtype=np.int64) for lists, _ in channels]
    if len({len(lists) for lists in lists_by_channel}) > 1:
        raise ValueError("fusion needs one list per user from each channel, got "
                         + " and ".join(str(len(lists)) for lists in lists_by_channel))
    n = len(lists_by_channel[0])
    parts = []
    for order, (lists, (_, contribution)) in enumerate(zip(lists_by_channel, channels)):
        lists = lists[:, :depth]
        contribution = np.asarray(contribution)[:, :lists.shape[1]]
        rank = np.broadcast_to(np.arange(1, lists.shape[1] + 1), lists.shape)
        row = np.broadcast_to(np.arange(n)[:, None], lists.shape)
        keep = lists != PAD
        parts.append(pd.DataFrame({"row": row[keep], "ad": lists[keep], "score": contribution[keep],
                                   "tie": order * 10_000_000 + rank[keep]}))
    both = pd.concat(parts, ignore_index=True)
    fused = both.groupby(["row", "ad"], sort=False).agg(score=("score", "sum"), tie=("tie", "min")).reset_index()
    fused = fused.sort_values(["row", "score", "tie"], ascending=[True, False, True], kind="stable")
    fused["slot"] = fused.groupby("row").cumcount()
    fused = fused[fused["slot"] < k]
    ids = np.full((n, k), PAD, dtype=np.int64)
    scores = np.full((n, k), -np.inf)
    ids[fused["row"].to_numpy(), fused["slot"].to_numpy()] = fused["ad"].to_numpy()
    scores[fused["row"].to_numpy(), fused["slot"].to_numpy()] = fused["score"].to_numpy()
    return ids, scores
