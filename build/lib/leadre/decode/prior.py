"""The popularity-shift correction of the LLM's scores: Bayes' rule for a label shift (Saerens et al., 2002).

The model learns p(ad | prompt) under the mix of ads in its training responses, which spans the weeks before the
cut-off. When it ranks, ads' popularity has moved on: new ads have launched, old ones faded. Re-weighting each ad
by p_now(ad) / p_train(ad) turns the training-time posterior into the one at ranking time:

    score = log p(ad | prompt) + now_weight · log p_now(ad) − train_weight · log p_train(ad)

- p_train: the ad's share of the main-task responses the model was trained on (the bundle's response counts,
  leadre/bundle.py: SFT writes them, DPO carries them).
- p_now: the ad's share of ad engagements before ranking time, each weighing 2^(-age / half_life_days).

Both are add-one smoothed, so an ad nobody engaged with keeps a finite score. now_weight = train_weight = 1 is the
exact correction, with no free parameter; 0 and 0 is the model alone. The correction re-ranks the beams the search
found; it does not steer the search, which is why `decode.beam_width` is wider than the lists served.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from leadre.config import PriorParams

log = logging.getLogger(__name__)


def log_shares(counts: pd.Series, ad_ids: np.ndarray) -> np.ndarray:
    """Each ad's add-one smoothed log share of `counts` (distinct ad id → count) among `ad_ids` (distinct)."""
    counts = counts.reindex(ad_ids, fill_value=0.0).to_numpy(np.float64)
    return np.log((counts + 1.0) / (counts.sum() + len(counts)))


def popularity_shift(ad_ids: np.ndarray, response_counts: pd.Series | None, engagements: pd.DataFrame | None,
                     settings: PriorParams) -> pd.Series | None:
    """ad id → the term added to each of these ads' log-probabilities; None when the correction is off or cannot
    be made (a model folder without response counts, no engagement log), so the model's own scores rank.

    `engagements`: user_id, ad_id, ts of ad engagements strictly before ranking time.
    """
    from leadre.evaluate.baselines import popularity_scores

    if settings.now_weight == 0 and settings.train_weight == 0:
        return None
    if response_counts is None or engagements is None:
        missing = ("an engagement log" if response_counts is not None else
                   "response counts (a model trained before they were written, or not by `leadre sft`)")
        log.warning("decode.prior: no %s, so the popularity-shift correction is off for this model", missing)
        return None
    ad_ids = np.unique(np.asarray(ad_ids, dtype=np.int64))
    now = popularity_scores(engagements, settings.half_life_days)
    term = settings.now_weight * log_shares(now, ad_ids) - settings.train_weight * log_shares(response_counts, ad_ids)
    return pd.Series(term, index=ad_ids, name="popularity_shift")
