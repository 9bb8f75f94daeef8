"""`leadre recommend`: a model's top-K live ads for a split's users, for a look at what a model recommends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leadre.config import Params
from leadre.data.tables import read_tables
from leadre.decode.recommender import LlmRecommender, top_k
from leadre.evaluate.baselines import ad_engagements
from leadre.io import atomic_file
from leadre.prompts import MAIN_TASK
from leadre.runtime import set_cpu_threads


def run_recommend(params: Params, model: Path | None, split: str, users: int, k: int,
                 out: Path | None) -> list[dict[str, Any]]:
    folder = params.path(params.prompts.out_dir) / "sft" / split
    set_cpu_threads(params.model.cpu_threads)
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{folder}: no prompts (run `leadre prompts build` first)")
    rows = pd.concat([pd.read_parquet(f, columns=["prompt", "task", "user_id", "cutoff"]) for f in files])
    rows = rows[rows["task"] == MAIN_TASK].drop_duplicates("user_id").sort_values("user_id").head(users)
    if rows.empty:
        raise FileNotFoundError(f"{folder}: no main-task prompts (run `leadre prompts build` first)")
    recommender = LlmRecommender(params.path(model or params.evaluate.candidate_dir), params.decode)
    generated = recommender.generate([list(p) for p in rows["prompt"]])
    tables = read_tables(params.path(params.data.validated_dir), ("ads", "events"))
    ads = tables["ads"].set_index("ad_id")
    # p_now from what was known before the earliest of these prompts' cut-offs: no answer leaks into the ranking
    prior = recommender.popularity_shift(ad_engagements(tables["events"], before=rows["cutoff"].min()))
    ids, scores = top_k(generated, k, None, ads["ecpm"], ads["industry"], params.decode.value_weight,
                        params.decode.diversity_penalty, prior)
    result = [{"user_id": int(u), "ad_ids": [int(a) for a in i if a >= 0], "scores": [float(s) for s in sc if np.isfinite(s)]}
              for u, i, sc in zip(rows["user_id"], ids, scores)]
    if out is not None:
        with atomic_file(out) as tmp:
            pd.DataFrame(result).to_parquet(tmp)
    return result
