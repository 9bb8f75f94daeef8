"""Paired bootstrap intervals of a relative lift over users: is a difference between two methods more than noise?

Both methods are scored on the same users, so resampling users (with replacement) and recomputing the ratio of the
two means keeps the pairing: a user who is easy for one method is easy for the other, and that shared variance
cancels. The interval is the percentile interval of the resampled lifts. Evaluation reports one per method and
reference, and the gate decides on its lower end, so the same numbers explain a report and a promotion.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# Resampled means are computed a block of resamples at a time: (block × users) indices stay ~64 MB at 1M users.
_BLOCK_CELLS = 8_000_000


@dataclass(frozen=True)
class Lift:
    """Relative lift of a method's mean over a reference's, with its paired bootstrap interval (NaN when undefined)."""

    lift: float
    low: float
    high: float
    confidence: float
    resamples: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @property
    def defined(self) -> bool:
        return not any(math.isnan(v) for v in (self.lift, self.low, self.high))


def paired_lift(method: np.ndarray, reference: np.ndarray, resamples: int = 1000, confidence: float = 0.95,
                seed: int = 0) -> Lift:
    """mean(method) / mean(reference) − 1 over the same users, with a percentile interval from `resamples` draws.

    Undefined (all NaN) when the reference's mean is 0 or any input is NaN: a decision built on it must fail closed.
    """
    method = np.asarray(method, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if method.shape != reference.shape or method.ndim != 1:
        raise ValueError(f"paired scores need two 1-D arrays of one length, got {method.shape} and {reference.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be positive, got {resamples}")
    undefined = Lift(math.nan, math.nan, math.nan, confidence, resamples)
    n = len(method)
    if n == 0 or np.isnan(method).any() or np.isnan(reference).any() or reference.sum() == 0:
        return undefined
    rng = np.random.default_rng(seed)
    ratios = np.empty(resamples)
    block = max(1, _BLOCK_CELLS // n)
    for start in range(0, resamples, block):
        rows = rng.integers(0, n, size=(min(block, resamples - start), n))
        ref_sum = reference[rows].sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios[start:start + len(rows)] = method[rows].sum(axis=1) / ref_sum - 1.0
    # a resample whose reference scored 0 everywhere has no ratio: it counts as the worst case, never dropped
    ratios[~np.isfinite(ratios)] = -math.inf
    tail = (1 - confidence) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail], method="nearest")  # no interpolation across -inf
    return Lift(lift=float(method.mean() / reference.mean() - 1.0), low=float(low), high=float(high),
                confidence=confidence, resamples=resamples)
