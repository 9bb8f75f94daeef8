"""The hot path: a user's stored candidates + the live-ads index → k ads. numpy and dicts only, no pandas.

Near-line candidates come first, in score order, minus ads that are no longer live. When they are missing (unknown
user), too old (stale snapshot) or too few, the answer is filled with popular live ads: first from the user's top
industries (read off their stored candidates, stale or not: old interests beat none), then from overall popularity,
never repeating an ad. A fallback item's score is the ad's popularity, so scores are comparable within a source only.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from leadre.serve.bundle import BundleIndex
from leadre.serve.store import Candidates

_NO_POSITIONS = np.empty(0, np.int64)
SCORE_DECIMALS = 6  # float32 carries about 7 significant digits; more in the JSON would be noise


class FallbackReason(StrEnum):
    UNKNOWN_USER = "unknown_user"  # no entry in the current snapshot (or no snapshot)
    STALE = "stale"  # the entry is older than the staleness limit
    TOO_FEW = "too_few"  # fewer than k of its ads are still live
    STORE_ERROR = "store_error"  # the store could not be read: degrade rather than fail the request
    # answer-wide, set by the service from the bundle and the snapshot's label, whatever the per-user reason:
    NO_CHAMPION = "no_champion"  # the registry has no champion: a baseline's lists (or popularity) are served
    NEARLINE_PENDING = "nearline_pending"  # a champion exists, but the store still holds the fallback's lists


@dataclass(slots=True)
class Recommendation:
    ad_ids: list[int]
    scores: list[float]
    nearline: int  # the first `nearline` items come from the store, the rest from the fallback
    fallback_reason: FallbackReason | None


def recommend(index: BundleIndex, candidates: Candidates | None, k: int, now: float, staleness_limit_s: float,
              fallback_industries: int, *, store_failed: bool = False) -> Recommendation:
    ad_ids: list[int] = []
    scores: list[float] = []
    stale = candidates is not None and now - candidates.created_ts > staleness_limit_s
    if candidates is not None and not stale:
        ad_ids, scores = _first_live(index, candidates, k, now)
    nearline = len(ad_ids)
    if nearline >= k:
        return Recommendation(ad_ids, scores, nearline, None)
    if store_failed:
        reason = FallbackReason.STORE_ERROR
    elif candidates is None:
        reason = FallbackReason.UNKNOWN_USER
    else:
        reason = FallbackReason.STALE if stale else FallbackReason.TOO_FEW
    positions = _NO_POSITIONS
    if candidates is not None:
        positions = index.live_positions(candidates.ad_ids, now)
        positions = positions[positions >= 0]
    _fill(index, _top_industries(index, positions, fallback_industries), k, now, ad_ids, scores)
    return Recommendation(ad_ids, scores, nearline, reason)


def _first_live(index: BundleIndex, candidates: Candidates, k: int, now: float) -> tuple[list[int], list[float]]:
    """The first k live candidates. A dict walk that stops at k: most users need ~k lookups, not one per candidate,
    and each numpy call on a 50-element array costs about what ten dict lookups do."""
    position, expires = index.position, index.expires_list
    ad_ids: list[int] = []
    picked: list[int] = []
    for i, ad_id in enumerate(candidates.ad_ids.tolist()):
        p = position.get(ad_id)
        if p is not None and expires[p] > now:
            ad_ids.append(ad_id)
            picked.append(i)
            if len(ad_ids) == k:
                break
    stored = candidates.scores[: picked[-1] + 1].tolist() if picked else []
    # float32 → 6 decimals: JSON shows 0.9, not float32's 0.8999999761581421.
    return ad_ids, [round(stored[i], SCORE_DECIMALS) for i in picked]


def _top_industries(index: BundleIndex, positions: np.ndarray, limit: int) -> np.ndarray:
    """Industry codes by how many of the user's live candidates they hold; ties go to the better-ranked one."""
    if len(positions) == 0:
        return _NO_POSITIONS
    codes, first, counts = np.unique(index.industry[positions], return_index=True, return_counts=True)
    return codes[np.lexsort((first, -counts))[:limit]]


def _fill(index: BundleIndex, industries: np.ndarray, k: int, now: float, ad_ids: list[int],
          scores: list[float]) -> None:
    """Append popular live ads to `ad_ids`/`scores` (in place) until there are k or the pools run dry."""
    taken = set(ad_ids)
    pools = []
    if len(industries):
        pool = np.concatenate([index.popular_by_industry[code] for code in industries.tolist()])
        pools.append(pool[np.argsort(index.rank[pool], kind="stable")])
    pools.append(index.popular)
    for pool in pools:
        pool = pool[index.expires_ts[pool] > now]
        # Only already-taken ads are skipped, so this many entries always suffice: no need to convert the rest.
        pool = pool[: k - len(ad_ids) + len(taken)]
        for ad_id, popularity in zip(index.ad_ids[pool].tolist(), index.popularity[pool].tolist()):
            if ad_id in taken:
                continue
            taken.add(ad_id)
            ad_ids.append(ad_id)
            scores.append(popularity)
            if len(ad_ids) >= k:
                return
