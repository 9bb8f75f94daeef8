"""Merged retrieval: the LLM's candidates fused with another retrieval channel's, as the paper's online service does.

Weighted reciprocal-rank fusion: an ad scores Σ_channels weight / (rank_constant + rank), ranks from 1, nothing
from a channel whose list misses it. Ranks rather than scores because the channels' scores live on different
scales (sequence log-probabilities against item-item similarity sums), and a rank needs no calibration. Ties keep
the LLM's order first, then the other channel's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from leadre.config import FusionParams
from leadre.units import PAD


def fuse(llm: np.ndarray, channel: np.ndarray, k: int, settings: FusionParams) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) fused ad ids padded with PAD, and their fused scores (-inf where padded).

    `llm` and `channel` are (n, width) ranked ad ids padded with PAD; only the first `settings.depth` of each count.
    """
    return reciprocal_rank_fusion([(llm, settings.llm_weight), (channel, settings.channel_weight)], k,
                                  settings.rank_constant, settings.depth)


def reciprocal_rank_fusion(channels: list[tuple[np.ndarray, float]], k: int, rank_constant: float,
                           depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted RRF over any number of (lists, weight) channels, ties to the earlier channel; as `fuse`."""
    lists_by_channel = [np.asarray(lists, dtype=np.int64) for lists, _ in channels]
    if len({len(lists) for lists in lists_by_channel}) > 1:
        raise ValueError("fusion needs one list per user from each channel, got "
                         + " and ".join(str(len(lists)) for lists in lists_by_channel))
    n = len(lists_by_channel[0])
    parts = []
    for order, (lists, (_, weight)) in enumerate(zip(lists_by_channel, channels)):
        lists = lists[:, :depth]
        rank = np.broadcast_to(np.arange(1, lists.shape[1] + 1), lists.shape)
        row = np.broadcast_to(np.arange(n)[:, None], lists.shape)
        keep = lists != PAD
        parts.append(pd.DataFrame({"row": row[keep], "ad": lists[keep], "score": weight / (rank_constant + rank[keep]),
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
