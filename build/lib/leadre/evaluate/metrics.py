"""Ranking and catalogue metrics over recommendation lists, in plain numpy.

Every function takes `recommended`: an (n_rows, K_max) int64 array of ad ids, best first, padded at the end with
`PAD` when a model returned fewer than K_max ads. The LLM and the ID-based baselines are scored by the same code,
so their numbers are comparable by construction.

Relevance is binary: an ad is a hit when it is among the row's relevant ids. A repeated id counts once, at its
first position (a generator that repeats a good ad should not collect its gain twice), and padding is never a hit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from leadre.units import PAD
DEFAULT_KS = (1, 5, 10, 20)

AdLookup = Mapping[int, object] | pd.Series


def _as_matrix(recommended: np.ndarray) -> np.ndarray:
    matrix = np.asarray(recommended, dtype=np.int64)
    if matrix.ndim != 2:
        raise ValueError(f"recommended must be 2-D (rows, K_max); got shape {matrix.shape}")
    return matrix


def _hit_matrix(recommended: np.ndarray, relevant: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(hits, n_relevant): hits[i, j] is True when recommended[i, j] is relevant to row i (first occurrence only);
    n_relevant[i] counts the row's distinct relevant ids."""
    n, width = recommended.shape
    if len(relevant) != n:
        raise ValueError(f"relevant has {len(relevant)} rows, recommended has {n}")
    lists = [np.asarray(r, dtype=np.int64).ravel() for r in relevant]
    rel_rows = np.repeat(np.arange(n, dtype=np.int64), [len(r) for r in lists])
    rel_ids = np.concatenate(lists) if lists else np.empty(0, dtype=np.int64)
    keep = rel_ids != PAD
    rel_rows, rel_ids = rel_rows[keep], rel_ids[keep]

    # (row, id) pairs as one int64 key: ids are first mapped to dense codes so the product cannot overflow.
    codes, uniques = pd.factorize(np.concatenate([recommended.ravel(), rel_ids]))
    n_codes = max(len(uniques), 1)
    rec_key = np.repeat(np.arange(n, dtype=np.int64), width) * n_codes + codes[:recommended.size]
    rel_key = np.unique(rel_rows * n_codes + codes[recommended.size:])
    n_relevant = np.bincount(rel_key // n_codes, minlength=n)

    first = ~pd.Series(rec_key).duplicated().to_numpy()
    hits = np.isin(rec_key, rel_key) & (recommended.ravel() != PAD) & first
    return hits.reshape(n, width), n_relevant


def per_row_metrics(recommended: np.ndarray, relevant: Sequence[np.ndarray],
                    ks: Sequence[int] = DEFAULT_KS) -> pd.DataFrame:
    """One row per input row with `hr@k`, `ndcg@k` for each k and `mrr`.

    Averaging a subset of rows (warm vs cold users, old vs new ads) gives that group's metrics. A row with no
    relevant ids scores 0 everywhere. A list shorter than k (or padded) is judged against the full ideal ranking
    of min(|relevant|, k) hits, so returning fewer ads than asked is penalised, not excused.
    """
    matrix = _as_matrix(recommended)
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"every k must be >= 1; got {tuple(ks)}")
    hits, n_relevant = _hit_matrix(matrix, relevant)
    n, width = matrix.shape

    depth = max([width, *ks]) if len(ks) else width
    discount = 1.0 / np.log2(np.arange(depth) + 2.0)  # rank r (1-based) is worth 1 / log2(r + 1)
    ideal = np.r_[0.0, np.cumsum(discount)]  # ideal[m]: DCG of m hits at the top
    gains = hits * discount[:width]

    columns: dict[str, np.ndarray] = {}
    for k in ks:
        columns[f"hr@{k}"] = hits[:, :k].any(axis=1).astype(float)
    for k in ks:
        idcg = ideal[np.minimum(n_relevant, k)]
        dcg = gains[:, :k].sum(axis=1)
        columns[f"ndcg@{k}"] = np.divide(dcg, idcg, out=np.zeros(n), where=idcg > 0)
    any_hit = hits.any(axis=1)
    first_rank = hits.argmax(axis=1) + 1
    columns["mrr"] = np.where(any_hit, 1.0 / first_rank, 0.0)
    return pd.DataFrame(columns)


def ranking_metrics(recommended: np.ndarray, relevant: Sequence[np.ndarray],
                    ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean of `per_row_metrics` over all rows (NaN when there are no rows)."""
    return {name: float(value) for name, value in per_row_metrics(recommended, relevant, ks).mean().items()}


def _outputs(recommended: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, ad id) of every non-padding entry."""
    matrix = _as_matrix(recommended)
    rows, cols = np.nonzero(matrix != PAD)
    return rows, matrix[rows, cols]


def _lookup(mapping: AdLookup, ids: np.ndarray) -> np.ndarray:
    """Values for `ids`, NaN (or None) where the ad is unknown."""
    series = mapping if isinstance(mapping, pd.Series) else pd.Series(dict(mapping), dtype=object)
    return series.reindex(ids).to_numpy()


def validity(recommended: np.ndarray, live_ids: np.ndarray) -> float:
    """Share of non-padding outputs that are live ads (0 when nothing was output: an empty answer is not valid)."""
    _, ids = _outputs(recommended)
    if ids.size == 0:
        return 0.0
    return float(np.isin(ids, np.asarray(live_ids, dtype=np.int64)).mean())


def coverage(recommended: np.ndarray, catalogue_size: int) -> float:
    """Distinct non-padding ids recommended over the catalogue size.

    Unknown ids count too; read it next to `validity`, which says how many outputs were real ads.
    """
    if catalogue_size <= 0:
        raise ValueError(f"catalogue_size must be positive; got {catalogue_size}")
    _, ids = _outputs(recommended)
    return len(np.unique(ids)) / catalogue_size


def industry_diversity(recommended: np.ndarray, industry_of: AdLookup) -> float:
    """Mean over lists of distinct industries / list length (non-padding entries).

    An unknown ad lengthens its list but brings no industry, so invalid outputs lower diversity rather than
    raise it. Lists with no output are left out of the mean; 0 when every list is empty.
    """
    rows, ids = _outputs(recommended)
    if ids.size == 0:
        return 0.0
    frame = pd.DataFrame({"row": rows, "industry": _lookup(industry_of, ids)})
    distinct = frame.dropna().drop_duplicates().groupby("row").size()
    length = np.bincount(rows)
    listed = np.flatnonzero(length)
    return float((distinct.reindex(listed, fill_value=0).to_numpy() / length[listed]).mean())


def mean_ecpm(recommended: np.ndarray, ecpm_of: AdLookup) -> float:
    """Mean eCPM over recommended ads the lookup knows (the business value of an impression of the lists).

    Unknown ids are left out rather than counted as zero: `validity` already charges for them, and keeping the
    two apart lets a report say "valuable but often invalid" instead of one blended number.
    """
    _, ids = _outputs(recommended)
    values = pd.to_numeric(pd.Series(_lookup(ecpm_of, ids)), errors="coerce").dropna()
    return float(values.mean()) if len(values) else 0.0
